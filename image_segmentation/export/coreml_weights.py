"""The weights a saved Core ML file really holds, back in the Keras model, so that their
quality is measured with the evaluate stage's scorer: Core ML predictions cannot run on Linux.

coremltools decompresses the file's weights (palettized, quantized or sparse) to plain
float tensors. The converter folded each BatchNorm into the convolution before it
(kernel * gamma / sqrt(variance + epsilon)) and renamed the tensors, so each Core ML kernel is
found by value: it is the one of the same shape nearest to the Keras kernel folded the same
way, and it goes back into the Keras kernel divided by that same BatchNorm scale. Any
kernel's nearest tensor is far nearer than any other (a compressed kernel is within about
0.3 of its own in relative error, other kernels at about 1.3), so a kernel whose nearest is
not within 1 is refused rather than guessed. Biases stay the Keras model's: they are never
compressed and hold well under 1% of the weights.
"""

from pathlib import Path

import coremltools as ct
import keras
import numpy as np
from coremltools.optimize import coreml as ct_optimize

from image_segmentation.errors import StageError

MAX_RELATIVE_ERROR = 1.0


def coreml_kernels(path: Path) -> list[np.ndarray]:
    """Every convolution kernel the saved model holds, decompressed, as float32 in Core ML's
    (out, in, height, width) layout."""
    mlmodel = ct.models.MLModel(str(path), skip_model_load=True)
    plain = ct_optimize.decompress_weights(mlmodel)
    weights = ct_optimize.get_weights_metadata(plain, weight_threshold=0)
    return [
        meta.val.astype(np.float32)
        for name, meta in weights.items()
        if any(
            op.op_type == "conv" and op.params_name_mapping.get("weight") == name
            for op in meta.child_ops
        )
    ]


def batchnorm_scale(model: keras.Model, conv: keras.layers.Conv2D) -> np.ndarray | float:
    """The per-channel factor the converter folds into `conv`'s kernel: that of the
    BatchNorm right after it (named CONV_bn in ICNet), else 1."""
    try:
        norm = model.get_layer(f"{conv.name}_bn")
    except ValueError:
        return 1.0
    gamma, _, _, variance = norm.get_weights()
    scale = gamma / np.sqrt(variance + norm.epsilon)
    return np.where(scale == 0, 1.0, scale)  # a zero channel is zero in any kernel


def with_coreml_weights(model: keras.Model, path: Path) -> keras.Model:
    """A copy of `model` whose convolution kernels are those the Core ML file at `path`
    holds (`model` is the Keras model the file was converted from)."""
    kernels = coreml_kernels(path)
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    taken: set[int] = set()
    convs = [layer for layer in copy.layers if isinstance(layer, keras.layers.Conv2D)]
    if len(convs) != len(kernels):
        raise StageError(
            f"{Path(path).name} holds {len(kernels)} convolution kernels, the model "
            f"{len(convs)}: it was not converted from this model"
        )
    for conv in convs:
        scale = batchnorm_scale(copy, conv)
        folded = np.transpose(conv.kernel.numpy() * scale, (3, 2, 0, 1))
        norm = max(float(np.linalg.norm(folded)), 1e-12)
        distances = {
            index: float(np.linalg.norm(kernel - folded)) / norm
            for index, kernel in enumerate(kernels)
            if index not in taken and kernel.shape == folded.shape
        }
        if not distances or min(distances.values()) > MAX_RELATIVE_ERROR:
            raise StageError(
                f"{Path(path).name} holds no kernel that matches the model's {conv.name}: "
                "it was not converted from this model"
            )
        index = min(distances, key=distances.get)
        taken.add(index)
        conv.kernel.assign(np.transpose(kernels[index], (2, 3, 1, 0)) / scale)
    return copy
