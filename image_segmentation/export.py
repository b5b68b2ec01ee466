"""The export stage: a trained model directory to Core ML (and TFLite) files for apps.

The exported model is the training model's own layers up to the S/4 probabilities (the
label-guidance heads dropped), optionally followed by a bilinear upsample to the input size
or an argmax to a label map. The Core ML input is an RGB image that the model normalizes
itself with the training's `pixel * scale + offset` (the legacy converter used 2/255 and -1
while training used 1/255 and -0.5, so every shipped model saw shifted inputs).

Core ML cannot run on Linux, so the Core ML file is checked by reading its spec back (input,
normalization, output, labels, weight types), and the numerics are checked through TFLite:
the same Keras graph converted to TFLite must match Keras on real images within fixed bounds.
Every figure lands in `export.json` beside the files, and in the Core ML metadata.
"""

import argparse
import contextlib
import io
import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import coremltools as ct
import keras
import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from coremltools.models.neural_network import quantization_utils
from coremltools.optimize import coreml as ct_optimize
from coremltools.proto import FeatureTypes_pb2, MIL_pb2

from image_segmentation import dataset, files, icnet, labels, synthetic, train
from image_segmentation.errors import StageError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
EXPORT_FILE = "export.json"
LABELS_FILE = "labels.txt"
INPUT_NAME = "image"
FORMATS = ("mlprogram", "neuralnetwork")
PRECISIONS = ("float16", "float32")
# Output kind -> Core ML output name. "full" is "probabilities" at the input size.
OUTPUTS = {"probabilities": "probabilities", "full": "probabilities", "labels": "labels"}
REQUIRED_CONFIG = ("labels", "num_classes", "image_size", "alpha", "normalization")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MAX_CHECK_IMAGES = 16
SYNTHETIC_CHECK_IMAGES = 3
# kmeans1d, which coremltools bundles, clusters float16 tensors of 10,000+ weights; smaller
# ones would need scikit-learn, and hold a small share of the model's bytes anyway.
PALETTIZE_MIN_WEIGHTS = 10_000
PREVIEW_TYPE = "com.apple.coreml.model.preview.type"
PREVIEW_PARAMS = "com.apple.coreml.model.preview.params"
DEFAULT_AUTHOR = "image-segmentation"
DEFAULT_LICENSE = "Trained on ADE20K: see its terms of use (https://ade20k.csail.mit.edu)"


@dataclass(frozen=True)
class Bounds:
    """How far a converted model may be from Keras on the check images."""

    max_abs_diff: float  # of the probabilities; not applied to label maps
    min_argmax_agreement: float  # share of pixels with the same class


# FP32 is the same computation (measured: < 1e-5). FP16 weights move probabilities by
# ~2e-4 on average and up to ~1e-2 at class boundaries, where they are steep (measured).
TFLITE_SUFFIXES = {"float32": ".tflite", "float16": "_fp16.tflite"}
TFLITE_BOUNDS = {
    "float32": Bounds(max_abs_diff=1e-4, min_argmax_agreement=0.999),
    "float16": Bounds(max_abs_diff=5e-2, min_argmax_agreement=0.99),
}


@dataclass(frozen=True)
class ExportOptions:
    format: str = "mlprogram"
    precision: str = "float16"
    palettize: bool = False
    output: str = "probabilities"
    tflite: bool = True
    image_size: tuple[int, int] | None = None  # None: the size the model was trained at
    model_name: str = "icnet"
    version: str = "1.0"
    author: str = DEFAULT_AUTHOR
    license: str = DEFAULT_LICENSE
    check_images: Path | None = None  # None: a few generated images


