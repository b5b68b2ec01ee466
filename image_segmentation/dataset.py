"""The tf.data input pipeline: sharded TFRecords of the prepare stage to training batches.

Images are decoded, scaled and cropped in float32 pixel space ([0, 255]) and normalized last, as
`pixel * scale + offset`, the same formula the exported models carry. Masks are only ever
resampled with nearest neighbour, so no class value is invented at region borders. Pixels that
carry no label (padding added when a scaled image is smaller than the crop) get the mask value
IGNORE, which the loss and the metrics skip: the model is never taught that a fake border is
"none" or any other class.
"""

from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf

from image_segmentation import data_folder, records
from image_segmentation.errors import StageError

IGNORE = data_folder.IGNORE


@dataclass(frozen=True)
class Normalization:
    """Model input = pixel * scale + offset, per channel, for pixels in [0, 255]."""

    scale: float = 1 / 255
    offset: float = -0.5  # the legacy training's x/255 - 0.5


@dataclass(frozen=True)
class Augmentation:
    """Random changes applied to training samples only."""

    min_scale: float = 0.75  # relative to the scale at which the image just covers the crop
    max_scale: float = 1.5
    flip: bool = True
    color_jitter: bool = True


def parse_example(serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Decode one record to (image uint8 [H, W, 3], mask uint8 [H, W]).

    Masks may be single-channel PNGs (this project) or the legacy tool's RGB PNGs with the class
    in every channel: channel 0 is the class either way.
    """
    features = tf.io.parse_single_example(
        serialized,
        {
            records.IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string),
            records.MASK_ENCODED: tf.io.FixedLenFeature([], tf.string),
        },
    )
    image = tf.io.decode_image(features[records.IMAGE_ENCODED], channels=3, expand_animations=False)
    mask = tf.io.decode_png(features[records.MASK_ENCODED], channels=0)
    image = tf.ensure_shape(image, [None, None, 3])
    return image, mask[:, :, 0]


def _resize_pair(
    image: tf.Tensor, mask: tf.Tensor, height: tf.Tensor, width: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """Bilinear (antialiased when shrinking) for the float image, nearest for the mask."""
    image = tf.image.resize(image, tf.stack([height, width]), method="bilinear", antialias=True)
    mask = tf.image.resize(mask[:, :, None], tf.stack([height, width]), method="nearest")
    return image, mask[:, :, 0]


def _cover_scale(shape: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """The smallest scale at which an image of `shape` covers a crop of `size`."""
    shape = tf.cast(shape[:2], tf.float32)
    return tf.maximum(size[0] / shape[0], size[1] / shape[1])


def _scaled_shape(shape: tf.Tensor, scale: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    height = tf.cast(tf.math.round(tf.cast(shape[0], tf.float32) * scale), tf.int32)
    width = tf.cast(tf.math.round(tf.cast(shape[1], tf.float32) * scale), tf.int32)
    return tf.maximum(height, 1), tf.maximum(width, 1)


def augment(
    image: tf.Tensor,
    mask: tf.Tensor,
    size: tuple[int, int],
    seed: tf.Tensor,
    options: Augmentation = Augmentation(),
) -> tuple[tf.Tensor, tf.Tensor]:
    """Random scale, pad, crop to `size`, flip and colour jitter of one sample.

    `seed` is a [2] int64 stateless seed, so a pipeline with a fixed seed yields the same
    samples however many threads map it. Returns (float32 [H, W, 3] in [0, 255], uint8 [H, W]).
    """
    seeds = tf.random.experimental.stateless_split(seed, 6)
    image = tf.cast(image, tf.float32)
    factor = tf.random.stateless_uniform(
        [], seeds[0], minval=options.min_scale, maxval=options.max_scale
    )
    height, width = _scaled_shape(tf.shape(image), _cover_scale(tf.shape(image), size) * factor)
    image, mask = _resize_pair(image, mask, height, width)
    pad_h, pad_w = tf.maximum(size[0] - height, 0), tf.maximum(size[1] - width, 0)
    paddings = [[pad_h // 2, pad_h - pad_h // 2], [pad_w // 2, pad_w - pad_w // 2]]
    image = tf.pad(image, [*paddings, [0, 0]])
    mask = tf.pad(mask, paddings, constant_values=IGNORE)
    stacked = tf.concat([image, tf.cast(mask, tf.float32)[:, :, None]], axis=2)
    stacked = tf.image.stateless_random_crop(stacked, [size[0], size[1], 4], seeds[1])
    if options.flip:
        stacked = tf.image.stateless_random_flip_left_right(stacked, seeds[2])
    image, mask = stacked[:, :, :3], tf.cast(stacked[:, :, 3], tf.uint8)
    if options.color_jitter:
        image = tf.image.stateless_random_brightness(image, 20.0, seeds[3])
        image = tf.image.stateless_random_contrast(image, 0.8, 1.2, seeds[4])
        image = tf.image.stateless_random_saturation(image, 0.8, 1.2, seeds[5])
        image = tf.clip_by_value(image, 0.0, 255.0)
    return image, mask


def center_crop(
    image: tf.Tensor, mask: tf.Tensor, size: tuple[int, int]
) -> tuple[tf.Tensor, tf.Tensor]:
    """Deterministic validation view: scale to just cover `size` (aspect kept), crop the centre."""
    image = tf.cast(image, tf.float32)
    height, width = _scaled_shape(tf.shape(image), _cover_scale(tf.shape(image), size))
    height, width = tf.maximum(height, size[0]), tf.maximum(width, size[1])
    image, mask = _resize_pair(image, mask, height, width)
    top, left = (height - size[0]) // 2, (width - size[1]) // 2
    image = image[top : top + size[0], left : left + size[1]]
    mask = mask[top : top + size[0], left : left + size[1]]
    return tf.ensure_shape(image, [*size, 3]), tf.ensure_shape(mask, list(size))


def normalize(image: tf.Tensor, normalization: Normalization) -> tf.Tensor:
    return image * normalization.scale + normalization.offset


def make_dataset(
    shards: list[Path],
    image_size: tuple[int, int],
    batch_size: int,
    training: bool,
    normalization: Normalization = Normalization(),
    augmentation: Augmentation = Augmentation(),
    seed: int = 0,
    shuffle_buffer: int = 512,
    target_sizes: dict[str, tuple[int, int]] | None = None,
    ignore_class_zero: bool = False,
) -> tf.data.Dataset:
    """Batches of (normalized float32 images [B, H, W, 3], labels).

    Labels are the uint8 masks [B, H, W], or with `target_sizes` the dict of
    `multiscale_targets` that the training model's loss takes. Training: shards and records
    shuffled, repeated forever, augmented, last partial batch dropped. Validation: one
    deterministic pass over every record, in file order.
    """
    if not shards:
        raise StageError("no TFRecord shards to read")
    autotune = tf.data.AUTOTUNE
    files = tf.data.Dataset.from_tensor_slices([str(path) for path in shards])
    if training:
        files = files.shuffle(len(shards), seed=seed, reshuffle_each_iteration=True).repeat()
    data = files.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(len(shards), 8),
        num_parallel_calls=autotune,
    )
    if training:
        data = data.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        seeds = tf.data.Dataset.random(seed=seed).batch(2)
        data = tf.data.Dataset.zip(data, seeds).map(
            lambda serialized, pair: augment(
                *parse_example(serialized), image_size, pair, augmentation
            ),
            num_parallel_calls=autotune,
        )
    else:
        data = data.map(
            lambda serialized: center_crop(*parse_example(serialized), image_size),
            num_parallel_calls=autotune,
        )
    data = data.map(lambda image, mask: (normalize(image, normalization), mask))
    data = data.batch(batch_size, drop_remainder=training)
    if target_sizes:
        data = data.map(
            lambda images, masks: (
                images,
                multiscale_targets(masks, target_sizes, ignore_class_zero),
            ),
            num_parallel_calls=autotune,
        )
    return data.prefetch(autotune)


def multiscale_targets(
    mask: tf.Tensor, output_sizes: dict[str, tuple[int, int]], ignore_class_zero: bool = False
) -> dict[str, tf.Tensor]:
    """One int32 label map per model output, the batch of masks resized (nearest) to its size.

    With `ignore_class_zero`, "none" pixels become IGNORE so the loss skips them too.
    """
    labels = tf.cast(mask, tf.int32)
    if ignore_class_zero:
        labels = tf.where(labels == 0, IGNORE, labels)
    return {
        name: tf.image.resize(labels[..., None], size, method="nearest")[..., 0]
        for name, size in output_sizes.items()
    }
