"""The indoor scene kinds: living rooms and bedrooms, the whitelist's scenes, and kitchens and
offices, whose cabinets, desks and chairs are off the living-room whitelist as in ADE20K.
"""

import math

from image_segmentation.data.rooms import furniture
from image_segmentation.data.rooms.camera import Canvas, draw_boxes, draw_items, in_front
from image_segmentation.data.rooms.classes import (
    BOOKCASE,
    CABINET,
    COUNTERTOP,
    METALS,
    PAINTED,
    REFRIGERATOR,
    SHELF,
    SIDE_TABLE,
    TILES,
    WARDROBE,
    WOODS,
)
from image_segmentation.data.rooms.room import (
    BACK_WALL,
    LEFT_WALL,
    RIGHT_WALL,
    Room,
    against,
    free_spot,
    make_room,
    rug,
    wall_things,
)
from image_segmentation.data.rooms.textures import pick_colour
from image_segmentation.data.synthetic import TABLE


def living_room(canvas: Canvas, bedroom: bool) -> None:
    """A sofa (with pillows, a coffee table and armchairs) or a bed (with pillows) against a
    wall, a lamp beside it, chairs, plants, cabinets and shelves, sometimes someone."""
    rng = canvas.rng
    room = make_room(canvas, str(rng.choice(["planks", "planks", "tiles", "carpet"])))
    taken = wall_things(canvas, room)
    items = []
    # the bed or the sofa against a wall, windows or not behind it
    surface = int(rng.choice([BACK_WALL, BACK_WALL, LEFT_WALL, RIGHT_WALL]))
    span = room.left + room.right if surface == BACK_WALL else room.depth - 0.8
    if bedroom:
        width = min(span - 0.2, rng.choice([0.9, 1.4, 1.6, 1.8]) + rng.uniform(0, 0.1))
        depth = rng.uniform(2, 2.2)
        draw, args = furniture.bed, (width, depth)
    else:
        width, depth = min(span - 0.2, rng.uniform(1.6, 2.5)), 0.9
        draw, args = furniture.sofa, (width,)
    spot = free_spot(rng, room, surface, width, [])
    main = against(room, surface, (spot[0] + spot[1]) / 2, depth)
    items.append((main, draw, args))
    if rng.random() < 0.7:  # a rug in front of it, under the coffee table
        x, z, _ = in_front(main, depth / 2 + 0.8)
        rug(canvas, room, (x, z), (rng.uniform(0.7, 1.4), rng.uniform(0.5, 1.0)))
    if not bedroom and rng.random() < 0.75:
        table = in_front(main, 0.45 + rng.uniform(0.35, 0.6))
        size = (rng.uniform(0.8, 1.3), rng.uniform(0.45, 0.7))
        items.append((table, furniture.table, (TABLE, size, rng.uniform(0.35, 0.46))))
    if rng.random() < 0.65:  # a lamp beside it (on the floor or a side table), by a bed often two
        sides = [-1, 1] if bedroom and rng.random() < 0.5 else [rng.choice([-1, 1])]
        for side in sides:
            beside = in_front(main, -depth / 2 + 0.3, side * (width / 2 + rng.uniform(0.3, 0.45)))
            items.append((beside, furniture.lamp, (not bedroom and rng.random() < 0.5,)))
    armchairs = 0 if bedroom else int(rng.choice([0, 0, 1, 2]))
    for side in rng.choice([-1, 1], armchairs):
        x, z, yaw = in_front(main, rng.uniform(1.5, 2.2), side * width * rng.uniform(0.5, 0.8))
        items.append(((x, z, yaw + math.pi + side * rng.uniform(0.3, 0.9)), furniture.armchair, ()))
    for _ in range(int(rng.choice([0, 0, 0, 0, 1, 2]))):
        spot = (rng.uniform(-room.left + 0.4, room.right - 0.4), rng.uniform(2.2, room.depth - 0.4))
        items.append(((*spot, rng.uniform(-math.pi, math.pi)), furniture.chair, ()))
    if not bedroom and rng.random() < 0.2:
        items += _dining(rng, room)
    for corner in rng.choice([-room.left + 0.3, room.right - 0.3], int(rng.choice([0, 1, 1, 2]))):
        items.append(((corner, room.depth - rng.uniform(0.3, 1.5), 0.0), furniture.plant, ()))
    for _ in range(int(rng.choice([0, 1, 2, 2, 3]))):  # cabinets, shelves, a wardrobe, a TV
        surface = int(rng.choice([BACK_WALL, LEFT_WALL, RIGHT_WALL]))
        width = rng.uniform(0.8, 2.4)
        spot = free_spot(rng, room, surface, width, taken)
        if spot:
            kind = rng.choice([CABINET, SHELF, WARDROBE if bedroom else BOOKCASE])
            tall = {CABINET: rng.uniform(0.5, 0.9), SHELF: rng.uniform(0.9, 2.0)}.get(
                kind, rng.uniform(1.8, 2.2)
            )
            place = against(room, surface, (spot[0] + spot[1]) / 2, 0.45)
            items.append((place, furniture.storage, (int(kind), width, tall)))
    if rng.random() < 0.15:
        spot = (rng.uniform(-room.left + 0.4, room.right - 0.4), rng.uniform(2, room.depth - 0.5))
        items.append(((*spot, rng.uniform(-math.pi, math.pi)), furniture.person, ()))
    draw_items(canvas, items)