def check_options(options: ExportOptions) -> None:
    """Refuse combinations that cannot be exported, before any slow work."""
    problems = []
    if options.format not in FORMATS:
        problems.append(f"unknown format {options.format!r} (choose from {', '.join(FORMATS)})")
    if options.precision not in PRECISIONS:
        problems.append(
            f"unknown precision {options.precision!r} (choose from {', '.join(PRECISIONS)})"
        )
    if options.output not in OUTPUTS:
        problems.append(f"unknown output {options.output!r} (choose from {', '.join(OUTPUTS)})")
    if options.palettize and options.format != "mlprogram":
        problems.append("--palettize works on ML Programs: use --format mlprogram")
    if options.palettize and options.precision != "float16":
        problems.append("--palettize clusters float16 weights: use --precision float16")
    if not options.model_name or "/" in options.model_name or options.model_name.startswith("."):
        problems.append(f"bad model name {options.model_name!r}: it names the exported files")
    if options.image_size is not None:
        try:
            icnet.check_arguments(2, options.image_size, 1.0)
        except StageError as error:
            problems.append(str(error))
    if problems:
        raise StageError("; ".join(problems))


def read_config(model_dir: Path) -> dict:
    """config.json of a train-stage model directory, checked for what export needs."""
    model_dir = Path(model_dir)
    config_path = model_dir / train.CONFIG_FILE
    if not config_path.is_file():
        raise StageError(
            f"{model_dir} is not a model directory (no {train.CONFIG_FILE}): "
            "pass the train stage's output"
        )
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise StageError(f"{config_path} is not valid JSON: {error}") from error
    missing = [key for key in REQUIRED_CONFIG if key not in config]
    if missing:
        raise StageError(f"{config_path} lacks {', '.join(missing)}")
    names = config["labels"]
    if not isinstance(names, list) or len(names) != config["num_classes"]:
        raise StageError(
            f"{config_path}: num_classes is {config['num_classes']} but labels lists "
            f"{len(names) if isinstance(names, list) else 'no list of'} names"
        )
    normalization = config["normalization"]
    if not isinstance(normalization, dict) or not all(
        isinstance(normalization.get(key), int | float) for key in ("scale", "offset")
    ):
        raise StageError(f"{config_path}: normalization needs numbers 'scale' and 'offset'")
    if not (model_dir / train.WEIGHTS_FILE).is_file():
        raise StageError(f"{model_dir} has no {train.WEIGHTS_FILE}: training did not finish")
    return config


def load_inference_model(
    model_dir: Path, image_size: tuple[int, int] | None = None
) -> tuple[keras.Model, dict]:
    """The trained weights in the inference model (S/4 probabilities), and the config.

    ICNet's weights do not depend on the input size, so a model trained on 768x768 crops can
    be exported at another multiple of 32 by building that size and copying the weights.
    """
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    try:
        model, _ = train.load_model(model_dir)
    except StageError:
        raise
    except (ValueError, OSError) as error:
        raise StageError(
            f"{model_dir / train.WEIGHTS_FILE} does not fit the model {train.CONFIG_FILE} "
            f"describes: {str(error).splitlines()[0]}"
        ) from error
    trained_size = tuple(config["image_size"])
    if image_size is not None and tuple(image_size) != trained_size:
        resized = icnet.build_icnet(config["num_classes"], tuple(image_size), config["alpha"])
        resized.set_weights(model.get_weights())
        model = resized
    return icnet.inference_model(model), config


class ArgmaxLabels(keras.layers.Layer):
    """Class index per pixel as int32.

    tf.argmax itself: keras.ops.argmax adds a Bitcast op that Core ML cannot convert.
    """

    def call(self, inputs):
        return tf.math.argmax(inputs, axis=-1, output_type=tf.int32)

    def compute_output_shape(self, input_shape):
        return input_shape[:-1]


def with_output(inference: keras.Model, output: str) -> keras.Model:
    """The inference model with the chosen output: S/4 probabilities, probabilities at the
    input size (bilinear, as evaluation upsamples them), or the argmax label map of those."""
    if output not in OUTPUTS:
        raise StageError(f"unknown output {output!r} (choose from {', '.join(OUTPUTS)})")
    if output == "probabilities":
        return inference
    size = tuple(inference.input.shape[1:3])
    result = icnet.BilinearResize(size, name="probabilities_full")(inference.output)
    if output == "labels":
        result = ArgmaxLabels(name="labels")(result)
    return keras.Model(inference.input, result, name=f"icnet_{output}")


