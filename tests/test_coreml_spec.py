"""Core ML spec inspection on specs built by hand: no model is converted.

The real converter's specs are checked in test_export.py; here each inspected field is set
explicitly, in both model types, so a misread field shows as a wrong value.
"""

import json
import re

import coremltools as ct
import pytest
from coremltools.proto import FeatureTypes_pb2, MIL_pb2, Model_pb2

from image_segmentation.errors import StageError
from image_segmentation.export import coreml_spec

LABELS = ["none", "wall", "floor", "chair"]
SIZE = (64, 96)
SCALE, OFFSET = 2 / 255, -1.0


def describe(spec: Model_pb2.Model, output_name: str, output_shape: list[int]) -> None:
    """Input image, output array and label metadata, as the export stage writes them."""
    source = spec.description.input.add()
    source.name = "image"
    source.type.imageType.height, source.type.imageType.width = SIZE
    source.type.imageType.colorSpace = FeatureTypes_pb2.ImageFeatureType.RGB
    target = spec.description.output.add()
    target.name = output_name
    target.type.multiArrayType.dataType = FeatureTypes_pb2.ArrayFeatureType.FLOAT16
    target.type.multiArrayType.shape.extend(output_shape)
    metadata = spec.description.metadata.userDefined
    metadata["labels"] = json.dumps(LABELS)
    metadata[coreml_spec.PREVIEW_TYPE] = "imageSegmenter"
    metadata[coreml_spec.PREVIEW_PARAMS] = json.dumps({"labels": LABELS})


def neural_network_spec() -> Model_pb2.Model:
    """A legacy neural network: scaler preprocessing, two float16 convolutions."""
    spec = Model_pb2.Model(specificationVersion=ct.target.iOS14.value)
    describe(spec, "labels", [])  # neural networks do not record the output shape
    scaler = spec.neuralNetwork.preprocessing.add().scaler
    scaler.channelScale = SCALE
    scaler.redBias = scaler.greenBias = scaler.blueBias = OFFSET
    for channels in (8, len(LABELS)):
        conv = spec.neuralNetwork.layers.add().convolution
        conv.outputChannels = channels
        conv.weights.float16Value = b"\0\0" * channels
    return spec


