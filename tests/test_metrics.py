"""metrics.py, on the confusion matrices scoring.py counts, against a plain per-class reference,
on generated maps and real ADE20K annotations."""

import math

import numpy as np
import pytest
from PIL import Image

from image_segmentation.evaluation import metrics, scoring
from tests.conftest import ADE_SAMPLE

UNLABELLED = 255


def reference(truths, predictions, num_classes: int) -> dict:
    """Pixel accuracy, per-class IoU and mean IoU by plain loops over the pooled pixels."""
    truth = np.concatenate([np.ravel(t) for t in truths]).astype(int)
    predicted = np.concatenate([np.ravel(p) for p in predictions]).astype(int)
    scored = truth < num_classes
    truth, predicted = truth[scored], predicted[scored]
    ious = {}
    for c in range(num_classes):
        tp = np.sum((truth == c) & (predicted == c))
        fp = np.sum((truth != c) & (predicted == c))
        fn = np.sum((truth == c) & (predicted != c))
        if tp + fp + fn:
            ious[c] = tp / (tp + fp + fn)
    return {
        "pixel_accuracy": float(np.mean(truth == predicted)) if truth.size else None,
        "class_iou": ious,
        "mean_iou": float(np.mean(list(ious.values()))) if ious else None,
    }


def matrix(truth, predicted, num_classes: int) -> np.ndarray:
    return scoring.count(truth, predicted, num_classes).numpy()


def accumulate(truths, predictions, num_classes: int) -> np.ndarray:
    return sum(matrix(t, p, num_classes) for t, p in zip(truths, predictions, strict=True))


def assert_matches(result: dict, expected: dict, labels: list[str]) -> None:
    assert result["pixel_accuracy"] == pytest.approx(expected["pixel_accuracy"], abs=1e-12)
    assert result["miou"] == pytest.approx(expected["mean_iou"], abs=1e-12)
    for index, label in enumerate(labels):
        if index in expected["class_iou"]:
            assert result["class_iou"][label] == pytest.approx(expected["class_iou"][index])
        else:
            assert result["class_iou"][label] is None, label
    assert result["classes_scored"] == len(expected["class_iou"])


