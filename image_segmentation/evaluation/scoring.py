"""Scoring a segmentation model against annotations: one implementation for the train stage's
validation after every epoch and for the evaluate stage.

The model's class probabilities (the inference model's S/4 output) are upsampled bilinearly to
the annotation's size and each pixel's class is their argmax, as the exported "labels" model
computes it. Every annotated pixel (a mask value below the class count; IGNORE is not one) is
counted in a confusion matrix: rows the true class, columns the predicted one.
"""

from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

Predict = Callable[[tf.Tensor], tf.Tensor]


def predictor(model: keras.Model) -> Predict:
    """The model in inference mode as a graph, traced again only for new input shapes."""
    return tf.function(lambda images: model(images, training=False), reduce_retracing=True)


def count(masks: tf.Tensor, predicted: tf.Tensor, num_classes: int) -> tf.Tensor:
    """The confusion matrix (int64 [num_classes, num_classes]) of class maps of one shape."""
    truth = tf.cast(masks, tf.int32)
    annotated = truth < num_classes
    return tf.math.confusion_matrix(
        tf.boolean_mask(truth, annotated),
        tf.boolean_mask(tf.cast(predicted, tf.int32), annotated),
        num_classes=num_classes,
        dtype=tf.int64,
    )


@tf.function(reduce_retracing=True)
def score(
    probabilities: tf.Tensor, masks: tf.Tensor, num_classes: int
) -> tuple[tf.Tensor, tf.Tensor]:
    """The predicted classes at the masks' size (int32 [batch, height, width]) and their
    confusion matrix with the masks."""
    upsampled = tf.image.resize(probabilities, tf.shape(masks)[1:3], method="bilinear")
    predicted = tf.argmax(upsampled, axis=-1, output_type=tf.int32)
    return predicted, count(masks, predicted, num_classes)


def confusion_matrix(predict: Predict, data: tf.data.Dataset, num_classes: int) -> np.ndarray:
    """The confusion matrix summed over a dataset of (images, masks) batches."""
    total = np.zeros((num_classes, num_classes), dtype=np.int64)
    for images, masks in data:
        total += score(predict(images), masks, num_classes)[1].numpy()
    return total
