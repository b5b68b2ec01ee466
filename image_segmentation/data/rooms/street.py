"""The street scene: a road between pavements, facades, a skyline, the sky, cars, people,
trees and streetlights; every pixel is off the living-room whitelist, as a third of ADE20K is.
"""

import math

import numpy as np

from image_segmentation.data.rooms import furniture
from image_segmentation.data.rooms.camera import Canvas, draw_boxes, draw_items, rounded, world
from image_segmentation.data.rooms.classes import (
    BUILDING,
    CAR,
    CARS,
    FACADES,
    GRASS,
    LEAVES,
    METALS,
    ROAD,
    SIDEWALK,
    SKY,
    STREETLIGHT,
    TILES,
    TREE,
)
from image_segmentation.data.rooms.textures import pick_colour, smooth_noise, texture_field


def _tree(canvas, place) -> None:
    rng = canvas.rng
    x, z, _ = place
    trunk, tall = rng.uniform(0.12, 0.25), rng.uniform(2.0, 4.0)
    owner = draw_boxes(
        canvas,
        TREE,
        pick_colour(rng, ((90, 70, 50), (70, 60, 55))),
        "rough",
        (x, z, 0.0),
        [((-trunk, 0, -trunk), (trunk, tall + 0.5, trunk))],
    )
    leaves, crown = pick_colour(rng, LEAVES), rng.uniform(1.5, 3.5)
    for _ in range(int(rng.integers(3, 7))):
        centre = (x + rng.normal(0, crown * 0.4), tall + crown * rng.uniform(0.4, 1.1), z)
        radius = crown * rng.uniform(0.5, 0.9)
        rounded(
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
    colour = pick_colour(rng, CARS)
    owner = draw_boxes(
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
    side = min((-w, w), key=lambda s: abs(world(place, s, 0, 0)[0]))  # the side in sight
    for along in (-length * 0.68, length * 0.68):
        wheel = world(place, side, 0.32, along)
        rounded(
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
    colour = pick_colour(rng, METALS)
    owner = draw_boxes(
        canvas, STREETLIGHT, colour, "gloss", (x, z, 0.0), [((-0.08, 0, -0.08), (0.08, tall, 0.08))]
    )
    draw_boxes(
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


# Streets: ground, building facades along both sides, a far skyline or open horizon, the sky.


def street(canvas: Canvas) -> None:
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
            colours.append(np.array([pick_colour(rng, FACADES) for _ in range(25)]))
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
                np.where(lane[..., None], 220.0, pick_colour(rng, ((88, 88, 92), (70, 70, 74)))),
                np.where(paving[..., None], 120.0, pick_colour(rng, TILES)),
            ],
            pick_colour(rng, ((92, 130, 62), (110, 140, 70))),
        )
        * texture_field(rng, "rough", *shape)[..., None]
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
    clouds = np.clip(smooth_noise(rng, *shape, 60) - rng.uniform(0, 1.5), 0, 1)[..., None]
    sky = sky + (245 - sky) * clouds
    skyline_class = BUILDING if rng.random() < 0.7 else TREE
    far_rgb = sky * 0.55 + pick_colour(rng, FACADES if skyline_class == BUILDING else LEAVES) * 0.45
    image = np.select(
        [(surface == 0)[..., None], (surface <= 2)[..., None], (surface == 3)[..., None]],
        [ground_rgb, facade * texture_field(rng, "rough", *shape)[..., None], far_rgb],
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
        items.append(
            ((x, rng.uniform(3, 40), rng.uniform(-math.pi, math.pi)), furniture.person, ())
        )
    for side in (-1, 1):
        kind = rng.choice([_tree, _streetlight, None])
        if kind is not None:
            x = centre + side * (road + 0.6)
            for z in np.arange(rng.uniform(3, 12), 80, rng.uniform(10, 25)):
                items.append(((x, z, 0.0), kind, ()))
    draw_items(canvas, items)
