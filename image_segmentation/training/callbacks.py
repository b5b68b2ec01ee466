"""The train stage's callbacks. On every machine: the stop on a loss that is not finite. On
the chief only: validation scores, the learning rate, TensorBoard scalars and the checkpoint,
in that order after every epoch (the checkpoint last, since it records the epoch's logs that
the others fill)."""

import logging
import math
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from image_segmentation.contracts.evaluation_folder import GATE_METRIC
from image_segmentation.errors import StageError
from image_segmentation.evaluation import metrics, scoring
from image_segmentation.model import icnet
from image_segmentation.training import checkpoints

log = logging.getLogger(__name__)


def validation_metrics(confusion: np.ndarray, class_labels: list[str]) -> dict:
    """Pixel accuracy, mean IoU and per-class IoU, precision and recall in the quality gate's
    convention and under its names (`metrics.py`): Keras logs them as val_miou, ..."""
    summary = metrics.summary(confusion, class_labels)
    names = ["pixel_accuracy", GATE_METRIC, *(f"class_{kind}" for kind in metrics.PER_CLASS)]
    return {name: summary[name] for name in names}


def per_class_line(scores: dict) -> str:
    """Each class's IoU/precision/recall in percent, e.g. "chair 41/45/84", for the log."""

    def percent(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.0f}"

    return ", ".join(
        f"{label} "
        + "/".join(percent(scores[f"class_{kind}"][label]) for kind in metrics.PER_CLASS)
        for label in scores["class_iou"]
    )


class Validation(keras.callbacks.Callback):
    """Adds the `validation_metrics` (val_pixel_accuracy, val_miou, ...) to each epoch's
    logs, scoring the model as it ships: the main output's probabilities
    (`icnet.inference_model`), scored by `scoring.py` like the evaluate stage does."""

    def __init__(self, data: tf.data.Dataset, class_labels: list[str]):
        super().__init__()
        self.data, self.class_labels = data, class_labels
        self.last: dict | None = None
        self._predicted_model: keras.Model | None = None
        self._predict: scoring.Predict | None = None  # traced once, not once per epoch

    def evaluate(self, model: keras.Model) -> dict:
        if self._predicted_model is not model:
            self._predicted_model = model
            self._predict = scoring.predictor(icnet.inference_model(model))
        confusion = scoring.confusion_matrix(self._predict, self.data, len(self.class_labels))
        self.last = validation_metrics(confusion, self.class_labels)
        return self.last

    def evaluate_once(self, model: keras.Model) -> dict:
        """The last epoch's scores, or new ones when no epoch ran (a finished run resumed)."""
        return self.last or self.evaluate(model)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        scores = self.evaluate(self.model)
        if logs is not None:  # a score is None only when no pixel could be scored
            logs.update(
                {
                    f"val_{k}": v
                    for k, v in scores.items()
                    if v is not None and not k.startswith("class_")
                }
            )
        log.info(
            "epoch %d: val pixel accuracy %s, val mean IoU %s; per class IoU/precision/recall "
            "(%%): %s",
            epoch + 1,
            scores["pixel_accuracy"],
            scores[GATE_METRIC],
            per_class_line(scores),
        )


class LearningRate(keras.callbacks.Callback):
    """Adds the epoch's last learning rate (schedules decay it) to the logs."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            rate = self.model.optimizer.learning_rate
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(rate))


class Scalars(keras.callbacks.Callback):
    """Each epoch's logs as TensorBoard scalars (plugin "scalars").

    Written with TensorFlow's own summary op: TF 2.21 no longer depends on the tensorboard
    package, which Keras' TensorBoard callback needs. The log dir may be a gs:// URI.
    """

    def __init__(self, log_dir: str):
        super().__init__()
        self.writer = tf.summary.create_file_writer(log_dir)
        self.metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
        )

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        with self.writer.as_default():
            for name, value in (logs or {}).items():
                if np.ndim(value) == 0:
                    tensor = tf.constant(float(value), tf.float32)
                    tf.summary.write(name, tensor, step=epoch + 1, metadata=self.metadata)
        self.writer.flush()

    def on_train_end(self, logs: dict | None = None) -> None:
        self.writer.close()


class Finite(keras.callbacks.Callback):
    """Stop the run when the loss or the weights turn NaN or infinite (a learning rate far too
    high): a model of such weights predicts one class everywhere. The error names the epoch and
    step; it comes before the epoch's checkpoint, so nothing of it is saved or published."""

    ADVICE = "nothing of this epoch is saved or published (try a lower --learning-rate)"

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch + 1

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        loss = float((logs or {}).get("loss", 0.0))
        if not math.isfinite(loss):
            raise StageError(
                f"the training diverged at epoch {self.epoch}, step {batch + 1}: the loss is "
                f"{loss}; {self.ADVICE}"
            )

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        broken = icnet.non_finite_weights(self.model)
        if broken:
            raise StageError(
                f"the training diverged in epoch {self.epoch}: after its last step {len(broken)} "
                f"weight arrays hold NaN or infinity, e.g. {broken[0]}; {self.ADVICE}"
            )


class EpochCheckpoint(keras.callbacks.Callback):
    """Records each epoch's logs in the history and checkpoints the run (`checkpoints.py`)."""

    def __init__(self, directory: Path, history: list[dict], run: dict):
        super().__init__()
        self.directory, self.history, self.run = directory, history, run

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        entry = {"epoch": epoch + 1}
        entry |= {k: float(v) for k, v in (logs or {}).items() if np.ndim(v) == 0}
        self.history.append(entry)
        checkpoints.save(self.directory, self.model, epoch + 1, self.history, self.run)
