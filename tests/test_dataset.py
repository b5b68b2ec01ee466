"""The tf.data input pipeline: record parsing (new and legacy masks), augmentation, batches."""

import io
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from test_data_folder import write_folder

from image_segmentation.contracts import data_folder
from image_segmentation.data import dataset, labels, photo_input, preprocessing, records, synthetic

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


PALETTE = np.array(
    [[220, 30, 30], [30, 220, 30], [30, 30, 220], [220, 220, 30], [30, 220, 220]], dtype=np.uint8
)


def palette_sample() -> tuple[np.ndarray, np.ndarray]:
    """A 60x90 sample whose classes are flat, well separated colours in regions of several
    shapes, none mirror-symmetric: a box, a disc, a diagonal band, a thin bar near one edge."""
    yy, xx = np.mgrid[0:60, 0:90]
    mask = np.zeros((60, 90), dtype=np.uint8)
    mask[8:30, 6:40] = 1
    mask[(yy - 42) ** 2 + (xx - 30) ** 2 <= 12**2] = 2
    mask[np.abs(yy - (xx - 40)) <= 4] = 3
    mask[5:55, 80:83] = 4
    return PALETTE[mask], mask


def decode_palette(image: np.ndarray) -> np.ndarray:
    """The class of the palette colour nearest to each pixel."""
    distances = np.linalg.norm(image[:, :, None, :] - PALETTE.astype(np.float32), axis=-1)
    return np.argmin(distances, axis=-1)


def uniform(mask: np.ndarray) -> np.ndarray:
    """Pixels whose 3x3 neighbourhood has one value: bilinear resampling may blend colours
    elsewhere."""
    padded = np.pad(mask, 1, mode="edge")
    same = np.ones(mask.shape, dtype=bool)
    for dy in range(3):
        for dx in range(3):
            same &= padded[dy : dy + mask.shape[0], dx : dx + mask.shape[1]] == mask
    return same


def interior(mask: np.ndarray) -> np.ndarray:
    return uniform(mask) & (mask != dataset.IGNORE)


def padding(mask: np.ndarray) -> np.ndarray:
    """Padding away from the image's edge, where the image must be black."""
    return uniform(mask) & (mask == dataset.IGNORE)


@pytest.mark.parametrize("resize", photo_input.RESIZE_MODES)
@pytest.mark.parametrize("size", [(40, 48), (96, 120)], ids=["shrinking", "enlarging"])
def test_augmented_image_and_mask_agree_at_every_interior_pixel(resize, size):
    """Scale, crop, padding and flip move image and mask together: wherever the mask is not at
    a region border, the image's colour there is that class's."""
    image, mask = palette_sample()
    options = dataset.Augmentation(color_jitter=False)
    checked = 0
    for seed in range(24):
        out_image, out_mask = dataset.augment(
            image, mask, size, tf.constant([seed, 5]), options, resize
        )
        out_image, out_mask = out_image.numpy(), out_mask.numpy()
        assert out_image.shape == (*size, 3) and out_mask.shape == size
        assert set(np.unique(out_mask)) <= {0, 1, 2, 3, 4, dataset.IGNORE}  # nearest only
        inside = interior(out_mask)
        wrong = inside & (decode_palette(out_image) != out_mask)
        assert not wrong.any(), f"seed {seed}: {wrong.sum()} pixels of another class's colour"
        checked += inside.sum()
    assert checked > 0.5 * 24 * size[0] * size[1]


def ramp_sample() -> tuple[np.ndarray, np.ndarray]:
    """100x150, red = row, green = column: bilinear resampling keeps them linear, so the scale
    and the direction of an output can be read from it."""
    yy, xx = np.mgrid[0:100, 0:150]
    image = np.stack([yy, xx, np.zeros_like(yy)], axis=-1).astype(np.uint8)
    return image, np.ones((100, 150), dtype=np.uint8)


def measured_scale(image: np.ndarray, labelled: np.ndarray) -> tuple[float, float]:
    """Output pixels per source pixel, down and across (negative: mirrored), from the ramp."""
    rows, columns = np.nonzero(labelled)
    top, bottom, left, right = rows.min() + 2, rows.max() - 2, columns.min() + 2, columns.max() - 2
    middle_row, middle_column = (top + bottom) // 2, (left + right) // 2
    down = (image[bottom, middle_column, 0] - image[top, middle_column, 0]) / (bottom - top)
    across = (image[middle_row, right, 1] - image[middle_row, left, 1]) / (right - left)
    return 1 / down, 1 / across


