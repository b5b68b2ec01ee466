"""ICNet's residual stages initialized from ResNet-50 weights, pruned the ICNet paper's way.

ICNet at alpha = 1 is a ResNet-50 with every kernel count halved; the paper trained the full
network, then kept in each layer the kernels with the largest L1 norm. `initialize` does that
from Keras' ResNet-50 (ImageNet weights, or a weights file) into the bottlenecks conv2_1 ..
conv5_3 of a model from `icnet.build_icnet`, at any alpha whose widths fit in ResNet-50's
(alpha <= 2). ICNet's stem, full-resolution branch, pyramid pooling, cascade feature fusion and
classifiers keep their random initialization: ResNet-50 has nothing that matches them.

Which ResNet channels each ICNet conv keeps:
- a bottleneck's 1x1 reduce and 3x3 keep their own filters with the largest L1 norm;
- a stage's residual stream is written by the 1x1 projection and every 1x1 increase of the
  stage (their outputs are added), and read by every block's reduce and by the next stage:
  it keeps one set of channels, those with the largest L1 norm summed over all the convs that
  write it;
- conv2_1 reads ICNet's own (random) stem: its input channels take the ResNet conv1 filters
  with the largest L1 norm. ResNet's conv1 has 64 filters, ICNet's stem round(64 * alpha): at
  alpha > 1 the extra stem channels start with zero weights into conv2_1.
Kept channels are in L1 order, largest first (equal norms: lower index first), everywhere:
ICNet's channel i is the ResNet channel of the i-th largest norm, and each conv takes the
matching input channels of its kernel. At alpha = 2 nothing is pruned and conv2 and conv3 (not
dilated) compute ResNet's blocks exactly, on their channels in that order; ICNet's conv4 and
conv5 are dilated where ResNet's are strided, which changes no kernel shape.

ResNet's convs have a bias, ICNet's have not: BatchNorm(x + b) is BatchNorm(x) with the moving
mean lowered by b, so the bias folds in exactly; the moving variance takes up the difference
of the two BatchNorm epsilons.
"""

import logging
import tempfile
import warnings
from pathlib import Path

import keras
import numpy as np

from image_segmentation.cloud import storage
from image_segmentation.errors import StageError

log = logging.getLogger(__name__)

BLOCKS = {2: 3, 3: 4, 4: 6, 5: 3}  # stage: bottlenecks, the same in ICNet and ResNet-50
RESNET_WIDTHS = {2: 64, 3: 128, 4: 256, 5: 512}  # stage: bottleneck width (the stream is 4x)
CONVS = {"1x1_proj": "0", "1x1_reduce": "1", "3x3": "2", "1x1_increase": "3"}  # ICNet: ResNet
RESNET_STEM = "conv1_conv"
EXPECTED = (
    "ResNet-50 weights without the top: a Keras .weights.h5 saved from "
    "keras.applications.ResNet50(weights=None, include_top=False), or Keras' "
    "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
)


def mapping() -> dict[str, str]:
    """ICNet conv -> the ResNet-50 conv it starts from, in network order; each conv's
    BatchNorm ("<conv>_bn"; ResNet's "..._bn" in place of "..._conv") goes with it."""
    pairs = {}
    for stage, blocks in BLOCKS.items():
        for block in range(1, blocks + 1):
            for icnet_suffix, resnet_index in CONVS.items():
                if icnet_suffix != "1x1_proj" or block == 1:
                    pairs[f"conv{stage}_{block}_{icnet_suffix}"] = (
                        f"conv{stage}_block{block}_{resnet_index}_conv"
                    )
    return pairs


def resnet_filters(icnet_conv: str) -> int:
    """Output filters of the ResNet-50 conv that `icnet_conv` maps to."""
    stage = int(icnet_conv[len("conv")])
    inner = icnet_conv.endswith(("_1x1_reduce", "_3x3"))
    return RESNET_WIDTHS[stage] * (1 if inner else 4)


def l1_order(kernels: list[np.ndarray]) -> np.ndarray:
    """Output filter indices by L1 norm summed over `kernels` (convs that write the same
    channels), largest first; equal norms keep index order."""
    norms = sum(np.abs(kernel.astype(np.float64)).sum(axis=(0, 1, 2)) for kernel in kernels)
    return np.argsort(-norms, kind="stable")


def check_widths(model: keras.Model) -> None:
    """Refuse a model that is not ICNet, or one wider than ResNet-50 (alpha > 2), before any
    weights are read."""
    for icnet_conv in mapping():
        try:
            filters = model.get_layer(icnet_conv).kernel.shape[-1]
        except ValueError:
            raise StageError(
                f"model {model.name!r} has no layer {icnet_conv}: ResNet-50 weights initialize "
                "only ICNet (icnet.build_icnet)"
            ) from None
        if filters > resnet_filters(icnet_conv):
            raise StageError(
                f"ICNet's {icnet_conv} has {filters} filters, more than the "
                f"{resnet_filters(icnet_conv)} of ResNet-50's {mapping()[icnet_conv]}: "
                "ResNet-50 weights initialize ICNet only up to alpha = 2"
            )


def load_resnet50(source: str) -> keras.Model:
    """ResNet-50 without the top, with the weights of `source`: "imagenet" (Keras' file, from
    the Keras cache under KERAS_HOME, downloaded there if missing), a weights file, or the
    gs:// URI of one."""
    if source == "imagenet":
        try:
            return keras.applications.ResNet50(weights="imagenet", include_top=False)
        except Exception as error:  # Keras raises a bare Exception when the download fails
            raise StageError(
                f"cannot get Keras' ImageNet ResNet-50 weights: {one_line(error)}; put "
                "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5 in $KERAS_HOME/models "
                "or give the path of a weights file"
            ) from None
    if storage.is_gcs_uri(source):
        with tempfile.TemporaryDirectory() as folder:
            with storage.explained_errors(source):
                path = storage.download_file(source, Path(folder))
            return read_weights(path, source)
    if not Path(source).is_file():
        raise StageError(f"{source} is not a file; expected {EXPECTED}, or 'imagenet'")
    return read_weights(Path(source), source)


