"""The tf.data input pipeline: sharded TFRecords of the prepare stage to training batches.

How a photo becomes the model input follows the resize mode (`preprocessing.py`): "stretch"
(the whole photo, aspect not kept) or "crop" (aspect kept, the centre). Validation sees exactly
that view. Training draws a random scale around the scale at which the photo just covers the
input (per axis when stretching, the larger of the two when cropping), a random crop (padded
where the scaled photo is smaller), a flip and a mild colour change.

The CPU sets the training speed, so each sample's work is done where it is smallest. The crop's
source window is cut from the decoded photo, and padded, first. The colour change and the
normalization (`pixel * scale + offset`, the formula the exported models carry) are one affine
map of its pixels, clipped to the pixel range. Only then is the window resized to the input
size, bilinearly, antialiased only below half size, where bilinear sampling skips pixels.
Resizing is linear, so this equals resizing first except where the clipping bites. The training
targets at the model's output sizes are picked straight from the source mask.

Masks are only ever resampled with nearest neighbour, so no class value is invented at region
borders. Pixels that carry no label (padding added when a scaled image is smaller than the
input) get the mask value IGNORE, which the loss and the metrics skip: the model is never
taught that a fake border is "none" or any other class.
"""

import math
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf

from image_segmentation.data import preprocessing, records
from image_segmentation.data.labels import IGNORE
from image_segmentation.data.photo_input import DEFAULT_RESIZE, check_mode
from image_segmentation.errors import StageError

# Below half size bilinear's two taps skip whole source pixels (aliasing), so antialias there;
# above, antialiasing changes little and costs 3x.
ANTIALIAS_BELOW = 0.5
LUMA = (0.299, 0.587, 0.114)  # grey = RGB . LUMA (ITU-R BT.601), the saturation change's axis


@dataclass(frozen=True)
class Normalization:
    """Model input = pixel * scale + offset, per channel, for pixels in [0, 255]."""

    scale: float = 1 / 255
    offset: float = -0.5  # the legacy training's x/255 - 0.5


PIXELS = Normalization(scale=1.0, offset=0.0)  # no normalization: pixel values in [0, 255]


@dataclass(frozen=True)
class Augmentation:
    """Random changes applied to training samples only. On the photo-like rooms (384, 180
    epochs) the scale range 0.85..1.25 scored as this one, 0.5..2 and no scaling 0.05 lower."""

    min_scale: float = 0.75  # relative to the scale at which the image just covers the crop
    max_scale: float = 1.5
    flip: bool = True
    color_jitter: bool = True
    brightness: float = 20.0  # pixel levels added, at most, to every channel
    contrast: float = 0.2  # distance from the channel mean scaled by 1 +- this, at most
    saturation: float = 0.2  # distance from grey scaled by 1 +- this, at most


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


def class_repeat_factors(pixel_counts: list[int], threshold: float) -> list[float]:
    """Each class's repeat factor for repeat-factor sampling: sqrt(threshold / share) for a
    class whose share of the training pixels is under `threshold`, else 1; 1 for class 0
    ("none"), which every kind of scene holds."""
    total = sum(pixel_counts)
    return [1.0] + [
        max(1.0, math.sqrt(threshold * total / count)) if count else 1.0
        for count in pixel_counts[1:]
    ]