@pytest.mark.parametrize("resize", photo_input.RESIZE_MODES)
def test_augmentation_draws_scales_flips_and_padding_as_configured(resize):
    """The scale relative to the covering one spans min_scale..max_scale (in "stretch" the same
    factor on both axes), half the samples are mirrored, and only scales below 1 pad, with
    IGNORE and black."""
    image, mask = ramp_sample()
    size = (48, 64)
    cover = np.array([48 / 100, 64 / 150])
    if resize == "crop":
        cover[:] = cover.max()
    options = dataset.Augmentation(color_jitter=False)
    factors, flips = [], 0
    for seed in range(120):
        out_image, out_mask = dataset.augment(
            image, mask, size, tf.constant([seed, 9]), options, resize
        )
        out_image, out_mask = out_image.numpy(), out_mask.numpy()
        assert set(np.unique(out_mask)) <= {1, dataset.IGNORE}
        labelled = out_mask != dataset.IGNORE
        down, across = measured_scale(out_image, labelled)
        factor_down, factor_across = down / cover[0], abs(across) / cover[1]
        assert factor_down == pytest.approx(factor_across, rel=0.03)
        factors.append(factor_down)
        flips += across < 0
        if labelled.all():
            assert factor_down > 0.97  # covered, up to rounding
        else:
            assert factor_down < 1.03
            assert np.all(out_image[padding(out_mask)] == 0)
    assert 0.73 < min(factors) < 0.8 and 1.45 < max(factors) < 1.53
    assert 0.35 < flips / 120 < 0.65


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


def test_brightness_shifts_grey_by_at_most_its_bound():
    """On flat grey, contrast and saturation change nothing: what is left is the brightness
    delta, uniform in +-brightness."""
    image, mask = np.full((32, 32, 3), 128, np.uint8), np.zeros((32, 32), np.uint8)
    options = dataset.Augmentation(min_scale=1.0, max_scale=1.0)
    shifts = []
    for seed in range(60):
        out, _ = dataset.augment(image, mask, (32, 32), tf.constant([seed, 1]), options)
        out = out.numpy()
        assert np.ptp(out) < 1e-3  # still flat and grey
        shifts.append(out[0, 0, 0] - 128)
    assert max(np.abs(shifts)) <= options.brightness + 1e-3
    assert min(shifts) < -0.7 * options.brightness and max(shifts) > 0.7 * options.brightness


