"""Generated data in the exact ADEChallengeData2016 layout, for the demo, tests and benchmarks.

Each class is drawn with its own colour and stripe texture, so a model can really learn it.
`add_bad_samples` adds one sample of each kind the prepare stage must skip or repair.
"""

import hashlib
import io
import zipfile
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from image_segmentation import ade20k
from image_segmentation.labels import LIVING_ROOM_WHITELIST, parse_whitelist

# Living-room classes plus a few that are not on that whitelist.
_LIVING_ROOM = {i for group in parse_whitelist(LIVING_ROOM_WHITELIST).groups[1:] for i in group}
DEFAULT_CLASSES = (*sorted(_LIVING_ROOM), 2, 3, 13, 21)
ADE_SIZES = ((512, 683), (364, 500), (300, 400), (512, 512), (384, 512))  # (height, width)


def class_style(ade_class: int) -> tuple[np.ndarray, float, float]:
    """A fixed colour, stripe angle and stripe period for a class."""
    rng = np.random.default_rng(ade_class)
    return rng.uniform(30, 225, size=3), rng.uniform(0, np.pi), rng.uniform(4, 16)


def render_sample(
    rng: np.random.Generator, height: int, width: int, classes: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image and its ADE20K mask: a background class, then 2-5 rectangles and ellipses."""
    mask = np.full((height, width), rng.choice(classes), dtype=np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    for _ in range(rng.integers(2, 6)):
        top, left = rng.integers(0, height - 16), rng.integers(0, width - 16)
        bottom = rng.integers(top + 16, min(height, top + height // 2) + 1)
        right = rng.integers(left + 16, min(width, left + width // 2) + 1)
        region = (yy >= top) & (yy < bottom) & (xx >= left) & (xx < right)
        if rng.random() < 0.5:
            cy, cx = (top + bottom) / 2, (left + right) / 2
            region = ((yy - cy) / (bottom - cy)) ** 2 + ((xx - cx) / (right - cx)) ** 2 <= 1
        mask[region] = rng.choice(classes)
    image = np.zeros((height, width, 3), dtype=np.float32)
    for ade_class in np.unique(mask):
        colour, angle, period = class_style(int(ade_class))
        stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
        where = mask == ade_class
        image[where] = colour + 25 * stripes[where, None]
    image += rng.normal(0, 8, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def _save(array: np.ndarray, path: Path, **options) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **options)


def generate_ade20k(
    root: Path,
    num_train: int,
    num_val: int,
    classes: tuple[int, ...] = DEFAULT_CLASSES,
    sizes: tuple[tuple[int, int], ...] = ADE_SIZES,
    seed: int = 0,
) -> Path:
    """Write `root/ADEChallengeData2016` with its images, masks and class lists; return it."""
    dataset = Path(root) / ade20k.DATASET_DIR
    rng = np.random.default_rng(seed)
    for split, count in (("training", num_train), ("validation", num_val)):
        prefix = ade20k.SPLIT_PREFIX[split]
        for number in range(1, count + 1):
            height, width = sizes[rng.integers(len(sizes))]
            image, mask = render_sample(rng, height, width, classes)
            name = f"{prefix}_{number:08d}"
            _save(image, dataset / "images" / split / f"{name}.jpg", quality=90)
            _save(mask, dataset / "annotations" / split / f"{name}.png")
    class_list = resources.files("image_segmentation").joinpath("objectInfo150.txt")
    (dataset / "objectInfo150.txt").write_bytes(class_list.read_bytes())
    (dataset / "sceneCategories.txt").write_text("")
    return dataset


def add_bad_samples(dataset: Path, split: str = "training", seed: int = 1) -> dict[str, str]:
    """Add one sample per problem prepare must handle; returns {sample name: expected outcome}."""
    rng = np.random.default_rng(seed)
    prefix = ade20k.SPLIT_PREFIX[split]
    images, annotations = dataset / "images" / split, dataset / "annotations" / split

    def sample(number: int) -> tuple[str, np.ndarray, np.ndarray]:
        image, mask = render_sample(rng, 240, 320, DEFAULT_CLASSES)
        return f"{prefix}_{number:08d}", image, mask

    outcomes = {}
    name, image, mask = sample(90000001)  # truncated JPEG
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG")
    (images / f"{name}.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    _save(mask, annotations / f"{name}.png")
    outcomes[name] = "unreadable_image"
    name, image, mask = sample(90000002)  # not an image at all
    (images / f"{name}.jpg").write_bytes(b"this is not a jpeg")
    _save(mask, annotations / f"{name}.png")
    outcomes[name] = "unreadable_image"
    name, image, mask = sample(90000003)  # no annotation
    _save(image, images / f"{name}.jpg")
    outcomes[name] = "missing_annotation"
    name, image, mask = sample(90000004)  # annotation of another size
    _save(image, images / f"{name}.jpg")
    _save(mask[:-8, :-8], annotations / f"{name}.png")
    outcomes[name] = "size_mismatch"
    name, image, mask = sample(90000005)  # class values above 150
    _save(image, images / f"{name}.jpg")
    mask[:10, :10] = 200
    _save(mask, annotations / f"{name}.png")
    outcomes[name] = "mask_value_out_of_range"
    name, image, mask = sample(90000006)  # grayscale JPEG: kept, converted to RGB
    _save(image.mean(axis=2).astype(np.uint8), images / f"{name}.jpg")
    _save(mask, annotations / f"{name}.png")
    outcomes[name] = "kept"
    name, image, mask = sample(90000007)  # CMYK JPEG: kept, converted to RGB
    images.joinpath(f"{name}.jpg").parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).convert("CMYK").save(images / f"{name}.jpg", format="JPEG")
    _save(mask, annotations / f"{name}.png")
    outcomes[name] = "kept"
    return outcomes


def make_zip(dataset: Path, zip_path: Path) -> str:
    """Zip the dataset as ADE20K ships it (under ADEChallengeData2016/); return its SHA-1."""
    dataset = Path(dataset)
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_STORED) as archive:
        for path in sorted(dataset.rglob("*")):
            archive.write(path, Path(ade20k.DATASET_DIR) / path.relative_to(dataset))
    return hashlib.sha1(Path(zip_path).read_bytes()).hexdigest()
