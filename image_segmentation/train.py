"""The train stage: ICNet on the prepared TFRecords, into a model directory.

The loss is sparse cross-entropy on all three ICNet outputs (cascade label guidance), against
the masks resized (nearest) to each output's size. Each epoch ends with a validation pass over
the whole val split that fills one confusion matrix, from which pixel accuracy and mean IoU
are computed, then a checkpoint (weights, optimizer state, epoch, history) written atomically
to OUTPUT/checkpoints/: a run restarted with the same output dir (a preempted Vertex worker)
resumes after its last completed epoch instead of starting over.

Metrics are those of `metrics.py` (the evaluate stage's), from one confusion matrix of the
whole val split: "val_mean_iou" and "val_pixel_accuracy" count class 0 ("none", a class the
model predicts) like the others, unless --ignore-class-zero, which leaves "none" pixels out of
both the loss and the metrics; the "_ignore_none" pair always follows the ADE20K benchmark
(class-0 pixels not scored).

Validation is required: a run without val shards is refused, since training_metrics.json, the
scores the train step reports, would be empty.

Batch and learning rate: --batch-size is the batch of one replica (one GPU, or one CPU
machine) and --learning-rate the rate for that batch. The run trains on all GPUs of all
machines (`cluster.py`, `distribute.py`): the global batch is batch size x replicas, the
learning rate is scaled linearly with the replicas, and an epoch is by default one pass over
the training records at the global batch. On several machines only the chief writes
checkpoints, scalars and the model dir; every machine resumes from the chief's checkpoints in
the shared output dir.
"""

import argparse
import contextlib
import io
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from PIL import Image
from tensorflow.core.framework import summary_pb2

from image_segmentation import (
    cluster,
    dataset,
    distribute,
    files,
    icnet,
    labels,
    metrics,
    model_folder,
    records,
    storage,
)
from image_segmentation.errors import StageError

log = logging.getLogger(__name__)

LABELS_FILE = "labels.txt"
CHECKPOINT_DIR = "checkpoints"
KEEP_CHECKPOINTS = 2
OUTPUTS = ("conv6_cls", "sub24_out", "sub4_out")  # main output first: the loss-weight order
MAIN_OUTPUT = OUTPUTS[0]
LABEL_CHECK_RECORDS = 16  # records per split whose masks are checked against labels.txt
_CHECKPOINT = re.compile(r"^epoch-(\d{4,})\.npz$")


@dataclass(frozen=True)
class TrainSettings:
    """Everything a training run depends on besides the data; recorded in config.json."""

    image_size: tuple[int, int] = (768, 768)
    alpha: float = 0.25
    epochs: int = 10
    steps_per_epoch: int | None = None  # None: one pass over the training records
    batch_size: int = 8  # per replica (see `scaling`)
    learning_rate: float = 1e-3  # for one replica's batch
    optimizer: str = "adam"
    schedule: str = "poly"
    loss_weights: tuple[float, float, float] = (1.0, 0.4, 0.16)
    ignore_class_zero: bool = False
    fine_tune_from: str | None = None
    mixed_precision: str = "auto"
    seed: int = 0
    normalization: dataset.Normalization = field(default_factory=dataset.Normalization)


@dataclass(frozen=True)
class Scaling:
    """The run spread over its replicas; recorded in config.json."""

    replicas: int
    global_batch_size: int
    learning_rate: float  # the effective initial rate
    steps_per_epoch: int