def blocky(rng, shape, classes, block=8) -> np.ndarray:
    """A label map of rectangular regions, like a segmentation mask."""
    grid = rng.choice(classes, size=(shape[0] // block + 1, shape[1] // block + 1))
    return np.kron(grid, np.ones((block, block), dtype=int))[: shape[0], : shape[1]]


def generated_pairs(seed=0):
    """Masks of several sizes over classes 0,1,2,3,5 with unlabelled pixels; predictions that
    are mostly right, sometimes say class 4 (never true) and never say class 6 (never true)."""
    rng = np.random.default_rng(seed)
    truths, predictions = [], []
    for shape in ((37, 53), (64, 40), (21, 90)):
        truth = blocky(rng, shape, [0, 1, 2, 3, 5]).astype(np.uint8)
        truth[rng.random(shape) < 0.03] = UNLABELLED
        predicted = truth.copy()
        wrong = rng.random(shape) < 0.25
        predicted[wrong] = rng.choice([0, 1, 2, 3, 4, 5], size=int(wrong.sum()))
        predicted[predicted == UNLABELLED] = 1  # a model predicts a class everywhere
        truths.append(truth)
        predictions.append(predicted)
    return truths, predictions


LABELS7 = ["none", "a", "b", "c", "d (only predicted)", "e", "f (absent)"]


def test_generated_maps_match_the_reference():
    truths, predictions = generated_pairs()
    summary = metrics.summary(accumulate(truths, predictions, 7), LABELS7)
    assert_matches(summary, reference(truths, predictions, 7), LABELS7)
    # a class only predicted scores 0 and counts; a class absent everywhere does not count
    assert summary["class_iou"]["d (only predicted)"] == 0.0
    assert summary["class_iou"]["f (absent)"] is None
    assert summary["class_iou"]["none"] is not None


def test_confusion_matrix_counts_labelled_pixels_by_true_and_predicted_class():
    truths, predictions = generated_pairs(seed=1)
    confusion = accumulate(truths, predictions, 7)
    truth = np.concatenate([t.ravel() for t in truths])
    predicted = np.concatenate([p.ravel() for p in predictions])
    labelled = truth != UNLABELLED
    assert confusion.dtype == np.int64
    assert confusion.sum() == labelled.sum()
    assert confusion.sum(axis=1).tolist() == np.bincount(truth[labelled], minlength=7).tolist()
    assert (
        confusion.sum(axis=0).tolist() == np.bincount(predicted[labelled], minlength=7)[:7].tolist()
    )
    assert confusion[2, 3] == np.sum((truth == 2) & (predicted == 3))


def test_a_class_claimed_on_a_none_pixel_is_a_false_positive_on_an_unlabelled_one_free():
    """`none` (a class not on the whitelist) is scored; only unlabelled pixels are not."""
    truth = np.array([[0, 0, 1, 1], [1, 1, 2, 2]])
    predicted = np.array([[1, 1, 1, 0], [1, 1, 2, 1]])
    summary = metrics.summary(matrix(truth, predicted, 3), ["none", "x", "y"])
    # 8 pixels, 4 right; x: TP 3, FN 1 (said none), FP 3 (2 none pixels, 1 y pixel) -> 3/7
    assert summary["class_iou"] == {"none": 0.0, "x": 3 / 7, "y": 1 / 2}
    assert summary["miou"] == pytest.approx((0 + 3 / 7 + 1 / 2) / 3)
    assert summary["pixel_accuracy"] == pytest.approx(4 / 8)
    assert summary["pixels_scored"] == 8
    # the same claims of x on unlabelled pixels instead of none pixels cost nothing
    unlabelled = np.where(truth == 0, UNLABELLED, truth)
    summary = metrics.summary(matrix(unlabelled, predicted, 3), ["none", "x", "y"])
    assert summary["class_iou"] == {"none": 0.0, "x": 3 / 5, "y": 1 / 2}
    assert summary["pixels_scored"] == 6 and summary["pixel_accuracy"] == pytest.approx(4 / 6)


def test_precision_and_recall_say_whether_a_class_is_missed_or_over_predicted():
    """x found everywhere it is (recall 1) but also claimed on none and y (precision 3/6); y
    never predicted: precision undefined, recall 0; z absent from truth and predictions."""
    truth = np.array([[0, 0, 1, 1], [1, 2, 2, 2]])
    predicted = np.array([[1, 0, 1, 1], [1, 1, 1, 0]])
    summary = metrics.summary(matrix(truth, predicted, 4), ["none", "x", "y", "z"])
    assert summary["class_precision"] == {"none": 1 / 2, "x": 3 / 6, "y": None, "z": None}
    assert summary["class_recall"] == {"none": 1 / 2, "x": 1.0, "y": 0.0, "z": None}
    assert summary["class_pixels"] == {"none": 2, "x": 3, "y": 3, "z": 0}
    assert summary["class_iou"]["x"] == pytest.approx(3 / 6)  # TP / (TP + FP + FN)


def test_scores_come_from_the_pooled_matrix_not_from_per_image_means():
    big_truth, big_predicted = np.ones((10, 10), int), np.ones((10, 10), int)  # all right
    small_truth, small_predicted = np.ones((1, 2), int), np.array([[1, 2]])  # half wrong
    confusion = accumulate([big_truth, small_truth], [big_predicted, small_predicted], 3)
    summary = metrics.summary(confusion, ["none", "x", "y"])
    assert summary["pixel_accuracy"] == pytest.approx(101 / 102)  # not (1 + 0.5) / 2
    assert summary["class_iou"]["x"] == pytest.approx(101 / 102)
    assert summary["class_iou"]["y"] == 0.0


def test_nothing_scored_gives_null_scores():
    truth = np.array([[UNLABELLED, UNLABELLED, UNLABELLED]])
    summary = metrics.summary(matrix(truth, np.array([[0, 1, 1]]), 2), ["n", "x"])
    assert summary["miou"] is None and summary["pixel_accuracy"] is None
    assert summary["classes_scored"] == 0 and summary["pixels_scored"] == 0
    assert math.isnan(metrics.mean_iou(np.array([math.nan])))


def test_a_matrix_for_other_labels_is_refused():
    with pytest.raises(ValueError, match="labels"):
        metrics.summary(np.zeros((3, 3), int), ["none", "x"])


# --- the three real ADE20K validation annotations, all 150 classes kept (as prepare maps them
# without a whitelist: ADE20K's unlabelled 0 becomes 255, and "none" is empty) ---

ADE_LABELS = ["none"] + [f"class {i}" for i in range(1, 151)]


def ade_annotations() -> list[np.ndarray]:
    paths = sorted((ADE_SAMPLE / "annotations").glob("*.png"))
    assert len(paths) == 3
    masks = [np.asarray(Image.open(path)) for path in paths]
    return [np.where(mask == 0, UNLABELLED, mask) for mask in masks]


def predicted_everywhere(mask: np.ndarray) -> np.ndarray:
    """A model predicts a class on unlabelled pixels too: here "none"."""
    return np.where(mask == UNLABELLED, 0, mask)


def test_relabelling_one_class_gives_the_exact_closed_form_scores():
    truths = ade_annotations()
    wall, sky = 1, 3  # ADE20K classes that occur in the three images: wall painted as sky
    predictions = [predicted_everywhere(np.where(t == wall, sky, t)) for t in truths]
    summary = metrics.summary(accumulate(truths, predictions, 151), ADE_LABELS)
    n_wall = sum(int(np.sum(t == wall)) for t in truths)
    n_sky = sum(int(np.sum(t == sky)) for t in truths)
    n_unlabelled = sum(int(np.sum(t == UNLABELLED)) for t in truths)
    n_all = sum(t.size for t in truths)
    present = sorted(set().union(*(np.unique(t).tolist() for t in truths)) - {UNLABELLED})
    assert n_wall and n_sky and n_unlabelled
    gated = summary["class_iou"]
    assert gated["class 1"] == 0.0
    assert gated["class 3"] == pytest.approx(n_sky / (n_sky + n_wall))
    assert all(gated[f"class {c}"] == 1.0 for c in present if c not in (wall, sky))
    assert sum(v is not None for v in gated.values()) == len(present)
    assert summary["miou"] == pytest.approx(
        (len(present) - 2 + n_sky / (n_sky + n_wall)) / len(present)
    )
    assert summary["pixel_accuracy"] == pytest.approx(1 - n_wall / (n_all - n_unlabelled))
    assert gated["none"] is None  # no pixel is "none" when every class is kept


def shifted(mask: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """The mask moved down/right, the uncovered border repeating the edge."""
    out = np.roll(mask, (rows, cols), axis=(0, 1))
    out[:rows] = out[rows]
    out[:, :cols] = out[:, cols : cols + 1]
    return out


def with_noise_blocks(mask: np.ndarray, seed: int) -> np.ndarray:
    """Square blocks painted with random classes, some of which the image does not contain."""
    rng = np.random.default_rng(seed)
    out = mask.copy()
    for _ in range(6):
        top, left = rng.integers(0, mask.shape[0] - 24), rng.integers(0, mask.shape[1] - 24)
        out[top : top + 24, left : left + 24] = rng.choice([0, 3, 77, 149])
    return out


@pytest.mark.parametrize("perturbation", ["shift", "noise", "shift+noise"])
def test_perturbed_ade20k_annotations_match_the_reference(perturbation):
    truths = ade_annotations()
    predictions = []
    for seed, truth in enumerate(truths):
        predicted = truth
        if "shift" in perturbation:
            predicted = shifted(predicted, 3, 5)
        if "noise" in perturbation:
            predicted = with_noise_blocks(predicted, seed)
        predictions.append(predicted_everywhere(predicted))
    summary = metrics.summary(accumulate(truths, predictions, 151), ADE_LABELS)
    assert_matches(summary, reference(truths, predictions, 151), ADE_LABELS)
    assert 0 < summary["miou"] < 1
    assert summary["classes_scored"] < 151  # most ADE classes are absent
