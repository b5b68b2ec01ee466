"""The export stage's work: a model folder to checked Core ML and TFLite files (see export.py).

Everything here needs TensorFlow, Keras or coremltools, so export.py imports it only to run.
"""

import json
import logging
import tempfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from image_segmentation.contracts import export_folder, model_folder
from image_segmentation.data import labels
from image_segmentation.data.photo_input import VISION_CROP_AND_SCALE
from image_segmentation.errors import StageError
from image_segmentation.export import coreml, coreml_spec, tflite
from image_segmentation.export.options import OUTPUT_KINDS, ExportOptions, check_options
from image_segmentation.model import icnet
from image_segmentation.model.weights import load_inference_model

log = logging.getLogger(__name__)


class ArgmaxLabels(keras.layers.Layer):
    """Class index per pixel as int32.

    tf.argmax itself: keras.ops.argmax adds a Bitcast op that Core ML cannot convert.
    """

    def call(self, inputs):
        return tf.math.argmax(inputs, axis=-1, output_type=tf.int32)

    def compute_output_shape(self, input_shape):
        return input_shape[:-1]


def with_output(inference_model: keras.Model, output_kind: str) -> keras.Model:
    """The inference model with the chosen output: S/4 probabilities, probabilities at the
    input size (bilinear, as evaluation upsamples them), or the argmax label map of those."""
    if output_kind not in OUTPUT_KINDS:
        raise StageError(f"unknown output {output_kind!r} (choose from {', '.join(OUTPUT_KINDS)})")
    kind = OUTPUT_KINDS[output_kind]
    if not kind.full_size:
        return inference_model
    size = tuple(inference_model.input.shape[1:3])
    result = icnet.BilinearResize(size, name="probabilities_full")(inference_model.output)
    if kind.label_map:
        result = ArgmaxLabels(name="labels")(result)
    return keras.Model(inference_model.input, result, name=f"icnet_{output_kind}")


def export_model(
    model_dir: Path,
    output_dir: Path,
    options: ExportOptions,
    metrics: dict | None = None,
    config: dict | None = None,
) -> dict:
    """Export and verify in a staging folder, then publish to `output_dir`: an earlier export
    there stays intact and usable if this one fails or is killed before that. Returns what
    export.json holds (written last), with `metrics`, the evaluate stage's scores of this
    model (`evaluation_folder.published_metrics`; None when it was not evaluated), and `config`,
    the model folder's, when the caller has checked the folder already."""
    check_options(options)
    model_dir, output_dir = Path(model_dir), Path(output_dir)
    names = export_folder.file_names(options.model_name, options.format, options.tflite)
    export_folder.check_output_dir(output_dir, names)
    inference_model, config = load_inference_model(model_dir, options.image_size, config)
    model = with_output(inference_model, options.output)
    size = tuple(model.input.shape[1:3])
    normalization = config["normalization"]
    resize = model_folder.resize_mode(config)
    images, image_names = tflite.load_check_images(
        options.check_images, size, normalization, resize
    )
    with tempfile.TemporaryDirectory(prefix="export-") as staging:
        made = _make_files(Path(staging), model, config, images, options)
        result = export_folder.publish(
            staging,
            output_dir,
            names,
            {
                "model_name": options.model_name,
                "version": options.version,
                "labels": config["labels"],
                "config": {key: value for key, value in config.items() if key != "labels"},
                "model_weights_sha256": model_folder.weights_digest(model_dir),
                "metrics": metrics,
                "image_size": list(size),
                "trained_image_size": config["image_size"],
                "normalization": normalization,
                "preprocessing": {
                    "resize": resize,
                    "vision_image_crop_and_scale_option": VISION_CROP_AND_SCALE[resize],
                },
                "output": made["output"],
                "format": options.format,
                "precision": options.precision,
                "palettized": options.palettize,
                "coreml": made["coreml"],
                "tflite": made["tflite"],
                "check_images": image_names,
            },
        )
    log.info("exported %s to %s", ", ".join(result["files"]), output_dir)
    return result


def _make_files(
    staging: Path, model: keras.Model, config: dict, images: np.ndarray, options: ExportOptions
) -> dict:
    """Write the TFLite files (checked against Keras), the Core ML model (read back and
    checked) and labels.txt into `staging`; return what export.json says of them."""
    normalization = config["normalization"]
    size = tuple(model.input.shape[1:3])
    metadata = {"precision": options.precision, "palettized": json.dumps(options.palettize)}
    tflite_figures = None
    if options.tflite:
        tflite_figures = tflite.export_tflite(
            model, images, options.output, staging, options.model_name
        )
        metadata["tflite_checks"] = json.dumps(_short_checks(tflite_figures))
    mlmodel = coreml.describe(
        coreml.convert(model, normalization, options.format, options.precision, options.palettize),
        config,
        size,
        options.output,
        about={"author": options.author, "license": options.license, "version": options.version},
        metadata=metadata,
    )
    coreml_path = staging / export_folder.coreml_file(options.model_name, options.format)
    mlmodel.save(str(coreml_path))
    output = {
        "kind": options.output,
        "name": OUTPUT_KINDS[options.output].feature,
        "shape": [1, *model.output.shape[1:]],
    }
    coreml_summary = coreml_spec.verify_coreml(
        coreml_path,
        {
            "image_size": size,
            "normalization": normalization,
            "output_name": output["name"],
            "output_shape": output["shape"],
            "labels": config["labels"],
            "precision": options.precision,
            "palettized": options.palettize,
        },
    )
    (staging / export_folder.LABELS_FILE).write_text(labels.format_labels_file(config["labels"]))
    return {"output": output, "coreml": coreml_summary, "tflite": tflite_figures}


def _short_checks(tflite_figures: dict) -> dict:
    """The TFLite figures without file names, for the Core ML metadata."""
    return {
        precision: {key: entry[key] for key in ("max_abs_diff", "argmax_agreement")}
        for precision, entry in tflite_figures.items()
    }
