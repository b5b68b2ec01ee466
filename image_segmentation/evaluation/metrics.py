"""Segmentation metrics from one confusion matrix accumulated over a whole split (by
`scoring.py`, for training's validation and the evaluate stage alike).

Scores are computed once from the summed confusion matrix, never averaged over batches or
images: an image with few pixels of a class weighs by its pixels, as in the ADE20K benchmark.
Rows are the ground truth class, columns the predicted class.

One convention, the ADE20K benchmark's: every labelled pixel is scored, and only pixels without
a label (IGNORE in the masks: ADE20K's unlabelled 0, never a class) are left out. "none" (class
0, every ADE20K class not on the whitelist) is a class like the others: a whitelisted class
predicted on a "none" pixel is a false positive, and "none" has an IoU in the mean.
A class that occurs neither in the scored ground truth nor in the predictions has no IoU (NaN
here, null in JSON) and is left out of the mean: a missing class is not a perfect score, nor a
zero one.
"""

import math

import numpy as np

PER_CLASS = ("iou", "precision", "recall")  # the per-class scores of `summary`: class_iou, ...


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


def class_precision(confusion: np.ndarray) -> np.ndarray:
    """TP / predicted pixels per class: how often a prediction of the class is right; NaN for
    a class never predicted. Low precision is a class smeared over others."""
    confusion = np.asarray(confusion, dtype=np.float64)
    return _ratio(np.diag(confusion), confusion.sum(axis=0))


def class_recall(confusion: np.ndarray) -> np.ndarray:
    """TP / true pixels per class: how much of the class is found; NaN for a class absent from
    the scored ground truth. Low recall is a class missed."""
    confusion = np.asarray(confusion, dtype=np.float64)
    return _ratio(np.diag(confusion), confusion.sum(axis=1))


def _ratio(part: np.ndarray, whole: np.ndarray) -> np.ndarray:
    ratio = np.full(len(whole), math.nan)
    np.divide(part, whole, out=ratio, where=whole > 0)
    return ratio


def mean_iou(iou: np.ndarray) -> float:
    """Mean of the defined IoUs; NaN when no class has one."""
    defined = iou[~np.isnan(iou)]
    return float(defined.mean()) if defined.size else math.nan


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def summary(confusion: np.ndarray, labels: list[str]) -> dict:
    """Pixel accuracy, mean IoU (`miou`, the quality gate's) and, by label, each class's IoU,
    precision and recall (null when undefined) and its scored ground-truth pixels, so a low
    IoU shows whether the class is missed or over-predicted."""
    if np.shape(confusion) != (len(labels), len(labels)):
        raise ValueError(f"confusion matrix {np.shape(confusion)} for {len(labels)} labels")
    iou = class_iou(confusion)
    return {
        "miou": _json_number(mean_iou(iou)),
        "pixel_accuracy": _json_number(pixel_accuracy(confusion)),
        "classes_scored": int(np.count_nonzero(~np.isnan(iou))),
        "pixels_scored": int(np.sum(confusion)),
        "class_iou": _by_label(labels, iou),
        "class_precision": _by_label(labels, class_precision(confusion)),
        "class_recall": _by_label(labels, class_recall(confusion)),
        "class_pixels": {
            label: int(count)
            for label, count in zip(labels, np.sum(confusion, axis=1), strict=True)
        },
    }


def _by_label(labels: list[str], values: np.ndarray) -> dict[str, float | None]:
    return {label: _json_number(value) for label, value in zip(labels, values, strict=True)}
