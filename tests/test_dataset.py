"""The tf.data input pipeline: record parsing (new and legacy masks), augmentation, batches."""

import io
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from test_data_folder import write_folder

from image_segmentation import data_folder, dataset, labels, records, synthetic

WHITELIST = "wall|floor|bed"  # 4 output classes with none; synthetic draws these and "building"
ADE_CLASSES = (1, 4, 8, 2)


def encode(image: np.ndarray, mask: np.ndarray, rgb_mask: bool = False) -> bytes:
    """One record as prepare writes it, or with the legacy tool's RGB mask."""
    jpeg, png = io.BytesIO(), io.BytesIO()
    Image.fromarray(image).save(jpeg, format="JPEG", quality=95)
    Image.fromarray(np.stack([mask] * 3, axis=-1) if rgb_mask else mask).save(png, format="PNG")
    height, width = mask.shape
    return records.segmentation_example(jpeg.getvalue(), "sample", height, width, png.getvalue())


def write_prepared(
    out: Path,
    num_train: int,
    num_val: int,
    size: tuple[int, int] = (80, 96),
    shards: int = 2,
    seed: int = 0,
) -> Path:
    """A complete prepare-stage output dir, written through data_folder: shards of generated
    samples whose classes differ by colour and texture, labels.txt and stats.json."""
    whitelist = labels.parse_whitelist(WHITELIST)
    table = whitelist.lookup_table()
    rng = np.random.default_rng(seed)
    contents = {}
    for split, count in (("train", num_train), ("val", num_val)):
        contents[split] = [[] for _ in range(shards)]
        for number in range(count):
            image, ade_mask = synthetic.render_sample(rng, *size, ADE_CLASSES)
            contents[split][number % shards].append(encode(image, table[ade_mask]))
    return write_folder(out, contents, list(whitelist.labels))


def sample(seed: int = 0, size: tuple[int, int] = (60, 90)) -> tuple[np.ndarray, np.ndarray]:
    image, ade_mask = synthetic.render_sample(np.random.default_rng(seed), *size, ADE_CLASSES)
    return image, labels.parse_whitelist(WHITELIST).lookup_table()[ade_mask]


@pytest.mark.parametrize("rgb_mask", [False, True], ids=["single-channel", "legacy-rgb"])
def test_parse_example_reads_both_mask_formats(rgb_mask):
    image, mask = sample()
    record = encode(image, mask, rgb_mask)
    parsed_image, parsed_mask = dataset.parse_example(record)
    assert parsed_image.dtype == tf.uint8 and parsed_image.shape == (60, 90, 3)
    assert parsed_mask.dtype == tf.uint8 and parsed_mask.shape == (60, 90)
    assert np.array_equal(parsed_mask.numpy(), mask)
    jpeg = records.decode_example(record)[records.IMAGE_ENCODED]
    reference = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")).astype(int)
    # Same JPEG: libjpeg settings differ (IDCT, chroma upsampling) by a level or two.
    assert np.abs(parsed_image.numpy().astype(int) - reference).mean() < 3


def flat_sample() -> tuple[np.ndarray, np.ndarray]:
    """Flat class colours (class k is grey level 60k), so each pixel's class can be read back."""
    mask = np.zeros((48, 72), dtype=np.uint8)
    mask[:, 30:] = 1
    mask[10:40, 5:20] = 2
    mask[30:, 50:] = 3
    image = np.repeat((mask * 60 + 20)[:, :, None], 3, axis=2).astype(np.uint8)
    return image, mask


def read_classes(image: np.ndarray) -> np.ndarray:
    return np.clip(np.round((image[:, :, 0] - 20) / 60), 0, 3).astype(np.uint8)


def test_augmentation_keeps_image_and_mask_aligned():
    image, mask = flat_sample()
    options = dataset.Augmentation(color_jitter=False)
    flipped = 0
    for seed in range(12):
        out_image, out_mask = dataset.augment(
            image, mask, (32, 32), tf.constant([seed, 7]), options
        )
        out_image, out_mask = out_image.numpy(), out_mask.numpy()
        assert out_image.shape == (32, 32, 3) and out_mask.shape == (32, 32)
        # Nearest only: no invented classes; IGNORE where a scale below 1 needed padding.
        assert set(np.unique(out_mask)) <= {0, 1, 2, 3, dataset.IGNORE}
        labelled = out_mask != dataset.IGNORE
        agree = np.mean(read_classes(out_image)[labelled] == out_mask[labelled])
        assert agree > 0.9, f"seed {seed}: image and mask disagree on {1 - agree:.0%} of pixels"
        flipped += bool(np.any(out_mask[:, :5] == 3))  # class 3 sits at the right edge
    assert 0 < flipped < 12  # flips happen, but not always