def preprocess(
    image: np.ndarray, size: tuple[int, int], normalization: dataset.Normalization
) -> np.ndarray:
    """An RGB uint8 image as the model sees it in validation: scaled to cover `size`, centre
    cropped, normalized (the dataset module's own functions)."""
    mask = tf.zeros(image.shape[:2], tf.uint8)
    cropped, _ = dataset.center_crop(tf.constant(image), mask, size)
    return dataset.normalize(cropped, normalization).numpy()


def load_check_images(
    directory: Path | None, size: tuple[int, int], normalization: dataset.Normalization
) -> tuple[np.ndarray, list[str]]:
    """Normalized [N, H, W, 3] images for the numeric checks, and their names.

    From `directory` (its first few JPEG/PNG files, sorted) or, without one, a few generated
    ADE20K-like images, so the check runs anywhere.
    """
    if directory is None:
        rng = np.random.default_rng(0)
        images = [
            synthetic.render_sample(rng, *size, synthetic.DEFAULT_CLASSES)[0]
            for _ in range(SYNTHETIC_CHECK_IMAGES)
        ]
        names = [f"synthetic-{number}" for number in range(len(images))]
    else:
        directory = Path(directory)
        if not directory.is_dir():
            raise StageError(f"--check-images {directory} is not a folder")
        paths = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise StageError(f"--check-images {directory} holds no {'/'.join(IMAGE_SUFFIXES)}")
        paths = paths[:MAX_CHECK_IMAGES]
        images = []
        for path in paths:  # decoded by TensorFlow, as training does (PIL's JPEG differs)
            try:
                image = tf.io.decode_image(path.read_bytes(), channels=3, expand_animations=False)
            except tf.errors.InvalidArgumentError as error:
                raise StageError(f"check image {path} cannot be read: {error.message}") from error
            images.append(image.numpy())
        names = [path.name for path in paths]
    return np.stack([preprocess(image, size, normalization) for image in images]), names


def convert_tflite(model: keras.Model, precision: str) -> bytes:
    """TFLite flatbuffer; float16 stores the weights as float16 (half the size)."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if precision == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    return converter.convert()


def run_tflite(content: bytes, images: np.ndarray, threads: int | None = None) -> np.ndarray:
    """The TFLite model's output for each image (batch of one, as on a phone)."""
    interpreter = Interpreter(model_content=content, num_threads=threads)
    interpreter.allocate_tensors()
    (source,), (target,) = interpreter.get_input_details(), interpreter.get_output_details()
    outputs = []
    for image in images:
        interpreter.set_tensor(source["index"], image[None].astype(source["dtype"]))
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(target["index"])[0])
    return np.stack(outputs)


def compare(reference: np.ndarray, candidate: np.ndarray, output: str) -> dict:
    """Max abs difference of probabilities and the share of pixels with the same class."""
    if reference.shape != candidate.shape:
        raise StageError(f"output shape {candidate.shape} differs from Keras' {reference.shape}")
    if output == "labels":
        return {"max_abs_diff": None, "argmax_agreement": float(np.mean(reference == candidate))}
    return {
        "max_abs_diff": float(np.max(np.abs(reference - candidate))),
        "argmax_agreement": float(np.mean(reference.argmax(-1) == candidate.argmax(-1))),
    }


def check_against_keras(figures: dict, bounds: Bounds, what: str) -> None:
    """StageError when a converted model strays beyond its bounds."""
    problems = []
    if figures["max_abs_diff"] is not None and figures["max_abs_diff"] > bounds.max_abs_diff:
        problems.append(f"max abs diff {figures['max_abs_diff']:.3g} > {bounds.max_abs_diff:g}")
    if figures["argmax_agreement"] < bounds.min_argmax_agreement:
        problems.append(
            f"argmax agreement {figures['argmax_agreement']:.5f} < {bounds.min_argmax_agreement:g}"
        )
    if problems:
        raise StageError(f"{what} does not match the Keras model: {'; '.join(problems)}")


