"""The pinhole camera and the canvas a photo is drawn on, and what everything is drawn with:
image regions (polygons, rounded blobs, discs) and objects built of boxes in their own frame,
shaded by how each face turns to the light and drawn far to near, so nearer things cover
farther ones as they do in a photo.
"""

import math
from dataclasses import dataclass, field

import numpy as np

from image_segmentation.data.rooms.textures import texture_field


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


def put(canvas: Canvas, region, ade_class: int, owner: int, rgb) -> None:
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


def paint(canvas, region, ade_class, owner, colour, texture="plain", angle=0.0) -> None:
    """Draw `region` in `colour` with a texture."""
    if region is not None:
        height, width = region[2].shape
        tone = texture_field(canvas.rng, texture, height, width, angle)
        put(canvas, region, ade_class, owner, tone[..., None] * colour)


def bounds(canvas: Canvas, cols, rows):
    """The frame's part of the bounding box of these points: (top, bottom, left, right)."""
    top, left = max(0, math.floor(min(rows))), max(0, math.floor(min(cols)))
    bottom = min(canvas.camera.height, math.ceil(max(rows)) + 1)
    right = min(canvas.camera.width, math.ceil(max(cols)) + 1)
    return (top, bottom, left, right) if top < bottom and left < right else None


def polygon(canvas: Canvas, cols, rows):
    """The pixels inside a convex polygon (image coordinates, in either order)."""
    cols, rows = [float(c) for c in cols], [float(r) for r in rows]
    box = bounds(canvas, cols, rows)
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
    box = bounds(canvas, (col - reach, col + reach), (row - reach, row + reach))
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


def world(place, x, y, z):
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
        x, y, z = world(place, local[:, 0], local[:, 1], local[:, 2])
        normal = np.array([cos * nx + sin * nz, ny, -sin * nx + cos * nz])
        towards = np.array([-x.mean(), camera.eye - y.mean(), -z.mean()])
        if normal @ towards > 1e-9 and z.min() > 0.1:
            cols, rows = camera.project(x, y, z)
            faces.append((cols, rows, 0.62 + 0.45 * max(0.0, float(normal @ canvas.light))))
    return faces


def draw_boxes(canvas, ade_class, colour, texture, place, boxes, owner=None) -> int:
    """An object of several boxes, the farthest drawn first, in one texture; returns its
    owner."""
    owner = owner or canvas.new_owner()

    def far(box):
        return _distance(canvas, world(place, *((np.add(*box)) / 2)))

    faces = [
        face for box in sorted(boxes, key=far, reverse=True) for face in _faces(canvas, place, *box)
    ]
    if not faces:
        return owner
    box = bounds(canvas, [c for f in faces for c in f[0]], [r for f in faces for r in f[1]])
    if box is None:
        return owner
    top, bottom, left, right = box
    cols, rows = faces[0][:2]
    angle = math.atan2(rows[1] - rows[0], cols[1] - cols[0])
    tone = texture_field(canvas.rng, texture, bottom - top, right - left, angle)
    for cols, rows, shade in faces:
        region = polygon(canvas, cols, rows)
        if region is not None:
            y, x, inside, _ = region
            part = tone[y - top : y - top + inside.shape[0], x - left : x - left + inside.shape[1]]
            put(canvas, region, ade_class, owner, part[..., None] * (colour * shade))
    return owner


def rounded(
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
    paint(canvas, region, ade_class, owner, colour, texture)


def disc(canvas, ade_class, owner, colour, point, radius) -> None:
    """A horizontal disc (a lamp's foot, a table top) seen in perspective."""
    x, y, z = point
    if z < 0.2:
        return
    cols, rows = canvas.camera.project(x, y, z)
    across = radius * canvas.camera.focal / z
    deep = max(across * abs(canvas.camera.eye - y) / z, 1.0)
    region = _blob(canvas, rows, cols, (deep, across))
    paint(canvas, region, ade_class, owner, colour)


def in_front(place, distance: float, sideways: float = 0.0) -> tuple:
    """The place `distance` in front of (and `sideways` beside) another, facing the same way."""
    x, _, z = world(place, sideways, 0.0, -distance)
    return float(x), float(z), place[2]


def draw_items(canvas: Canvas, items: list) -> None:
    """Draw (place, function, arguments) items, the farthest first; none at the camera."""
    for place, draw, args in sorted(items, key=lambda item: -math.hypot(*item[0][:2])):
        if place[1] > 1.2:
            draw(canvas, place, *args)
