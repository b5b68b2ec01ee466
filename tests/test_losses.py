"""The training loss and its class weights against plain numpy."""

import numpy as np
import pytest
import tensorflow as tf

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


def true_class_probability(labels: np.ndarray, logits: np.ndarray) -> np.ndarray:
    probabilities = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probabilities /= probabilities.sum(axis=-1, keepdims=True)
    safe = np.where(labels == IGNORE, 0, labels)
    return np.take_along_axis(probabilities, safe[..., None], axis=-1)[..., 0]


def test_sqrt_frequency_weights_are_the_square_root_of_median_frequency_and_capped():
    counts = [500, 300, 150, 50, 0]
    full = losses.median_frequency_weights(counts, max_weight=100)
    gentle = losses.median_frequency_weights(counts, max_weight=100, power=0.5)
    assert gentle[:4] == pytest.approx(np.sqrt(full[:4]), abs=1e-3)
    assert gentle[4] == 100.0  # never seen: the cap, as before
    # 10_000 / 1 pixels: sqrt(5000) = 70.7, still capped
    assert losses.median_frequency_weights([10_000, 1], max_weight=5, power=0.5)[1] == 5.0


def test_loss_at_label_resolution_upsamples_the_logits_bilinearly():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 3, 4, 3)).astype(np.float32)
    labels = rng.integers(0, 3, size=(2, 12, 16))
    labels[1, :, :5] = IGNORE
    weights = [0.5, 1.0, 4.0]
    upsampled = tf.image.resize(logits, (12, 16), method="bilinear").numpy()
    loss = losses.WeightedCrossEntropy(weights, IGNORE, upsample=True)
    assert float(loss(labels, logits)) == pytest.approx(
        numpy_loss(labels, upsampled, weights), 1e-5
    )
    # a one-pixel-wide stripe that a nearest 4x downsampling can miss still costs
    stripe = np.zeros((1, 12, 16), np.int64)
    stripe[0, :, 5] = 1
    plain = np.zeros((1, 3, 4, 2), np.float32)
    plain[..., 0] = 5.0  # confident "class 0" everywhere
    ce = losses.WeightedCrossEntropy([1.0, 1.0], IGNORE, upsample=True)
    assert float(ce(stripe, plain)) > float(ce(np.zeros_like(stripe), plain)) + 0.3
    # labels already at the logits' size: nothing to resize, the plain loss
    same_size = labels[:, :3, :4]
    assert float(loss(same_size, logits)) == pytest.approx(
        numpy_loss(same_size, logits, weights), 1e-5
    )


def numpy_ohem_loss(labels, logits, weights, threshold, min_kept):
    """Mean weighted cross-entropy over the labelled pixels whose true-class probability is at
    most max(threshold, the min_kept-th share's probability)."""
    probability = true_class_probability(labels, logits)
    labelled = labels != IGNORE
    ordered = np.sort(probability[labelled])
    index = min(int(np.floor(min_kept * len(ordered))), len(ordered) - 1)
    kept = labelled & (probability <= max(threshold, ordered[index]))
    masked = np.where(kept, labels, IGNORE)
    return numpy_loss(masked, logits, weights), int(kept.sum())


@pytest.mark.parametrize(("threshold", "min_kept"), [(0.4, 0.0), (0.4, 0.6), (0.05, 0.25)])
def test_ohem_learns_from_the_hard_pixels_only_and_at_least_a_share(threshold, min_kept):
    rng = np.random.default_rng(2)
    logits = (rng.normal(size=(2, 6, 7, 3)) * 2).astype(np.float32)
    labels = rng.integers(0, 3, size=(2, 6, 7))
    labels[0, :2] = IGNORE
    weights = [0.5, 1.0, 4.0]
    expected, kept = numpy_ohem_loss(labels, logits, weights, threshold, min_kept)
    labelled = int((labels != IGNORE).sum())
    assert kept >= min_kept * labelled and kept < labelled  # some pixels left out
    loss = losses.WeightedCrossEntropy(
        weights, IGNORE, ohem_threshold=threshold, ohem_min_kept=min_kept
    )
    assert float(loss(labels, logits)) == pytest.approx(expected, 1e-5)
    # threshold 1: every labelled pixel, the plain loss
    every = losses.WeightedCrossEntropy(weights, IGNORE, ohem_threshold=1.0)
    assert float(every(labels, logits)) == pytest.approx(numpy_loss(labels, logits, weights), 1e-5)
    # no labelled pixel: zero, not NaN
    empty = np.full_like(labels, IGNORE)
    assert float(loss(empty, logits)) == 0.0


