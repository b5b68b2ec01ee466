"""Furniture and people, each built of boxes with its own silhouette (a lamp is a shade on a
thin pole on a foot, tables and chairs stand on legs, pillows are rounded and lie on sofas and
beds), so a class is learnt by its shape and not by a colour.
"""

import math

import numpy as np

from image_segmentation.data.rooms.camera import disc, draw_boxes, paint, polygon, rounded, world
from image_segmentation.data.rooms.classes import (
    ARMCHAIR,
    BEDDING,
    BOOKCASE,
    CABINET,
    DESK,
    FABRICS,
    FLOWERPOT,
    LEAVES,
    METALS,
    MONITOR,
    PAINTED,
    PILLOWS,
    PLANT,
    SHADES,
    SIDE_TABLE,
    SKINS,
    SWIVEL_CHAIR,
    TELEVISION,
    UNLABELLED,
    VASE,
    WARDROBE,
    WOODS,
)
from image_segmentation.data.rooms.textures import pick_colour
from image_segmentation.data.synthetic import BED, CHAIR, LAMP, PERSON, PILLOW, SOFA

# Furniture and people. Each draws itself at `place` = (X, Z, yaw), facing -z in its own frame.


def sofa(canvas, place, width) -> None:
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
    draw_boxes(canvas, SOFA, pick_colour(rng, FABRICS), "fabric", place, boxes)
    count = int(rng.integers(0, 5))
    for i in range(count):  # pillows leaning on the back
        size = rng.uniform(0.35, 0.5)
        x = (-w + arm + (i + 0.5) * (2 * (w - arm)) / count) + rng.normal(0, 0.04)
        _pillow(canvas, place, (x, seat + size * 0.45, d - rest - 0.1), (size * 0.95, size), 0.15)


def _pillow(canvas, place, point, size, tilt) -> None:
    """A rounded pillow at `point` in the frame of the sofa or bed it lies on, facing its way."""
    rng = canvas.rng
    facing = np.array([-math.sin(place[2]), -math.cos(place[2])])
    rounded(
        canvas,
        PILLOW,
        canvas.new_owner(),
        pick_colour(rng, PILLOWS),
        "fabric",
        world(place, *point),
        size,
        rng.normal(0, tilt),
        rng.uniform(2.5, 4),
        facing=facing,
    )