def scaling(settings: TrainSettings, replicas: int, train_records: int) -> Scaling:
    """The batch and learning-rate rule: each replica trains on --batch-size samples per step,
    so a step sees batch size x replicas; the per-replica rate is scaled linearly with the
    replicas (the linear scaling rule for a batch that many times larger)."""
    global_batch = settings.batch_size * replicas
    steps = settings.steps_per_epoch or max(1, train_records // global_batch)
    return Scaling(replicas, global_batch, settings.learning_rate * replicas, steps)


@dataclass(frozen=True)
class PreparedData:
    labels: list[str]
    train_shards: list[Path]
    val_shards: list[Path]
    train_records: int
    val_records: int


def parse_image_size(text: str) -> tuple[int, int]:
    """SIZE or HEIGHTxWIDTH: 768 -> (768, 768), 512x1024 -> (512, 1024)."""
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(part.strip().isdigit() for part in parts):
        raise argparse.ArgumentTypeError(f"expected SIZE or HEIGHTxWIDTH, got {text!r}")
    sizes = [int(part) for part in parts]
    return (sizes[0], sizes[-1])


def parse_loss_weights(text: str) -> tuple[float, float, float]:
    try:
        weights = tuple(float(part) for part in text.split(","))
    except ValueError:
        weights = ()
    if len(weights) != 3 or any(weight < 0 for weight in weights):
        raise argparse.ArgumentTypeError(f"expected three weights >= 0 like 1.0,0.4,0.16: {text!r}")
    return weights


def check_settings(settings: TrainSettings) -> None:
    """Refuse settings that cannot train, before any data is read."""
    icnet.check_arguments(2, settings.image_size, settings.alpha)
    problems = []
    if settings.epochs < 1:
        problems.append(f"--epochs must be >= 1, got {settings.epochs}")
    if settings.steps_per_epoch is not None and settings.steps_per_epoch < 1:
        problems.append(f"--steps-per-epoch must be >= 1, got {settings.steps_per_epoch}")
    if settings.batch_size < 1:
        problems.append(f"--batch-size must be >= 1, got {settings.batch_size}")
    if not settings.learning_rate > 0:
        problems.append(f"--learning-rate must be > 0, got {settings.learning_rate}")
    if not any(settings.loss_weights):
        problems.append("--loss-weights are all 0: nothing would be learnt")
    if problems:
        raise StageError("; ".join(problems))


def _max_mask_value(mask_png: bytes) -> int:
    """Largest class in a mask PNG: channel 0, which also reads the legacy RGB masks."""
    with Image.open(io.BytesIO(mask_png)) as mask:
        pixels = np.asarray(mask)
    return int((pixels[..., 0] if pixels.ndim == 3 else pixels).max())


def check_labels_match(shards: list[Path], num_labels: int) -> None:
    """Fail when a mask holds a class that labels.txt does not have (cheap: a few records)."""
    for number, record in enumerate(records.read_records(shards[0])):
        if number >= LABEL_CHECK_RECORDS:
            return
        try:
            value = _max_mask_value(records.decode_example(record)[records.MASK_ENCODED])
        except (ValueError, KeyError, OSError) as error:
            raise StageError(f"{shards[0].name} record {number}: unreadable ({error})") from error
        if value >= num_labels:
            raise StageError(
                f"{shards[0].name} record {number} has mask value {value}, but {LABELS_FILE} "
                f"lists only {num_labels} classes (0..{num_labels - 1}): the labels file does "
                f"not belong to these records"
            )


def inspect_data(data_dir: Path) -> PreparedData:
    """Check the prepared data dir (shards of both splits, labels.txt matching the masks)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise StageError(f"data dir {data_dir} does not exist")
    if not (data_dir / LABELS_FILE).is_file():
        raise StageError(f"{data_dir} has no {LABELS_FILE}: is it the prepare stage's output?")
    class_labels = labels.read_labels_file(data_dir / LABELS_FILE)
    if not 2 <= len(class_labels) < dataset.IGNORE:
        raise StageError(
            f"{data_dir / LABELS_FILE} lists {len(class_labels)} classes; "
            f"need 2..{dataset.IGNORE - 1} (none + at least one label)"
        )
    shards = {split: dataset.list_shards(data_dir, split) for split in dataset.SPLITS}
    counts = {split: dataset.count_records(paths) for split, paths in shards.items()}
    for split in dataset.SPLITS:
        if not counts[split]:
            raise StageError(
                f"{data_dir} has no {split} records ({split}-NNNNN-of-NNNNN.tfrecord): "
                "training needs both a train and a val split"
            )
        check_labels_match(shards[split], len(class_labels))
    return PreparedData(
        class_labels, shards["train"], shards["val"], counts["train"], counts["val"]
    )


def validation_metrics(
    confusion: np.ndarray, class_labels: list[str], ignore_class_zero: bool
) -> dict:
    """The run's headline convention (all classes, or without "none" with
    --ignore-class-zero) and always the ADE20K benchmark one ("_ignore_none")."""
    main = metrics.convention_summary(confusion, class_labels, skip_class_zero=ignore_class_zero)
    benchmark = metrics.convention_summary(confusion, class_labels, skip_class_zero=True)
    return {
        "pixel_accuracy": main["pixel_accuracy"],
        "mean_iou": main["mean_iou"],
        "pixel_accuracy_ignore_none": benchmark["pixel_accuracy"],
        "mean_iou_ignore_none": benchmark["mean_iou"],
        "class_iou": main["class_iou"],
    }


class ConfusionMatrix:
    """The main output's confusion matrix (rows: true class, columns: predicted) over a
    dataset of (image, mask) batches, summed over the whole dataset.

    The S/4 probabilities are upsampled (bilinear) to the mask's size, as the shipped model
    is used. IGNORE pixels are not counted.
    """

    def __init__(self, model: keras.Model, num_classes: int):
        self.model, self.num_classes = model, num_classes
        self._batch = tf.function(self._batch_confusion, reduce_retracing=True)

    def _batch_confusion(self, images: tf.Tensor, masks: tf.Tensor) -> tf.Tensor:
        probabilities = self.model(images, training=False)[MAIN_OUTPUT]
        probabilities = tf.image.resize(probabilities, tf.shape(masks)[1:3], "bilinear")
        predicted = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        truth = tf.cast(masks, tf.int32)
        valid = truth < self.num_classes
        return tf.math.confusion_matrix(
            tf.boolean_mask(truth, valid),
            tf.boolean_mask(predicted, valid),
            num_classes=self.num_classes,
            dtype=tf.int64,
        )

    def __call__(self, data: tf.data.Dataset) -> np.ndarray:
        total = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        for images, masks in data:
            total += self._batch(images, masks).numpy()
        return total


class Validation(keras.callbacks.Callback):
    """Adds the `validation_metrics` (val_pixel_accuracy, val_mean_iou, ...) to each
    epoch's logs."""

    def __init__(self, data: tf.data.Dataset, class_labels: list[str], ignore_class_zero: bool):
        super().__init__()
        self.data, self.class_labels = data, class_labels
        self.ignore_class_zero = ignore_class_zero
        self.last: dict | None = None
        self._confusion: ConfusionMatrix | None = None

    def evaluate(self, model: keras.Model) -> dict:
        if self._confusion is None or self._confusion.model is not model:
            self._confusion = ConfusionMatrix(model, len(self.class_labels))
        confusion = self._confusion(self.data)
        self.last = validation_metrics(confusion, self.class_labels, self.ignore_class_zero)
        return self.last

    def evaluate_once(self, model: keras.Model) -> dict:
        """The last epoch's scores, or new ones when no epoch ran (a finished run resumed)."""
        return self.last or self.evaluate(model)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        scores = self.evaluate(self.model)
        if logs is not None:  # a score is None only when no pixel could be scored
            logs.update(
                {f"val_{k}": v for k, v in scores.items() if k != "class_iou" and v is not None}
            )
        log.info(
            "epoch %d: val pixel accuracy %s, val mean IoU %s",
            epoch + 1,
            scores["pixel_accuracy"],
            scores["mean_iou"],
        )


