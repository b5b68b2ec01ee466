"""Rooms: a box room ray-cast around the camera, so walls, floor and ceiling meet in
perspective; what hangs on its walls (a door, windows with curtains or blinds, paintings, a
ceiling light), rugs, and where furniture stands against a wall.
"""

import math
from dataclasses import dataclass

import numpy as np

from image_segmentation.data.rooms.camera import Canvas, bounds, put
from image_segmentation.data.rooms.classes import (
    BLIND,
    CARPETS,
    CEILINGS,
    CURTAIN,
    CURTAINS,
    FABRICS,
    FACADES,
    LEAVES,
    LIGHT,
    METALS,
    PAINTED,
    PILLOWS,
    RUG,
    TILES,
    WALLS,
    WOODS,
)
from image_segmentation.data.rooms.textures import pick_colour, smooth_noise, texture_field
from image_segmentation.data.synthetic import CEILING, DOOR, FLOOR, PAINTING, WALL, WINDOW

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


def make_room(canvas: Canvas, floor_kind: str) -> Room:
    rng, camera = canvas.rng, canvas.camera
    left, right = rng.uniform(1.2, 3.5), rng.uniform(1.2, 3.5)
    # near enough that the furniture fills as much of a photo as in ADE20K's (test_rooms)
    depth, height = rng.uniform(3.0, 5.5), rng.uniform(2.4, 2.9)
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
    image[ceiling] = (
        pick_colour(rng, CEILINGS) * texture_field(rng, "plain", *x.shape)[ceiling, None]
    )
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
        return field[..., None] * pick_colour(rng, WOODS)
    if kind == "tiles":
        size, grout = rng.uniform(0.3, 0.6), rng.uniform(0.01, 0.02)
        tile = np.floor(x / size).astype(np.int32) * 7 + np.floor(z / size).astype(np.int32)
        joint = (x / size % 1 < grout / size) | (z / size % 1 < grout / size)
        field = rng.normal(1, 0.03, 211).astype(np.float32)[tile % 211] * texture_field(
            rng, "plain", *x.shape
        )
        field[joint] = rng.uniform(0.6, 1.2)
        return field[..., None] * pick_colour(rng, TILES)
    return texture_field(rng, "rough", *x.shape)[..., None] * pick_colour(rng, CARPETS)


def _wall_colours(rng, room: Room) -> np.ndarray:
    """Wall colours: paint, or wallpaper stripes, sometimes an accent colour on the back wall."""
    field = texture_field(rng, "plain", *room.x.shape)
    if rng.random() < 0.2:
        along = np.where(room.surface == BACK_WALL, room.x, room.z)
        field[along / rng.uniform(0.1, 0.4) % 1 < 0.5] *= rng.uniform(0.9, 0.96)
    colours = field[..., None] * pick_colour(rng, WALLS)
    if rng.random() < 0.2:
        back = room.surface == BACK_WALL
        colours[back] = field[back, None] * pick_colour(rng, WALLS + FABRICS)
    return colours


def on_surface(canvas: Canvas, room: Room, surface: int, low, high):
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
    box = bounds(canvas, *canvas.camera.project(x, y, z))
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


def free_spot(rng, room: Room, surface: int, width: float, taken: list) -> tuple | None:
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
    found = on_surface(canvas, room, surface, (spot[0], sill), (spot[1], top))
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
        outside = (v - sill) / (top - sill) + 0.05 * smooth_noise(rng, height, width, 40)
        sky = np.array([200, 222, 245.0]) * rng.uniform(1.0, 1.4)
        ground = pick_colour(rng, LEAVES + FACADES) * rng.uniform(0.8, 1.3)
        glass = np.where((outside > rng.uniform(0.2, 0.6))[..., None], sky, ground)
        frame_colour = pick_colour(rng, PAINTED[:1] + WOODS[:2])
        rgb = np.where(
            bars[..., None],
            frame_colour,
            glass * texture_field(rng, "plain", height, width)[..., None],
        )
        put(canvas, region, WINDOW, canvas.new_owner(), rgb)
        rows, cols = np.nonzero(region[2])
        canvas.lights.append(
            (region[0] + rows.mean(), region[1] + cols.mean(), rng.uniform(0.1, 0.35))
        )
        if rng.random() < 0.25:  # a blind over its upper part
            found = on_surface(
                canvas, room, surface, (spot[0], top - rng.uniform(0.2, 0.8)), (spot[1], top)
            )
            if found is not None:
                region, u, v = found
                slats = 1 + 0.12 * np.sin(v * 2 * np.pi / 0.04)
                put(
                    canvas,
                    region,
                    BLIND,
                    canvas.new_owner(),
                    slats[..., None] * pick_colour(rng, CURTAINS),
                )
    if rng.random() < 0.7:  # curtains on both sides
        colour = pick_colour(rng, CURTAINS)
        hang = rng.choice([0.02, sill - 0.1])
        for a0, a1 in ((spot[0] - 0.45, spot[0] + 0.12), (spot[1] - 0.12, spot[1] + 0.45)):
            found = on_surface(canvas, room, surface, (a0, hang), (a1, min(room.height, top + 0.2)))
            if found is not None:
                region, u, _ = found
                folds = 1 + 0.15 * np.sin(u * 2 * np.pi / rng.uniform(0.08, 0.14))
                put(canvas, region, CURTAIN, canvas.new_owner(), folds[..., None] * colour)


