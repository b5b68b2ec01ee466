"""The training loss and its class weights against plain numpy."""

import numpy as np
import pytest

from image_segmentation.training import losses

IGNORE = 255


def numpy_loss(labels: np.ndarray, logits: np.ndarray, weights: list[float]) -> float:
    """Weighted mean of the per-pixel cross-entropy over the labelled pixels."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probabilities = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    total = weighted = 0.0
    for index in np.ndindex(labels.shape):
        label = labels[index]
        if label == IGNORE:
            continue
        total += weights[label]
        weighted -= weights[label] * log_probabilities[index][label]
    return weighted / total


def test_weighted_cross_entropy_equals_numpy_and_skips_unlabelled_pixels():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 6, 3)).astype(np.float32)
    labels = rng.integers(0, 3, size=(2, 5, 6))
    labels[0, :2] = IGNORE
    weights = [0.5, 1.0, 4.0]
    loss = losses.WeightedCrossEntropy(weights, IGNORE)
    assert float(loss(labels, logits)) == pytest.approx(numpy_loss(labels, logits, weights), 1e-5)
    # whatever the logits say on unlabelled pixels costs nothing
    changed = logits.copy()
    changed[0, :2] = rng.normal(size=changed[0, :2].shape) * 100
    assert float(loss(labels, changed)) == pytest.approx(float(loss(labels, logits)), 1e-6)
    # equal weights: the plain mean cross-entropy over the labelled pixels
    plain = losses.WeightedCrossEntropy([1.0, 1.0, 1.0], IGNORE)
    assert float(plain(labels, logits)) == pytest.approx(numpy_loss(labels, logits, [1, 1, 1]))


def test_a_batch_without_labelled_pixels_has_zero_loss():
    loss = losses.WeightedCrossEntropy([1.0, 2.0], IGNORE)
    labels = np.full((1, 4, 4), IGNORE)
    assert float(loss(labels, np.zeros((1, 4, 4, 2), np.float32))) == 0.0


def test_median_frequency_weights_lift_small_classes_and_are_capped():
    # frequencies 0.5, 0.3, 0.15, 0.05 (median 0.225) and a class never seen
    weights = losses.median_frequency_weights([500, 300, 150, 50, 0], max_weight=10)
    assert weights == pytest.approx([0.45, 0.75, 1.5, 4.5, 10.0], abs=1e-4)
    capped = losses.median_frequency_weights([10_000, 1, 5_000], max_weight=5)
    assert capped == [pytest.approx(0.5), 5.0, pytest.approx(1.0)]  # 5000 / 1 capped at 5
    assert losses.median_frequency_weights([0, 0]) == [1.0, 1.0]
