"""The training loss and its class weights, in `keras.ops` only: the same loss trains on
TensorFlow and runs in the model benchmark on any Keras backend.

Small classes (a lamp, a pillow) cover well under 1% of a living room's pixels, so a plain
per-pixel cross-entropy is lowest for a model that never predicts them. Each pixel's loss is
therefore weighted by its true class: median-frequency balancing, weight = median class frequency
/ the class's frequency, capped so that a class seen on a handful of pixels does not dominate.
The loss is the weighted mean over the labelled pixels (weights sum to one per batch), so its
scale does not change with the weights; pixels labelled IGNORE count for nothing.
"""

import keras
import numpy as np
from keras import ops

from image_segmentation.data import labels
from image_segmentation.model import icnet

DEFAULT_MAX_WEIGHT = 10.0


def median_frequency_weights(
    pixel_counts: list[int], max_weight: float = DEFAULT_MAX_WEIGHT
) -> list[float]:
    """One weight per class: median frequency / frequency, between 1 / max_weight and
    max_weight. The median is over the classes that occur; a class that never occurs in the
    training pixels gets max_weight (its weight then only matters if it ever does)."""
    counts = np.asarray(pixel_counts, dtype=np.float64)
    present = counts > 0
    if not present.any():
        return [1.0] * len(counts)
    frequency = counts / counts.sum()
    weights = np.full(len(counts), float(max_weight))
    weights[present] = np.median(frequency[present]) / frequency[present]
    return [round(float(w), 4) for w in np.clip(weights, 1 / max_weight, max_weight)]


class WeightedCrossEntropy(keras.losses.Loss):
    """Sparse cross-entropy on logits, each pixel weighted by its true class's weight; labels
    equal to `ignore_class` (or any value >= the class count) are skipped."""

    def __init__(self, class_weights: list[float], ignore_class: int, name="weighted_ce"):
        super().__init__(name=name)
        self.class_weights = [float(w) for w in class_weights]
        self.ignore_class = int(ignore_class)

    def call(self, y_true, y_pred):
        labels = ops.cast(y_true, "int32")
        labelled = ops.logical_and(labels != self.ignore_class, labels < len(self.class_weights))
        safe_labels = ops.where(labelled, labels, 0)
        log_probabilities = ops.log_softmax(ops.cast(y_pred, "float32"), axis=-1)
        picked = ops.take_along_axis(log_probabilities, safe_labels[..., None], axis=-1)
        weights = ops.take(ops.convert_to_tensor(self.class_weights, "float32"), safe_labels)
        weights = weights * ops.cast(labelled, "float32")
        total = ops.sum(weights)
        return -ops.sum(weights * picked[..., 0]) / ops.maximum(total, 1e-6)

    def get_config(self):
        return {
            "name": self.name,
            "class_weights": self.class_weights,
            "ignore_class": self.ignore_class,
        }


def compile_for_training(
    model: keras.Model,
    class_weights: list[float],
    optimizer: keras.optimizers.Optimizer,
    loss_weights: tuple[float, float, float],
) -> None:
    """Compile the ICNet training model: the weighted cross-entropy on each of its outputs
    (`icnet.OUTPUTS`), weighted by `loss_weights` in that order, unlabelled pixels skipped."""
    model.compile(
        optimizer=optimizer,
        loss={name: WeightedCrossEntropy(class_weights, labels.IGNORE) for name in icnet.OUTPUTS},
        loss_weights=dict(zip(icnet.OUTPUTS, loss_weights, strict=True)),
    )
    # Built now rather than inside the first training step: the step is then traced once,
    # not twice, and a checkpoint's optimizer state has variables to load into.
    model.optimizer.build(model.trainable_variables)
