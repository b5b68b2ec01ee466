"""The ADE20K classes the scenes draw (besides those `synthetic` names) and their colours.

Class ids are looked up in ADE20K's own class list, so masks mean what real annotations mean. A
palette holds a few typical colours of a class; each object draws one and varies it, as the same
class differs from photo to photo.
"""

from image_segmentation.data.labels import parse_whitelist

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

# Class palettes (RGB): each object draws one and varies it (`pick_colour`).
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
