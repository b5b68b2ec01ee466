"""The export stage: a trained model folder to Core ML (and TFLite) files for apps.

The exported model is the training model's own layers up to the S/4 probabilities (the
label-guidance heads dropped), optionally followed by a bilinear upsample to the input size
or an argmax to a label map. It is converted to Core ML (`coreml.py`) with an RGB image input
that applies the training normalization, and the saved file is read back and checked
(`coreml_spec.py`): Core ML cannot run on Linux. The numerics are checked through TFLite
(`tflite.py`): the same Keras graph converted to TFLite must match Keras on real images within
fixed bounds. The float16 weights can be compressed (--compression: palettized, quantized,
pruned); with --data-dir the Core ML file's own weights, decompressed, are scored on the
validation split beside the FP32 model's, and --max-miou-drop keeps the smallest compression
within that many points. Every figure lands in `export.json` and in the Core ML metadata, and with
--evaluation-dir the evaluate stage's metrics of the model (the quality gate's, not training's
validation) go into `export.json`, which the upload manifest repeats. The files are
made and checked in a staging folder, then copied into the output folder with `export.json`
last (`export_folder.py`), so a rerun that fails or is killed before that leaves an earlier
export there intact.

This module holds the options and the command line; the work is exporter.py's, imported only
when the stage runs, so `export --help` needs no TensorFlow.
"""

import argparse
import json
import logging
from pathlib import Path

from image_segmentation.contracts import data_folder, evaluation_folder, model_folder
from image_segmentation.errors import StageError
from image_segmentation.export.options import (
    COMPRESSIONS,
    FORMATS,
    OUTPUT_KINDS,
    PRECISIONS,
    ExportOptions,
    check_options,
    options_from_args,
)
from image_segmentation.stages import train

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = ExportOptions()
    add = parser.add_argument
    add("--model-dir", type=Path, required=True, help="the train stage's output")
    add("--output-dir", type=Path, required=True, help="where the exported files go")
    add(
        "--evaluation-dir",
        type=Path,
        default=None,
        help="the evaluate stage's output for this model: its metrics (the quality gate's) go "
        "into export.json and the upload manifest",
    )
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
        "--compression",
        choices=COMPRESSIONS,
        default=defaults.compression,
        help="compress the ML Program's float16 weights: "
        + "; ".join(
            f"{name}: {kind.description} (iOS {kind.target[3:]}+)"
            for name, kind in COMPRESSIONS.items()
        ),
    )
    add(
        "--palettize",
        action="store_const",
        dest="compression",
        const="palettize-8",
        help="the same as --compression palettize-8",
    )
    add(
        "--max-miou-drop",
        type=miou_drop,
        default=None,
        metavar="D",
        help="export the smallest compression whose mean IoU, measured on the weights the "
        "file holds, is within D (e.g. 0.01: one point) of the FP32 model's; needs "
        "--data-dir; a negative D: no search (the pipeline's default)",
    )
    add(
        "--data-dir",
        type=Path,
        default=None,
        help="the prepare stage's output: its val split scores the Core ML file's own "
        "(decompressed) weights with the evaluate stage's scorer, into export.json",
    )
    add(
        "--quality-images",
        type=quality_images,
        default=None,
        metavar="N",
        help="score on the first N validation images only; 0 or none: all",
    )
    add(
        "--output",
        choices=OUTPUT_KINDS,
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


def miou_drop(text: str) -> float | None:
    """--max-miou-drop's value; a negative one turns the search off, so that a pipeline
    parameter can leave it off."""
    value = float(text)
    return None if value < 0 else value


def quality_images(text: str) -> int | None:
    """--quality-images' value: 0 is all of them, as the pipeline parameter says."""
    value = int(text)
    return None if value == 0 else value


def run(args: argparse.Namespace) -> int:
    logging.getLogger("coremltools").setLevel(logging.WARNING)  # it logs every op it folds
    options = options_from_args(args)
    check_options(options)
    config = model_folder.require_complete(args.model_dir)  # refused in a second, not after
    metrics = None  # TensorFlow and coremltools load
    if options.data_dir is not None:
        data_labels = data_folder.read_prepared(options.data_dir, splits=("val",)).labels
        if data_labels != config["labels"]:
            raise StageError(
                f"--data-dir {options.data_dir} has other classes than the model: "
                f"{len(data_labels)} against {len(config['labels'])}, or in another order"
            )
    if args.evaluation_dir:
        metrics = evaluation_folder.published_metrics(args.evaluation_dir, args.model_dir)
    else:
        log.warning("no --evaluation-dir: export.json and the upload manifest carry no metrics")
    from image_segmentation.export import exporter

    result = exporter.export_model(args.model_dir, args.output_dir, options, metrics, config)
    print(json.dumps({"files": result["files"], "tflite": result["tflite"]}, indent=2))
    return 0
