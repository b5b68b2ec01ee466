"""Reading a saved Core ML model's spec back, to check it is what the export stage meant.

Core ML cannot run on Linux, so the exported file is checked by its protobuf spec: input,
normalization, output, class count, labels and weight types. Pure spec reading: no model is
converted or run here. (Importing coremltools still imports TensorFlow when it is installed:
its package start-up probes every framework it can convert from.)
"""

import json
from pathlib import Path

import coremltools as ct
import numpy as np
from coremltools.proto import FeatureTypes_pb2, MIL_pb2

from image_segmentation.contracts import export_folder
from image_segmentation.errors import StageError

INPUT_NAME = "image"
# How a compressed weight is stored: the op that decompresses it, and the word for it.
COMPRESSED_OPS = {
    "constexpr_lut_to_dense": "palettized",
    "constexpr_affine_dequantize": "quantized",
    "constexpr_blockwise_shift_scale": "quantized",
    "constexpr_sparse_to_dense": "sparse",
    "constexpr_lut_to_sparse": "sparse palettized",
}
STORAGE = {  # options.Compression.kind: the storage its weights must show
    "none": (),
    "palettize": ("palettized",),
    "linear": ("quantized",),
    "prune": ("sparse",),
    "prune+palettize": ("sparse palettized", "sparse"),  # a palette of the non-zero values
}
PREVIEW_TYPE = "com.apple.coreml.model.preview.type"
PREVIEW_PARAMS = "com.apple.coreml.model.preview.params"


def _mil_block(spec):
    main = spec.mlProgram.functions["main"]
    return main.block_specializations[main.opset]


def _const_floats(op) -> list[float]:
    return list(op.attributes["val"].immediateValue.tensor.floats.values)


def _arg(op, name: str) -> str:
    return op.inputs[name].arguments[0].name


def image_preprocessing(spec) -> dict:
    """The scale and per-channel bias the spec applies to the input image (1 and 0 when it
    applies none)."""
    if spec.WhichOneof("Type") == "neuralNetwork":
        if not spec.neuralNetwork.preprocessing:
            return {"scale": 1.0, "bias": [0.0, 0.0, 0.0]}
        scaler = spec.neuralNetwork.preprocessing[0].scaler
        bias = [scaler.redBias, scaler.greenBias, scaler.blueBias]
        return {"scale": scaler.channelScale, "bias": bias}
    # An ML program applies them as `mul(image, scale)` then `add(that, bias)` on consts.
    operations = list(_mil_block(spec).operations)
    consts = {op.outputs[0].name: op for op in operations if op.type == "const"}
    result, current = {"scale": 1.0, "bias": [0.0, 0.0, 0.0]}, INPUT_NAME
    for op in operations:
        if op.type in ("mul", "add") and _arg(op, "x") == current:
            values = _const_floats(consts[_arg(op, "y")])
            if op.type == "mul":
                result["scale"] = values[0]
            else:
                result["bias"] = values
            current = op.outputs[0].name
    return result


def classifier_channels(spec) -> int:
    """Output channels of the last convolution, the classifier: the model's class count."""
    if spec.WhichOneof("Type") == "neuralNetwork":
        convs = [layer for layer in spec.neuralNetwork.layers if layer.HasField("convolution")]
        return convs[-1].convolution.outputChannels
    convs = [op for op in _mil_block(spec).operations if op.type == "conv"]
    return convs[-1].outputs[0].type.tensorType.dimensions[1].constant.size  # NCHW