def _dining(rng, room: Room) -> list:
    """A dining table somewhere in the room, and chairs around it facing it."""
    x, z = rng.uniform(-room.left + 1, room.right - 1), rng.uniform(2.4, max(2.5, room.depth - 1.2))
    size = (rng.uniform(0.8, 1.6), rng.uniform(0.7, 0.95))
    items = [((x, z, rng.normal(0, 0.2)), furniture.table, (SIDE_TABLE, size, 0.75))]
    for i in range(int(rng.integers(1, 4))):
        angle = i * math.pi / 2 + rng.normal(0, 0.15)
        reach = (size[1] if i % 2 == 0 else size[0]) / 2 + 0.25
        spot = (x + math.sin(angle) * reach, z - math.cos(angle) * reach, math.pi - angle)
        items.append((spot, furniture.chair, ()))
    return items


def kitchen(canvas: Canvas) -> None:
    """Runs of cabinets under a countertop and on the wall above, a refrigerator, often a
    table with chairs."""
    rng = canvas.rng
    room = make_room(canvas, str(rng.choice(["tiles", "tiles", "planks"])))
    wall_things(canvas, room, kitchen=True)
    colour, top = pick_colour(rng, PAINTED + WOODS), pick_colour(rng, TILES + METALS)
    walls = [BACK_WALL, int(rng.choice([LEFT_WALL, RIGHT_WALL]))][: int(rng.integers(1, 3))]
    for surface in walls:
        span = (-room.left, room.right) if surface == BACK_WALL else (1.0, room.depth - 0.65)
        run = min(span[1] - span[0] - 0.2, rng.uniform(2.2, 4.5))
        start = rng.uniform(span[0] + 0.05, span[1] - run - 0.05)
        units = max(1, round(run / 0.6))
        place = against(room, surface, start + run / 2, 0.6)
        furniture.cabinet(canvas, CABINET, place, (run / 2, 0.86, 0.3), colour, units=units)
        draw_boxes(
            canvas,
            COUNTERTOP,
            top,
            "rough",
            place,
            [((-run / 2 - 0.02, 0.86, -0.32), (run / 2 + 0.02, 0.9, 0.3))],
        )
        if rng.random() < 0.9:
            upper = in_front(place, -0.15)
            furniture.cabinet(
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
            furniture.cabinet(
                canvas,
                REFRIGERATOR,
                (side, room.depth - 0.38, 0.0),
                (0.36, 1.8, 0.33),
                pick_colour(rng, METALS[1:3] + PAINTED[:1]),
            )
    items = _dining(rng, room) if rng.random() < 0.6 else []
    if rng.random() < 0.25:
        spot = (rng.uniform(-room.left + 0.4, room.right - 0.4), rng.uniform(2, room.depth - 0.7))
        items.append(((*spot, rng.uniform(-math.pi, math.pi)), furniture.person, ()))
    draw_items(canvas, items)


def office(canvas: Canvas) -> None:
    """Desks with monitors and (mostly swivel) chairs, cabinets and bookcases, carpet."""
    rng = canvas.rng
    room = make_room(canvas, str(rng.choice(["carpet", "carpet", "tiles"])))
    taken = wall_things(canvas, room)
    items = []
    for _ in range(int(rng.integers(1, 4))):
        x, z = rng.uniform(-room.left + 0.8, room.right - 0.8), rng.uniform(2, room.depth - 0.5)
        yaw = rng.choice([0, math.pi / 2, -math.pi / 2, math.pi]) + rng.normal(0, 0.1)
        items.append(((x, z, yaw), furniture.desk, ()))
        chair = in_front((x, z, yaw), 0.65)
        items.append(((*chair[:2], yaw + math.pi + rng.normal(0, 0.5)), furniture.office_chair, ()))
    for _ in range(int(rng.integers(1, 4))):
        surface = int(rng.choice([BACK_WALL, LEFT_WALL, RIGHT_WALL]))
        width = rng.uniform(0.8, 2.4)
        spot = free_spot(rng, room, surface, width, taken)
        if spot:
            kind = int(rng.choice([CABINET, BOOKCASE, SHELF]))
            place = against(room, surface, (spot[0] + spot[1]) / 2, 0.45)
            items.append((place, furniture.storage, (kind, width, rng.uniform(0.8, 2.1))))
    if rng.random() < 0.3:
        spot = (rng.uniform(-room.left + 0.4, room.right - 0.4), rng.uniform(2, room.depth - 0.5))
        items.append(((*spot, rng.uniform(-math.pi, math.pi)), furniture.person, ()))
    draw_items(canvas, items)
