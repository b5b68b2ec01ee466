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

from image_segmentation.data import ade20k
from image_segmentation.data.labels import LIVING_ROOM_WHITELIST, parse_whitelist

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
    return _paint(rng, mask), mask


# ADE20K classes of a living room, drawn as in real photos: wall, floor and ceiling cover most
# of the frame and the small objects well under 1% of it, as on the real living-room subset.
# Door, painting and person are not on the living-room whitelist (they become "none").
WALL, FLOOR, CEILING, BED, WINDOW, DOOR, PERSON, CHAIR, PAINTING, SOFA, LAMP, PILLOW, TABLE = (
    1, 4, 6, 8, 9, 15, 13, 20, 23, 24, 37, 58, 65
)  # fmt: skip


def _box(rng, height: int, width: int, size: tuple, bottom: float | None = None) -> tuple:
    """(top, left, bottom, right) of a box of `size` (fractions of the frame: ranges), placed
    at random, or standing on the line `bottom` (a fraction of the height)."""
    box_height = max(2, int(height * rng.uniform(*size[0])))
    box_width = max(2, int(width * rng.uniform(*size[1])))
    if bottom is None:
        top = int(rng.integers(0, max(1, height - box_height)))
    else:
        top = max(0, int(height * bottom) - box_height)
    left = int(rng.integers(0, max(1, width - box_width)))
    return top, left, top + box_height, left + box_width


def render_room(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image and its ADE20K mask of a generated living room.

    Ceiling, wall and floor bands; a window, a door and a painting on the wall; a bed or a sofa
    with pillows, a chair, a coffee table, a lamp and sometimes a person on the floor. Like real
    annotations, a thin unlabelled (0) seam is left around some objects.
    """
    mask = np.full((height, width), WALL, dtype=np.uint8)
    ceiling, floor = rng.uniform(0.08, 0.2), rng.uniform(0.6, 0.75)
    mask[: int(height * ceiling)] = CEILING
    mask[int(height * floor) :] = FLOOR
    objects = []
    for ade_class, size, chance, on_floor in (
        (WINDOW, ((0.2, 0.35), (0.15, 0.3)), 0.8, False),
        (DOOR, ((0.35, 0.5), (0.1, 0.15)), 0.4, True),
        (PAINTING, ((0.1, 0.15), (0.1, 0.2)), 0.5, False),
        (rng.choice([BED, SOFA]), ((0.15, 0.25), (0.3, 0.5)), 0.9, True),
        (CHAIR, ((0.12, 0.18), (0.07, 0.11)), 0.7, True),
        (TABLE, ((0.035, 0.05), (0.08, 0.12)), 0.7, True),
        (LAMP, ((0.1, 0.13), (0.03, 0.04)), 0.8, True),
        (PERSON, ((0.3, 0.45), (0.06, 0.1)), 0.2, True),
    ):
        if rng.random() < chance:
            bottom = rng.uniform(floor + 0.05, 1.0) if on_floor else None
            if bottom is None:  # on the wall, between ceiling and floor
                top, left, low, right = _box(rng, int(height * (floor - ceiling)), width, size)
                offset = int(height * ceiling)
                top, low = top + offset, low + offset
            else:
                top, left, low, right = _box(rng, height, width, size, bottom)
            mask[top:low, left:right] = ade_class
            objects.append((top, left, low, right))
            if ade_class in (BED, SOFA):
                for _ in range(rng.integers(1, 3)):  # pillows along its top
                    pillow_height = max(2, int((low - top) * rng.uniform(0.25, 0.35)))
                    pillow_width = max(2, int((right - left) * rng.uniform(0.1, 0.14)))
                    pillow_left = int(rng.integers(left, max(left + 1, right - pillow_width)))
                    mask[top : top + pillow_height, pillow_left : pillow_left + pillow_width] = (
                        PILLOW
                    )
    for top, left, low, right in objects:
        if rng.random() < 0.5:  # an unlabelled seam, 1-2 pixels, around the object
            seam = int(rng.integers(1, 3))
            ring = np.zeros_like(mask, dtype=bool)
            ring[max(0, top - seam) : low + seam, max(0, left - seam) : right + seam] = True
            ring[top:low, left:right] = False
            mask[ring] = 0
    return _paint(rng, mask), mask


def _paint(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """Each class in its own colour and stripe texture (`class_style`), plus noise."""
    height, width = mask.shape
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.zeros((height, width, 3), dtype=np.float32)
    for ade_class in np.unique(mask):
        colour, angle, period = class_style(int(ade_class))
        stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
        where = mask == ade_class
        image[where] = colour + 25 * stripes[where, None]
    image += rng.normal(0, 8, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


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
    rooms: bool = False,
) -> Path:
    """Write `root/ADEChallengeData2016` with its images, masks and class lists; return it.

    Samples are shapes of `classes` in equal measure, or with `rooms` generated living rooms
    (`render_room`), whose classes are as unbalanced as real ones.
    """
    dataset = Path(root) / ade20k.DATASET_DIR
    rng = np.random.default_rng(seed)
    for split, count in (("training", num_train), ("validation", num_val)):
        prefix = ade20k.SPLIT_PREFIX[split]
        for number in range(1, count + 1):
            height, width = sizes[rng.integers(len(sizes))]
            if rooms:
                image, mask = render_room(rng, height, width)
            else:
                image, mask = render_sample(rng, height, width, classes)
            name = f"{prefix}_{number:08d}"
            _save(image, dataset / "images" / split / f"{name}.jpg", quality=90)
            _save(mask, dataset / "annotations" / split / f"{name}.png")
    class_list = resources.files("image_segmentation.data").joinpath("objectInfo150.txt")
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