def _repeat_rare(samples: tf.data.Dataset, factors: list[float], seed: int) -> tf.data.Dataset:
    """Each record repeated r times in expectation, r the largest repeat factor of the classes
    in its mask: floor(r) times, once more with the chance of r's fraction."""
    table = tf.constant(factors, tf.float32)

    def copies(serialized: tf.Tensor, draw: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        encoded = tf.io.parse_single_example(
            serialized, {records.MASK_ENCODED: tf.io.FixedLenFeature([], tf.string)}
        )[records.MASK_ENCODED]
        classes = tf.unique(tf.reshape(tf.io.decode_png(encoded, channels=1), [-1])).y
        classes = tf.boolean_mask(classes, tf.cast(classes, tf.int32) < len(factors))
        factor = tf.reduce_max(tf.concat([[1.0], tf.gather(table, tf.cast(classes, tf.int32))], 0))
        chance = tf.cast(draw % 2**24, tf.float32) / 2**24
        extra = tf.cast(chance < factor - tf.floor(factor), tf.int64)
        return serialized, tf.cast(tf.floor(factor), tf.int64) + extra

    draws = tf.data.Dataset.random(seed=seed + 1)
    counted = tf.data.Dataset.zip(samples, draws).map(copies, num_parallel_calls=tf.data.AUTOTUNE)
    return counted.flat_map(lambda record, n: tf.data.Dataset.from_tensors(record).repeat(n))


def _nearest(size: tf.Tensor, length: tf.Tensor) -> tf.Tensor:
    """Source index of each of `size` output pixels when `length` pixels are resized to `size`:
    the pixel under the output pixel's centre, the point bilinear resizing centres on too."""
    centres = tf.range(size, dtype=tf.float32) + 0.5
    step = tf.cast(length, tf.float32) / tf.cast(size, tf.float32)
    return tf.minimum(tf.cast(centres * step, tf.int32), length - 1)


def _gather_nearest(transposed: tf.Tensor, rows: tf.Tensor, columns: tf.Tensor) -> tf.Tensor:
    """mask[rows][:, columns] from the mask's transpose: gathering whole rows both times is
    several times faster than gathering single bytes along axis 1."""
    return tf.gather(tf.transpose(tf.gather(transposed, columns)), rows)


def _axis_plan(
    length: tf.Tensor, scale: tf.Tensor, size: int, position: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """(start, window, pad_before, pad_after) along one axis of an image of `length` pixels
    scaled by `scale` and cropped to `size`: the source pixels [start, start + window), padded,
    are the size / scale pixels that become the output.

    Where the scaled image is longer than `size`, the window is a part of it at a random
    `position` (in [0, 1)) and there is no padding; elsewhere it is the whole axis, centred.
    """
    padded = tf.maximum(tf.cast(tf.round(size / scale), tf.int32), 1)
    window = tf.minimum(padded, length)
    start = tf.cast(position * tf.cast(length - window + 1, tf.float32), tf.int32)
    before = (padded - window) // 2
    return tf.minimum(start, length - window), window, before, padded - window - before


def _colour_map(
    window: tf.Tensor,
    draws: tf.Tensor,
    options: Augmentation,
    normalization: Normalization,
) -> tuple[tf.Tensor, tf.Tensor]:
    """(matrix [3, 3], bias [3]) so that pixel_row @ matrix + bias is the pixel after the colour
    change, then normalized.

    The change is brightness (add delta), contrast (scale the distance from the channel mean)
    and saturation (scale the distance from grey), in that order: all affine, so one map.
    `draws` holds three uniform [0, 1) numbers.
    """
    scale = tf.constant(normalization.scale, tf.float32)
    if not options.color_jitter:
        return scale * tf.eye(3), tf.fill([3], tf.constant(normalization.offset, tf.float32))
    delta = options.brightness * (2 * draws[0] - 1)
    contrast = 1 + options.contrast * (2 * draws[1] - 1)
    saturation = 1 + options.saturation * (2 * draws[2] - 1)
    # Every 8th pixel each way: as good a contrast centre as all of them, at 1/64 of the cost.
    mean = tf.reduce_mean(tf.cast(window[::8, ::8], tf.float32), axis=[0, 1])
    grey = tf.constant(LUMA)[:, None] * tf.ones([1, 3])  # pixel_row @ grey: grey in every channel
    to_saturated = saturation * tf.eye(3) + (1 - saturation) * grey
    shift = (1 - contrast) * mean + delta  # brightness and contrast: contrast * pixel + shift
    matrix = scale * contrast * to_saturated
    bias = scale * tf.linalg.matvec(to_saturated, shift, transpose_a=True) + normalization.offset
    return matrix, bias


def _recolour(
    window: tf.Tensor, matrix: tf.Tensor, bias: tf.Tensor, normalization: Normalization
) -> tf.Tensor:
    """The uint8 pixels [H, W, 3] through the colour map, as float32 clipped to the normalized
    pixel range. The bias is added to the H rows of 3W values (the bias repeated W times):
    added along a last axis of 3, it takes several times longer."""
    shape = tf.shape(window)
    pixels = tf.matmul(tf.reshape(tf.cast(window, tf.float32), [-1, 3]), matrix)
    rows = tf.reshape(pixels, [shape[0], 3 * shape[1]])
    pixels = tf.nn.bias_add(rows, tf.tile(bias, shape[1:2]))
    low, high = sorted((normalization.offset, 255 * normalization.scale + normalization.offset))
    return tf.reshape(tf.clip_by_value(pixels, low, high), shape)


def augment(
    image: tf.Tensor,
    mask: tf.Tensor,
    size: tuple[int, int],
    seed: tf.Tensor,
    options: Augmentation = Augmentation(),
    resize: str = DEFAULT_RESIZE,
    normalization: Normalization = PIXELS,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Random scale, crop to `size` (padded where the scaled image is smaller), flip and colour
    change of one sample, as the module docstring describes.

    `seed` is a [2] int64 stateless seed, so a pipeline with a fixed seed yields the same
    samples however many threads map it. Returns (float32 [*size, 3], pixels in [0, 255]
    normalized by `normalization`; uint8 [*size]).
    """
    pixels, masks = _augment(
        image, mask, size, seed, options, resize, normalization, {"mask": size}
    )
    return pixels, masks["mask"]


def _augment(
    image: tf.Tensor,
    mask: tf.Tensor,
    size: tuple[int, int],
    seed: tf.Tensor,
    options: Augmentation,
    resize: str,
    normalization: Normalization,
    mask_sizes: dict[str, tuple[int, int]],
) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    """`augment`, with the mask resampled to each of `mask_sizes` (name: (height, width)) as
    the output at that size would show it: the training targets, without the full-size mask.

    Padding (black, IGNORE) is added to the source window, so that the resize writes the
    output once; the colour change applies to it, as it always did.
    """
    check_mode(resize)
    draws = tf.random.stateless_uniform([7], seed)  # scale, position x2, flip, colour x3
    shape = tf.shape(image)
    scale = tf.cast(size, tf.float32) / tf.cast(shape[:2], tf.float32)  # covering, per axis
    if resize == "crop":
        scale = tf.fill([2], tf.reduce_max(scale))
    scale *= options.min_scale + (options.max_scale - options.min_scale) * draws[0]
    top, rows, pad_top, pad_bottom = _axis_plan(shape[0], scale[0], size[0], draws[1])
    left, columns, pad_left, pad_right = _axis_plan(shape[1], scale[1], size[1], draws[2])
    paddings = [[pad_top, pad_bottom], [pad_left, pad_right]]
    window = tf.slice(image, tf.stack([top, left, 0]), tf.stack([rows, columns, 3]))
    matrix, bias = _colour_map(window, draws[4:], options, normalization)
    window = tf.pad(window, [*paddings, [0, 0]])
    mask = tf.pad(
        tf.slice(mask, tf.stack([top, left]), tf.stack([rows, columns])),
        paddings,
        constant_values=IGNORE,
    )
    padded = tf.shape(mask)
    source_rows, source_columns = _nearest(size[0], padded[0]), _nearest(size[1], padded[1])
    if options.flip:
        flip = draws[3] < 0.5
        window = tf.cond(flip, lambda: tf.reverse(window, [1]), lambda: window)
        source_columns = tf.where(flip, tf.reverse(source_columns, [0]), source_columns)
    pixels = _recolour(window, matrix, bias, normalization)
    shrinks = tf.constant(size, tf.float32) < ANTIALIAS_BELOW * tf.cast(padded, tf.float32)
    pixels = tf.cond(
        tf.reduce_any(shrinks),
        lambda: tf.image.resize(pixels, size, antialias=True),
        lambda: tf.image.resize(pixels, size),
    )
    transposed = tf.transpose(mask)
    masks = {
        name: tf.ensure_shape(
            _gather_nearest(
                transposed,
                tf.gather(source_rows, _nearest(height, size[0])),
                tf.gather(source_columns, _nearest(width, size[1])),
            ),
            [height, width],
        )
        for name, (height, width) in mask_sizes.items()
    }
    return tf.ensure_shape(pixels, [*size, 3]), masks


def validation_view(
    image: tf.Tensor, mask: tf.Tensor, size: tuple[int, int], resize: str = DEFAULT_RESIZE
) -> tuple[tf.Tensor, tf.Tensor]:
    """The deterministic view the model is evaluated and exported with (`preprocessing.py`):
    the window of the resize mode, the image resized bilinearly (antialiased when shrinking),
    the mask with nearest neighbour. Returns (float32 [*size, 3] in [0, 255], uint8 [*size])."""
    pixels, (top, left, rows, columns) = preprocessing.view(image, size, resize)
    mask = tf.transpose(mask[top : top + rows, left : left + columns])
    mask = _gather_nearest(mask, _nearest(size[0], rows), _nearest(size[1], columns))
    return tf.ensure_shape(pixels, [*size, 3]), tf.ensure_shape(mask, list(size))


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
    resize: str = DEFAULT_RESIZE,
    repeat_factors: list[float] | None = None,
) -> tf.data.Dataset:
    """Batches of (normalized float32 images [B, H, W, 3], labels).

    Labels are the uint8 masks [B, H, W], or with `target_sizes` the dict of
    `multiscale_targets` that the training model's loss takes. Training: shards and records
    shuffled, repeated forever, augmented, last partial batch dropped; `seed` fixes the whole
    stream, so every worker of a multi-machine run reads the same one; `repeat_factors` (one
    per class, `class_repeat_factors`) draws the images of rarer classes more often. Validation:
    one deterministic pass over every record, in file order.
    """
    if not shards:
        raise StageError("no TFRecord shards to read")
    check_mode(resize)
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
        if repeat_factors:
            data = _repeat_rare(data, repeat_factors, seed)
        data = data.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        seeds = tf.data.Dataset.random(seed=seed).batch(2)
        data = tf.data.Dataset.zip(data, seeds).map(
            lambda serialized, pair: _training_sample(
                serialized,
                pair,
                image_size,
                augmentation,
                resize,
                normalization,
                target_sizes,
            ),
            num_parallel_calls=autotune,
        )
    else:
        data = data.map(
            lambda serialized: _validation_sample(serialized, image_size, resize, normalization),
            num_parallel_calls=autotune,
        )
    data = data.batch(batch_size, drop_remainder=training)
    if target_sizes and not training:
        data = data.map(
            lambda images, masks: (images, multiscale_targets(masks, target_sizes)),
            num_parallel_calls=autotune,
        )
    # Samples are made in parallel already: splitting one sample's ops over threads as well
    # only adds their synchronisation.
    options = tf.data.Options()
    options.threading.max_intra_op_parallelism = 1
    return data.prefetch(autotune).with_options(options)


def _training_sample(
    serialized: tf.Tensor,
    seed: tf.Tensor,
    size: tuple[int, int],
    options: Augmentation,
    resize: str,
    normalization: Normalization,
    target_sizes: dict[str, tuple[int, int]] | None,
) -> tuple[tf.Tensor, tf.Tensor | dict[str, tf.Tensor]]:
    """One augmented, normalized sample. With `target_sizes` its labels are the training
    targets, resampled straight from the source mask (what `multiscale_targets` would make
    of the full-size mask, which is then never made)."""
    pixels, masks = _augment(
        *parse_example(serialized),
        size,
        seed,
        options,
        resize,
        normalization,
        target_sizes or {"mask": size},
    )
    if not target_sizes:
        return pixels, masks["mask"]
    return pixels, {name: tf.cast(mask, tf.int32) for name, mask in masks.items()}


def _validation_sample(
    serialized: tf.Tensor, size: tuple[int, int], resize: str, normalization: Normalization
) -> tuple[tf.Tensor, tf.Tensor]:
    image, mask = validation_view(*parse_example(serialized), size, resize)
    return normalize(image, normalization), mask


def multiscale_targets(
    mask: tf.Tensor, output_sizes: dict[str, tuple[int, int]]
) -> dict[str, tf.Tensor]:
    """One int32 label map per model output, the batch of masks resized (nearest) to its size:
    the pixels `tf.image.resize` would pick, gathered, which is faster."""
    shape = tf.shape(mask)
    targets = {}
    for name, (height, width) in output_sizes.items():
        rows = tf.gather(mask, _nearest(height, shape[1]), axis=1)
        targets[name] = tf.cast(tf.gather(rows, _nearest(width, shape[2]), axis=2), tf.int32)
    return targets
