"""The realistic generator: ADE20K's layout and file formats, seeded, and ADE20K-like statistics.

Statistics are measured on 20 photos at ADE20K sizes (seed 1): what the learning benchmark
trains on must be as unbalanced as real living-room data, with unlabelled seams along boundaries
and other scenes mixed in.
"""

import hashlib
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from conftest import ADE_SAMPLE
from PIL import Image, JpegImagePlugin

from image_segmentation.data import ade20k, labels, prepare
from image_segmentation.data.rooms import generate

SMALL_SIZES = ((120, 160), (160, 120))
WHITELIST = labels.parse_whitelist(labels.LIVING_ROOM_WHITELIST)
ADE20K_CLASSES = resources.files("image_segmentation.data").joinpath("objectInfo150.txt")


def tree_digest(folder: Path) -> dict[str, str]:
    """Every file below `folder` by relative path: its SHA-1."""
    return {
        str(path.relative_to(folder)): hashlib.sha1(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """5 training and 3 validation samples, small, seed 0."""
    root = tmp_path_factory.mktemp("rooms")
    return generate.generate_rooms(root, 5, 3, sizes=SMALL_SIZES, seed=0, workers=1)


def draw_photos(count: int, sizes: tuple) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """`count` (scene, image, mask), as generate_rooms draws its training photos for seed 1."""
    return [generate.draw_sample("training", 1, sizes, number) for number in range(1, count + 1)]


@pytest.fixture(scope="module")
def photos() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """20 photos at ADE20K sizes."""
    return draw_photos(20, generate.PHOTO_SIZES)


def test_layout_is_ade_challenge_data_and_prepare_keeps_every_sample(dataset, tmp_path):
    assert dataset.name == ade20k.DATASET_DIR
    files = tree_digest(dataset)
    names = {f"ADE_train_{i:08d}" for i in range(1, 6)} | {f"ADE_val_{i:08d}" for i in (1, 2, 3)}
    expected = {"objectInfo150.txt", "sceneCategories.txt"}
    for name in names:
        split = "training" if "train" in name else "validation"
        expected |= {f"images/{split}/{name}.jpg", f"annotations/{split}/{name}.png"}
    assert set(files) == expected
    package_list = Path(labels.__file__).with_name("objectInfo150.txt").read_bytes()
    assert (dataset / "objectInfo150.txt").read_bytes() == package_list
    scenes = dict(
        line.split() for line in (dataset / "sceneCategories.txt").read_text().splitlines()
    )
    assert set(scenes) == names and set(scenes.values()) <= set(generate.SCENES)
    for name in names:
        split = "training" if "train" in name else "validation"
        image = Image.open(dataset / "images" / split / f"{name}.jpg")
        mask = Image.open(dataset / "annotations" / split / f"{name}.png")
        assert (image.format, image.mode, mask.format, mask.mode) == ("JPEG", "RGB", "PNG", "L")
        assert image.size == mask.size and image.size[::-1] in SMALL_SIZES
        assert np.asarray(mask).max() <= labels.NUM_ADE_CLASSES

    stats = prepare.prepare_dataset(
        dataset, tmp_path, labels.LIVING_ROOM_WHITELIST, threshold=0.0, workers=1
    )
    assert stats["splits"]["train"]["kept"] == 5 and stats["splits"]["val"]["kept"] == 3
    assert sum(stats["splits"]["train"]["skipped"].values()) == 0
    assert stats["splits"]["train"]["unlabelled_pixels"] > 0


def test_a_seed_gives_the_same_files_and_another_seed_others(dataset, tmp_path):
    again = generate.generate_rooms(tmp_path / "again", 5, 3, sizes=SMALL_SIZES, seed=0, workers=2)
    assert tree_digest(again) == tree_digest(dataset)
    other = tree_digest(
        generate.generate_rooms(tmp_path / "other", 5, 3, sizes=SMALL_SIZES, seed=1)
    )
    ours = tree_digest(dataset)
    assert all(other[path] != ours[path] for path in ours if path.endswith((".jpg", ".png")))


def test_photos_are_saved_as_ade20k_saves_them(dataset):
    """JPEG quality 75 with 4:2:0 chroma subsampling: the quantization tables of ADE20K's own."""
    real = Image.open(next((ADE_SAMPLE / "images").glob("*.jpg")))
    for path in (dataset / "images").rglob("*.jpg"):
        photo = Image.open(path)
        assert JpegImagePlugin.get_sampling(photo) == JpegImagePlugin.get_sampling(real) == 2
        assert photo.quantization == real.quantization


def test_unlabelled_seams_run_along_boundaries(photos):
    """Unlabelled pixels are thin lines (small unannotated things on tables aside), most of
    them where two labelled classes meet."""
    seams = near_labels = near_boundary = 0
    for _, _, mask in photos:
        unlabelled = mask == 0
        assert 0.002 < unlabelled.mean() < 0.05
        # the labelled classes within two pixels: the largest and the smallest
        padded = np.pad(mask.astype(np.int16), 2, mode="edge")
        high = np.full(mask.shape, -1, dtype=np.int16)
        low = np.full(mask.shape, 999, dtype=np.int16)
        for dy in range(5):
            for dx in range(5):
                window = padded[dy : dy + mask.shape[0], dx : dx + mask.shape[1]]
                high = np.maximum(high, np.where(window > 0, window, -1))
                low = np.minimum(low, np.where(window > 0, window, 999))
        seams += unlabelled.sum()
        near_labels += (high[unlabelled] >= 0).sum()
        near_boundary += (high[unlabelled] > low[unlabelled]).sum()
    assert near_labels / seams > 0.9
    assert near_boundary / seams > 0.75


def test_small_classes_are_small_and_none_is_the_largest(photos):
    counts = sum(
        np.bincount(WHITELIST.lookup_table()[mask].ravel(), minlength=256) for _, _, mask in photos
    )
    share = dict(zip(WHITELIST.labels, counts[: WHITELIST.num_classes] / counts.sum(), strict=True))
    assert 0.0003 < share["lamp"] < 0.004
    for small in ("pillow", "chair", "coffee table, cocktail table"):
        assert 0.001 < share[small] < 0.015, small
    assert share[labels.NONE_LABEL] == max(share.values()) > 0.35
    assert all(share[label] > 0 for label in WHITELIST.labels)


def ade20k_coverage() -> dict[str, float]:
    """Each class's share of an ADE20K training photo that shows it, from objectInfo150.txt:
    its pixel ratio over all 20,210 photos, divided by the share of photos holding it."""
    rows = [line.split("\t") for line in ADE20K_CLASSES.read_text().splitlines()[1:]]
    return {name.strip(): float(ratio) * 20210 / int(train) for _, ratio, train, _, name in rows}


def test_objects_are_framed_about_as_large_as_in_ade20k():
    """Photographers stand close to what they photograph: a lamp, where an ADE20K photo shows
    one, covers 1.7% of it on average, a pillow 3.7%, a bed 24%. Each whitelisted object covers
    within about a factor of two of that in the photos that hold it (60 small photos, seed 1)."""
    covered = {label: [] for label in WHITELIST.labels[1:]}
    table = WHITELIST.lookup_table()
    for _, _, mask in draw_photos(60, SMALL_SIZES):
        shares = np.bincount(table[mask].ravel(), minlength=256) / mask.size
        for index, label in enumerate(WHITELIST.labels[1:], start=1):
            if shares[index]:
                covered[label].append(shares[index])
    ade = ade20k_coverage()
    for label, shares in covered.items():
        assert len(shares) >= 5, label
        assert 0.45 < np.mean(shares) / ade[label] < 2.2, (label, np.mean(shares), ade[label])


def test_other_scenes_hold_no_living_room_class(photos):
    scenes = [scene for scene, _, _ in photos]
    assert {"living_room", "street"} <= set(scenes) and {"kitchen", "office"} & set(scenes)
    assert 0.3 < sum(scene not in ("living_room", "bedroom") for scene in scenes) / 20 < 0.7
    table = WHITELIST.lookup_table()
    for scene, image, mask in photos:
        assert image.shape == (*mask.shape, 3) and image.dtype == np.uint8
        if scene == "street":
            assert set(np.unique(table[mask])) <= {0, labels.IGNORE}