def test_normalization_inside_augment_equals_normalizing_after():
    """Training normalizes the crop's pixels before resizing them (cheaper, and the same)."""
    image, mask = sample()
    normalization = dataset.Normalization()
    for resize in photo_input.RESIZE_MODES:
        for seed in range(4):
            args = (image, mask, (40, 40), tf.constant([seed, 3]), dataset.Augmentation(), resize)
            pixels, _ = dataset.augment(*args)
            normalized, _ = dataset.augment(*args, normalization)
            expected = dataset.normalize(pixels, normalization).numpy()
            assert np.allclose(normalized.numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("resize", photo_input.RESIZE_MODES)
def test_small_scales_pad_with_the_ignored_value(resize):
    image, mask = flat_sample()
    options = dataset.Augmentation(min_scale=0.5, max_scale=0.5, flip=False, color_jitter=False)
    out_image, out_mask = dataset.augment(
        image, mask, (64, 64), tf.constant([1, 2]), options, resize
    )
    out_image, out_mask = out_image.numpy(), out_mask.numpy()
    # "crop": cover scale 64/48, at half of it the 48x72 sample becomes 32x48 inside 64x64.
    # "stretch": 64/48 and 64/72, halved: 32x32.
    labelled = out_mask != dataset.IGNORE
    assert labelled.sum() == (32 * 48 if resize == "crop" else 32 * 32)
    assert np.all(out_image[padding(out_mask)] == 0)
    assert np.mean(read_classes(out_image)[labelled] == out_mask[labelled]) > 0.9


def test_unknown_resize_mode_is_refused():
    image, mask = flat_sample()
    with pytest.raises(ValueError, match="resize mode"):
        dataset.augment(image, mask, (32, 32), tf.constant([0, 0]), resize="fit")
    with pytest.raises(ValueError, match="resize mode"):
        dataset.validation_view(image, mask, (32, 32), "fit")


def corner_sample() -> tuple[np.ndarray, np.ndarray]:
    """48x96 with a different class in each 8x8 corner."""
    mask = np.zeros((48, 96), dtype=np.uint8)
    mask[:8, :8], mask[:8, -8:], mask[-8:, :8], mask[-8:, -8:] = 1, 2, 3, 4
    return PALETTE[mask], mask


def test_stretch_validation_view_shows_the_whole_image():
    image, mask = corner_sample()
    view, view_mask = dataset.validation_view(image, mask, (32, 32), "stretch")
    view_mask = view_mask.numpy()
    assert [view_mask[0, 0], view_mask[0, -1], view_mask[-1, 0], view_mask[-1, -1]] == [1, 2, 3, 4]
    assert view.shape == (32, 32, 3)
    inside = interior(view_mask)
    assert np.all(decode_palette(view.numpy())[inside] == view_mask[inside])


def test_crop_validation_view_is_the_deterministic_centre():
    image, mask = flat_sample()  # 48x72 -> scale 32/48 -> 32x48 -> centre 32 columns
    first_image, first_mask = dataset.validation_view(image, mask, (32, 32), "crop")
    second_image, second_mask = dataset.validation_view(image, mask, (32, 32), "crop")
    assert np.array_equal(first_image.numpy(), second_image.numpy())
    assert np.array_equal(first_mask.numpy(), second_mask.numpy())
    expected = np.asarray(Image.fromarray(mask).resize((48, 32), Image.NEAREST))[:, 8:40]
    assert np.mean(first_mask.numpy() == expected) > 0.95
    assert set(np.unique(first_mask.numpy())) <= {0, 1, 2, 3}
    image, mask = corner_sample()  # 48x96: the centre 48x48, no corner class in it
    _, view_mask = dataset.validation_view(image, mask, (32, 32), "crop")
    assert set(np.unique(view_mask.numpy())) == {0}


@pytest.mark.parametrize("resize", photo_input.RESIZE_MODES)
def test_validation_view_is_the_models_input(resize):
    """Validation during training sees what evaluate, predict and the exports feed the model."""
    image, mask = sample()
    normalization = dataset.Normalization()
    view, _ = dataset.validation_view(image, mask, (40, 40), resize)
    model_input, _ = preprocessing.model_input(
        image, (40, 40), resize, {"scale": normalization.scale, "offset": normalization.offset}
    )
    expected = model_input.numpy()
    assert np.allclose(dataset.normalize(view, normalization).numpy(), expected, atol=1e-5)


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
    )
    masks = dataset.make_dataset(
        data_folder.list_shards(tmp_path, "train"), (64, 64), batch_size=4, training=True
    )
    batches = zip(data.take(3), masks.take(3), strict=True)  # 5 records, repeated: full batches
    for (images, targets), (same_images, full_masks) in batches:
        assert images.shape == (4, 64, 64, 3)
        assert {name: tuple(t.shape[1:]) for name, t in targets.items()} == sizes
        # Made from the source mask, the targets are what the full-size mask would give.
        assert np.array_equal(images.numpy(), same_images.numpy())
        expected = dataset.multiscale_targets(full_masks, sizes)
        for name, target in targets.items():
            assert target.dtype == tf.int32
            assert np.array_equal(target.numpy(), expected[name].numpy())
            assert set(np.unique(target.numpy())) <= {0, 1, 2, 3, dataset.IGNORE}


def test_multiscale_targets_downsample_with_nearest():
    _, mask = flat_sample()
    targets = dataset.multiscale_targets(mask[None], {"half": (24, 36)})
    assert np.array_equal(targets["half"].numpy()[0], mask[1::2, 1::2])  # half-pixel centres


def test_repeat_factors_follow_the_rarest_classes_pixel_share():
    # none 50%, a 40%, b 9%, c 1%, d absent; threshold 4%: c (1%) is drawn sqrt(4) = 2 times.
    factors = dataset.class_repeat_factors([500, 400, 90, 10, 0], threshold=0.04)
    assert factors == pytest.approx([1.0, 1.0, 1.0, 2.0, 1.0])
    assert dataset.class_repeat_factors([9, 1], threshold=0.4) == pytest.approx([1.0, 2.0])


def test_repeat_factor_sampling_draws_images_of_rare_classes_more_often(tmp_path):
    """One record shows class 3 (factor 2.5), the other only class 1: in the training stream
    the first is drawn 2.5 times for each draw of the second."""
    image = np.full((32, 32, 3), 128, np.uint8)
    rare, common = np.ones((32, 32), np.uint8), np.ones((32, 32), np.uint8)
    rare[8:24, 8:24] = 3
    contents = {"train": [[encode(image, rare), encode(image, common)]], "val": [[]]}
    write_folder(tmp_path, contents, list("nabc"))
    shards = data_folder.list_shards(tmp_path, "train")

    def rare_share(factors: list[float] | None) -> float:
        data = dataset.make_dataset(
            shards, (32, 32), batch_size=50, training=True, repeat_factors=factors, seed=3
        )
        masks = np.concatenate([masks.numpy() for _, masks in data.take(40)])
        return float(np.mean([(mask == 3).any() for mask in masks]))

    assert rare_share(None) == pytest.approx(0.5, abs=0.04)
    assert rare_share([1.0, 1.0, 1.0, 2.5]) == pytest.approx(2.5 / 3.5, abs=0.04)