def ml_program_spec(palettized: bool = False) -> Model_pb2.Model:
    """An ML program: mul(image, scale), add(that, bias), float16 weights, then a conv."""
    spec = Model_pb2.Model(specificationVersion=ct.target.iOS16.value)
    describe(spec, "probabilities", [1, SIZE[0] // 4, SIZE[1] // 4, len(LABELS)])
    main = spec.mlProgram.functions["main"]
    main.opset = "CoreML6"
    block = main.block_specializations["CoreML6"]

    def op(kind: str, output: str, **inputs: str) -> MIL_pb2.Operation:
        operation = block.operations.add(type=kind)
        operation.outputs.add(name=output)
        for name, argument in inputs.items():
            operation.inputs[name].arguments.add(name=argument)
        return operation

    op("const", "scale").attributes["val"].immediateValue.tensor.floats.values.append(SCALE)
    op("mul", "scaled", x="image", y="scale")
    op("const", "bias").attributes["val"].immediateValue.tensor.floats.values.extend([OFFSET] * 3)
    op("add", "normalized", x="scaled", y="bias")
    for number in range(3):
        weights = op("const", f"weight_{number}").attributes["val"]
        weights.blobFileValue.fileName = "@model_path/weights/weight.bin"
        weights.type.tensorType.dataType = MIL_pb2.FLOAT16
    if palettized:
        op("constexpr_lut_to_dense", "palettized_weight")
    conv = op("conv", "logits", x="normalized", weight="weight_0")
    for size in (1, len(LABELS), SIZE[0] // 4, SIZE[1] // 4):  # NCHW
        conv.outputs[0].type.tensorType.dimensions.add().constant.size = size
    return spec


def expected(**changes) -> dict:
    return {
        "image_size": SIZE,
        "normalization": {"scale": SCALE, "offset": OFFSET},
        "labels": LABELS,
        "precision": "float16",
        "storage": (),
        **changes,
    }


@pytest.mark.parametrize("build", [neural_network_spec, ml_program_spec])
def test_inspection_reads_normalization_classes_and_weight_types(build):
    spec = build()
    preprocessing = coreml_spec.image_preprocessing(spec)
    assert preprocessing["scale"] == pytest.approx(SCALE)
    assert preprocessing["bias"] == pytest.approx([OFFSET] * 3)
    assert coreml_spec.classifier_channels(spec) == len(LABELS)
    counts = coreml_spec.weight_types(spec)
    assert counts == ({"FLOAT16": 2} if build is neural_network_spec else {"FLOAT16": 3})
    assert coreml_spec.weight_types(ml_program_spec(palettized=True))["palettized"] == 1


def test_a_network_without_preprocessing_reads_as_identity():
    spec = neural_network_spec()
    del spec.neuralNetwork.preprocessing[:]
    assert coreml_spec.image_preprocessing(spec) == {"scale": 1.0, "bias": [0.0, 0.0, 0.0]}


def test_verify_accepts_the_saved_specs_and_summarizes_them(tmp_path):
    network = tmp_path / "icnet.mlmodel"
    ct.utils.save_spec(neural_network_spec(), str(network))
    summary = coreml_spec.verify_coreml(
        network, expected(output_name="labels", output_shape=[1, *SIZE])
    )
    assert summary["type"] == "neuralNetwork" and summary["output"]["shape"] is None
    assert summary["minimum_deployment_target"] == "iOS14"
    assert summary["bytes"] == network.stat().st_size
    (tmp_path / "weights").mkdir()
    package = tmp_path / "icnet.mlpackage"
    ct.utils.save_spec(ml_program_spec(), str(package), weights_dir=str(tmp_path / "weights"))
    shape = [1, SIZE[0] // 4, SIZE[1] // 4, len(LABELS)]
    summary = coreml_spec.verify_coreml(
        package, expected(output_name="probabilities", output_shape=shape)
    )
    assert summary["minimum_deployment_target"] == "iOS16"
    assert summary["input"] == {
        "name": "image",
        "height": SIZE[0],
        "width": SIZE[1],
        "color_space": "RGB",
        "scale": pytest.approx(SCALE),
        "bias": pytest.approx([OFFSET] * 3),
    }
    assert summary["classes"] == len(LABELS) and summary["weights"] == {"FLOAT16": 3}


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"labels": [*LABELS, "sofa"]}, "the classifier has 4 classes, not 5"),
        ({"output_shape": [1, 16, 24, 5]}, "output shape [1, 16, 24, 4] is not [1, 16, 24, 5]"),
        ({"normalization": {"scale": 1 / 255, "offset": -0.5}}, "input scale/bias"),
        ({"image_size": (96, 64)}, "input image is 64x96 RGB"),
        ({"precision": "float32"}, "weights stored as {'FLOAT16': 3}, expected float32"),
        ({"storage": ("palettized",)}, "expected palettized"),
        ({"output_name": "labels"}, "output is 'probabilities', not 'labels'"),
    ],
)
def test_verify_names_what_differs_in_one_line(tmp_path, change, problem):
    (tmp_path / "weights").mkdir()
    package = tmp_path / "icnet.mlpackage"
    ct.utils.save_spec(ml_program_spec(), str(package), weights_dir=str(tmp_path / "weights"))
    shape = [1, SIZE[0] // 4, SIZE[1] // 4, len(LABELS)]
    wanted = {**expected(output_name="probabilities", output_shape=shape), **change}
    with pytest.raises(StageError, match=re.escape(problem)) as error:
        coreml_spec.verify_coreml(package, wanted)
    assert str(error.value).startswith("icnet.mlpackage is not what was exported: ")
    assert "\n" not in str(error.value)
