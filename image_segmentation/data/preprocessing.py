"""The photo-to-input contract (`photo_input.py`) in TensorFlow: the window a model sees, resized
and normalized, for tf.data, evaluation, predict and the TFLite checks alike.
"""

import numpy as np
import tensorflow as tf

from image_segmentation.data.photo_input import check_mode


def window(height, width, size: tuple[int, int], mode: str) -> tuple:
    """(top, left, height, width) of the part of a height x width photo the model sees.

    Python ints or scalar tensors (inside tf.data): the same arithmetic either way.
    """
    check_mode(mode)
    if mode == "stretch":
        return 0, 0, height, width
    # The largest centred window whose aspect is size's: the full height or the full width.
    height, width = tf.cast(height, tf.int32), tf.cast(width, tf.int32)
    exact_height, exact_width = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
    wide = exact_width * size[0] >= exact_height * size[1]
    kept_width = tf.maximum(1, tf.cast(tf.round(exact_height * size[1] / size[0]), tf.int32))
    kept_height = tf.maximum(1, tf.cast(tf.round(exact_width * size[0] / size[1]), tf.int32))
    rows = tf.where(wide, height, kept_height)
    columns = tf.where(wide, kept_width, width)
    return (height - rows) // 2, (width - columns) // 2, rows, columns


def view(
    image: np.ndarray | tf.Tensor, size: tuple[int, int], mode: str
) -> tuple[tf.Tensor, tuple]:
    """A uint8 RGB photo [H, W, 3] as the model sees it, before normalization (float32
    [*size, 3] in [0, 255]), and its `window`."""
    shape = tf.shape(image)
    top, left, rows, columns = window(shape[0], shape[1], size, mode)
    pixels = tf.cast(image[top : top + rows, left : left + columns], tf.float32)
    resized = tf.image.resize(pixels, size, method="bilinear", antialias=True)
    return resized, (top, left, rows, columns)


def model_input(
    image: np.ndarray | tf.Tensor, size: tuple[int, int], mode: str, normalization: dict
) -> tuple[tf.Tensor, tf.Tensor]:
    """A uint8 RGB photo [H, W, 3] as the model's float32 input [*size, 3], and its window
    (int32 [4]: top, left, height, width)."""
    pixels, seen = view(image, size, mode)
    normalized = pixels * normalization["scale"] + normalization["offset"]
    return normalized, tf.cast(tf.stack(seen), tf.int32)
