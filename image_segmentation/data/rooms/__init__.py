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

The modules, each importing only those above it: classes (ADE20K class ids and their palettes),
textures (colours and surface textures), camera (the camera, the canvas and what draws on it),
room (ray-cast rooms and what hangs on their walls), furniture (furniture and people), indoor
(living rooms, bedrooms, kitchens, offices), street (streets), generate (`render_photo` and
`generate_rooms`, the entry points).
"""