def weight_types(spec) -> dict[str, int]:
    """How many weight tensors are stored as each type, and how many of them compressed
    (COMPRESSED_OPS' words: palettized, quantized, sparse, sparse palettized)."""
    counts: dict[str, int] = {}
    if spec.WhichOneof("Type") == "neuralNetwork":
        for layer in spec.neuralNetwork.layers:
            if layer.WhichOneof("layer") == "convolution":
                weights = layer.convolution.weights
                kind = "FLOAT16" if weights.float16Value else "FLOAT32"
                counts[kind] = counts.get(kind, 0) + 1
        return counts
    for op in _mil_block(spec).operations:
        value = op.attributes["val"] if op.type == "const" else None
        if value is not None and value.WhichOneof("value") == "blobFileValue":
            kind = MIL_pb2.DataType.Name(value.type.tensorType.dataType)
            counts[kind] = counts.get(kind, 0) + 1
        elif op.type in COMPRESSED_OPS:
            counts[COMPRESSED_OPS[op.type]] = counts.get(COMPRESSED_OPS[op.type], 0) + 1
    return counts


def verify_coreml(path: Path, expected: dict) -> dict:
    """Read the saved spec back and check it against `expected`; return its summary.

    `expected`: input size, normalization, output name and shape (None: not recorded, as
    neural networks do not record it), labels, weight precision and storage (a STORAGE
    value: () for plain float weights).
    """
    spec = ct.utils.load_spec(str(path))
    height, width = expected["image_size"]
    problems = []
    (source,) = spec.description.input
    image = source.type.imageType
    color_space = FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(image.colorSpace)
    if source.name != INPUT_NAME or source.type.WhichOneof("Type") != "imageType":
        problems.append(f"input is {source.name!r} ({source.type.WhichOneof('Type')})")
    if (image.height, image.width) != (height, width) or color_space != "RGB":
        problems.append(f"input image is {image.height}x{image.width} {color_space}")
    preprocessing = image_preprocessing(spec)
    scale, offset = expected["normalization"]["scale"], expected["normalization"]["offset"]
    if not np.allclose(preprocessing["scale"], scale, rtol=1e-6) or not np.allclose(
        preprocessing["bias"], [offset] * 3, rtol=1e-6
    ):
        problems.append(f"input scale/bias {preprocessing} are not {scale}/{offset}")
    (target,) = spec.description.output
    array = target.type.multiArrayType
    shape = list(array.shape) or None
    if target.name != expected["output_name"]:
        problems.append(f"output is {target.name!r}, not {expected['output_name']!r}")
    if shape is not None and shape != expected["output_shape"]:
        problems.append(f"output shape {shape} is not {expected['output_shape']}")
    classes = classifier_channels(spec)
    if classes != len(expected["labels"]):
        problems.append(f"the classifier has {classes} classes, not {len(expected['labels'])}")
    metadata = dict(spec.description.metadata.userDefined)
    stored = json.loads(metadata.get(PREVIEW_PARAMS, "{}")).get("labels")
    if stored != expected["labels"] or json.loads(metadata.get("labels", "null")) != stored:
        problems.append(f"metadata labels {stored} are not the model's {len(expected['labels'])}")
    if metadata.get(PREVIEW_TYPE) != "imageSegmenter":
        problems.append(f"preview type is {metadata.get(PREVIEW_TYPE)!r}")
    weights = weight_types(spec)
    wrong = "FLOAT32" if expected["precision"] == "float16" else "FLOAT16"
    if weights.get(wrong) or not weights:
        problems.append(f"weights stored as {weights}, expected {expected['precision']}")
    compressed = {word for word in COMPRESSED_OPS.values() if weights.get(word)}
    if compressed != set(expected["storage"]):
        storage = " and ".join(expected["storage"]) or "float"
        problems.append(f"weights stored as {weights}, expected {storage}")
    if problems:
        raise StageError(f"{path.name} is not what was exported: {'; '.join(problems)}")
    return {
        "file": path.name,
        "bytes": export_folder.path_bytes(path),
        "type": spec.WhichOneof("Type"),
        "specification_version": spec.specificationVersion,
        "minimum_deployment_target": ct.target(spec.specificationVersion).name,
        "input": {
            "name": source.name,
            "height": image.height,
            "width": image.width,
            "color_space": color_space,
            **preprocessing,
        },
        "output": {
            "name": target.name,
            "shape": shape,
            "dtype": FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(array.dataType),
        },
        "weights": weights,
        "classes": classes,
    }
