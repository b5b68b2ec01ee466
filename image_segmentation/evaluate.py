"""The evaluate stage: score a trained model on the whole validation split, write a report.

This module is the stage's command line and its Kubeflow outputs, without TensorFlow: the
scoring is `evaluator.py`, imported only when the stage runs, so `--help` answers at once.

Each validation image is resized (bilinear, aspect not kept) to the model's input size, as
an app feeds a whole camera frame to the exported model; the main output's S/4 class
probabilities are upsampled (bilinear) to the size of the stored annotation, and every
annotated pixel is scored there, at full label resolution (the ADE20K convention). So the
figures cover whole images, unlike the center crops that the train stage validates on each
epoch, and differ from them.

One confusion matrix is accumulated over the split and the metrics are computed from it once
(see metrics.py for the two conventions). The quality gate is `miou`: the mean IoU ignoring
pixels whose ground truth is class 0 ("none"), the ADE20K benchmark convention.
"""

import argparse
import math
from pathlib import Path

import numpy as np

from image_segmentation import files

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.html"
GATE_METRIC = "miou"
KFP_SCALARS = ("miou", "pixel_accuracy", "miou_all_classes", "pixel_accuracy_all_classes")


def kfp_metrics(summary: dict) -> dict[str, float]:
    """Metadata of a KFP `system.Metrics` artifact: a flat {name: number} object.

    The shape kfp's `Metrics.log_metric` writes (`metadata[name] = value`), which the Kubeflow
    UI lists as scalars.
    Undefined values (no pixel scored) are left out: the metadata holds numbers only.
    """
    return {
        name: float(summary[name])
        for name in KFP_SCALARS
        if summary.get(name) is not None and math.isfinite(summary[name])
    }


def kfp_confusion_matrix(confusion: np.ndarray, class_labels: list[str]) -> dict:
    """Metadata of a KFP `system.ClassificationMetrics` artifact holding the confusion matrix.

    The shape kfp's `ClassificationMetrics.log_confusion_matrix` writes (`metadata
    ["confusionMatrix"] = {"annotationSpecs": [{"displayName": ...}], "rows": [{"row":
    [...]}]}`), which the Kubeflow UI checks the same way: as many rows as annotationSpecs, each
    row as long. Rows are the true class, as in metrics.json; counts are pixels.
    """
    if np.shape(confusion) != (len(class_labels), len(class_labels)):
        raise ValueError(f"confusion matrix {np.shape(confusion)} for {len(class_labels)} labels")
    return {
        "confusionMatrix": {
            "annotationSpecs": [{"displayName": label} for label in class_labels],
            "rows": [{"row": [int(count) for count in row]} for row in confusion],
        }
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Score a trained model on the whole validation split and write OUTPUT/metrics.json "
        "and OUTPUT/report.html. Images are resized to the model input; predictions are "
        "upsampled to each annotation's own size and every annotated pixel is scored. "
        "Reports two conventions: all classes, and the ADE20K benchmark one that ignores "
        "pixels whose ground truth is class 0 ('none'). The quality gate value is `miou`: "
        "the mean IoU ignoring class 0. Classes absent from both the ground truth and the "
        "predictions are left out of the means. Prints `miou VALUE` on stdout."
    )
    add = parser.add_argument
    add("--model-dir", type=Path, required=True, help="the train stage's output")
    add("--data-dir", type=Path, required=True, help="the prepare stage's output (val shards)")
    add("--output-dir", type=Path, required=True, help="where metrics.json and report.html go")
    add("--batch-size", type=int, default=8, help="images per model call (default 8)")
    add("--max-images", type=int, default=None, help="score only the first N val images")
    add(
        "--report-images",
        type=int,
        default=12,
        help="validation images shown in the report (default 12)",
    )
    add(
        "--report-html",
        type=Path,
        default=None,
        help="also write the report to this file (e.g. a KFP HTML artifact's path)",
    )
    add(
        "--metrics-json",
        type=Path,
        default=None,
        help="write the scalar metrics as a KFP system.Metrics metadata object to this file",
    )
    add(
        "--confusion-matrix-json",
        type=Path,
        default=None,
        help="write the confusion matrix as KFP system.ClassificationMetrics metadata here",
    )
    add(
        "--miou-output",
        type=Path,
        default=None,
        help="write the gate value (miou) as plain text to this file (a KFP float output)",
    )


def run(args: argparse.Namespace) -> int:
    from image_segmentation import evaluator  # TensorFlow: imported when the stage runs

    result = evaluator.evaluate(
        args.model_dir,
        args.data_dir,
        args.output_dir,
        batch_size=args.batch_size,
        max_images=args.max_images,
        report_images=args.report_images,
        report_html=args.report_html,
    )
    if args.metrics_json:
        files.write_json(args.metrics_json, kfp_metrics(result))
    if args.confusion_matrix_json:
        confusion = kfp_confusion_matrix(np.array(result["confusion_matrix"]), result["labels"])
        files.write_json(args.confusion_matrix_json, confusion)
    if args.miou_output:
        args.miou_output.parent.mkdir(parents=True, exist_ok=True)
        args.miou_output.write_text(repr(result[GATE_METRIC]))
    print(f"{GATE_METRIC} {result[GATE_METRIC]:.6f}")
    return 0
