"""The export stage's work: a model folder to checked Core ML and TFLite files (see export.py).

With prepared data, the Core ML file's quality is measured on the weights it really holds
(`coreml_weights.py`: decompressed and put back into the Keras model), with the evaluate
stage's scorer, next to the FP32 Keras model's on the same images; `--max-miou-drop` tries the
compressions from the smallest and keeps the first within that many points of FP32.

Everything here needs TensorFlow, Keras or coremltools, so export.py imports it only to run.
"""

import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from image_segmentation.contracts import export_folder, model_folder
from image_segmentation.data import labels
from image_segmentation.data.photo_input import VISION_CROP_AND_SCALE
from image_segmentation.errors import StageError
from image_segmentation.evaluation import evaluator
from image_segmentation.export import coreml, coreml_spec, coreml_weights, tflite
from image_segmentation.export.options import (
    COMPRESSIONS,
    OUTPUT_KINDS,
    ExportOptions,
    check_options,
)
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
        made = _make_files(Path(staging), model, inference_model, config, images, options)
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
                "compression": made["coreml"]["compression"],
                "coreml": made["coreml"],
                "tflite": made["tflite"],
                "check_images": image_names,
            },
        )
    log.info("exported %s to %s", ", ".join(result["files"]), output_dir)
    return result


def _make_files(
    staging: Path,
    model: keras.Model,
    inference_model: keras.Model,
    config: dict,
    images: np.ndarray,
    options: ExportOptions,
) -> dict:
    """Write the TFLite files (checked against Keras), the Core ML model (read back, checked
    and, with --data-dir, scored on its own weights) and labels.txt into `staging`; return
    what export.json says of them."""
    tflite_figures = None
    if options.tflite:
        tflite_figures = tflite.export_tflite(
            model, images, options.output, staging, options.model_name
        )
    coreml_path = staging / export_folder.coreml_file(options.model_name, options.format)
    output = _output(model, options.output)
    reference = None
    if options.data_dir is not None:
        reference = _score(inference_model, config, options, "the FP32 Keras model")
    metadata = {"precision": options.precision}
    if tflite_figures is not None:
        metadata["tflite_checks"] = json.dumps(_short_checks(tflite_figures))
    names = list(COMPRESSIONS) if options.max_miou_drop is not None else [options.compression]
    candidates = _candidates(
        staging, model, inference_model, config, options, output, metadata, reference, names
    )
    if options.max_miou_drop is None:
        chosen = next(candidates)
        search = None
    else:
        chosen, search = smallest_within(candidates, options.max_miou_drop)
    shutil.move(chosen.pop("path"), coreml_path)
    coreml_summary = {**chosen, "compression_search": search}
    (staging / export_folder.LABELS_FILE).write_text(labels.format_labels_file(config["labels"]))
    return {"output": output, "coreml": coreml_summary, "tflite": tflite_figures}


def _candidates(
    staging: Path,
    model: keras.Model,
    inference_model: keras.Model,
    config: dict,
    options: ExportOptions,
    output: dict,
    metadata: dict[str, str],
    reference: dict | None,
    names: list[str],
) -> Iterator[dict]:
    """The Core ML file of each compression in `names`, in that order, written under
    `staging`, checked and, with a `reference` (the FP32 model's scores), scored: its summary
    with its "path". The model is converted once per deployment target."""
    converted = {}
    size = tuple(model.input.shape[1:3])
    for name in names:
        compression = COMPRESSIONS[name]
        if compression.target not in converted:
            converted[compression.target] = coreml.convert(
                model, config["normalization"], options.format, options.precision,
                compression.target,
            )  # fmt: skip
        mlmodel = coreml.describe(
            coreml.compress(converted[compression.target], name),
            config,
            size,
            options.output,
            about={key: getattr(options, key) for key in ("author", "license", "version")},
            metadata={**metadata, "compression": name},
        )
        path = (
            staging
            / "candidates"
            / name
            / export_folder.coreml_file(options.model_name, options.format)
        )
        path.parent.mkdir(parents=True)
        mlmodel.save(str(path))
        summary = coreml_spec.verify_coreml(
            path,
            {
                "image_size": size,
                "normalization": config["normalization"],
                "output_name": output["name"],
                "output_shape": output["shape"],
                "labels": config["labels"],
                "precision": options.precision,
                "storage": coreml_spec.STORAGE[compression.kind],
            },
        )
        summary.update(path=path, compression=name, quality=None)
        if reference is not None:
            held = coreml_weights.with_coreml_weights(inference_model, path)
            summary["quality"] = _quality(_score(held, config, options, path.name), reference)
        else:
            log.warning("%s: its quality is not measured (no --data-dir)", name)
        log.info(
            "Core ML %s: %d bytes%s", name, summary["bytes"],
            "" if reference is None else f", mean IoU {summary['quality']['miou']:.4f} "
            f"({summary['quality']['miou_change']:+.4f} against FP32)",
        )  # fmt: skip
        yield summary


