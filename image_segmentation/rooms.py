"""Generated photos of living rooms among other scenes, in the exact ADEChallengeData2016 layout.

`synthetic` paints flat shapes, one colour per class: a model learns those almost perfectly, which
says little about photos. Here every image is a small scene seen through a pinhole camera. A room
(or a street) is ray-cast, so walls, floor and ceiling meet in perspective; furniture is built of
boxes with its own silhouette (a lamp is a shade on a thin pole on a foot, tables and chairs stand
on legs, pillows are rounded and lie on sofas and beds); every object draws its own colour near
its class palette and a texture (wood grain, fabric, noise); the photo gets uneven light, lens
blur and sensor noise and is saved as ADE20K's are, JPEG quality 75 with 4:2:0 chroma.

The annotations follow ADE20K's habits: unlabelled (0) seams a pixel or two wide along object
boundaries, small unannotated clutter, and half of the images are not living rooms or bedrooms
(kitchens, offices, streets), so classes off the living-room whitelist cover most pixels and a
lamp about a thousandth of them. Every image has its own random stream, from the seed, its split
and its number: a seed always gives the same dataset, and two seeds never share an image.
"""

import functools
import math
import multiprocessing
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from image_segmentation import ade20k
from image_segmentation.labels import parse_whitelist
from image_segmentation.synthetic import (
    BED,
    CEILING,
    CHAIR,
    DOOR,
    FLOOR,
    LAMP,
    PAINTING,
    PERSON,
    PILLOW,
    SOFA,
    TABLE,
    WALL,
    WINDOW,
)

# ADE20K classes of the scenes, none of them on the living-room whitelist. SIDE_TABLE is ADE20K's
# plain "table" (dining and side tables); TABLE is the coffee table.
(
    BUILDING, SKY, TREE, ROAD, GRASS, CABINET, SIDEWALK, SIDE_TABLE, PLANT, CURTAIN, CAR, SHELF,
    RUG, ARMCHAIR, WARDROBE, COUNTERTOP, REFRIGERATOR, DESK, SWIVEL_CHAIR, MONITOR, TELEVISION,
    STREETLIGHT, LIGHT, FLOWERPOT, BLIND, BOOKCASE, VASE,
) = (group[0] for group in parse_whitelist(
    "building|sky|tree|road|grass|cabinet|sidewalk|table|plant|curtain|car|shelf|rug|armchair"
    "|wardrobe|countertop|refrigerator|desk|swivel chair|monitor|television receiver|streetlight"
    "|light|flowerpot|blind|bookcase|vase"
).groups[1:])  # fmt: skip
UNLABELLED = 0

# (height, width) of ADE20K photos: both orientations of the common camera formats.
PHOTO_SIZES = (
    (512, 683), (683, 512), (375, 500), (500, 375), (480, 640), (640, 480),
    (384, 512), (512, 384), (364, 500), (512, 512), (300, 400), (427, 640),
)  # fmt: skip
# Scene kinds and their shares of the images: half are not living rooms or bedrooms.
SCENES = {"living_room": 0.34, "bedroom": 0.12, "kitchen": 0.12, "office": 0.07, "street": 0.35}

# Class palettes (RGB): each object draws one and varies it (`_colour`).
WALLS = ((236, 233, 225), (226, 214, 192), (205, 212, 214), (238, 226, 204), (196, 204, 182),
         (214, 196, 180), (180, 190, 205), (242, 240, 234), (225, 200, 170))  # fmt: skip
CEILINGS = ((246, 245, 241), (236, 233, 226), (226, 226, 223))
WOODS = ((150, 100, 60), (110, 75, 45), (185, 145, 100), (75, 52, 36), (200, 170, 130),
         (130, 95, 70))  # fmt: skip
TILES = ((200, 195, 185), (160, 160, 155), (215, 205, 190), (120, 112, 104), (225, 225, 220))
CARPETS = ((170, 160, 145), (120, 110, 100), (150, 140, 130), (95, 100, 110), (140, 120, 110))
FABRICS = ((120, 120, 125), (190, 178, 160), (95, 72, 60), (60, 70, 100), (80, 100, 80),
           (150, 62, 52), (205, 203, 196), (55, 55, 60), (170, 150, 120))  # fmt: skip
PILLOWS = ((240, 238, 230), (200, 85, 60), (222, 190, 120), (90, 110, 150), (170, 170, 160),
           (110, 140, 110), (230, 200, 190), (60, 60, 70))  # fmt: skip
BEDDING = ((238, 238, 233), (205, 195, 180), (125, 145, 175), (175, 125, 120), (115, 125, 105))
SHADES = ((245, 235, 210), (235, 230, 220), (215, 190, 150), (250, 250, 245), (200, 200, 195))
METALS = ((55, 55, 58), (175, 165, 145), (200, 200, 200), (125, 95, 45))
PAINTED = ((235, 235, 230), (60, 60, 62), (180, 60, 50), (120, 130, 140), (200, 190, 170))
CURTAINS = ((232, 222, 202), (150, 45, 42), (62, 82, 122), (200, 200, 190), (122, 132, 102))
SKINS = ((228, 192, 162), (192, 142, 112), (122, 82, 62), (210, 170, 140))
CARS = ((200, 200, 205), (32, 32, 36), (160, 25, 22), (42, 62, 122), (232, 232, 232),
        (122, 122, 127), (90, 20, 25))  # fmt: skip
FACADES = ((172, 92, 72), (202, 187, 162), (162, 162, 162), (226, 221, 211), (142, 112, 92),
           (190, 170, 140))  # fmt: skip
LEAVES = ((62, 92, 42), (82, 112, 52), (42, 72, 37), (102, 122, 62))


@dataclass(frozen=True)
class Camera:
    """A pinhole camera `eye` metres above the ground at X = Z = 0, looking along +Z (X right,
    Y up), its horizon on image row `horizon` (a shifted lens: verticals stay vertical), rolled
    by `roll` radians as a hand-held photo is."""

    height: int
    width: int
    focal: float
    horizon: float
    eye: float
    roll: float

    def project(self, x, y, z):
        """Image (column, row) of world points; z must be positive."""
        z = np.asarray(z)
        u, v = self.focal * np.asarray(x) / z, self.focal * (self.eye - np.asarray(y)) / z
        cos, sin = math.cos(self.roll), math.sin(self.roll)
        return self.width / 2 + cos * u - sin * v, self.horizon + sin * u + cos * v

    def rays(self) -> tuple[np.ndarray, np.ndarray]:
        """Each pixel's ray (dx, dy, 1) in world directions."""
        rows = np.arange(self.height, dtype=np.float32)[:, None] + 0.5 - self.horizon
        cols = np.arange(self.width, dtype=np.float32)[None, :] + 0.5 - self.width / 2
        cos, sin = math.cos(self.roll), math.sin(self.roll)
        u, v = cos * cols + sin * rows, -sin * cols + cos * rows
        return u / self.focal, -v / self.focal


@dataclass
class Canvas:
    """The photo being drawn (RGB, 0..255 and above for highlights), its ADE20K mask, which
    object each pixel shows (for the seams), the direction the light comes from, and the light
    sources (image row, column, strength) that brighten their surroundings."""

    rng: np.random.Generator
    camera: Camera
    image: np.ndarray
    mask: np.ndarray
    owner: np.ndarray
    light: np.ndarray
    lights: list = field(default_factory=list)
    objects: int = 0

    def new_owner(self) -> int:
        self.objects += 1
        return self.objects


def _colour(rng: np.random.Generator, palette) -> np.ndarray:
    """A colour near one of the palette's, as the same class differs from photo to photo."""
    base = np.asarray(palette[rng.integers(len(palette))], dtype=np.float32)
    return base * rng.normal(1, 0.05, 3).astype(np.float32) * rng.uniform(0.85, 1.12)