def test_small_scales_pad_with_the_ignored_value():
    image, mask = flat_sample()
    options = dataset.Augmentation(min_scale=0.5, max_scale=0.5, flip=False, color_jitter=False)
    out_image, out_mask = dataset.augment(image, mask, (64, 64), tf.constant([1, 2]), options)
    out_image, out_mask = out_image.numpy(), out_mask.numpy()
    # Cover scale is 64/48; at half of it the 48x72 sample becomes 32x48 inside 64x64.
    labelled = out_mask != dataset.IGNORE
    assert labelled.sum() == 32 * 48
    assert np.all(out_image[~labelled] == 0)
    assert np.mean(read_classes(out_image)[labelled] == out_mask[labelled]) > 0.9


def test_colour_jitter_changes_only_the_image():
    image, mask = flat_sample()
    options = dataset.Augmentation(min_scale=1.0, max_scale=1.0, flip=False)
    jittered, jittered_mask = dataset.augment(image, mask, (48, 48), tf.constant([3, 4]), options)
    options = dataset.Augmentation(min_scale=1.0, max_scale=1.0, flip=False, color_jitter=False)
    plain, plain_mask = dataset.augment(image, mask, (48, 48), tf.constant([3, 4]), options)
    assert np.array_equal(jittered_mask.numpy(), plain_mask.numpy())
    difference = np.abs(jittered.numpy() - plain.numpy())
    assert 0 < difference.mean() < 40
    assert jittered.numpy().min() >= 0 and jittered.numpy().max() <= 255


def test_validation_view_is_deterministic_centre_crop():
    image, mask = flat_sample()  # 48x72 -> scale 32/48 -> 32x48 -> centre 32 columns
    first_image, first_mask = dataset.center_crop(image, mask, (32, 32))
    second_image, second_mask = dataset.center_crop(image, mask, (32, 32))
    assert np.array_equal(first_image.numpy(), second_image.numpy())
    assert np.array_equal(first_mask.numpy(), second_mask.numpy())
    expected = np.asarray(Image.fromarray(mask).resize((48, 32), Image.NEAREST))[:, 8:40]
    assert np.mean(first_mask.numpy() == expected) > 0.95
    assert set(np.unique(first_mask.numpy())) <= {0, 1, 2, 3}


def test_validation_batches_cover_every_record_once(tmp_path):
    write_prepared(tmp_path, num_train=2, num_val=11, shards=3)
    data = dataset.make_dataset(
        data_folder.list_shards(tmp_path, "val"), (32, 32), batch_size=4, training=False
    )
    batches = list(data)
    assert [int(images.shape[0]) for images, _ in batches] == [4, 4, 3]
    images = np.concatenate([images.numpy() for images, _ in batches])
    assert images.dtype == np.float32 and images.min() >= -0.5 and images.max() <= 0.5
    assert images.std() > 0.05  # real pictures, not padding
    again = np.concatenate([images.numpy() for images, _ in data])
    assert np.array_equal(images, again)


def test_training_batches_carry_one_target_per_output(tmp_path):
    write_prepared(tmp_path, num_train=5, num_val=1)
    sizes = {"conv6_cls": (16, 16), "sub24_out": (8, 8), "sub4_out": (4, 4)}
    data = dataset.make_dataset(
        data_folder.list_shards(tmp_path, "train"),
        (64, 64),
        batch_size=4,
        training=True,
        target_sizes=sizes,
        ignore_class_zero=True,
    )
    for images, targets in data.take(3):  # 5 records, repeated: full batches only
        assert images.shape == (4, 64, 64, 3)
        assert {name: tuple(t.shape[1:]) for name, t in targets.items()} == sizes
        for target in targets.values():
            assert target.dtype == tf.int32
            assert set(np.unique(target.numpy())) <= {1, 2, 3, dataset.IGNORE}  # 0 ignored


def test_multiscale_targets_downsample_with_nearest():
    _, mask = flat_sample()
    targets = dataset.multiscale_targets(mask[None], {"half": (24, 36)})
    assert np.array_equal(targets["half"].numpy()[0], mask[1::2, 1::2])  # half-pixel centres
