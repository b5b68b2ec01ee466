"""What ICNet can be built for: input sizes and width multipliers. No Keras here, so the light
stages (train's command line, the training-job step, `pipelines run`) refuse a size ICNet
cannot take in a second, not after TensorFlow has loaded or a GPU has started."""

import math

SIZE_MULTIPLE = 32  # the 1/4 branch ends at S/32: every branch then lines up exactly


def problems(num_classes: int, image_size: tuple[int, int], alpha: float) -> list[str]:
    """What ICNet cannot build, each with a message that says what would work."""
    found = []
    if num_classes < 2:
        found.append(f"ICNet needs at least 2 classes (none + one label), got {num_classes}")
    if not (math.isfinite(alpha) and alpha > 0):
        found.append(f"alpha scales every layer's width and must be > 0, got {alpha}")
    return found + size_problems(image_size)


def size_problems(image_size: tuple[int, int]) -> list[str]:
    """What is wrong with an input size for ICNet, with a size that would work."""
    if len(image_size) != 2:
        return [f"image size must be (height, width), got {tuple(image_size)}"]
    if any(int(dim) != dim or dim <= 0 or dim % SIZE_MULTIPLE for dim in image_size):
        suggestion = "x".join(
            str(max(1, math.ceil(dim / SIZE_MULTIPLE)) * SIZE_MULTIPLE) for dim in image_size
        )
        return [
            f"image size {image_size[0]}x{image_size[1]} is not supported: ICNet needs height "
            f"and width that are positive multiples of {SIZE_MULTIPLE} (its low-resolution "
            f"branch works at 1/{SIZE_MULTIPLE} of the input), e.g. {suggestion}"
        ]
    return []