def measure_compressions(
    model_dir: Path, options: ExportOptions, names: list[str] | None = None
) -> tuple[dict, list[dict]]:
    """The FP32 Keras model's scores on `options.data_dir`, and the bytes and scores of the
    Core ML file of each compression in `names` (default: all), as the export would make
    it: the export benchmark's table."""
    check_options(options)
    inference_model, config = load_inference_model(model_dir, options.image_size)
    model = with_output(inference_model, options.output)
    reference = _score(inference_model, config, options, "the FP32 Keras model")
    results = []
    with tempfile.TemporaryDirectory(prefix="compressions-") as staging:
        for summary in _candidates(
            Path(staging), model, inference_model, config, options, _output(model, options.output),
            {}, reference, names or list(COMPRESSIONS),
        ):  # fmt: skip
            shutil.rmtree(summary.pop("path").parent)
            results.append(summary)
    return reference, results


def _output(model: keras.Model, output_kind: str) -> dict:
    """What export.json says of the model's output."""
    return {
        "kind": output_kind,
        "name": OUTPUT_KINDS[output_kind].feature,
        "shape": [1, *model.output.shape[1:]],
    }


def smallest_within(candidates: Iterator[dict], max_drop: float) -> tuple[dict, list[dict]]:
    """The first candidate whose mean IoU is at most `max_drop` below FP32's (the last one,
    uncompressed float16, when none is), and what each one tried scored."""
    tried, last = [], None
    for candidate in candidates:
        if last is not None:
            shutil.rmtree(last["path"].parent)
        quality = candidate["quality"]
        within = quality["miou_change"] >= -max_drop
        tried.append(
            {
                "compression": candidate["compression"],
                "bytes": candidate["bytes"],
                "miou": quality["miou"],
                "miou_change": quality["miou_change"],
                "within": within,
            }
        )
        if within:
            return candidate, tried
        last = candidate
    log.warning("no compression is within %s of FP32's mean IoU: kept float16", max_drop)
    return last, tried


def _score(model: keras.Model, config: dict, options: ExportOptions, name: str) -> dict:
    size = tuple(model.input.shape[1:3])
    return evaluator.score(
        model, config["labels"], size, config["normalization"],
        model_folder.resize_mode(config), options.data_dir, name,
        max_images=options.quality_images,
    )  # fmt: skip


def _quality(summary: dict, reference: dict) -> dict:
    """What export.json says of a Core ML file's own scores: mean IoU, pixel accuracy and
    per-class IoU, each with its change against the FP32 Keras model's."""

    def change(value: float | None, base: float | None) -> float | None:
        return None if value is None or base is None else value - base

    return {
        "weights": "decompressed from the file",
        "images": summary["images"],
        "miou": summary["miou"],
        "miou_change": change(summary["miou"], reference["miou"]),
        "fp32_miou": reference["miou"],
        "pixel_accuracy": summary["pixel_accuracy"],
        "pixel_accuracy_change": change(summary["pixel_accuracy"], reference["pixel_accuracy"]),
        "class_iou": summary["class_iou"],
        "class_iou_change": {
            label: change(iou, reference["class_iou"][label])
            for label, iou in summary["class_iou"].items()
        },
    }


def _short_checks(tflite_figures: dict) -> dict:
    """The TFLite figures without file names, for the Core ML metadata."""
    return {
        precision: {key: entry[key] for key in ("max_abs_diff", "argmax_agreement")}
        for precision, entry in tflite_figures.items()
    }