def export_tflite(
    model: keras.Model, images: np.ndarray, output: str, output_dir: Path, model_name: str
) -> dict:
    """Write FP32 and FP16 TFLite files, each checked against Keras; return the figures."""
    reference = model.predict(images, batch_size=1, verbose=0)
    results = {}
    for precision, suffix in TFLITE_SUFFIXES.items():
        content = convert_tflite(model, precision)
        figures = compare(reference, run_tflite(content, images), output)
        check_against_keras(figures, TFLITE_BOUNDS[precision], f"TFLite {precision}")
        path = output_dir / f"{model_name}{suffix}"
        path.write_bytes(content)
        results[precision] = {
            "file": path.name,
            "bytes": len(content),
            **figures,
            "bounds": asdict(TFLITE_BOUNDS[precision]),
        }
        log.info("TFLite %s: %s", precision, figures)
    return results


def convert_coreml(model: keras.Model, normalization: dict, options: ExportOptions):
    """Core ML model with an RGB image input that applies the training normalization."""
    height, width = model.input.shape[1:3]
    image = ct.ImageType(
        name=INPUT_NAME,
        shape=(1, height, width, 3),
        scale=normalization["scale"],
        bias=[normalization["offset"]] * 3,
        color_layout=ct.colorlayout.RGB,
    )
    if options.format == "mlprogram":
        mlmodel = ct.convert(
            model,
            source="tensorflow",
            convert_to="mlprogram",
            inputs=[image],
            minimum_deployment_target=ct.target.iOS16,
            compute_precision=(
                ct.precision.FLOAT16 if options.precision == "float16" else ct.precision.FLOAT32
            ),
        )
        if options.palettize:
            config = ct_optimize.OpPalettizerConfig(
                mode="kmeans", nbits=8, weight_threshold=PALETTIZE_MIN_WEIGHTS - 1
            )
            mlmodel = ct_optimize.palettize_weights(
                mlmodel, ct_optimize.OptimizationConfig(global_config=config)
            )
        return mlmodel
    mlmodel = ct.convert(
        model,
        source="tensorflow",
        convert_to="neuralnetwork",
        inputs=[image],
        minimum_deployment_target=ct.target.iOS14,
    )
    if options.precision == "float16":
        with contextlib.redirect_stdout(io.StringIO()):  # it prints a line per layer
            mlmodel = quantization_utils.quantize_weights(mlmodel, nbits=16)
    return mlmodel


def describe(mlmodel, config: dict, options: ExportOptions, size: tuple[int, int], extra: dict):
    """Rename the output and fill in the descriptions and metadata; returns the new model."""
    spec = mlmodel.get_spec()
    output_name = OUTPUTS[options.output]
    ct.utils.rename_feature(spec, spec.description.output[0].name, output_name)
    weights_dir = mlmodel.weights_dir if options.format == "mlprogram" else None
    mlmodel = ct.models.MLModel(spec, weights_dir=weights_dir, skip_model_load=True)
    names = config["labels"]
    height, width = size
    scale, offset = config["normalization"]["scale"], config["normalization"]["offset"]
    mlmodel.short_description = (
        f"ICNet semantic segmentation (alpha {config['alpha']}) of {height}x{width} RGB images "
        f"into {len(names)} classes: {'; '.join(names)}"
    )
    mlmodel.author = options.author
    mlmodel.license = options.license
    mlmodel.version = options.version
    mlmodel.input_description[INPUT_NAME] = (
        f"RGB image, {width} wide and {height} high; the model normalizes it itself "
        f"(pixel * {scale:.6g} {'-' if offset < 0 else '+'} {abs(offset):g}, as in training)"
    )
    mlmodel.output_description[output_name] = {
        "probabilities": f"Class probabilities (softmax) at 1/4 of the input size, "
        f"[1, {height // 4}, {width // 4}, {len(names)}]; channel k is class k of 'labels'",
        "full": f"Class probabilities (softmax) at the input size, [1, {height}, {width}, "
        f"{len(names)}]; channel k is class k of 'labels'",
        "labels": f"Class index of every pixel, [1, {height}, {width}]; index k is class k "
        "of 'labels'",
    }[options.output]
    metadata = {
        "labels": json.dumps(names),
        PREVIEW_TYPE: "imageSegmenter",
        PREVIEW_PARAMS: json.dumps({"labels": names}),
        "output": options.output,
        "image_size": json.dumps(list(size)),
        "normalization": json.dumps({"scale": scale, "offset": offset}),
        "precision": options.precision,
        "palettized": json.dumps(options.palettize),
        **{key: json.dumps(value) for key, value in extra.items()},
    }
    mlmodel.user_defined_metadata.update(metadata)
    return mlmodel


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
    """How many weight tensors are stored as each type (and how many are palettized)."""
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
        elif op.type == "constexpr_lut_to_dense":
            counts["palettized"] = counts.get("palettized", 0) + 1
    return counts