def save_checkpoint(
    directory: Path, model: keras.Model, epoch: int, history: list[dict], run: dict
) -> Path:
    """One file per completed epoch: model and optimizer variables, epoch, history, run key.

    The file appears only when complete (temp + rename), so a kill mid-write leaves the
    previous checkpoint as the latest. Older checkpoints beyond the last two are removed.
    """
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {f"model_{i:05d}": v.numpy() for i, v in enumerate(model.weights)}
    arrays |= {f"optimizer_{i:05d}": v.numpy() for i, v in enumerate(model.optimizer.variables)}
    arrays["state"] = np.array(json.dumps({"epoch": epoch, "history": history, "run": run}))
    path = directory / f"epoch-{epoch:04d}.npz"

    def write(part: Path) -> None:
        with open(part, "wb") as file:
            np.savez(file, **arrays)

    files.atomic_write(path, write)
    for old in list_checkpoints(directory)[:-KEEP_CHECKPOINTS]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(directory: Path) -> list[Path]:
    """Completed checkpoints, oldest first."""
    found = [p for p in Path(directory).glob("epoch-*.npz") if _CHECKPOINT.match(p.name)]
    return sorted(found, key=lambda p: int(_CHECKPOINT.match(p.name).group(1)))


def read_checkpoint_state(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as data:
        return json.loads(str(data["state"]))


def restore_checkpoint(path: Path, model: keras.Model) -> dict:
    """Load model weights and optimizer state from a checkpoint; return its state."""
    with np.load(path, allow_pickle=False) as data:
        for prefix, variables in (
            ("model", model.weights),
            ("optimizer", model.optimizer.variables),
        ):
            saved = sorted(key for key in data.files if key.startswith(f"{prefix}_"))
            if len(saved) != len(variables) or any(
                tuple(data[key].shape) != tuple(v.shape)
                for key, v in zip(saved, variables, strict=True)
            ):
                raise StageError(f"{path} does not fit this model's {prefix} variables")
            for key, variable in zip(saved, variables, strict=True):
                variable.assign(data[key])
        return json.loads(str(data["state"]))


class LearningRate(keras.callbacks.Callback):
    """Adds the epoch's last learning rate (schedules decay it) to the logs."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            rate = self.model.optimizer.learning_rate
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(rate))


class EpochCheckpoint(keras.callbacks.Callback):
    """Records each epoch's logs in the history and checkpoints the run."""

    def __init__(self, directory: Path, history: list[dict], run: dict):
        super().__init__()
        self.directory, self.history, self.run = directory, history, run

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        entry = {"epoch": epoch + 1}
        entry |= {k: float(v) for k, v in (logs or {}).items() if np.ndim(v) == 0}
        self.history.append(entry)
        save_checkpoint(self.directory, self.model, epoch + 1, self.history, self.run)


@contextlib.contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Build layers under a Keras dtype policy, restoring the previous one afterwards."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def use_mixed_precision(setting: str) -> bool:
    """auto: float16 compute on GPUs (tensor cores), float32 on CPU where float16 is slow."""
    if setting == "auto":
        return bool(tf.config.list_physical_devices("GPU"))
    return setting == "on"


def learning_rate(schedule: str, initial: float, total_steps: int):
    if schedule == "poly":
        return keras.optimizers.schedules.PolynomialDecay(
            initial, total_steps, end_learning_rate=0.0, power=0.9
        )
    if schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(initial, total_steps)
    return initial


def build_model(
    num_classes: int,
    settings: TrainSettings,
    total_steps: int,
    mixed_precision: bool,
    replicas: int = 1,
) -> keras.Model:
    """The ICNet training model, compiled with the three-output loss and the optimizer, its
    learning rate scaled for the replicas as `scaling` says."""
    with dtype_policy("mixed_float16" if mixed_precision else "float32"):
        model = icnet.build_icnet(num_classes, settings.image_size, settings.alpha)
    rate = learning_rate(settings.schedule, settings.learning_rate * replicas, total_steps)
    if settings.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(rate, momentum=0.9)
    else:
        optimizer = keras.optimizers.Adam(rate)
    model.compile(
        optimizer=optimizer,
        loss={
            name: keras.losses.SparseCategoricalCrossentropy(ignore_class=dataset.IGNORE)
            for name in OUTPUTS
        },
        loss_weights=dict(zip(OUTPUTS, settings.loss_weights, strict=True)),
    )
    # Built now rather than inside the first training step: the step is then traced once,
    # not twice, and a checkpoint's optimizer state has variables to load into.
    model.optimizer.build(model.trainable_variables)
    return model


def output_sizes(model: keras.Model) -> dict[str, tuple[int, int]]:
    """(height, width) of each training output, the sizes the masks are resized to."""
    return {name: tuple(model.get_layer(name).output.shape[1:3]) for name in OUTPUTS}


def fetch_fine_tune_source(source: str, scratch: Path) -> Path:
    """A local weights file for `source`: a model dir or .weights.h5 file, local or gs://.

    From a gs:// model dir only config.json and the weights are fetched, not its checkpoints.
    """
    if storage.is_gcs_uri(source):
        if source.endswith(".h5"):
            return storage.download_file(source, scratch / source.rsplit("/", 1)[-1])
        for name in (model_folder.CONFIG_FILE, model_folder.WEIGHTS_FILE):
            storage.download_file(f"{source.rstrip('/')}/{name}", scratch / name)
        return model_folder.weights_path(scratch)
    weights = model_folder.weights_path(source) if Path(source).is_dir() else Path(source)
    if not weights.is_file():
        raise StageError(f"--fine-tune-from {source}: {weights} does not exist")
    return weights


def load_fine_tune_weights(model: keras.Model, source: str, settings: TrainSettings) -> None:
    """Start from another run's weights; it must have the same classes and alpha."""
    with tempfile.TemporaryDirectory() as scratch:
        weights = fetch_fine_tune_source(source, Path(scratch))
        if not weights.name.endswith(".weights.h5"):
            raise StageError(f"--fine-tune-from {source}: expected a .weights.h5 file")
        config_path = weights.parent / model_folder.CONFIG_FILE
        if config_path.is_file():
            other = json.loads(config_path.read_text())
            ours = {
                "num_classes": model.get_layer(MAIN_OUTPUT).output.shape[-1],
                "alpha": settings.alpha,
            }
            for key, value in ours.items():
                if other.get(key) != value:
                    raise StageError(
                        f"--fine-tune-from {source} has {key} {other.get(key)}, this run "
                        f"{value}: its weights do not fit"
                    )
        try:
            model.load_weights(weights)
        except ValueError as error:
            raise StageError(f"--fine-tune-from {source}: {error}") from error
    log.info("fine-tuning from %s", source)


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


def tensorboard_dir(output_dir: Path) -> str:
    """Vertex AI sets AIP_TENSORBOARD_LOG_DIR when the job has a TensorBoard instance."""
    return os.environ.get("AIP_TENSORBOARD_LOG_DIR") or str(output_dir / "logs")


def run_key(data: PreparedData, settings: TrainSettings, mixed_precision: bool) -> dict:
    """What a checkpoint must share with a run to be resumed by it."""
    return {
        "labels": data.labels,
        "image_size": list(settings.image_size),
        "alpha": settings.alpha,
        "optimizer": settings.optimizer,
        "mixed_precision": mixed_precision,
    }


def resume_point(checkpoints: Path, key: dict) -> Path | None:
    """The latest checkpoint of this same run, if any; refuse one of a different run."""
    found = list_checkpoints(checkpoints)
    if not found:
        return None
    saved = read_checkpoint_state(found[-1])["run"]
    if saved != key:
        differ = ", ".join(k for k in key if saved.get(k) != key[k])
        raise StageError(
            f"{checkpoints} holds checkpoints of a different run ({differ} differ): "
            "use a new --output-dir, or delete the checkpoints to start over"
        )
    return found[-1]


def training_data(
    data: PreparedData,
    settings: TrainSettings,
    scale: Scaling,
    target_sizes: dict[str, tuple[int, int]],
) -> tf.data.Dataset:
    """Batches of the global batch size, which Keras splits across the replicas; on several
    machines each keeps its own part of every batch."""
    batches = dataset.make_dataset(
        data.train_shards,
        settings.image_size,
        scale.global_batch_size,
        training=True,
        normalization=settings.normalization,
        seed=settings.seed,
        target_sizes=target_sizes,
        ignore_class_zero=settings.ignore_class_zero,
    )
    return distribute.shard_by_data(batches)


def train(data_dir: Path, output_dir: Path, settings: TrainSettings) -> dict:
    """Train (or resume), write the model directory, return the final metrics.

    On several machines every one trains, and only the chief writes and returns the metrics
    (the others return {}).
    """
    check_settings(settings)
    tf_config = cluster.cluster_config(os.environ)
    strategy = distribute.make_strategy(tf_config)  # first: it may set up TensorFlow's devices
    chief = cluster.is_chief(tf_config)
    data = inspect_data(data_dir)
    output_dir = Path(output_dir)
    mixed = use_mixed_precision(settings.mixed_precision)
    key = run_key(data, settings, mixed)
    checkpoints = output_dir / CHECKPOINT_DIR
    resume_from = resume_point(checkpoints, key)  # every machine resumes from the chief's
    scale = scaling(settings, strategy.num_replicas_in_sync, data.train_records)
    keras.utils.set_random_seed(settings.seed)  # the same everywhere: see shard_by_data
    log.info(
        "training on %d records, validating on %d; %d classes, %s, alpha %s, "
        "%d steps x %d epochs, mixed precision %s",
        data.train_records, data.val_records, len(data.labels),
        "x".join(map(str, settings.image_size)), settings.alpha,
        scale.steps_per_epoch, settings.epochs, "on" if mixed else "off",
    )  # fmt: skip
    log.info(
        "%s: %d replica(s) x batch %d = global batch %d, learning rate %g (%g per replica)",
        cluster.task_name(tf_config), scale.replicas, settings.batch_size,
        scale.global_batch_size, scale.learning_rate, settings.learning_rate,
    )  # fmt: skip
    with strategy.scope():
        total_steps = scale.steps_per_epoch * settings.epochs
        model = build_model(len(data.labels), settings, total_steps, mixed, scale.replicas)
        history: list[dict] = []
        if resume_from:
            history = restore_checkpoint(resume_from, model)["history"]
            log.info("resuming from %s (epoch %d done)", resume_from.name, len(history))
            if settings.fine_tune_from:
                log.info("not loading --fine-tune-from again: the checkpoint supersedes it")
        elif settings.fine_tune_from:
            load_fine_tune_weights(model, settings.fine_tune_from, settings)
    train_data = training_data(data, settings, scale, output_sizes(model))
    # Only the chief validates and writes. Saving reads variables without any collective
    # operation (none is synchronized on read: Keras makes only metric variables so, and
    # neither the checkpoint nor the weights file holds metrics), so the others need not join.
    callbacks = []
    if chief:
        val_data = dataset.make_dataset(
            data.val_shards,
            settings.image_size,
            settings.batch_size,
            training=False,
            normalization=settings.normalization,
        )
        validation = Validation(val_data, data.labels, settings.ignore_class_zero)
        callbacks = [
            validation,
            LearningRate(),
            Scalars(tensorboard_dir(output_dir)),
            EpochCheckpoint(checkpoints, history, key),  # last: it commits the epoch
        ]
    if len(history) < settings.epochs:
        model.fit(
            train_data,
            epochs=settings.epochs,
            initial_epoch=len(history),
            steps_per_epoch=scale.steps_per_epoch,
            callbacks=callbacks,
            shuffle=False,  # the dataset shuffles itself (Keras cannot shuffle a tf.data one)
            verbose=2,
        )
    if not chief:
        log.info("done: the chief writes the model dir %s", output_dir)
        return {}
    final = {f"val_{name}": value for name, value in validation.evaluate_once(model).items()}
    final["epochs"] = len(history)
    final["final_loss"] = history[-1].get("loss") if history else None
    write_model_dir(output_dir, model, data, settings, history, final, scale, mixed)
    log.info(
        "done: val pixel accuracy %s, val mean IoU %s -> %s",
        final["val_pixel_accuracy"],
        final["val_mean_iou"],
        output_dir,
    )
    return final


def write_model_dir(
    output_dir: Path,
    model: keras.Model,
    data: PreparedData,
    settings: TrainSettings,
    history: list[dict],
    scores: dict,
    scale: Scaling,
    mixed_precision: bool,
) -> None:
    """The model folder (model_folder.py): weights, history, scores, and config.json last."""
    training = asdict(settings)
    del training["image_size"], training["alpha"], training["normalization"]
    training |= {
        "steps_per_epoch": scale.steps_per_epoch,
        "mixed_precision": "on" if mixed_precision else "off",
        "replicas": scale.replicas,
        "global_batch_size": scale.global_batch_size,
        "effective_learning_rate": scale.learning_rate,
        "train_records": data.train_records,
        "val_records": data.val_records,
    }
    model_folder.write_model_dir(
        output_dir,
        write_weights=model.save_weights,
        config={
            "labels": data.labels,
            "num_classes": len(data.labels),
            "image_size": list(settings.image_size),
            "alpha": settings.alpha,
            "normalization": asdict(settings.normalization),
            "main_output": MAIN_OUTPUT,
            "training": training,
        },
        history=history,
        training_metrics=scores,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrainSettings()
    add = parser.add_argument
    add("--data-dir", type=Path, required=True, help="the prepare stage's output")
    add("--output-dir", type=Path, required=True, help="the model dir (and checkpoints) to write")
    add(
        "--image-size",
        type=parse_image_size,
        default=defaults.image_size,
        help="training crop, SIZE or HEIGHTxWIDTH, multiples of 32 (default 768)",
    )
    add(
        "--alpha",
        type=float,
        default=defaults.alpha,
        help="ICNet width multiplier (default %(default)s)",
    )
    add("--epochs", type=int, default=defaults.epochs, help="default %(default)s")
    add(
        "--steps-per-epoch",
        type=int,
        default=None,
        help="default: one pass over the training records at the global batch",
    )
    add(
        "--batch-size",
        type=int,
        default=defaults.batch_size,
        help="batch per replica (GPU): each step trains on this x all GPUs of all machines "
        "(default %(default)s)",
    )
    add(
        "--learning-rate",
        type=float,
        default=defaults.learning_rate,
        help="initial rate for one replica's batch, multiplied by the number of replicas "
        "(default %(default)s)",
    )
    add(
        "--optimizer",
        choices=("adam", "sgd"),
        default=defaults.optimizer,
        help="sgd: momentum 0.9 (default %(default)s)",
    )
    add(
        "--schedule",
        choices=("poly", "cosine", "constant"),
        default=defaults.schedule,
        help="learning-rate decay over all steps (poly: power 0.9)",
    )
    add(
        "--loss-weights",
        type=parse_loss_weights,
        default=defaults.loss_weights,
        help="weights of the S/4, S/8, S/16 outputs' losses (default 1.0,0.4,0.16)",
    )
    add(
        "--ignore-class-zero",
        action="store_true",
        help="leave 'none' pixels out of the loss and the metrics",
    )
    add(
        "--fine-tune-from",
        default=None,
        help="start from a model dir or .weights.h5 file, local or gs://",
    )
    add(
        "--mixed-precision",
        choices=("auto", "on", "off"),
        default=defaults.mixed_precision,
        help="float16 compute (auto: on when a GPU is visible)",
    )
    add("--seed", type=int, default=defaults.seed, help="weights init, shuffling, augmentation")


def run(args: argparse.Namespace) -> int:
    settings = TrainSettings(
        image_size=args.image_size,
        alpha=args.alpha,
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        optimizer=args.optimizer,
        schedule=args.schedule,
        loss_weights=args.loss_weights,
        ignore_class_zero=args.ignore_class_zero,
        fine_tune_from=args.fine_tune_from,
        mixed_precision=args.mixed_precision,
        seed=args.seed,
    )
    train(args.data_dir, args.output_dir, settings)
    return 0
