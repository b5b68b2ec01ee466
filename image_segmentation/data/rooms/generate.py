"""The entry points: `render_photo` draws one photo of a random scene kind and its ADE20K
mask, `draw_sample` one sample of a dataset from its own random stream, and `generate_rooms`
writes a whole dataset of them in the ADEChallengeData2016 layout, so that a seed always gives
the same bytes.
"""

import functools
import math
import multiprocessing
import os
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from image_segmentation.data import ade20k
from image_segmentation.data.rooms.camera import Camera, Canvas
from image_segmentation.data.rooms.classes import UNLABELLED
from image_segmentation.data.rooms.indoor import kitchen, living_room, office
from image_segmentation.data.rooms.street import street
from image_segmentation.data.rooms.textures import smooth_noise

# (height, width) of ADE20K photos: both orientations of the common camera formats.
PHOTO_SIZES = (
    (512, 683), (683, 512), (375, 500), (500, 375), (480, 640), (640, 480),
    (384, 512), (512, 384), (364, 500), (512, 512), (300, 400), (427, 640),
)  # fmt: skip
# Scene kinds and their shares of the images: half are not living rooms or bedrooms.
SCENES = {"living_room": 0.34, "bedroom": 0.12, "kitchen": 0.12, "office": 0.07, "street": 0.35}


# The photo and its annotation.


def _seams(rng: np.random.Generator, mask: np.ndarray, owner: np.ndarray) -> None:
    """Unlabel (0) a seam of one or two pixels around most objects, where they meet what is
    behind them, in stretches, as ADE20K's annotation polygons leave between them."""
    count = int(owner.max()) + 1
    outlined = rng.random(count) < 0.85
    wide = rng.random(count) < 0.5

    def front(ids):  # the nearest-drawn object among each pixel's four neighbours
        out = ids.copy()
        np.maximum(out[1:], ids[:-1], out=out[1:])
        np.maximum(out[:-1], ids[1:], out=out[:-1])
        np.maximum(out[:, 1:], ids[:, :-1], out=out[:, 1:])
        np.maximum(out[:, :-1], ids[:, 1:], out=out[:, :-1])
        return out

    near = front(owner)
    seam = (near > owner) & outlined[near]
    further = front(near)
    seam |= (further > owner) & outlined[further] & wide[further]
    seam &= smooth_noise(rng, *mask.shape, 30) > -1.0
    mask[seam] = UNLABELLED


def _finish(rng: np.random.Generator, canvas: Canvas) -> np.ndarray:
    """The photo: uneven light (a gradient, vignetting, glow around lamps and windows), white
    balance, sensor noise and lens blur, in 8 bits."""
    height, width = canvas.mask.shape
    scale = max(height, width)
    rows = (np.arange(height, dtype=np.float32)[:, None] - height / 2) / scale
    cols = (np.arange(width, dtype=np.float32)[None, :] - width / 2) / scale
    angle = rng.uniform(0, 2 * np.pi)
    gain = 1 + rng.uniform(0, 0.5) * (cols * math.cos(angle) + rows * math.sin(angle))
    gain = gain * (1 - rng.uniform(0.2, 0.8) * (rows**2 + cols**2))
    for row, col, strength in canvas.lights:
        glow_rows = np.exp(-(((row - height / 2) / scale - rows) ** 2) / 0.05)
        glow_cols = np.exp(-(((col - width / 2) / scale - cols) ** 2) / 0.05)
        gain = gain + strength * glow_rows * glow_cols
    balance = rng.normal(1, 0.04, 3).astype(np.float32) * rng.uniform(0.8, 1.1)
    image = canvas.image
    image *= gain[..., None] * balance
    image += rng.uniform(2, 5) * rng.standard_normal(image.shape, dtype=np.float32)
    np.clip(image, 0, 255, out=image)
    photo = Image.fromarray(image.astype(np.uint8))
    return np.asarray(photo.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.9))))


def render_photo(rng: np.random.Generator, height: int, width: int) -> tuple:
    """(scene, image, mask): a generated photo of a random scene kind and its ADE20K mask."""
    scene = str(rng.choice(list(SCENES), p=list(SCENES.values())))
    indoor = scene != "street"
    eye = rng.uniform(1.4, 1.8)
    horizon = height * (rng.uniform(0.2, 0.45) if indoor else rng.uniform(0.35, 0.65))
    fov = rng.uniform(np.radians(45), np.radians(65))  # across the longer side
    focal = max(height, width) / 2 / math.tan(fov / 2)
    camera = Camera(height, width, focal, horizon, eye, rng.normal(0, 0.02))
    light = np.array([rng.uniform(-1, 1), 1.2, rng.uniform(-1, 0.3)])
    canvas = Canvas(
        rng,
        camera,
        np.zeros((height, width, 3), dtype=np.float32),
        np.zeros((height, width), dtype=np.uint8),
        np.zeros((height, width), dtype=np.int32),
        light / np.linalg.norm(light),
    )
    if scene in ("living_room", "bedroom"):
        living_room(canvas, bedroom=scene == "bedroom")
    elif scene == "kitchen":
        kitchen(canvas)
    elif scene == "office":
        office(canvas)
    else:
        street(canvas)
    _seams(rng, canvas.mask, canvas.owner)
    return scene, _finish(rng, canvas), canvas.mask


def draw_sample(split: str, seed: int, sizes: tuple, number: int) -> tuple:
    """(scene, image, mask) of sample `number` of `split`, from its own random stream: the
    same whichever worker draws it."""
    rng = np.random.default_rng([seed, ade20k.SPLITS.index(split), number])
    height, width = sizes[rng.integers(len(sizes))]
    return render_photo(rng, height, width)


def _write_sample(dataset: Path, split: str, seed: int, sizes: tuple, number: int) -> str:
    """Render and save one sample; its sceneCategories.txt line."""
    scene, image, mask = draw_sample(split, seed, sizes, number)
    name = f"{ade20k.SPLIT_PREFIX[split]}_{number:08d}"
    Image.fromarray(image).save(
        dataset / "images" / split / f"{name}.jpg", quality=75, subsampling=2
    )
    Image.fromarray(mask).save(dataset / "annotations" / split / f"{name}.png")
    return f"{name} {scene}\n"


def generate_rooms(
    root: Path,
    num_train: int,
    num_val: int,
    sizes: tuple[tuple[int, int], ...] = PHOTO_SIZES,
    seed: int = 0,
    workers: int | None = None,
) -> Path:
    """Write `root/ADEChallengeData2016` with generated photos, their masks, objectInfo150.txt
    and sceneCategories.txt; return it. Arguments as `synthetic.generate_ade20k`'s, and
    `workers` processes (default: one per core), which do not change the output."""
    dataset = Path(root) / ade20k.DATASET_DIR
    lines = []
    workers = workers or os.cpu_count() or 1
    for split, count in zip(ade20k.SPLITS, (num_train, num_val), strict=True):
        for kind in ("images", "annotations"):
            (dataset / kind / split).mkdir(parents=True, exist_ok=True)
        task = functools.partial(_write_sample, dataset, split, seed, sizes)
        numbers = range(1, count + 1)
        if workers == 1 or count < 2:
            lines += map(task, numbers)
        else:
            with multiprocessing.Pool(min(workers, count)) as pool:
                lines += pool.map(task, numbers, chunksize=4)
    class_list = resources.files("image_segmentation.data").joinpath("objectInfo150.txt")
    (dataset / "objectInfo150.txt").write_bytes(class_list.read_bytes())
    (dataset / "sceneCategories.txt").write_text("".join(lines))
    return dataset
