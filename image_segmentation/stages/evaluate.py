"""The evaluate stage's command line and its Kubeflow outputs, without TensorFlow: score a
trained model on the whole validation split and write a report. The scoring, and how it is
done, is evaluation/evaluator.py, imported only when the stage runs.
"""

import argparse
import math
from pathlib import Path

import numpy as np

from image_segmentation import disk, files
from image_segmentation.contracts.evaluation_folder import GATE_METRIC
from image_segmentation.evaluation.metrics import PER_CLASS

KFP_SCALARS = ("miou", "pixel_accuracy")
OUTPUT_PARAMETERS = {"miou": float}  # the Kubeflow output the quality gate tests (--miou-output)


def kfp_metrics(summary: dict) -> dict[str, float]:
    """Metadata of a KFP `system.Metrics` artifact: a flat {name: number} object.

    The shape kfp's `Metrics.log_metric` writes (`metadata[name] = value`), which the Kubeflow
    UI lists as scalars: the gate's scalars, then each class's IoU, precision and recall, named
    like "precision: chair", so a run's console page shows why a class scores low.
    Undefined values (no pixel scored, a class never predicted) are left out: the metadata
    holds numbers only.
    """
    values = {name: summary.get(name) for name in KFP_SCALARS}
    for kind in PER_CLASS:
        values |= {f"{kind}: {label}": value for label, value in summary[f"class_{kind}"].items()}
    return {
        name: float(value)
        for name, value in values.items()
        if value is not None and math.isfinite(value)
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
        "and OUTPUT/report.html. Images are fed to the model as its resize mode says "
        "(stretched, or centre-cropped); predictions are upsampled to each annotation's own "
        "size and every labelled pixel is scored, 'none' (the classes not on the whitelist) "
        "as a class like the others; pixels ADE20K leaves unlabelled are not scored. The "
        "quality gate value is `miou`, the mean IoU. Classes absent from both the ground "
        "truth and the predictions are left out of the mean. Prints `miou VALUE` on stdout."
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
    for option in ("report_html", "metrics_json", "confusion_matrix_json", "miou_output"):
        if getattr(args, option):  # found now, not after scoring the whole split
            disk.check_writable_file(getattr(args, option), f"--{option.replace('_', '-')}")
    from image_segmentation.evaluation import evaluator

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
