"""The training loss and its class weights, in `keras.ops` only: the same loss trains on
TensorFlow and runs in the model benchmark on any Keras backend.

Small classes (a lamp, a pillow) cover well under 1% of a living room's pixels, so a plain
per-pixel cross-entropy is lowest for a model that never predicts them. Each pixel's loss is
therefore weighted by its true class: median-frequency balancing, weight = median class frequency
/ the class's frequency, capped so that a class seen on a handful of pixels does not dominate.
The loss is the weighted mean over the labelled pixels (weights sum to one per batch), so its
scale does not change with the weights; pixels labelled IGNORE count for nothing.

Weights of 8-10 make a model paint the small classes over their neighbours (recall far above
precision), so there are gentler recipes (the train stage's defaults are the first and the
third, `settings.py`): square-root balancing (the square root of median-frequency's weight);
the loss at the labels' size (logits upsampled bilinearly to the mask, where a chair leg or a
lamp stem is still there, rather than the mask shrunk, nearest, to S/4); online hard example
mining (only the pixels whose true class is still unlikely, at least a share of them: ICNet's
and PSPNet's recipe); the focal loss; and the Lovasz-softmax loss added to the cross-entropy,
a smooth extension of 1 - IoU per class that weighs a class by its IoU rather than by its
pixels (`lovasz_softmax`).
"""

import keras
import numpy as np
from keras import ops

from image_segmentation.data import labels
from image_segmentation.model import icnet

DEFAULT_MAX_WEIGHT = 10.0


def median_frequency_weights(
    pixel_counts: list[int], max_weight: float = DEFAULT_MAX_WEIGHT, power: float = 1.0
) -> list[float]:
    """One weight per class: (median frequency / frequency) ** power, between 1 / max_weight
    and max_weight (power 0.5: square-root balancing, half as far apart in log scale). The
    median is over the classes that occur; a class that never occurs in the training pixels
    gets max_weight (its weight then only matters if it ever does)."""
    counts = np.asarray(pixel_counts, dtype=np.float64)
    present = counts > 0
    if not present.any():
        return [1.0] * len(counts)
    frequency = counts / counts.sum()
    weights = np.full(len(counts), float(max_weight))
    weights[present] = (np.median(frequency[present]) / frequency[present]) ** power
    return [round(float(w), 4) for w in np.clip(weights, 1 / max_weight, max_weight)]


class WeightedCrossEntropy(keras.losses.Loss):
    """Sparse cross-entropy on logits, each pixel weighted by its true class's weight; labels
    equal to `ignore_class` (or any value >= the class count) are skipped.

    Off by default: `upsample` resizes the logits (bilinear) to the labels' size first;
    `ohem_threshold` keeps only the pixels whose true-class probability is at most that, or
    the `ohem_min_kept` share of the labelled pixels with the lowest if that is more;
    `focal_gamma` multiplies each pixel's cross-entropy by (1 - p) ** gamma;
    `lovasz_weight` adds that times `lovasz_softmax` of the batch.
    """

    def __init__(
        self,
        class_weights: list[float],
        ignore_class: int,
        name="weighted_ce",
        upsample: bool = False,
        ohem_threshold: float | None = None,
        ohem_min_kept: float = 0.0,
        focal_gamma: float = 0.0,
        lovasz_weight: float = 0.0,
    ):
        super().__init__(name=name)
        self.class_weights = [float(w) for w in class_weights]
        self.ignore_class = int(ignore_class)
        self.upsample = bool(upsample)
        self.ohem_threshold = None if ohem_threshold is None else float(ohem_threshold)
        self.ohem_min_kept = float(ohem_min_kept)
        self.focal_gamma = float(focal_gamma)
        self.lovasz_weight = float(lovasz_weight)

    def call(self, y_true, y_pred):
        labels = ops.cast(y_true, "int32")
        logits = ops.cast(y_pred, "float32")
        if self.upsample and tuple(logits.shape[1:3]) != tuple(labels.shape[1:3]):
            logits = ops.image.resize(logits, tuple(labels.shape[1:3]), interpolation="bilinear")
        labelled = ops.logical_and(labels != self.ignore_class, labels < len(self.class_weights))
        safe_labels = ops.where(labelled, labels, 0)
        log_probabilities = ops.log_softmax(logits, axis=-1)
        picked = ops.take_along_axis(log_probabilities, safe_labels[..., None], axis=-1)[..., 0]
        pixel_loss = -picked
        if self.focal_gamma:
            # floored: (1 - p) ** gamma has no finite gradient at p = 1 for gamma < 1
            easy = ops.maximum(1.0 - ops.exp(picked), 1e-6)
            pixel_loss = pixel_loss * ops.power(easy, self.focal_gamma)
        weights = ops.take(ops.convert_to_tensor(self.class_weights, "float32"), safe_labels)
        weights = weights * ops.cast(labelled, "float32")
        if self.ohem_threshold is not None:
            weights = weights * ops.cast(self.hard_pixels(picked, labelled), "float32")
        total = ops.sum(weights)
        loss = ops.sum(weights * pixel_loss) / ops.maximum(total, 1e-6)
        if self.lovasz_weight:
            probabilities = ops.exp(log_probabilities)
            loss = loss + self.lovasz_weight * lovasz_softmax(probabilities, safe_labels, labelled)
        return loss

    def hard_pixels(self, picked, labelled):
        """The labelled pixels whose true-class probability is at most the threshold, or at
        most the probability of the `ohem_min_kept`-th share of them if that is higher (so a
        batch the model already gets right still teaches something); no gradient flows
        through the choice."""
        probability = ops.where(labelled, ops.exp(ops.stop_gradient(picked)), 2.0)
        ordered = ops.sort(ops.reshape(probability, (-1,)))
        count = ops.sum(ops.cast(labelled, "int32"))
        index = ops.cast(ops.floor(self.ohem_min_kept * ops.cast(count, "float32")), "int32")
        index = ops.minimum(index, ops.maximum(count - 1, 0))
        threshold = ops.maximum(ops.take(ordered, index), self.ohem_threshold)
        return ops.logical_and(labelled, probability <= threshold)

    def get_config(self):
        return {
            "name": self.name,
            "class_weights": self.class_weights,
            "ignore_class": self.ignore_class,
            "upsample": self.upsample,
            "ohem_threshold": self.ohem_threshold,
            "ohem_min_kept": self.ohem_min_kept,
            "focal_gamma": self.focal_gamma,
            "lovasz_weight": self.lovasz_weight,
        }


