"""How a photo becomes the model's input: the one contract that training validation, the evaluate
stage, `predict`, the TFLite check and the Core ML model's metadata all follow.

The resize mode is recorded in the model's config.json (`model_folder.resize_mode`):
- "stretch": the whole photo is resized to the model input, its aspect not kept; every pixel of
  the photo gets a class. Vision's `scaleFill` crop-and-scale option does the same.
- "crop": the aspect is kept and the centred window of the input's aspect is used (Vision's
  `centerCrop`); the photo's pixels outside that window get no class.

Either way the window is resized bilinearly (antialiased when shrinking), then normalized as
`pixel * scale + offset`, and the model's class probabilities are resized back to the window.
"""

RESIZE_MODES = ("stretch", "crop")
DEFAULT_RESIZE = "stretch"
VISION_CROP_AND_SCALE = {"stretch": "scaleFill", "crop": "centerCrop"}  # Core ML's Vision names
RESIZE_HELP = (
    "how a photo becomes the model input, for this model's whole life: stretch (the whole "
    "photo, aspect not kept; Vision scaleFill) or crop (the centred window of the input's "
    "aspect; Vision centerCrop)"
)


def check_mode(mode: str) -> None:
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode {mode!r} is not one of {RESIZE_MODES}")