def bed(canvas, place, width, length) -> None:
    rng = canvas.rng
    w, d = width / 2, length / 2
    frame, top = rng.uniform(0.25, 0.35), rng.uniform(0.5, 0.62)
    head = rng.uniform(0.9, 1.25)
    wood = pick_colour(rng, WOODS)
    owner = draw_boxes(
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
    bedding = pick_colour(rng, BEDDING)
    draw_boxes(
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
    draw_boxes(
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


def table(canvas, place, ade_class, size, height, items=True) -> None:
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
    colour = pick_colour(rng, WOODS if rng.random() < 0.8 else PAINTED)
    draw_boxes(canvas, ade_class, colour, "wood", place, boxes)
    for _ in range(int(rng.integers(0, 3)) if items else 0):
        x, z = rng.uniform(-w * 0.7, w * 0.7), rng.uniform(-d * 0.6, d * 0.6)
        thing = rng.choice([VASE, UNLABELLED, UNLABELLED])
        tall = rng.uniform(0.12, 0.3) if thing == VASE else rng.uniform(0.02, 0.08)
        half = rng.uniform(0.04, 0.08) if thing == VASE else rng.uniform(0.08, 0.15)
        draw_boxes(
            canvas,
            int(thing),
            pick_colour(rng, PAINTED + PILLOWS),
            "gloss",
            place,
            [((x - half, height, z - half), (x + half, height + tall, z + half))],
        )


def chair(canvas, place) -> None:
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
    colour = pick_colour(rng, WOODS if wooden else PAINTED + FABRICS)
    draw_boxes(canvas, CHAIR, colour, "wood" if wooden else "fabric", place, boxes)


def armchair(canvas, place) -> None:
    rng = canvas.rng
    w, d, seat, back = rng.uniform(0.38, 0.48), rng.uniform(0.4, 0.48), 0.44, rng.uniform(0.8, 1.0)
    arm = rng.uniform(0.1, 0.18)
    draw_boxes(
        canvas,
        ARMCHAIR,
        pick_colour(rng, FABRICS),
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


def lamp(canvas, place, on_floor: bool) -> None:
    """A lamp: a shade on a thin pole on a foot, on the floor or on a side table, often lit
    (and lighting up its surroundings)."""
    rng, camera = canvas.rng, canvas.camera
    x, z, _ = place
    base = 0.0 if on_floor else rng.uniform(0.45, 0.65)
    if not on_floor:
        table(canvas, place, SIDE_TABLE, (0.45, 0.45), base, items=False)
    # radii of the foot and of the shade's bottom and top, the shade's height, the pole's
    ranges = (
        ((0.12, 0.18), (0.17, 0.25), (0.1, 0.17), (0.25, 0.35), (1.2, 1.5))
        if on_floor
        else ((0.07, 0.1), (0.14, 0.2), (0.09, 0.13), (0.2, 0.3), (0.3, 0.45))
    )
    foot, bottom, top, tall, stand = (rng.uniform(*r) for r in ranges)
    pole, stand = 0.025 if on_floor else 0.02, base + stand
    owner = canvas.new_owner()
    metal = pick_colour(rng, METALS)
    disc(canvas, LAMP, owner, metal, (x, base + 0.01, z), foot)
    draw_boxes(
        canvas,
        LAMP,
        metal,
        "gloss",
        (x, z, 0.0),
        [((-pole / 2, base, -pole / 2), (pole / 2, stand + 0.02, pole / 2))],
        owner,
    )
    lit = rng.random() < 0.6
    shade = pick_colour(rng, SHADES) * (rng.uniform(1.2, 1.5) if lit else 1.0)
    cols, rows = camera.project(
        [x - bottom, x + bottom, x + top, x - top], [stand] * 2 + [stand + tall] * 2, [z] * 4
    )
    paint(canvas, polygon(canvas, cols, rows), LAMP, owner, shade, "fabric")
    for y, radius in ((stand, bottom), (stand + tall, top)):
        disc(canvas, LAMP, owner, shade * (0.9 if y > camera.eye else 1.0), (x, y, z), radius)
    if lit:
        cols, rows = camera.project(x, stand + tall / 2, z)
        canvas.lights.append((float(rows), float(cols), rng.uniform(0.1, 0.3)))


def person(canvas, place) -> None:
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
    owner = draw_boxes(canvas, PERSON, rng.uniform(25, 200, 3), "fabric", place, boxes)
    head = world(place, 0.0, 1.62 * s, 0.0)
    rounded(
        canvas,
        PERSON,
        owner,
        pick_colour(rng, SKINS),
        "plain",
        head,
        (0.24 * s, 0.19 * s),
        power=2.0,
    )


def plant(canvas, place) -> None:
    rng = canvas.rng
    pot, tall = rng.uniform(0.12, 0.2), rng.uniform(0.25, 0.45)
    draw_boxes(
        canvas,
        FLOWERPOT,
        pick_colour(rng, PAINTED),
        "plain",
        place,
        [((-pot, 0, -pot), (pot, tall, pot))],
    )
    owner, leaves = canvas.new_owner(), pick_colour(rng, LEAVES)
    height = rng.uniform(0.5, 1.4)
    for _ in range(int(rng.integers(2, 5))):
        x = rng.normal(0, 0.12)
        point = world(place, x, tall + height * rng.uniform(0.3, 0.7), rng.normal(0, 0.05))
        size = (height * rng.uniform(0.5, 0.9), rng.uniform(0.3, 0.6))
        rounded(canvas, PLANT, owner, leaves, "leaves", point, size, rng.normal(0, 0.4), 2.0, 0.25)


def cabinet(canvas, ade_class, place, size, colour, lift=0.0, units=1) -> None:
    """A cabinet (or wardrobe, refrigerator, bookcase) of `units` doors, each with a handle."""
    w, h, d = size
    texture = "wood" if ade_class in (WARDROBE, BOOKCASE) else "plain"
    owner = draw_boxes(
        canvas, ade_class, colour, texture, place, [((-w, lift, -d), (w, lift + h, d))]
    )
    step, gaps = 2 * w / units, []
    for i in range(units):
        x = -w + i * step
        handle = x + step * (0.85 if i % 2 else 0.15)
        gaps.append(
            ((handle - 0.01, lift + h * 0.5, -d - 0.02), (handle + 0.01, lift + h * 0.62, -d))
        )
        if i:
            gaps.append(((x - 0.004, lift + 0.01, -d - 0.003), (x + 0.004, lift + h - 0.01, -d)))
    draw_boxes(canvas, ade_class, colour * 0.45, "plain", place, gaps, owner)


def storage(canvas, place, kind, width, tall) -> None:
    """A cabinet, shelf, bookcase or wardrobe against a wall; a television on some cabinets."""
    rng = canvas.rng
    colour = pick_colour(rng, WOODS + PAINTED)
    units = max(1, round(width / 0.5))
    cabinet(canvas, kind, place, (width / 2, tall, 0.22), colour, units=units)
    if kind == CABINET and rng.random() < 0.6:  # a television on it
        w = rng.uniform(0.45, 0.7)
        draw_boxes(
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


def desk(canvas, place) -> None:
    rng = canvas.rng
    w, d = rng.uniform(0.55, 0.8), rng.uniform(0.3, 0.4)
    draw_boxes(
        canvas,
        DESK,
        pick_colour(rng, WOODS + PAINTED),
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
    draw_boxes(
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


def office_chair(canvas, place) -> None:
    rng = canvas.rng
    if rng.random() < 0.4:
        chair(canvas, place)
        return
    w = rng.uniform(0.22, 0.27)
    colour = pick_colour(rng, FABRICS[2:4] + PAINTED[1:2])
    draw_boxes(
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