def lovasz_softmax(probabilities, labels, labelled):
    """The Lovasz-softmax loss of a batch: for each class present, the Lovasz extension of its
    Jaccard loss (1 - IoU) over the batch's labelled pixels, averaged over those classes.

    Each pixel's error for a class is |[true class] - p|; sorted from the largest, the errors
    are weighted by how much each one adds to 1 - IoU, so the loss is piecewise linear in the
    probabilities and equals 1 - IoU at hard (0/1) predictions (Berman et al., CVPR 2018).
    Unlabelled pixels get error 0 and no true class: they add nothing.
    """
    classes = probabilities.shape[-1]
    probabilities = ops.reshape(probabilities, (-1, classes))
    inside = ops.cast(ops.reshape(labelled, (-1, 1)), "float32")
    truth = ops.one_hot(ops.reshape(labels, (-1,)), classes) * inside
    errors = ops.abs(truth - probabilities) * inside
    order = ops.argsort(-ops.stop_gradient(errors), axis=0)
    errors = ops.take_along_axis(errors, order, axis=0)
    truth = ops.take_along_axis(truth, order, axis=0)
    pixels = ops.sum(truth, axis=0)
    intersection = pixels - ops.cumsum(truth, axis=0)
    union = pixels + ops.cumsum(1.0 - truth, axis=0)
    jaccard = 1.0 - intersection / ops.maximum(union, 1e-6)
    gradient = ops.concatenate([jaccard[:1], jaccard[1:] - jaccard[:-1]], axis=0)
    per_class = ops.sum(errors * ops.stop_gradient(gradient), axis=0)
    present = ops.cast(pixels > 0, "float32")
    return ops.sum(per_class * present) / ops.maximum(ops.sum(present), 1.0)


def compile_for_training(
    model: keras.Model,
    class_weights: list[float],
    optimizer: keras.optimizers.Optimizer,
    loss_weights: tuple[float, float, float],
    **options,
) -> None:
    """Compile the ICNet training model: the weighted cross-entropy on each of its outputs
    (`icnet.OUTPUTS`), weighted by `loss_weights` in that order, unlabelled pixels skipped;
    `options` are WeightedCrossEntropy's (upsample, OHEM, focal, Lovasz)."""
    model.compile(
        optimizer=optimizer,
        loss={
            name: WeightedCrossEntropy(class_weights, labels.IGNORE, **options)
            for name in icnet.OUTPUTS
        },
        loss_weights=dict(zip(icnet.OUTPUTS, loss_weights, strict=True)),
    )
    # Built now rather than inside the first training step: the step is then traced once,
    # not twice, and a checkpoint's optimizer state has variables to load into.
    model.optimizer.build(model.trainable_variables)
