"""The predict stage's output folder, per photo NAME: NAME.overlay.png (the photo with each class
tinted), NAME.labels.png (the class index of every pixel at the photo's size, 255: no class)
and NAME.json (each class's share of the photo, the model and resize mode used)."""

OVERLAY_SUFFIX = ".overlay.png"
LABELS_SUFFIX = ".labels.png"
COVERAGE_SUFFIX = ".json"
