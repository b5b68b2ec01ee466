"""Segmentation metrics from one confusion matrix accumulated over a whole split (by
`scoring.py`, for training's validation and the evaluate stage alike).

Scores are computed once from the summed confusion matrix, never averaged over batches or
images: an image with few pixels of a class weighs by its pixels, as in the ADE20K benchmark.
Rows are the ground truth class, columns the predicted class.

Two conventions are reported:
- all classes: every labelled pixel counts, "none" (class 0) is a class like the others;
- ADE20K benchmark ("ignore none"): pixels whose ground truth is class 0 are left out, and
  class 0 gets no IoU. A prediction of "none" on a labelled pixel still counts as a miss.
In both, a class that occurs neither in the scored ground truth nor in the predictions has no
IoU (NaN here, null in JSON) and is left out of the mean: a missing class is not a perfect
score, nor a zero one.
"""

import math

import numpy as np


def ignore_class_zero(confusion: np.ndarray) -> np.ndarray:
    """The confusion matrix without the pixels whose ground truth is class 0 (ADE20K rule)."""
    confusion = np.array(confusion, dtype=np.int64)
    confusion[0, :] = 0
    return confusion


def pixel_accuracy(confusion: np.ndarray) -> float:
    """Correct pixels / scored pixels; NaN when no pixel was scored."""
    total = np.sum(confusion)
    return float(np.trace(confusion) / total) if total else math.nan


def class_iou(confusion: np.ndarray) -> np.ndarray:
    """IoU = TP / (TP + FP + FN) per class; NaN for a class absent from truth and predictions."""
    confusion = np.asarray(confusion, dtype=np.float64)
    true_positive = np.diag(confusion)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - true_positive
    iou = np.full(len(confusion), math.nan)
    np.divide(true_positive, union, out=iou, where=union > 0)
    return iou


def mean_iou(iou: np.ndarray) -> float:
    """Mean of the defined IoUs; NaN when no class has one."""
    defined = iou[~np.isnan(iou)]
    return float(defined.mean()) if defined.size else math.nan


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def convention_summary(confusion: np.ndarray, labels: list[str], skip_class_zero: bool) -> dict:
    """Pixel accuracy, mean IoU and per-class IoU (by label; null when undefined)."""
    if skip_class_zero:
        confusion = ignore_class_zero(confusion)
    iou = class_iou(confusion)
    if skip_class_zero:
        iou[0] = math.nan  # class 0 is not scored, even where it was predicted
    return {
        "pixel_accuracy": _json_number(pixel_accuracy(confusion)),
        "mean_iou": _json_number(mean_iou(iou)),
        "classes_scored": int(np.count_nonzero(~np.isnan(iou))),
        "pixels_scored": int(np.sum(confusion)),
        "class_iou": {label: _json_number(value) for label, value in zip(labels, iou, strict=True)},
    }


def summary(confusion: np.ndarray, labels: list[str]) -> dict:
    """Both conventions; the headline `miou` and `pixel_accuracy` are the benchmark ones."""
    if np.shape(confusion) != (len(labels), len(labels)):
        raise ValueError(f"confusion matrix {np.shape(confusion)} for {len(labels)} labels")
    benchmark = convention_summary(confusion, labels, skip_class_zero=True)
    everything = convention_summary(confusion, labels, skip_class_zero=False)
    return {
        "miou": benchmark["mean_iou"],
        "pixel_accuracy": benchmark["pixel_accuracy"],
        "miou_all_classes": everything["mean_iou"],
        "pixel_accuracy_all_classes": everything["pixel_accuracy"],
        "ignore_none": benchmark,
        "all_classes": everything,
    }