def wall_things(canvas, room, kitchen=False) -> list:
    """Windows, a door and paintings on the walls; returns what they take along the walls."""
    rng = canvas.rng
    taken = []
    if rng.random() < 0.45:
        surface = int(rng.choice([BACK_WALL, LEFT_WALL, RIGHT_WALL]))
        spot = free_spot(rng, room, surface, rng.uniform(0.8, 0.95), taken)
        if spot:
            found = on_surface(canvas, room, surface, (spot[0], 0), (spot[1], rng.uniform(2, 2.2)))
            if found is not None:
                region, u, v = found
                panel = ((u - spot[0]) % 0.42 > 0.07) & (v % 0.9 > 0.12)
                colour = pick_colour(rng, WOODS + PAINTED[:1])
                rgb = (
                    np.where(panel[..., None], 1.0, 0.85)
                    * colour
                    * texture_field(rng, "wood", *u.shape, np.pi / 2)[..., None]
                )
                put(canvas, region, DOOR, canvas.new_owner(), rgb)
    for _ in range(int(rng.choice([0, 1, 1, 2, 2, 3]))):
        surface = int(rng.choice([BACK_WALL, BACK_WALL, LEFT_WALL, RIGHT_WALL]))
        spot = free_spot(rng, room, surface, rng.uniform(0.6, 2.0), taken)
        if spot:
            _window(canvas, room, surface, spot)
    for _ in range(0 if kitchen else int(rng.choice([0, 1, 1, 2, 3]))):
        surface = int(rng.choice([BACK_WALL, LEFT_WALL, RIGHT_WALL]))
        width = rng.uniform(0.3, 1.2)
        spot = free_spot(rng, room, surface, width, taken)
        middle, tall = rng.uniform(1.4, 1.8), width * rng.uniform(0.5, 1.2)
        found = spot and on_surface(
            canvas, room, surface, (spot[0], middle - tall / 2), (spot[1], middle + tall / 2)
        )
        if found:
            region, u, v = found
            frame = np.minimum(
                np.minimum(u - spot[0], spot[1] - u),
                np.minimum(v - middle + tall / 2, middle + tall / 2 - v),
            )
            art = sum(
                pick_colour(rng, FABRICS + LEAVES + PILLOWS)
                * np.maximum(smooth_noise(rng, *u.shape, rng.uniform(4, 20)), 0)[..., None]
                for _ in range(3)
            )
            rgb = np.where((frame < 0.04)[..., None], pick_colour(rng, WOODS + METALS), art + 40)
            put(canvas, region, PAINTING, canvas.new_owner(), rgb)
    if rng.random() < 0.3:  # a ceiling light
        x, z, half = rng.uniform(-1, 1), rng.uniform(2, room.depth - 1), rng.uniform(0.15, 0.4)
        found = on_surface(canvas, room, CEILING_SIDE, (x - half, z - half), (x + half, z + half))
        if found is not None:
            put(canvas, found[0], LIGHT, canvas.new_owner(), np.full(3, 255 * 1.3))
    return taken


def rug(canvas, room, centre, size) -> None:
    rng = canvas.rng
    (x, z), (w, d) = centre, size
    found = on_surface(canvas, room, FLOOR_SIDE, (x - w, z - d), (x + w, z + d))
    if found is not None:
        region, u, v = found
        border = np.minimum(np.minimum(u - x + w, x + w - u), np.minimum(v - z + d, z + d - v))
        inner, edge = pick_colour(rng, FABRICS + CARPETS), pick_colour(rng, FABRICS)
        rgb = np.where((border < rng.uniform(0.05, 0.2))[..., None], edge, inner)
        put(
            canvas,
            region,
            RUG,
            canvas.new_owner(),
            rgb * texture_field(rng, "rough", *u.shape)[..., None],
        )


def against(room: Room, surface: int, along: float, depth: float) -> tuple:
    """The place (X, Z, yaw) of something `depth` deep standing against a wall, facing in."""
    if surface == BACK_WALL:
        return along, room.depth - depth / 2 - 0.03, 0.0
    if surface == LEFT_WALL:
        return -room.left + depth / 2 + 0.03, along, -math.pi / 2
    return room.right - depth / 2 - 0.03, along, math.pi / 2
