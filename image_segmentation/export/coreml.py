"""Core ML conversion of the in-memory Keras inference model, and the model's description.

The input is an RGB image that the model normalizes itself with the training's
`pixel * scale + offset` (the legacy converter used 2/255 and -1 while training used 1/255
and -0.5, so every shipped model saw shifted inputs). The model is converted from memory:
a saved Keras 3 file or SavedModel does not convert.
"""

import contextlib
import io
import json

import coremltools as ct
import keras
from coremltools.models.neural_network import quantization_utils
from coremltools.optimize import coreml as ct_optimize

from image_segmentation.contracts import model_folder
from image_segmentation.data.photo_input import VISION_CROP_AND_SCALE
from image_segmentation.export.coreml_spec import INPUT_NAME, PREVIEW_PARAMS, PREVIEW_TYPE
from image_segmentation.export.options import (
    BLOCK_SIZE,
    COMPRESS_MIN_WEIGHTS,
    COMPRESSIONS,
    OUTPUT_KINDS,
    SPARSITY,
)

PHOTO_TO_INPUT = {
    "stretch": "resized whole to this size, aspect not kept",
    "crop": "centre-cropped to this aspect, then resized",
}


def convert(
    model: keras.Model, normalization: dict, format: str, precision: str, target: str = "iOS16"
) -> ct.models.MLModel:
    """An ML Program (iOS 16+, or `target` for the compressions that need a later one) or a
    legacy neural network (iOS 14+) with an RGB image input that applies the training
    normalization; float16 or float32 weights."""
    height, width = model.input.shape[1:3]
    image = ct.ImageType(
        name=INPUT_NAME,
        shape=(1, height, width, 3),
        scale=normalization["scale"],
        bias=[normalization["offset"]] * 3,
        color_layout=ct.colorlayout.RGB,
    )
    if format == "mlprogram":
        mlmodel = ct.convert(
            model,
            source="tensorflow",
            convert_to="mlprogram",
            inputs=[image],
            minimum_deployment_target=getattr(ct.target, target),
            compute_precision=(
                ct.precision.FLOAT16 if precision == "float16" else ct.precision.FLOAT32
            ),
        )
        return mlmodel
    mlmodel = ct.convert(
        model,
        source="tensorflow",
        convert_to="neuralnetwork",
        inputs=[image],
        minimum_deployment_target=ct.target.iOS14,
    )
    if precision == "float16":
        with contextlib.redirect_stdout(io.StringIO()):  # it prints a line per layer
            mlmodel = quantization_utils.quantize_weights(mlmodel, nbits=16)
    return mlmodel


def compress(mlmodel: ct.models.MLModel, compression: str) -> ct.models.MLModel:
    """The ML Program with its large float16 weight tensors compressed as `compression` (an
    options.COMPRESSIONS name) says; the program must target at least the compression's iOS."""
    kind = COMPRESSIONS[compression]
    threshold = COMPRESS_MIN_WEIGHTS - 1  # coremltools compresses tensors larger than this

    def optimization(config) -> ct_optimize.OptimizationConfig:
        return ct_optimize.OptimizationConfig(global_config=config)

    def palettizer() -> ct_optimize.OpPalettizerConfig:
        return ct_optimize.OpPalettizerConfig(
            mode="kmeans", nbits=kind.bits, weight_threshold=threshold
        )

    def pruner() -> ct_optimize.OpMagnitudePrunerConfig:
        return ct_optimize.OpMagnitudePrunerConfig(
            target_sparsity=SPARSITY, weight_threshold=threshold
        )

    if kind.kind == "palettize":
        return ct_optimize.palettize_weights(mlmodel, optimization(palettizer()))
    if kind.kind == "linear":
        config = ct_optimize.OpLinearQuantizerConfig(
            mode="linear_symmetric",
            dtype=f"int{kind.bits}",
            granularity=kind.granularity,
            block_size=BLOCK_SIZE if kind.granularity == "per_block" else None,
            weight_threshold=threshold,
        )
        return ct_optimize.linear_quantize_weights(mlmodel, optimization(config))
    if kind.kind == "prune":
        return ct_optimize.prune_weights(mlmodel, optimization(pruner()))
    if kind.kind == "prune+palettize":
        pruned = ct_optimize.prune_weights(mlmodel, optimization(pruner()))
        return ct_optimize.palettize_weights(
            pruned, optimization(palettizer()), joint_compression=True
        )
    return mlmodel


def describe(
    mlmodel: ct.models.MLModel,
    config: dict,
    size: tuple[int, int],
    output_kind: str,
    about: dict[str, str],
    metadata: dict[str, str],
) -> ct.models.MLModel:
    """The model with its output renamed for `output_kind`, descriptions, `about` (author,
    license, version) and metadata: labels, the Xcode imageSegmenter preview, input size,
    normalization, then `metadata`. Returns the new model."""
    spec = mlmodel.get_spec()
    kind = OUTPUT_KINDS[output_kind]
    output_name = kind.feature
    ct.utils.rename_feature(spec, spec.description.output[0].name, output_name)
    mlmodel = ct.models.MLModel(spec, weights_dir=mlmodel.weights_dir, skip_model_load=True)
    names = config["labels"]
    height, width = size
    scale, offset = config["normalization"]["scale"], config["normalization"]["offset"]
    mlmodel.short_description = (
        f"ICNet semantic segmentation (alpha {config['alpha']}) of {height}x{width} RGB images "
        f"into {len(names)} classes: {'; '.join(names)}"
    )
    mlmodel.author = about["author"]
    mlmodel.license = about["license"]
    mlmodel.version = about["version"]
    resize = model_folder.resize_mode(config)
    crop_and_scale = VISION_CROP_AND_SCALE[resize]
    mlmodel.input_description[INPUT_NAME] = (
        f"RGB image, {width} wide and {height} high; the model normalizes it itself "
        f"(pixel * {scale:.6g} {'-' if offset < 0 else '+'} {abs(offset):g}, as in training). "
        f"It was trained and evaluated on photos {PHOTO_TO_INPUT[resize]}: with Vision, set "
        f"the request's imageCropAndScaleOption to .{crop_and_scale}"
    )
    mlmodel.output_description[output_name] = kind.description.format(
        height=height, width=width, height4=height // 4, width4=width // 4, classes=len(names)
    )
    mlmodel.user_defined_metadata.update(
        {
            "labels": json.dumps(names),
            PREVIEW_TYPE: "imageSegmenter",
            PREVIEW_PARAMS: json.dumps({"labels": names}),
            "output": output_kind,
            "image_size": json.dumps(list(size)),
            "normalization": json.dumps({"scale": scale, "offset": offset}),
            "resize": resize,
            "vision_image_crop_and_scale_option": crop_and_scale,
            **metadata,
        }
    )
    return mlmodel