def _smooth(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Smooth noise (about unit variance) with features about `cell` pixels wide."""
    grid = rng.standard_normal(
        (max(2, int(height / cell) + 2), max(2, int(width / cell) + 2)), dtype=np.float32
    )
    resized = Image.fromarray(grid).resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(resized) * 1.6


def _texture(rng: np.random.Generator, kind: str, height: int, width: int, angle: float = 0.0):
    """A brightness field around 1: plain paint, fabric weave, wood grain along `angle`,
    rough (stone, concrete, carpet), leaves or a glossy gradient."""
    rows = np.arange(height, dtype=np.float32)[:, None]
    cols = np.arange(width, dtype=np.float32)[None, :]
    if kind == "plain":
        return 1 + 0.015 * _smooth(rng, height, width, 60)
    if kind == "fabric":
        weave = np.sin(cols * 2.2) * np.sin(rows * 2.2)
        fine = rng.standard_normal((height, width), dtype=np.float32)
        return 1 + 0.06 * _smooth(rng, height, width, 20) + 0.04 * weave + 0.035 * fine
    if kind == "wood":
        across = -cols * math.sin(angle) + rows * math.cos(angle)
        phase = across * rng.uniform(0.6, 1.5) + 1.2 * _smooth(rng, height, width, 24)
        return (
            1
            + 0.07 * np.sin(phase)
            + 0.04 * np.sin(2.7 * phase)
            + 0.03 * _smooth(rng, height, width, 30)
        )
    if kind == "rough":
        fine = rng.standard_normal((height, width), dtype=np.float32)
        return 1 + 0.05 * _smooth(rng, height, width, 5) + 0.04 * fine
    if kind == "leaves":
        fine = rng.standard_normal((height, width), dtype=np.float32)
        return np.clip(1 + 0.3 * _smooth(rng, height, width, 3) + 0.15 * fine, 0.3, 1.8)
    if kind == "gloss":
        return 0.85 + 0.3 * rows / max(1, height - 1) + 0.02 * _smooth(rng, height, width, 30)
    raise ValueError(f"unknown texture {kind!r}")


def _put(canvas: Canvas, region, ade_class: int, owner: int, rgb) -> None:
    """Draw `region` (top, left, inside, relief) over what is there: colours, class and owner."""
    if region is None:
        return
    top, left, inside, relief = region
    window = np.s_[top : top + inside.shape[0], left : left + inside.shape[1]]
    rgb = np.broadcast_to(np.asarray(rgb, dtype=np.float32), (*inside.shape, 3))
    if relief is not None:
        rgb = rgb * relief[..., None]
    canvas.image[window][inside] = rgb[inside]
    canvas.mask[window][inside] = ade_class
    canvas.owner[window][inside] = owner


def _paint(canvas, region, ade_class, owner, colour, texture="plain", angle=0.0) -> None:
    """Draw `region` in `colour` with a texture."""
    if region is not None:
        height, width = region[2].shape
        tone = _texture(canvas.rng, texture, height, width, angle)
        _put(canvas, region, ade_class, owner, tone[..., None] * colour)


def _bounds(canvas: Canvas, cols, rows):
    """The frame's part of the bounding box of these points: (top, bottom, left, right)."""
    top, left = max(0, math.floor(min(rows))), max(0, math.floor(min(cols)))
    bottom = min(canvas.camera.height, math.ceil(max(rows)) + 1)
    right = min(canvas.camera.width, math.ceil(max(cols)) + 1)
    return (top, bottom, left, right) if top < bottom and left < right else None


def _polygon(canvas: Canvas, cols, rows):
    """The pixels inside a convex polygon (image coordinates, in either order)."""
    cols, rows = [float(c) for c in cols], [float(r) for r in rows]
    box = _bounds(canvas, cols, rows)
    ends = list(zip(cols, rows, cols[1:] + cols[:1], rows[1:] + rows[:1], strict=True))
    area = sum(x0 * y1 - x1 * y0 for x0, y0, x1, y1 in ends)
    if box is None or abs(area) < 1:
        return None
    top, bottom, left, right = box
    ys = np.arange(top, bottom, dtype=np.float32)[:, None] + 0.5
    xs = np.arange(left, right, dtype=np.float32)[None, :] + 0.5
    inside = np.ones((bottom - top, right - left), dtype=bool)
    for x0, y0, x1, y1 in ends:
        if area < 0:
            x0, y0, x1, y1 = x1, y1, x0, y0
        inside &= (x1 - x0) * (ys - y0) >= (y1 - y0) * (xs - x0)
    return (top, left, inside, None) if inside.any() else None


def _blob(canvas, row, col, radii, angle=0.0, power=2.0, ragged=0.0):
    """A rounded shape: a superellipse (`power` 2 is an ellipse, more is a rounded box) with
    radii (vertical, horizontal) in pixels, its edge frayed by `ragged`; darker towards its rim,
    as a cushion or a crown of leaves is."""
    ry, rx = max(radii[0], 0.5), max(radii[1], 0.5)
    reach = max(rx, ry) * (1 + ragged)
    box = _bounds(canvas, (col - reach, col + reach), (row - reach, row + reach))
    if box is None:
        return None
    top, bottom, left, right = box
    dy = np.arange(top, bottom, dtype=np.float32)[:, None] + 0.5 - row
    dx = np.arange(left, right, dtype=np.float32)[None, :] + 0.5 - col
    cos, sin = math.cos(angle), math.sin(angle)
    u, v = (dx * cos + dy * sin) / rx, (dy * cos - dx * sin) / ry
    radius = (np.abs(u) ** power + np.abs(v) ** power) ** (1 / power)
    if ragged:
        theta = np.arctan2(v, u)
        phases = canvas.rng.uniform(0, 2 * np.pi, 2)
        radius = radius / (
            1 + ragged * 0.5 * (np.sin(5 * theta + phases[0]) + np.sin(11 * theta + phases[1]))
        )
    inside = radius <= 1
    relief = 1.06 - 0.3 * np.minimum(radius, 1) ** 4
    return (top, left, inside, relief) if inside.any() else None


# Objects: boxes in an object's own frame (x right, y up from the floor, z away from its front),
# placed at (X, Z) and turned by yaw about the vertical.


def _world(place, x, y, z):
    """World (X, Y, Z) of points in an object's frame."""
    origin_x, origin_z, yaw = place
    cos, sin = math.cos(yaw), math.sin(yaw)
    x, z = np.asarray(x, dtype=np.float64), np.asarray(z, dtype=np.float64)
    return (
        origin_x + cos * x + sin * z,
        np.asarray(y, dtype=np.float64),
        origin_z - sin * x + cos * z,
    )


def _distance(canvas: Canvas, point) -> float:
    x, y, z = point
    return math.sqrt(x * x + (y - canvas.camera.eye) ** 2 + z * z)


_FACES = (  # outward normal, then the corners (0 = low, 1 = high along x, y, z)
    ((0, 0, -1), ((0, 0, 0), (1, 0, 0), (1, 1, 0), (0, 1, 0))),
    ((0, 0, 1), ((0, 0, 1), (1, 0, 1), (1, 1, 1), (0, 1, 1))),
    ((-1, 0, 0), ((0, 0, 0), (0, 0, 1), (0, 1, 1), (0, 1, 0))),
    ((1, 0, 0), ((1, 0, 0), (1, 0, 1), (1, 1, 1), (1, 1, 0))),
    ((0, 1, 0), ((0, 1, 0), (1, 1, 0), (1, 1, 1), (0, 1, 1))),
    ((0, -1, 0), ((0, 0, 0), (1, 0, 0), (1, 0, 1), (0, 0, 1))),
)


def _faces(canvas, place, low, high) -> list:
    """The faces of the box `low`..`high` (object frame) the camera sees: (image columns,
    rows, shade by how the face turns to the light)."""
    camera = canvas.camera
    corners = np.array([low, high], dtype=np.float64)
    cos, sin = math.cos(place[2]), math.sin(place[2])
    faces = []
    for (nx, ny, nz), picks in _FACES:
        local = np.array([[corners[p[i], i] for i in range(3)] for p in picks])
        x, y, z = _world(place, local[:, 0], local[:, 1], local[:, 2])
        normal = np.array([cos * nx + sin * nz, ny, -sin * nx + cos * nz])
        towards = np.array([-x.mean(), camera.eye - y.mean(), -z.mean()])
        if normal @ towards > 1e-9 and z.min() > 0.1:
            cols, rows = camera.project(x, y, z)
            faces.append((cols, rows, 0.62 + 0.45 * max(0.0, float(normal @ canvas.light))))
    return faces


def _object(canvas, ade_class, colour, texture, place, boxes, owner=None) -> int:
    """An object of several boxes, the farthest drawn first, in one texture; returns its
    owner."""
    owner = owner or canvas.new_owner()

    def far(box):
        return _distance(canvas, _world(place, *((np.add(*box)) / 2)))

    faces = [
        face for box in sorted(boxes, key=far, reverse=True) for face in _faces(canvas, place, *box)
    ]
    if not faces:
        return owner
    box = _bounds(canvas, [c for f in faces for c in f[0]], [r for f in faces for r in f[1]])
    if box is None:
        return owner
    top, bottom, left, right = box
    cols, rows = faces[0][:2]
    angle = math.atan2(rows[1] - rows[0], cols[1] - cols[0])
    tone = _texture(canvas.rng, texture, bottom - top, right - left, angle)
    for cols, rows, shade in faces:
        region = _polygon(canvas, cols, rows)
        if region is not None:
            y, x, inside, _ = region
            part = tone[y - top : y - top + inside.shape[0], x - left : x - left + inside.shape[1]]
            _put(canvas, region, ade_class, owner, part[..., None] * (colour * shade))
    return owner


def _rounded(
    canvas,
    ade_class,
    owner,
    colour,
    texture,
    point,
    size,
    angle=0.0,
    power=3.0,
    ragged=0.0,
    facing=None,
) -> None:
    """A rounded shape `size` = (height, width) metres upright at world `point`, narrower when
    its face (`facing`, a horizontal direction) turns away from the camera."""
    x, y, z = point
    if z < 0.2:
        return
    scale = canvas.camera.focal / z
    squeeze = 1.0
    if facing is not None:
        view = np.array([x, z]) / math.hypot(x, z)
        squeeze = max(0.3, abs(float(view @ facing)))
    cols, rows = canvas.camera.project(x, y, z)
    region = _blob(
        canvas,
        rows,
        cols,
        (size[0] / 2 * scale, size[1] / 2 * scale * squeeze),
        angle,
        power,
        ragged,
    )
    _paint(canvas, region, ade_class, owner, colour, texture)


def _disc(canvas, ade_class, owner, colour, point, radius) -> None:
    """A horizontal disc (a lamp's foot, a table top) seen in perspective."""
    x, y, z = point
    if z < 0.2:
        return
    cols, rows = canvas.camera.project(x, y, z)
    across = radius * canvas.camera.focal / z
    deep = max(across * abs(canvas.camera.eye - y) / z, 1.0)
    region = _blob(canvas, rows, cols, (deep, across))
    _paint(canvas, region, ade_class, owner, colour)


# Furniture and people. Each draws itself at `place` = (X, Z, yaw), facing -z in its own frame.


def _sofa(canvas, place, width) -> None:
    rng = canvas.rng
    depth, seat, back, arm_h = (
        rng.uniform(0.85, 0.95),
        rng.uniform(0.4, 0.47),
        rng.uniform(0.75, 0.92),
        rng.uniform(0.55, 0.66),
    )
    arm, rest, legs = rng.uniform(0.1, 0.22), rng.uniform(0.18, 0.25), rng.uniform(0.04, 0.12)
    w, d = width / 2, depth / 2
    boxes = [
        ((-w + arm, legs, -d), (w - arm, seat, d - rest)),  # seat
        ((-w, legs, d - rest), (w, back, d)),  # back
        ((-w, legs, -d), (-w + arm, arm_h, d - rest)),  # arms
        ((w - arm, legs, -d), (w, arm_h, d - rest)),
    ]
    for x in (-w + 0.03, w - 0.08):
        for z in (-d + 0.03, d - 0.08):
            boxes.append(((x, 0, z), (x + 0.05, legs, z + 0.05)))
    _object(canvas, SOFA, _colour(rng, FABRICS), "fabric", place, boxes)
    count = int(rng.integers(0, 5))
    for i in range(count):  # pillows leaning on the back
        size = rng.uniform(0.35, 0.5)
        x = (-w + arm + (i + 0.5) * (2 * (w - arm)) / count) + rng.normal(0, 0.04)
        _pillow(canvas, place, (x, seat + size * 0.45, d - rest - 0.1), (size * 0.95, size), 0.15)


def _pillow(canvas, place, point, size, tilt) -> None:
    """A rounded pillow at `point` in the frame of the sofa or bed it lies on, facing its way."""
    rng = canvas.rng
    facing = np.array([-math.sin(place[2]), -math.cos(place[2])])
    _rounded(
        canvas,
        PILLOW,
        canvas.new_owner(),
        _colour(rng, PILLOWS),
        "fabric",
        _world(place, *point),
        size,
        rng.normal(0, tilt),
        rng.uniform(2.5, 4),
        facing=facing,
    )


def _bed(canvas, place, width, length) -> None:
    rng = canvas.rng
    w, d = width / 2, length / 2
    frame, top = rng.uniform(0.25, 0.35), rng.uniform(0.5, 0.62)
    head = rng.uniform(0.9, 1.25)
    wood = _colour(rng, WOODS)
    owner = _object(
        canvas,
        BED,
        wood,
        "wood",
        place,
        [
            ((-w, 0, -d), (w, frame, d)),
            ((-w, 0, d - 0.06), (w, head, d)),
        ],
    )
    bedding = _colour(rng, BEDDING)
    _object(
        canvas,
        BED,
        bedding,
        "fabric",
        place,
        [
            ((-w + 0.02, frame, -d + 0.02), (w - 0.02, top, d - 0.06)),
        ],
        owner,
    )
    _object(
        canvas,
        BED,
        bedding * rng.uniform(0.75, 1.05),
        "fabric",
        place,
        [
            (
                (-w - 0.01, frame - 0.08, -d - 0.01),
                (w + 0.01, top + 0.03, d * rng.uniform(0.1, 0.5)),
            ),
        ],
        owner,
    )
    count = int(rng.integers(1, 5))
    for i in range(count):  # pillows at the head, lying or leaning
        x = -w + (i + 0.5) * 2 * w / count + rng.normal(0, 0.03)
        height = rng.uniform(0.15, 0.4)
        size = (height, min(0.65, 1.9 * w / count))
        _pillow(canvas, place, (x, top + height * 0.45, d - 0.25), size, 0.08)


def _table(canvas, place, ade_class, size, height, items=True) -> None:
    """A table top on four legs; small things on it, a few left unlabelled as in ADE20K."""
    rng = canvas.rng
    w, d = size[0] / 2, size[1] / 2
    leg, thick = rng.uniform(0.03, 0.06), rng.uniform(0.025, 0.06)
    boxes = [((-w, height - thick, -d), (w, height, d))]
    inset = rng.uniform(0, 0.08)
    for x in (-w + inset, w - inset - leg):
        for z in (-d + inset, d - inset - leg):
            boxes.append(((x, 0, z), (x + leg, height - thick, z + leg)))
    if rng.random() < 0.4:  # a shelf below
        boxes.append(((-w + inset, 0.08, -d + inset), (w - inset, 0.11, d - inset)))
    colour = _colour(rng, WOODS if rng.random() < 0.8 else PAINTED)
    _object(canvas, ade_class, colour, "wood", place, boxes)
    for _ in range(int(rng.integers(0, 3)) if items else 0):
        x, z = rng.uniform(-w * 0.7, w * 0.7), rng.uniform(-d * 0.6, d * 0.6)
        thing = rng.choice([VASE, UNLABELLED, UNLABELLED])
        tall = rng.uniform(0.12, 0.3) if thing == VASE else rng.uniform(0.02, 0.08)
        half = rng.uniform(0.04, 0.08) if thing == VASE else rng.uniform(0.08, 0.15)
        _object(
            canvas,
            int(thing),
            _colour(rng, PAINTED + PILLOWS),
            "gloss",
            place,
            [((x - half, height, z - half), (x + half, height + tall, z + half))],
        )


def _chair(canvas, place) -> None:
    rng = canvas.rng
    w, seat = rng.uniform(0.2, 0.25), rng.uniform(0.42, 0.48)
    back, leg, thick = rng.uniform(0.8, 1.0), rng.uniform(0.025, 0.045), rng.uniform(0.03, 0.08)
    boxes = [((-w, seat - thick, -w), (w, seat, w))]
    for x in (-w, w - leg):
        for z in (-w, w - leg):
            boxes.append(((x, 0, z), (x + leg, seat - thick, z + leg)))
        boxes.append(((x, seat, w - leg), (x + leg, back, w)))  # back posts
    if rng.random() < 0.5:  # a solid back, or a rail on the posts
        boxes.append(((-w, seat + 0.15, w - 0.03), (w, back, w)))
    else:
        boxes.append(((-w, back - 0.12, w - 0.03), (w, back, w)))
    wooden = rng.random() < 0.65
    colour = _colour(rng, WOODS if wooden else PAINTED + FABRICS)
    _object(canvas, CHAIR, colour, "wood" if wooden else "fabric", place, boxes)


def _armchair(canvas, place) -> None:
    rng = canvas.rng
    w, d, seat, back = rng.uniform(0.38, 0.48), rng.uniform(0.4, 0.48), 0.44, rng.uniform(0.8, 1.0)
    arm = rng.uniform(0.1, 0.18)
    _object(
        canvas,
        ARMCHAIR,
        _colour(rng, FABRICS),
        "fabric",
        place,
        [
            ((-w + arm, 0.08, -d), (w - arm, seat, d - 0.2)),
            ((-w, 0.08, d - 0.2), (w, back, d)),
            ((-w, 0.08, -d), (-w + arm, 0.62, d - 0.2)),
            ((w - arm, 0.08, -d), (w, 0.62, d - 0.2)),
            ((-w + 0.05, 0, -d + 0.05), (w - 0.05, 0.08, d - 0.05)),
        ],
    )


def _lamp(canvas, place, on_floor: bool) -> None:
    """A lamp: a shade on a thin pole on a foot, on the floor or on a side table, often lit
    (and lighting up its surroundings)."""
    rng, camera = canvas.rng, canvas.camera
    x, z, _ = place
    base = 0.0 if on_floor else rng.uniform(0.45, 0.65)
    if not on_floor:
        _table(canvas, place, SIDE_TABLE, (0.45, 0.45), base, items=False)
    # radii of the foot and of the shade's bottom and top, the shade's height, the pole's
    ranges = (
        ((0.12, 0.18), (0.17, 0.25), (0.1, 0.17), (0.25, 0.35), (1.2, 1.5))
        if on_floor
        else ((0.06, 0.09), (0.12, 0.17), (0.08, 0.12), (0.17, 0.24), (0.25, 0.4))
    )
    foot, bottom, top, tall, stand = (rng.uniform(*r) for r in ranges)
    pole, stand = 0.025 if on_floor else 0.02, base + stand
    owner = canvas.new_owner()
    metal = _colour(rng, METALS)
    _disc(canvas, LAMP, owner, metal, (x, base + 0.01, z), foot)
    _object(
        canvas,
        LAMP,
        metal,
        "gloss",
        (x, z, 0.0),
        [((-pole / 2, base, -pole / 2), (pole / 2, stand + 0.02, pole / 2))],
        owner,
    )
    lit = rng.random() < 0.6
    shade = _colour(rng, SHADES) * (rng.uniform(1.2, 1.5) if lit else 1.0)
    cols, rows = camera.project(
        [x - bottom, x + bottom, x + top, x - top], [stand] * 2 + [stand + tall] * 2, [z] * 4
    )
    _paint(canvas, _polygon(canvas, cols, rows), LAMP, owner, shade, "fabric")
    for y, radius in ((stand, bottom), (stand + tall, top)):
        _disc(canvas, LAMP, owner, shade * (0.9 if y > camera.eye else 1.0), (x, y, z), radius)
    if lit:
        cols, rows = camera.project(x, stand + tall / 2, z)
        canvas.lights.append((float(rows), float(cols), rng.uniform(0.1, 0.3)))


def _person(canvas, place) -> None:
    rng = canvas.rng
    s = rng.uniform(0.9, 1.08)  # scale
    boxes = [
        ((-0.15 * s, 0, -0.07 * s), (-0.02 * s, 0.85 * s, 0.07 * s)),  # legs
        ((0.02 * s, 0, -0.07 * s), (0.15 * s, 0.85 * s, 0.07 * s)),
        ((-0.19 * s, 0.82 * s, -0.11 * s), (0.19 * s, 1.45 * s, 0.11 * s)),  # torso
        ((-0.27 * s, 0.8 * s, -0.05 * s), (-0.19 * s, 1.42 * s, 0.05 * s)),  # arms
        ((0.19 * s, 0.8 * s, -0.05 * s), (0.27 * s, 1.42 * s, 0.05 * s)),
        ((-0.05 * s, 1.45 * s, -0.05 * s), (0.05 * s, 1.52 * s, 0.05 * s)),  # neck
    ]
    owner = _object(canvas, PERSON, rng.uniform(25, 200, 3), "fabric", place, boxes)
    head = _world(place, 0.0, 1.62 * s, 0.0)
    _rounded(
        canvas, PERSON, owner, _colour(rng, SKINS), "plain", head, (0.24 * s, 0.19 * s), power=2.0
    )


def _plant(canvas, place) -> None:
    rng = canvas.rng
    pot, tall = rng.uniform(0.12, 0.2), rng.uniform(0.25, 0.45)
    _object(
        canvas,
        FLOWERPOT,
        _colour(rng, PAINTED),
        "plain",
        place,
        [((-pot, 0, -pot), (pot, tall, pot))],
    )
    owner, leaves = canvas.new_owner(), _colour(rng, LEAVES)
    height = rng.uniform(0.5, 1.4)
    for _ in range(int(rng.integers(2, 5))):
        x = rng.normal(0, 0.12)
        point = _world(place, x, tall + height * rng.uniform(0.3, 0.7), rng.normal(0, 0.05))
        size = (height * rng.uniform(0.5, 0.9), rng.uniform(0.3, 0.6))
        _rounded(canvas, PLANT, owner, leaves, "leaves", point, size, rng.normal(0, 0.4), 2.0, 0.25)


def _tree(canvas, place) -> None:
    rng = canvas.rng
    x, z, _ = place
    trunk, tall = rng.uniform(0.12, 0.25), rng.uniform(2.0, 4.0)
    owner = _object(
        canvas,
        TREE,
        _colour(rng, ((90, 70, 50), (70, 60, 55))),
        "rough",
        (x, z, 0.0),
        [((-trunk, 0, -trunk), (trunk, tall + 0.5, trunk))],
    )
    leaves, crown = _colour(rng, LEAVES), rng.uniform(1.5, 3.5)
    for _ in range(int(rng.integers(3, 7))):
        centre = (x + rng.normal(0, crown * 0.4), tall + crown * rng.uniform(0.4, 1.1), z)
        radius = crown * rng.uniform(0.5, 0.9)
        _rounded(
            canvas,
            TREE,
            owner,
            leaves * rng.uniform(0.85, 1.1),
            "leaves",
            centre,
            (radius * 2, radius * 2),
            0.0,
            2.0,
            0.2,
        )


def _car(canvas, place) -> None:
    rng = canvas.rng
    length, w = rng.uniform(1.9, 2.3), rng.uniform(0.85, 0.95)
    colour = _colour(rng, CARS)
    owner = _object(
        canvas,
        CAR,
        colour,
        "gloss",
        place,
        [
            ((-w, 0.25, -length), (w, 0.95, length)),
            ((-w * 0.88, 0.95, -length * 0.45), (w * 0.88, rng.uniform(1.35, 1.55), length * 0.5)),
        ],
    )
    side = min((-w, w), key=lambda s: abs(_world(place, s, 0, 0)[0]))  # the side in sight
    for along in (-length * 0.68, length * 0.68):
        wheel = _world(place, side, 0.32, along)
        _rounded(
            canvas,
            CAR,
            owner,
            np.array([35, 35, 38.0]),
            "rough",
            wheel,
            (0.64, 0.64),
            power=2.0,
            facing=np.array([1.0, 0.0]),
        )


def _streetlight(canvas, place) -> None:
    rng = canvas.rng
    x, z, _ = place
    tall, reach = rng.uniform(5, 8), rng.uniform(0.8, 1.8) * (-1 if x > 0 else 1)
    colour = _colour(rng, METALS)
    owner = _object(
        canvas, STREETLIGHT, colour, "gloss", (x, z, 0.0), [((-0.08, 0, -0.08), (0.08, tall, 0.08))]
    )
    _object(
        canvas,
        STREETLIGHT,
        colour,
        "gloss",
        (x, z, 0.0),
        [
            ((min(0, reach), tall - 0.1, -0.05), (max(0, reach), tall, 0.05)),
            ((reach - 0.25, tall - 0.2, -0.12), (reach + 0.25, tall - 0.05, 0.12)),
        ],
        owner,
    )


def _cabinet(canvas, ade_class, place, size, colour, lift=0.0, units=1) -> None:
    """A cabinet (or wardrobe, refrigerator, bookcase) of `units` doors, each with a handle."""
    w, h, d = size
    texture = "wood" if ade_class in (WARDROBE, BOOKCASE) else "plain"
    owner = _object(canvas, ade_class, colour, texture, place, [((-w, lift, -d), (w, lift + h, d))])
    step, gaps = 2 * w / units, []
    for i in range(units):
        x = -w + i * step
        handle = x + step * (0.85 if i % 2 else 0.15)
        gaps.append(
            ((handle - 0.01, lift + h * 0.5, -d - 0.02), (handle + 0.01, lift + h * 0.62, -d))
        )
        if i:
            gaps.append(((x - 0.004, lift + 0.01, -d - 0.003), (x + 0.004, lift + h - 0.01, -d)))
    _object(canvas, ade_class, colour * 0.45, "plain", place, gaps, owner)


# Rooms: ray-cast walls, floor and ceiling, then what hangs on them and what stands in them.

FLOOR_SIDE, CEILING_SIDE, LEFT_WALL, RIGHT_WALL, BACK_WALL = range(5)


@dataclass(frozen=True)
class Room:
    """A box room around the camera: walls at X = -left and X = right, Z = depth, a ceiling at
    Y = height; `surface`, `x`, `y`, `z` are each pixel's surface and where its ray meets it."""

    left: float
    right: float
    depth: float
    height: float
    surface: np.ndarray
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray


def _room(canvas: Canvas, floor_kind: str) -> Room:
    rng, camera = canvas.rng, canvas.camera
    left, right = rng.uniform(1.2, 3.5), rng.uniform(1.2, 3.5)
    depth, height = rng.uniform(3.5, 7.5), rng.uniform(2.4, 2.9)
    dx, dy = camera.rays()
    up, rightwards = dy > 0, dx > 0
    z = np.where(up, height - camera.eye, camera.eye) / np.maximum(np.abs(dy), 1e-6)
    across = np.where(rightwards, right, left) / np.maximum(np.abs(dx), 1e-6)
    surface = np.where(up, CEILING_SIDE, FLOOR_SIDE).astype(np.int8)
    surface[across < z] = LEFT_WALL
    surface[(across < z) & rightwards] = RIGHT_WALL
    z = np.minimum(z, across)
    back = z > depth
    surface[back] = BACK_WALL
    z[back] = depth
    x, y = z * dx, camera.eye + z * dy
    room = Room(left, right, depth, height, surface, x, y, z)
    floor = surface == FLOOR_SIDE
    image = _wall_colours(rng, room)
    image[floor] = _floor_texture(rng, floor_kind, x, z)[floor]
    ceiling = surface == CEILING_SIDE
    image[ceiling] = _colour(rng, CEILINGS) * _texture(rng, "plain", *x.shape)[ceiling, None]
    # each surface lit its own way, corners and edges a little darker
    vertical, sideways = np.minimum(y, height - y), np.minimum(x + left, right - x)
    near = np.where(
        surface <= CEILING_SIDE,
        np.minimum(sideways, depth - z),
        np.where(
            surface == BACK_WALL, np.minimum(vertical, sideways), np.minimum(vertical, depth - z)
        ),
    )
    shade = rng.uniform(0.72, 1.05, 5).astype(np.float32)[surface] * (
        1 - 0.22 * np.exp(-near / 0.35)
    )
    np.multiply(image, shade[..., None], out=canvas.image)
    canvas.mask[:] = np.array([FLOOR, CEILING, WALL, WALL, WALL], dtype=np.uint8)[surface]
    canvas.owner[:] = surface + 1
    canvas.objects = 5
    return room


def _floor_texture(rng, kind: str, x: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Floor colours at floor points (X, Z): planks, tiles or carpet."""
    if kind == "planks":
        width, length = rng.uniform(0.1, 0.22), rng.uniform(0.8, 2.0)
        board = np.floor(x / width).astype(np.int32)
        along = z / length + rng.random(97, dtype=np.float32)[board % 97]
        tones = rng.normal(1, 0.08, 251).astype(np.float32)
        tone = tones[(board * 31 + np.floor(along).astype(np.int32)) % 251]
        grain = 0.04 * np.sin(x * rng.uniform(150, 250) + board + 0.5 * z)
        gap = (x / width % 1 < 0.05) | (along % 1 < 0.01)
        field = tone * (1 + grain) * np.where(gap, np.float32(0.7), np.float32(1))
        return field[..., None] * _colour(rng, WOODS)
    if kind == "tiles":
        size, grout = rng.uniform(0.3, 0.6), rng.uniform(0.01, 0.02)
        tile = np.floor(x / size).astype(np.int32) * 7 + np.floor(z / size).astype(np.int32)
        joint = (x / size % 1 < grout / size) | (z / size % 1 < grout / size)
        field = rng.normal(1, 0.03, 211).astype(np.float32)[tile % 211] * _texture(
            rng, "plain", *x.shape
        )
        field[joint] = rng.uniform(0.6, 1.2)
        return field[..., None] * _colour(rng, TILES)
    return _texture(rng, "rough", *x.shape)[..., None] * _colour(rng, CARPETS)


def _wall_colours(rng, room: Room) -> np.ndarray:
    """Wall colours: paint, or wallpaper stripes, sometimes an accent colour on the back wall."""
    field = _texture(rng, "plain", *room.x.shape)
    if rng.random() < 0.2:
        along = np.where(room.surface == BACK_WALL, room.x, room.z)
        field[along / rng.uniform(0.1, 0.4) % 1 < 0.5] *= rng.uniform(0.9, 0.96)
    colours = field[..., None] * _colour(rng, WALLS)
    if rng.random() < 0.2:
        back = room.surface == BACK_WALL
        colours[back] = field[back, None] * _colour(rng, WALLS + FABRICS)
    return colours


def _on_surface(canvas: Canvas, room: Room, surface: int, low, high):
    """The pixels of the rectangle `low`..`high` on a room surface, in that surface's own
    coordinates (X, Y on the back wall; Z, Y on the side walls; X, Z on floor and ceiling),
    with those coordinates there; None when out of sight."""
    (a0, b0), (a1, b1) = low, high
    fixed = {
        FLOOR_SIDE: 0.0,
        CEILING_SIDE: room.height,
        LEFT_WALL: -room.left,
        RIGHT_WALL: room.right,
        BACK_WALL: room.depth,
    }[surface]
    a, b = np.array([a0, a1, a1, a0]), np.array([b0, b0, b1, b1])
    if surface in (FLOOR_SIDE, CEILING_SIDE):
        x, y, z = a, np.full(4, fixed), b
    elif surface == BACK_WALL:
        x, y, z = a, b, np.full(4, fixed)
    else:
        x, y, z = np.full(4, fixed), b, a
    z = np.maximum(z, 0.1)
    box = _bounds(canvas, *canvas.camera.project(x, y, z))
    if box is None:
        return None
    top, bottom, left, right = box
    window = np.s_[top:bottom, left:right]
    coords = {
        FLOOR_SIDE: (room.x, room.z),
        CEILING_SIDE: (room.x, room.z),
        BACK_WALL: (room.x, room.y),
    }.get(surface, (room.z, room.y))
    u, v = coords[0][window], coords[1][window]
    inside = (room.surface[window] == surface) & (u >= a0) & (u <= a1) & (v >= b0) & (v <= b1)
    return ((top, left, inside, None), u, v) if inside.any() else None


def _free_spot(rng, room: Room, surface: int, width: float, taken: list) -> tuple | None:
    """Where along a wall (a range of its coordinate) something `width` wide fits, away from
    the door and windows already there."""
    if surface == BACK_WALL:
        low, high = -room.left, room.right
    else:
        low, high = 0.8, room.depth
    for _ in range(8):
        start = rng.uniform(low + 0.05, max(low + 0.06, high - width - 0.05))
        spot = (start, start + width)
        if spot[1] <= high and all(s != surface or spot[1] < a or spot[0] > b for s, a, b in taken):
            taken.append((surface, *spot))
            return spot
    return None


def _window(canvas, room, surface, spot) -> None:
    """A window: frame, mullions and the bright outside; curtains or a blind, sometimes."""
    rng = canvas.rng
    sill, top = rng.uniform(0.3, 1.0), min(room.height - 0.15, rng.uniform(2.0, 2.4))
    found = _on_surface(canvas, room, surface, (spot[0], sill), (spot[1], top))
    if found is not None:
        region, u, v = found
        frame, panes = rng.uniform(0.04, 0.08), int(rng.integers(1, 4))
        pane = (spot[1] - spot[0]) / panes
        along = (u - spot[0]) / pane
        bars = (
            (np.abs(along - np.round(along)) * pane < frame / 2)
            | (v - sill < frame)
            | (top - v < frame)
            | (np.abs(v - (sill + top) / 2 - 0.2) < frame / 3)
        )
        height, width = u.shape
        outside = (v - sill) / (top - sill) + 0.05 * _smooth(rng, height, width, 40)
        sky = np.array([200, 222, 245.0]) * rng.uniform(1.0, 1.4)
        ground = _colour(rng, LEAVES + FACADES) * rng.uniform(0.8, 1.3)
        glass = np.where((outside > rng.uniform(0.2, 0.6))[..., None], sky, ground)
        frame_colour = _colour(rng, PAINTED[:1] + WOODS[:2])
        rgb = np.where(
            bars[..., None], frame_colour, glass * _texture(rng, "plain", height, width)[..., None]
        )
        _put(canvas, region, WINDOW, canvas.new_owner(), rgb)
        rows, cols = np.nonzero(region[2])
        canvas.lights.append(
            (region[0] + rows.mean(), region[1] + cols.mean(), rng.uniform(0.1, 0.35))
        )
        if rng.random() < 0.25:  # a blind over its upper part
            found = _on_surface(
                canvas, room, surface, (spot[0], top - rng.uniform(0.2, 0.8)), (spot[1], top)
            )
            if found is not None:
                region, u, v = found
                slats = 1 + 0.12 * np.sin(v * 2 * np.pi / 0.04)
                _put(
                    canvas,
                    region,
                    BLIND,
                    canvas.new_owner(),
                    slats[..., None] * _colour(rng, CURTAINS),
                )
    if rng.random() < 0.7:  # curtains on both sides
        colour = _colour(rng, CURTAINS)
        hang = rng.choice([0.02, sill - 0.1])
        for a0, a1 in ((spot[0] - 0.45, spot[0] + 0.12), (spot[1] - 0.12, spot[1] + 0.45)):
            found = _on_surface(
                canvas, room, surface, (a0, hang), (a1, min(room.height, top + 0.2))
            )
            if found is not None:
                region, u, _ = found
                folds = 1 + 0.15 * np.sin(u * 2 * np.pi / rng.uniform(0.08, 0.14))
                _put(canvas, region, CURTAIN, canvas.new_owner(), folds[..., None] * colour)


def _wall_things(canvas, room, kitchen=False) -> list:
    """Windows, a door and paintings on the walls; returns what they take along the walls."""
    rng = canvas.rng
    taken = []
    if rng.random() < 0.45:
        surface = int(rng.choice([BACK_WALL, LEFT_WALL, RIGHT_WALL]))
        spot = _free_spot(rng, room, surface, rng.uniform(0.8, 0.95), taken)
        if spot:
            found = _on_surface(canvas, room, surface, (spot[0], 0), (spot[1], rng.uniform(2, 2.2)))
            if found is not None:
                region, u, v = found
                panel = ((u - spot[0]) % 0.42 > 0.07) & (v % 0.9 > 0.12)
                colour = _colour(rng, WOODS + PAINTED[:1])
                rgb = (
                    np.where(panel[..., None], 1.0, 0.85)
                    * colour
                    * _texture(rng, "wood", *u.shape, np.pi / 2)[..., None]
                )
                _put(canvas, region, DOOR, canvas.new_owner(), rgb)
    for _ in range(int(rng.choice([0, 1, 1, 2, 2, 3]))):
        surface = int(rng.choice([BACK_WALL, BACK_WALL, LEFT_WALL, RIGHT_WALL]))
        spot = _free_spot(rng, room, surface, rng.uniform(0.6, 2.0), taken)
        if spot:
            _window(canvas, room, surface, spot)
    for _ in range(0 if kitchen else int(rng.choice([0, 1, 1, 2, 3]))):
        surface = int(rng.choice([BACK_WALL, LEFT_WALL, RIGHT_WALL]))
        width = rng.uniform(0.3, 1.2)
        spot = _free_spot(rng, room, surface, width, taken)
        middle, tall = rng.uniform(1.4, 1.8), width * rng.uniform(0.5, 1.2)
        found = spot and _on_surface(
            canvas, room, surface, (spot[0], middle - tall / 2), (spot[1], middle + tall / 2)
        )
        if found:
            region, u, v = found
            frame = np.minimum(
                np.minimum(u - spot[0], spot[1] - u),
                np.minimum(v - middle + tall / 2, middle + tall / 2 - v),
            )
            art = sum(
                _colour(rng, FABRICS + LEAVES + PILLOWS)
                * np.maximum(_smooth(rng, *u.shape, rng.uniform(4, 20)), 0)[..., None]
                for _ in range(3)
            )
            rgb = np.where((frame < 0.04)[..., None], _colour(rng, WOODS + METALS), art + 40)
            _put(canvas, region, PAINTING, canvas.new_owner(), rgb)
    if rng.random() < 0.3:  # a ceiling light
        x, z, half = rng.uniform(-1, 1), rng.uniform(2, room.depth - 1), rng.uniform(0.15, 0.4)
        found = _on_surface(canvas, room, CEILING_SIDE, (x - half, z - half), (x + half, z + half))
        if found is not None:
            _put(canvas, found[0], LIGHT, canvas.new_owner(), np.full(3, 255 * 1.3))
    return taken


def _rug(canvas, room, centre, size) -> None:
    rng = canvas.rng
    (x, z), (w, d) = centre, size
    found = _on_surface(canvas, room, FLOOR_SIDE, (x - w, z - d), (x + w, z + d))
    if found is not None:
        region, u, v = found
        border = np.minimum(np.minimum(u - x + w, x + w - u), np.minimum(v - z + d, z + d - v))
        inner, edge = _colour(rng, FABRICS + CARPETS), _colour(rng, FABRICS)
        rgb = np.where((border < rng.uniform(0.05, 0.2))[..., None], edge, inner)
        _put(
            canvas,
            region,
            RUG,
            canvas.new_owner(),
            rgb * _texture(rng, "rough", *u.shape)[..., None],
        )


def _against(room: Room, surface: int, along: float, depth: float) -> tuple:
    """The place (X, Z, yaw) of something `depth` deep standing against a wall, facing in."""
    if surface == BACK_WALL:
        return along, room.depth - depth / 2 - 0.03, 0.0
    if surface == LEFT_WALL:
        return -room.left + depth / 2 + 0.03, along, -math.pi / 2
    return room.right - depth / 2 - 0.03, along, math.pi / 2


def _in_front(place, distance: float, sideways: float = 0.0) -> tuple:
    """The place `distance` in front of (and `sideways` beside) another, facing the same way."""
    x, _, z = _world(place, sideways, 0.0, -distance)
    return float(x), float(z), place[2]


def _draw(canvas: Canvas, items: list) -> None:
    """Draw (place, function, arguments) items, the farthest first; none at the camera."""
    for place, draw, args in sorted(items, key=lambda item: -math.hypot(*item[0][:2])):
        if place[1] > 1.2:
            draw(canvas, place, *args)


def _living_room(canvas: Canvas, bedroom: bool) -> None:
    """A sofa (with pillows, a coffee table and armchairs) or a bed (with pillows) against a
    wall, a lamp beside it, chairs, plants, cabinets and shelves, sometimes someone."""
    rng = canvas.rng
    room = _room(canvas, str(rng.choice(["planks", "planks", "tiles", "carpet"])))
    taken = _wall_things(canvas, room)
    items = []
    # the bed or the sofa against a wall, windows or not behind it
    surface = int(rng.choice([BACK_WALL, BACK_WALL, LEFT_WALL, RIGHT_WALL]))
    span = room.left + room.right if surface == BACK_WALL else room.depth - 0.8
    if bedroom:
        width = min(span - 0.2, rng.choice([0.9, 1.4, 1.6, 1.8]) + rng.uniform(0, 0.1))
        depth = rng.uniform(2, 2.2)
        draw, args = _bed, (width, depth)
    else:
        width, depth = min(span - 0.2, rng.uniform(1.6, 2.5)), 0.9
        draw, args = _sofa, (width,)
    spot = _free_spot(rng, room, surface, width, [])
    main = _against(room, surface, (spot[0] + spot[1]) / 2, depth)
    items.append((main, draw, args))
    if rng.random() < 0.7:  # a rug in front of it, under the coffee table
        x, z, _ = _in_front(main, depth / 2 + 0.8)
        _rug(canvas, room, (x, z), (rng.uniform(0.7, 1.4), rng.uniform(0.5, 1.0)))
    if not bedroom and rng.random() < 0.75:
        table = _in_front(main, 0.45 + rng.uniform(0.35, 0.6))
        size = (rng.uniform(0.8, 1.3), rng.uniform(0.45, 0.7))
        items.append((table, _table, (TABLE, size, rng.uniform(0.35, 0.46))))
    if rng.random() < 0.65:  # a lamp beside it: on the floor, or on a side table
        side = rng.choice([-1, 1]) * (width / 2 + rng.uniform(0.3, 0.45))
        beside = _in_front(main, -depth / 2 + 0.3, side)
        items.append((beside, _lamp, (not bedroom and rng.random() < 0.5,)))
    armchairs = 0 if bedroom else int(rng.choice([0, 0, 1, 2]))
    for side in rng.choice([-1, 1], armchairs):
        x, z, yaw = _in_front(main, rng.uniform(1.5, 2.2), side * width * rng.uniform(0.5, 0.8))
        items.append(((x, z, yaw + math.pi + side * rng.uniform(0.3, 0.9)), _armchair, ()))
    for _ in range(int(rng.choice([0, 0, 0, 0, 1, 2]))):
        spot = (rng.uniform(-room.left + 0.4, room.right - 0.4), rng.uniform(2.2, room.depth - 0.4))
        items.append(((*spot, rng.uniform(-math.pi, math.pi)), _chair, ()))
    if not bedroom and rng.random() < 0.2:
        items += _dining(rng, room)
    for corner in rng.choice([-room.left + 0.3, room.right - 0.3], int(rng.choice([0, 1, 1, 2]))):
        items.append(((corner, room.depth - rng.uniform(0.3, 1.5), 0.0), _plant, ()))
    for _ in range(int(rng.choice([0, 1, 2, 2, 3]))):  # cabinets, shelves, a wardrobe, a TV
        surface = int(rng.choice([BACK_WALL, LEFT_WALL, RIGHT_WALL]))
        width = rng.uniform(0.8, 2.4)
        spot = _free_spot(rng, room, surface, width, taken)
        if spot:
            kind = rng.choice([CABINET, SHELF, WARDROBE if bedroom else BOOKCASE])
            tall = {CABINET: rng.uniform(0.5, 0.9), SHELF: rng.uniform(0.9, 2.0)}.get(
                kind, rng.uniform(1.8, 2.2)
            )
            place = _against(room, surface, (spot[0] + spot[1]) / 2, 0.45)
            items.append((place, _storage, (int(kind), width, tall)))
    if rng.random() < 0.15:
        spot = (rng.uniform(-room.left + 0.4, room.right - 0.4), rng.uniform(2, room.depth - 0.5))
        items.append(((*spot, rng.uniform(-math.pi, math.pi)), _person, ()))
    _draw(canvas, items)


def _storage(canvas, place, kind, width, tall) -> None:
    """A cabinet, shelf, bookcase or wardrobe against a wall; a television on some cabinets."""
    rng = canvas.rng
    colour = _colour(rng, WOODS + PAINTED)
    units = max(1, round(width / 0.5))
    _cabinet(canvas, kind, place, (width / 2, tall, 0.22), colour, units=units)
    if kind == CABINET and rng.random() < 0.6:  # a television on it
        w = rng.uniform(0.45, 0.7)
        _object(
            canvas,
            TELEVISION,
            np.array([30, 30, 34.0]),
            "gloss",
            place,
            [
                ((-w, tall + 0.05, -0.03), (w, tall + 0.05 + w * 1.15, 0.03)),
                ((-0.1, tall, -0.08), (0.1, tall + 0.05, 0.08)),
            ],
        )


def _dining(rng, room: Room) -> list:
    """A dining table somewhere in the room, and chairs around it facing it."""
    x, z = rng.uniform(-room.left + 1, room.right - 1), rng.uniform(2.4, max(2.5, room.depth - 1.2))
    size = (rng.uniform(0.8, 1.6), rng.uniform(0.7, 0.95))
    items = [((x, z, rng.normal(0, 0.2)), _table, (SIDE_TABLE, size, 0.75))]
    for i in range(int(rng.integers(1, 4))):
        angle = i * math.pi / 2 + rng.normal(0, 0.15)
        reach = (size[1] if i % 2 == 0 else size[0]) / 2 + 0.25
        spot = (x + math.sin(angle) * reach, z - math.cos(angle) * reach, math.pi - angle)
        items.append((spot, _chair, ()))
    return items


def _kitchen(canvas: Canvas) -> None:
    """Runs of cabinets under a countertop and on the wall above, a refrigerator, often a
    table with chairs."""
    rng = canvas.rng
    room = _room(canvas, str(rng.choice(["tiles", "tiles", "planks"])))
    _wall_things(canvas, room, kitchen=True)
    colour, top = _colour(rng, PAINTED + WOODS), _colour(rng, TILES + METALS)
    walls = [BACK_WALL, int(rng.choice([LEFT_WALL, RIGHT_WALL]))][: int(rng.integers(1, 3))]
    for surface in walls:
        span = (-room.left, room.right) if surface == BACK_WALL else (1.0, room.depth - 0.65)
        run = min(span[1] - span[0] - 0.2, rng.uniform(2.2, 4.5))
        start = rng.uniform(span[0] + 0.05, span[1] - run - 0.05)
        units = max(1, round(run / 0.6))
        place = _against(room, surface, start + run / 2, 0.6)
        _cabinet(canvas, CABINET, place, (run / 2, 0.86, 0.3), colour, units=units)
        _object(
            canvas,
            COUNTERTOP,
            top,
            "rough",
            place,
            [((-run / 2 - 0.02, 0.86, -0.32), (run / 2 + 0.02, 0.9, 0.3))],
        )
        if rng.random() < 0.9:
            upper = _in_front(place, -0.15)
            _cabinet(
                canvas,
                CABINET,
                upper,
                (run / 2, rng.uniform(0.6, 0.8), 0.17),
                colour,
                lift=rng.uniform(1.4, 1.55),
                units=units,
            )
        if surface == BACK_WALL and rng.random() < 0.7:
            side = start - 0.4 if start - 0.8 > -room.left else start + run + 0.4
            _cabinet(
                canvas,
                REFRIGERATOR,
                (side, room.depth - 0.38, 0.0),
                (0.36, 1.8, 0.33),
                _colour(rng, METALS[1:3] + PAINTED[:1]),
            )
    items = _dining(rng, room) if rng.random() < 0.6 else []
    if rng.random() < 0.25:
        spot = (rng.uniform(-room.left + 0.4, room.right - 0.4), rng.uniform(2, room.depth - 0.7))
        items.append(((*spot, rng.uniform(-math.pi, math.pi)), _person, ()))
    _draw(canvas, items)


def _office(canvas: Canvas) -> None:
    """Desks with monitors and (mostly swivel) chairs, cabinets and bookcases, carpet."""
    rng = canvas.rng
    room = _room(canvas, str(rng.choice(["carpet", "carpet", "tiles"])))
    taken = _wall_things(canvas, room)
    items = []
    for _ in range(int(rng.integers(1, 4))):
        x, z = rng.uniform(-room.left + 0.8, room.right - 0.8), rng.uniform(2, room.depth - 0.5)
        yaw = rng.choice([0, math.pi / 2, -math.pi / 2, math.pi]) + rng.normal(0, 0.1)
        items.append(((x, z, yaw), _desk, ()))
        chair = _in_front((x, z, yaw), 0.65)
        items.append(((*chair[:2], yaw + math.pi + rng.normal(0, 0.5)), _office_chair, ()))
    for _ in range(int(rng.integers(1, 4))):
        surface = int(rng.choice([BACK_WALL, LEFT_WALL, RIGHT_WALL]))
        width = rng.uniform(0.8, 2.4)
        spot = _free_spot(rng, room, surface, width, taken)
        if spot:
            kind = int(rng.choice([CABINET, BOOKCASE, SHELF]))
            place = _against(room, surface, (spot[0] + spot[1]) / 2, 0.45)
            items.append((place, _storage, (kind, width, rng.uniform(0.8, 2.1))))
    if rng.random() < 0.3:
        spot = (rng.uniform(-room.left + 0.4, room.right - 0.4), rng.uniform(2, room.depth - 0.5))
        items.append(((*spot, rng.uniform(-math.pi, math.pi)), _person, ()))
    _draw(canvas, items)


def _desk(canvas, place) -> None:
    rng = canvas.rng
    w, d = rng.uniform(0.55, 0.8), rng.uniform(0.3, 0.4)
    _object(
        canvas,
        DESK,
        _colour(rng, WOODS + PAINTED),
        "wood",
        place,
        [
            ((-w, 0.72, -d), (w, 0.75, d)),
            ((-w, 0, -d), (-w + 0.03, 0.72, d)),
            ((w - 0.03, 0, -d), (w, 0.72, d)),
            ((-w, 0.3, d - 0.02), (w, 0.72, d)),
        ],
    )
    screen = rng.uniform(0.22, 0.32)
    _object(
        canvas,
        MONITOR,
        np.array([35, 35, 40.0]),
        "gloss",
        place,
        [
            ((-screen, 0.9, 0.05), (screen, 0.9 + screen * 1.2, 0.08)),
            ((-0.03, 0.75, 0.08), (0.03, 0.9, 0.1)),
            ((-0.1, 0.75, 0.02), (0.1, 0.77, 0.15)),
        ],
    )


def _office_chair(canvas, place) -> None:
    rng = canvas.rng
    if rng.random() < 0.4:
        _chair(canvas, place)
        return
    w = rng.uniform(0.22, 0.27)
    colour = _colour(rng, FABRICS[2:4] + PAINTED[1:2])
    _object(
        canvas,
        SWIVEL_CHAIR,
        colour,
        "fabric",
        place,
        [
            ((-w, 0.42, -w), (w, 0.5, w)),
            ((-w, 0.55, w - 0.06), (w, 1.05, w)),
            ((-0.03, 0.08, -0.03), (0.03, 0.42, 0.03)),
            ((-0.3, 0.04, -0.03), (0.3, 0.08, 0.03)),
            ((-0.03, 0.04, -0.3), (0.03, 0.08, 0.3)),
            ((-0.05, 0.5, w - 0.1), (0.05, 0.55, w - 0.05)),
        ],
    )


# Streets: ground, building facades along both sides, a far skyline or open horizon, the sky.


def _street(canvas: Canvas) -> None:
    """A road between pavements, buildings (or grass) along both sides, cars, people, trees or
    streetlights, and the sky; every pixel is off the living-room whitelist."""
    rng, camera = canvas.rng, canvas.camera
    road, walk = rng.uniform(3, 7), rng.uniform(1.5, 4)
    centre = rng.uniform(-road - walk * 0.5, road + walk * 0.5)
    edges = (centre - road - walk, centre + road + walk)
    built = [rng.random() < 0.8, rng.random() < 0.8]
    dx, dy = camera.rays()
    shape = dx.shape
    inf = np.float32(np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        ground = np.where(dy < 0, camera.eye / -dy, inf)
        hits, segments, colours, keys = [ground], [], [], []
        for side, edge in enumerate(edges):
            bounds = np.cumsum(rng.uniform(6, 25, 24)) + rng.uniform(-5, 3)
            tall = rng.uniform(5, 30, 25) * (rng.random(25) > 0.12) * built[side]
            t = np.where(dx * edge > 0, edge / dx, inf)
            segment = np.searchsorted(bounds, t)
            hit = np.where(camera.eye + t * dy < tall[segment], t, inf)
            hits.append(hit)
            segments.append(segment)
            colours.append(np.array([_colour(rng, FACADES) for _ in range(25)]))
            keys.append(segment + 10 + 30 * side)
        far = rng.uniform(60, 200)
        skyline = rng.uniform(0, 40, 40) * (rng.random() < 0.7)
        across = np.clip(((far * dx + 200) / 10).astype(np.int64), 0, 39)
        hits.append(np.where(camera.eye + far * dy < skyline[across], far, inf))
    stack = np.stack(hits)
    surface = np.where(np.isinf(stack.min(axis=0)), 4, stack.argmin(axis=0))
    t = np.take_along_axis(stack, np.minimum(surface, 3)[None], axis=0)[0]
    x, y = np.where(surface == 4, 0, t * dx), np.where(surface == 4, 0, camera.eye + t * dy)
    z = np.where(surface == 4, 0, t)
    # ground: road, pavement, grass beyond the open sides
    off = np.abs(x - centre)
    ground_class = np.where(off < road, ROAD, np.where(off < road + walk, SIDEWALK, GRASS))
    lane = (np.abs(x - centre) < 0.07) & (z % 9 < 4) | (np.abs(off - road + 0.3) < 0.07)
    paving = (x % 0.6 < 0.03) | (z % 0.6 < 0.03)
    ground_rgb = (
        np.select(
            [(ground_class == ROAD)[..., None], (ground_class == SIDEWALK)[..., None]],
            [
                np.where(lane[..., None], 220.0, _colour(rng, ((88, 88, 92), (70, 70, 74)))),
                np.where(paving[..., None], 120.0, _colour(rng, TILES)),
            ],
            _colour(rng, ((92, 130, 62), (110, 140, 70))),
        )
        * _texture(rng, "rough", *shape)[..., None]
    )
    # facades with rows of windows, the skyline hazy, the sky brighter towards the horizon
    facade = np.zeros((*shape, 3), dtype=np.float32)
    for side in range(2):
        where = surface == side + 1
        facade[where] = colours[side][segments[side][where]]
    openings = (z % 3.2 > 1.6) & (y % 3.0 > 1.0) & (y > 2.5)
    facade = np.where(openings[..., None], facade * 0.35 + [20, 30, 45], facade)
    elevation = np.clip(dy * 2, -0.2, 1)[..., None]
    horizon, zenith = (
        np.array([215, 225, 235.0]),
        np.array([rng.uniform(60, 170), rng.uniform(120, 190), 230.0]),
    )
    sky = horizon + (zenith - horizon) * np.sqrt(np.maximum(elevation, 0))
    clouds = np.clip(_smooth(rng, *shape, 60) - rng.uniform(0, 1.5), 0, 1)[..., None]
    sky = sky + (245 - sky) * clouds
    skyline_class = BUILDING if rng.random() < 0.7 else TREE
    far_rgb = sky * 0.55 + _colour(rng, FACADES if skyline_class == BUILDING else LEAVES) * 0.45
    image = np.select(
        [(surface == 0)[..., None], (surface <= 2)[..., None], (surface == 3)[..., None]],
        [ground_rgb, facade * _texture(rng, "rough", *shape)[..., None], far_rgb],
        sky,
    )
    canvas.image[:] = image * (1 - 0.15 * (surface == 0))[..., None]
    canvas.mask[:] = np.select(
        [surface == 0, surface <= 2, surface == 3], [ground_class, BUILDING, skyline_class], SKY
    )
    on_ground = surface == 0
    canvas.owner[:] = np.select(
        [
            on_ground & (ground_class == ROAD),
            on_ground & (ground_class == SIDEWALK),
            on_ground,
            surface == 1,
            surface == 2,
            surface == 3,
        ],
        [1, 2, 3, keys[0], keys[1], 80],
        90,
    )
    canvas.objects = 200
    items = []
    for _ in range(int(rng.integers(0, 6))):
        lane = centre + rng.choice([-1, 1]) * road * rng.uniform(0.2, 0.6)
        items.append(
            ((lane, rng.uniform(5, 50), rng.choice([0, math.pi]) + rng.normal(0, 0.05)), _car, ())
        )
    for _ in range(int(rng.integers(0, 5))):
        side = rng.choice([-1, 1])
        x = centre + side * (road + walk * rng.uniform(0.2, 0.8))
        items.append(((x, rng.uniform(3, 40), rng.uniform(-math.pi, math.pi)), _person, ()))
    for side in (-1, 1):
        kind = rng.choice([_tree, _streetlight, None])
        if kind is not None:
            x = centre + side * (road + 0.6)
            for z in np.arange(rng.uniform(3, 12), 80, rng.uniform(10, 25)):
                items.append(((x, z, 0.0), kind, ()))
    _draw(canvas, items)


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
    seam &= _smooth(rng, *mask.shape, 30) > -1.0
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
    fov = rng.uniform(np.radians(50), np.radians(70))  # across the longer side
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
        _living_room(canvas, bedroom=scene == "bedroom")
    elif scene == "kitchen":
        _kitchen(canvas)
    elif scene == "office":
        _office(canvas)
    else:
        _street(canvas)
    _seams(rng, canvas.mask, canvas.owner)
    return scene, _finish(rng, canvas), canvas.mask


def _write_sample(dataset: Path, split: str, seed: int, sizes: tuple, number: int) -> str:
    """Render and save one sample from its own random stream; its sceneCategories.txt line."""
    rng = np.random.default_rng([seed, ade20k.SPLITS.index(split), number])
    height, width = sizes[rng.integers(len(sizes))]
    scene, image, mask = render_photo(rng, height, width)
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
    class_list = resources.files("image_segmentation").joinpath("objectInfo150.txt")
    (dataset / "objectInfo150.txt").write_bytes(class_list.read_bytes())
    (dataset / "sceneCategories.txt").write_text("".join(lines))
    return dataset