def read_weights(path: Path, source: str) -> keras.Model:
    """ResNet50(weights=None, include_top=False) with the weights of the file at `path`."""
    resnet = keras.applications.ResNet50(weights=None, include_top=False)
    try:
        with warnings.catch_warnings():
            # A file of another model warns once per layer it skips, then raises anyway.
            warnings.simplefilter("ignore", UserWarning)
            resnet.load_weights(path)
    except (OSError, ValueError, KeyError) as error:
        raise StageError(f"{source} does not hold {EXPECTED}: {one_line(error)}") from None
    return resnet


def one_line(error: BaseException) -> str:
    """An error's first line, cut short: Keras' loading errors run over many lines."""
    text = str(error).strip().split("\n", 1)[0]
    return text if len(text) <= 200 else f"{text[:197]}..."


def kept_channels(model: keras.Model, resnet: keras.Model) -> dict[str, tuple]:
    """ICNet conv -> (ResNet input channels, ResNet output filters) it keeps, each an index
    array in ICNet's channel order (see the module docstring for how they are chosen)."""
    kernels = {
        layer.name: layer.get_weights()[0]
        for layer in resnet.layers
        if isinstance(layer, keras.layers.Conv2D)
    }
    pairs = mapping()
    stem_width = model.get_layer("conv2_1_1x1_reduce").kernel.shape[2]
    stream = l1_order([kernels[RESNET_STEM]])[:stem_width]
    kept = {}
    for stage, blocks in BLOCKS.items():
        writers = [f"conv{stage}_1_1x1_proj"]
        writers += [f"conv{stage}_{block}_1x1_increase" for block in range(1, blocks + 1)]
        width = model.get_layer(writers[0]).kernel.shape[-1]
        stage_stream = l1_order([kernels[pairs[conv]] for conv in writers])[:width]
        kept[writers[0]] = (stream, stage_stream)
        for block in range(1, blocks + 1):
            inputs = stream if block == 1 else stage_stream
            for conv in (f"conv{stage}_{block}_1x1_reduce", f"conv{stage}_{block}_3x3"):
                width = model.get_layer(conv).kernel.shape[-1]
                outputs = l1_order([kernels[pairs[conv]]])[:width]
                kept[conv] = (inputs, outputs)
                inputs = outputs
            kept[f"conv{stage}_{block}_1x1_increase"] = (inputs, stage_stream)
        stream = stage_stream
    return kept


def copy_conv_bn(
    model: keras.Model, resnet: keras.Model, conv: str, inputs: np.ndarray, outputs: np.ndarray
) -> dict:
    """Set ICNet's `conv` and its BatchNorm from the kept channels of its ResNet conv and
    BatchNorm, the conv bias folded into the moving mean; returns the report row."""
    resnet_conv = mapping()[conv]
    kernel, bias = resnet.get_layer(resnet_conv).get_weights()
    kept = kernel[:, :, inputs][..., outputs]
    icnet_conv = model.get_layer(conv)
    zero_channels = icnet_conv.kernel.shape[2] - len(inputs)  # conv2_1 at alpha > 1 only
    icnet_conv.set_weights([np.pad(kept, ((0, 0), (0, 0), (0, zero_channels), (0, 0)))])

    resnet_bn = resnet.get_layer(resnet_conv.removesuffix("_conv") + "_bn")
    icnet_bn = model.get_layer(f"{conv}_bn")
    gamma, beta, mean, variance = (weight[outputs] for weight in resnet_bn.get_weights())
    icnet_bn.set_weights(
        [gamma, beta, mean - bias[outputs], variance + (resnet_bn.epsilon - icnet_bn.epsilon)]
    )
    return {
        "layer": conv,
        "from": resnet_conv,
        "filters": [len(outputs), kernel.shape[-1]],
        "channels": [len(inputs), kernel.shape[2]],
        "zero_channels": zero_channels,
        "parameters": kept.size + 4 * len(outputs),
    }


def initialize(model: keras.Model, source: str) -> dict:
    """Set the residual stages (conv2_1 .. conv5_3, convs and BatchNorms) of an ICNet `model`
    from ResNet-50's, pruned by L1 norm; every other layer is left as it is.

    `source`: "imagenet", or the path or gs:// URI of a ResNet-50 weights file. Returns a
    report, JSON-ready: {"source", "layers": one row per conv ({"layer", "from", "filters":
    [kept, ResNet's], "channels": [kept, ResNet's], "zero_channels", "parameters"}, its
    BatchNorm included), "parameters" (set from ResNet-50), "total_parameters" (the model's)}.
    """
    check_widths(model)
    resnet = load_resnet50(source)
    rows = [
        copy_conv_bn(model, resnet, conv, inputs, outputs)
        for conv, (inputs, outputs) in kept_channels(model, resnet).items()
    ]
    report = {
        "source": source,
        "layers": rows,
        "parameters": sum(row["parameters"] for row in rows),
        "total_parameters": model.count_params(),
    }
    log.info(
        "initialized %d ICNet layers from ResNet-50 (%s): %d of %d parameters (%.1f%%)",
        len(rows),
        source,
        report["parameters"],
        report["total_parameters"],
        100 * report["parameters"] / report["total_parameters"],
    )
    return report