def path_bytes(path: Path) -> int:
    """Size of a file, or of every file in a folder (an .mlpackage)."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def verify_coreml(path: Path, expected: dict) -> dict:
    """Read the saved spec back and check it against `expected`; return its summary.

    `expected`: input size, normalization, output name and shape (None: not recorded, as
    neural networks do not record it), labels and weight precision.
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
    if expected["palettized"] != bool(weights.get("palettized")):
        problems.append(f"weights stored as {weights}, palettized: {expected['palettized']}")
    if problems:
        raise StageError(f"{path.name} is not what was exported: {'; '.join(problems)}")
    return {
        "file": path.name,
        "bytes": path_bytes(path),
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


def output_names(options: ExportOptions) -> list[str]:
    """The names this export writes in its output dir, export.json last."""
    suffix = ".mlpackage" if options.format == "mlprogram" else ".mlmodel"
    names = [f"{options.model_name}{suffix}", LABELS_FILE]
    if options.tflite:
        names += [f"{options.model_name}{suffix}" for suffix in TFLITE_SUFFIXES.values()]
    return [*names, EXPORT_FILE]


def prepare_output_dir(output_dir: Path, names: list[str]) -> None:
    """Remove an earlier run's files of these names (a retried step); refuse a folder that
    holds anything else, since the upload stage publishes all of it."""
    if output_dir.is_dir():
        others = sorted(p.name for p in output_dir.iterdir() if p.name not in names)
        if others:
            raise StageError(
                f"output dir {output_dir} holds other files ({', '.join(others[:3])}): "
                "export into an empty folder"
            )
        for name in reversed(names):  # export.json first: the folder is then incomplete
            target = output_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
    output_dir.mkdir(parents=True, exist_ok=True)


def export_model(model_dir: Path, output_dir: Path, options: ExportOptions) -> dict:
    """Export, verify and describe; return what export.json holds (written last)."""
    check_options(options)
    model_dir, output_dir = Path(model_dir), Path(output_dir)
    inference, config = load_inference_model(model_dir, options.image_size)
    model = with_output(inference, options.output)
    size = tuple(model.input.shape[1:3])
    normalization = config["normalization"]
    images, image_names = load_check_images(
        options.check_images,
        size,
        dataset.Normalization(normalization["scale"], normalization["offset"]),
    )
    names = output_names(options)
    prepare_output_dir(output_dir, names)

    tflite = None
    if options.tflite:
        tflite = export_tflite(model, images, options.output, output_dir, options.model_name)
    figures = {"tflite_checks": _short_checks(tflite)} if tflite else {}
    mlmodel = describe(
        convert_coreml(model, normalization, options), config, options, size, figures
    )
    coreml_path = output_dir / names[0]
    mlmodel.save(str(coreml_path))
    output_shape = list(model.output.shape)
    coreml = verify_coreml(
        coreml_path,
        {
            "image_size": size,
            "normalization": normalization,
            "output_name": OUTPUTS[options.output],
            "output_shape": [1, *output_shape[1:]],
            "labels": config["labels"],
            "precision": options.precision,
            "palettized": options.palettize,
        },
    )
    (output_dir / LABELS_FILE).write_text(labels.format_labels_file(config["labels"]))
    metrics_path = model_dir / train.METRICS_FILE
    result = {
        "format_version": FORMAT_VERSION,
        "model_name": options.model_name,
        "version": options.version,
        "files": {name: path_bytes(output_dir / name) for name in names[:-1]},
        "labels": config["labels"],
        "config": {key: value for key, value in config.items() if key != "labels"},
        "metrics": json.loads(metrics_path.read_text()) if metrics_path.is_file() else None,
        "image_size": list(size),
        "trained_image_size": config["image_size"],
        "normalization": normalization,
        "output": {
            "kind": options.output,
            "name": OUTPUTS[options.output],
            "shape": [1, *output_shape[1:]],
        },
        "format": options.format,
        "precision": options.precision,
        "palettized": options.palettize,
        "coreml": coreml,
        "tflite": tflite,
        "check_images": image_names,
    }
    files.write_json(output_dir / EXPORT_FILE, result)
    log.info("exported %s to %s", ", ".join(result["files"]), output_dir)
    return result


def _short_checks(tflite: dict) -> dict:
    """The TFLite figures without file names, for the Core ML metadata."""
    return {
        precision: {key: entry[key] for key in ("max_abs_diff", "argmax_agreement")}
        for precision, entry in tflite.items()
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = ExportOptions()
    add = parser.add_argument
    add("--model-dir", type=Path, required=True, help="the train stage's output")
    add("--output-dir", type=Path, required=True, help="where the exported files go")
    add(
        "--format",
        choices=FORMATS,
        default=defaults.format,
        help="Core ML ML Program .mlpackage (iOS 16+) or legacy neural network .mlmodel",
    )
    add(
        "--precision",
        choices=PRECISIONS,
        default=defaults.precision,
        help="Core ML weight (and ML Program compute) precision",
    )
    add(
        "--palettize",
        action="store_true",
        help="8-bit k-means weight palettization (mlprogram, float16)",
    )
    add(
        "--output",
        choices=tuple(OUTPUTS),
        default=defaults.output,
        help="probabilities at 1/4 of the input size, probabilities at the full size, or "
        "a label map (argmax inside the model)",
    )
    add(
        "--tflite",
        action=argparse.BooleanOptionalAction,
        default=defaults.tflite,
        help="also write FP32 and FP16 TFLite files, checked against Keras",
    )
    add(
        "--image-size",
        type=train.parse_image_size,
        default=None,
        help="export at SIZE or HEIGHTxWIDTH (multiples of 32); default: the trained size",
    )
    add("--model-name", default=defaults.model_name, help="base name of the exported files")
    add("--version", default=defaults.version, help="model version in the Core ML metadata")
    add("--author", default=defaults.author)
    add("--license", default=defaults.license)
    add(
        "--check-images",
        type=Path,
        default=None,
        help="folder of JPEG/PNG images for the TFLite checks; default: generated images",
    )


def run(args: argparse.Namespace) -> int:
    logging.getLogger("coremltools").setLevel(logging.WARNING)  # it logs every op it folds
    options = ExportOptions(
        format=args.format,
        precision=args.precision,
        palettize=args.palettize,
        output=args.output,
        tflite=args.tflite,
        image_size=args.image_size,
        model_name=args.model_name,
        version=args.version,
        author=args.author,
        license=args.license,
        check_images=args.check_images,
    )
    result = export_model(args.model_dir, args.output_dir, options)
    print(json.dumps({"files": result["files"], "tflite": result["tflite"]}, indent=2))
    return 0