def test_focal_loss_weighs_down_the_easy_pixels_and_keeps_finite_gradients():
    rng = np.random.default_rng(3)
    logits = (rng.normal(size=(2, 5, 6, 3)) * 3).astype(np.float32)
    labels = rng.integers(0, 3, size=(2, 5, 6))
    labels[1, 0] = IGNORE
    weights = [0.5, 1.0, 4.0]
    probability = true_class_probability(labels, logits)
    labelled = labels != IGNORE
    pixel_weight = np.take(weights, np.where(labelled, labels, 0)) * labelled
    focal = -np.log(probability) * (1 - probability) ** 2
    expected = (pixel_weight * focal).sum() / pixel_weight.sum()
    loss = losses.WeightedCrossEntropy(weights, IGNORE, focal_gamma=2.0)
    assert float(loss(labels, logits)) == pytest.approx(expected, 1e-5)
    # gamma < 1 on a pixel the model is sure of: the gradient stays finite
    sure = np.zeros((1, 1, 2, 2), np.float32)
    sure[..., 0] = 100.0
    variable = tf.Variable(sure)
    gentle = losses.WeightedCrossEntropy([1.0, 1.0], IGNORE, focal_gamma=0.5)
    with tf.GradientTape() as tape:
        value = gentle(np.zeros((1, 1, 2)), variable)
    assert np.isfinite(tape.gradient(value, variable).numpy()).all()


def lovasz_reference(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Lovasz-softmax written out class by class and pixel by pixel (unlabelled pixels
    dropped), as the paper defines it."""
    keep = labels.reshape(-1) != IGNORE
    p = probabilities.reshape(-1, probabilities.shape[-1])[keep]
    y = labels.reshape(-1)[keep]
    values = []
    for c in range(p.shape[1]):
        truth = (y == c).astype(np.float64)
        if not truth.any():
            continue
        errors = np.abs(truth - p[:, c])
        order = np.argsort(-errors, kind="stable")
        jaccard = []
        for k in range(1, len(order) + 1):
            top = order[:k]
            intersection = truth.sum() - truth[top].sum()
            union = truth.sum() + (1 - truth[top]).sum()
            jaccard.append(1 - intersection / union)
        steps = np.diff(np.concatenate([[0.0], jaccard]))
        values.append(float(errors[order] @ steps))
    return float(np.mean(values))


def test_lovasz_softmax_is_the_papers_and_one_minus_iou_on_hard_predictions():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(2, 4, 5, 3)).astype(np.float32)
    labels = rng.integers(0, 3, size=(2, 4, 5))
    labels[0, 0] = IGNORE
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    labelled = labels != IGNORE
    value = losses.lovasz_softmax(probabilities, np.where(labelled, labels, 0), labelled)
    assert float(value) == pytest.approx(lovasz_reference(probabilities, labels), abs=1e-5)
    # hard predictions: 1 - IoU averaged over the classes present
    predicted = rng.integers(0, 3, size=labels.shape)
    hard = np.eye(3, dtype=np.float32)[predicted]
    ious = [
        ((predicted == c) & (labels == c)).sum()
        / (((predicted == c) | (labels == c)) & labelled).sum()
        for c in range(3)
    ]
    value = losses.lovasz_softmax(hard, np.where(labelled, labels, 0), labelled)
    assert float(value) == pytest.approx(1 - np.mean(ious), abs=1e-6)


def test_the_lovasz_term_is_added_to_the_cross_entropy_and_has_gradients():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(1, 3, 4, 2)).astype(np.float32)
    labels = rng.integers(0, 2, size=(1, 3, 4))
    plain = losses.WeightedCrossEntropy([1.0, 1.0], IGNORE)
    mixed = losses.WeightedCrossEntropy([1.0, 1.0], IGNORE, lovasz_weight=0.5)
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    lovasz = lovasz_reference(probabilities, labels)
    assert float(mixed(labels, logits)) == pytest.approx(
        float(plain(labels, logits)) + 0.5 * lovasz, abs=1e-5
    )
    variable = tf.Variable(logits)
    with tf.GradientTape() as tape:
        value = mixed(labels, variable)
    gradient = tape.gradient(value, variable).numpy()
    assert np.isfinite(gradient).all() and np.abs(gradient).sum() > 0
