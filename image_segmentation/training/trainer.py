"""How the train stage trains (its command line is `stages/train.py`, its settings
`settings.py`): the prepared data checked (`data_folder.py`), ICNet built and compiled for the
replicas, resumed from its checkpoints or fine-tuned from another run, fitted with validation
after every epoch, and the model folder written.

On several machines every one trains, and only the chief validates and writes: checkpoints,
scalars and the model folder. Saving reads variables without any collective operation (none is
synchronized on read: Keras makes only metric variables so, and neither the checkpoint nor
the weights file holds metrics), so the other machines need not join.

The loss is cross-entropy on the logits of all three ICNet outputs (cascade label guidance),
against the masks resized (nearest) to each output's size (or, with --loss-resolution label,
the logits upsampled to the crop's), each pixel weighted by its class (`losses.py`:
median-frequency balancing, or its square root, from the pixel counts prepare recorded, so the
small classes are learnt too; the weights go into config.json), optionally only its hard
pixels (OHEM) or focal. Unlabelled pixels count for nothing.
Each epoch ends with a validation pass over the whole val split that fills one confusion matrix
(`scoring.py`, the evaluate stage's), from which pixel accuracy and mean IoU are computed in
the quality gate's convention (`metrics.py`: "none" is a class, unlabelled pixels are not
scored), then a checkpoint (`checkpoints.py`): a run restarted with the same output dir (a
preempted Vertex worker) resumes after its last completed epoch instead of starting over.

A new run starts from random weights, or with --init from ImageNet: ResNet-50's residual stages
pruned to ICNet's widths by L1 norm, as the ICNet paper compressed its network
(`pretrained.py`; which layers and how many parameters go into config.json). The model folder
holds the weights of the epoch with the best validation mean IoU, not the last epoch's, and
says which epoch that was; history.json keeps every epoch.

With --warm-start-epochs the run first trains that many epochs at the smaller
--warm-start-size (cheaper epochs, so more of them for the time), checkpointed in
checkpoints/warm-start/, then its --epochs at --image-size from the warm start's last weights,
each stage with its own learning-rate schedule. After the warm start's last step every machine
holds the same weights, so the second stage starts alike everywhere without reading a file.

Photos become the model's input as --resize says (`preprocessing.py`), recorded in config.json
for every later stage: "stretch" (the whole photo, aspect not kept) or "crop" (the centred
window of the input's aspect).

Validation is required: a run without val shards is refused, since training_metrics.json, the
scores the train step reports, would be empty.
"""

import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import tensorflow as tf

from image_segmentation.cloud import cluster, kfp_executor, storage
from image_segmentation.contracts import data_folder, model_folder
from image_segmentation.contracts.data_folder import PreparedData
from image_segmentation.data import dataset
from image_segmentation.errors import StageError
from image_segmentation.model import icnet, pretrained
from image_segmentation.model.weights import build_with_weights, copy_weights
from image_segmentation.training import callbacks, checkpoints, distribute, losses
from image_segmentation.training.settings import (
    Scaling,
    TrainSettings,
    resume_key,
    scaling,
    settings_problems,
    warm_start_settings,
)

log = logging.getLogger(__name__)

MAIN_OUTPUT = icnet.INFERENCE_OUTPUT
NORMALIZATION = dataset.Normalization()  # the legacy x/255 - 0.5; recorded in config.json
WARM_START = "warm-start"  # the warm start's checkpoints and scalars, beside the run's own


@dataclass(frozen=True)
class Run:
    """What the stages of one training run share (a warm start, then the run proper)."""

    data: PreparedData
    output_dir: Path
    strategy: tf.distribute.Strategy
    task: str  # this machine in the logs, e.g. "chief 0" or "worker 1"
    chief: bool
    mixed_precision: bool
    class_weights: list[float]

    def checkpoints(self, stage: str | None = None) -> Path:
        directory = self.output_dir / checkpoints.DIRECTORY
        return directory / stage if stage else directory


def check_settings(settings: TrainSettings) -> None:
    """Refuse settings that cannot train, before any data is read (also when the trainer is
    called directly, not through the command line)."""
    problems = settings_problems(settings)
    if problems:
        raise StageError("; ".join(problems))


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


def class_weights(data: PreparedData, settings: TrainSettings) -> list[float]:
    """The loss weight of each class, from the training split's pixels (`losses.py`)."""
    if settings.class_balance == "none":
        return [1.0] * len(data.labels)
    power = 0.5 if settings.class_balance == "sqrt-frequency" else 1.0
    return losses.median_frequency_weights(
        data.pixel_counts["train"], settings.max_class_weight, power
    )


def repeat_factors(data: PreparedData, settings: TrainSettings) -> list[float] | None:
    """Each class's repeat factor for the training images (`dataset.class_repeat_factors`), or
    None when every image is drawn alike."""
    if not settings.repeat_threshold:
        return None
    factors = dataset.class_repeat_factors(data.pixel_counts["train"], settings.repeat_threshold)
    repeated = [f"{label} x{f:.2f}" for label, f in zip(data.labels, factors, strict=True) if f > 1]
    log.info("repeat-factor sampling: %s", ", ".join(repeated) or "no class under the share")
    return factors


def loss_options(settings: TrainSettings) -> dict:
    """The loss recipe beyond the class weights (`losses.WeightedCrossEntropy`)."""
    return {
        "upsample": settings.loss_resolution == "label",
        "ohem_threshold": settings.ohem_threshold,
        "ohem_min_kept": settings.ohem_min_kept,
        "focal_gamma": settings.focal_gamma,
        "lovasz_weight": settings.lovasz_weight,
    }


def build_model(
    weights: list[float],
    settings: TrainSettings,
    total_steps: int,
    mixed_precision: bool,
    replicas: int = 1,
) -> keras.Model:
    """The ICNet training model for len(weights) classes, compiled with the three-output loss
    on its float32 logits, each pixel weighted by its class's weight, and the optimizer, its
    learning rate scaled for the replicas as `train.scaling` says."""
    with icnet.dtype_policy("mixed_float16" if mixed_precision else "float32"):
        model = icnet.build_icnet(len(weights), settings.image_size, settings.alpha)
    rate = learning_rate(settings.schedule, settings.learning_rate * replicas, total_steps)
    # Named: checkpoints find its variables by path ("adam/iteration"), and Keras numbers the
    # default names within a process (adam, adam_1, ...).
    if settings.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(rate, momentum=0.9, name="sgd")
    else:
        optimizer = keras.optimizers.Adam(rate, name="adam")
    losses.compile_for_training(
        model, weights, optimizer, settings.loss_weights, **loss_options(settings)
    )
    return model


def output_sizes(
    model: keras.Model, settings: TrainSettings | None = None
) -> dict[str, tuple[int, int]]:
    """(height, width) the masks are resized to for each training output: the output's own, or
    with --loss-resolution label the crop's (the loss then upsamples the logits)."""
    if settings and settings.loss_resolution == "label":
        return {name: tuple(settings.image_size) for name in icnet.OUTPUTS}
    return {name: tuple(model.get_layer(name).output.shape[1:3]) for name in icnet.OUTPUTS}


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
    """Start from another run's weights; it must have the same classes and alpha. Only the
    weights: its optimizer state (step count, moments) would carry its schedule over."""
    ours = {"num_classes": model.get_layer(MAIN_OUTPUT).output.shape[-1], "alpha": settings.alpha}
    with tempfile.TemporaryDirectory() as scratch:
        weights = fetch_fine_tune_source(source, Path(scratch))
        if not weights.name.endswith(".weights.h5"):
            raise StageError(f"--fine-tune-from {source}: expected a .weights.h5 file")
        config_path = weights.parent / model_folder.CONFIG_FILE
        if config_path.is_file():
            try:
                other = json.loads(config_path.read_text())
            except json.JSONDecodeError as error:
                raise StageError(
                    f"--fine-tune-from {source}: {config_path.name} is not valid JSON ({error})"
                ) from error
            model_folder.check_config(other, f"--fine-tune-from {source}: {config_path.name}")
            for key, value in ours.items():
                if other[key] != value:
                    raise StageError(
                        f"--fine-tune-from {source} has {key} {other[key]}, this run {value}: "
                        "its weights do not fit"
                    )
        trained = build_with_weights(
            weights,
            ours["num_classes"],
            settings.image_size,
            settings.alpha,
            f"--fine-tune-from {source} cannot be loaded",
        )
    copy_weights(trained, model)
    log.info("fine-tuning from %s", source)


def tensorboard_dir(output_dir: Path) -> str:
    """Vertex AI sets AIP_TENSORBOARD_LOG_DIR (a gs:// URI, which the machines see under
    /gcs) whenever the job has a base output directory; the pipeline makes that the model
    folder, so with or without a TensorBoard instance the scalars land in its logs/."""
    uri = os.environ.get("AIP_TENSORBOARD_LOG_DIR")
    return str(kfp_executor.local_path(uri)) if uri else str(output_dir / "logs")


def training_data(
    data: PreparedData,
    settings: TrainSettings,
    scale: Scaling,
    target_sizes: dict[str, tuple[int, int]],
) -> tf.data.Dataset:
    """Batches of the global batch size, which Keras splits across the replicas; on several
    machines each keeps its own part of every batch."""
    batches = dataset.make_dataset(
        data.shards["train"],
        settings.image_size,
        scale.global_batch_size,
        training=True,
        normalization=NORMALIZATION,
        seed=settings.seed,
        target_sizes=target_sizes,
        resize=settings.resize,
        repeat_factors=repeat_factors(data, settings),
    )
    return distribute.shard_by_data(batches)


def chief_callbacks(
    run: Run, settings: TrainSettings, stage: str | None, history: list[dict], key: dict
) -> tuple[callbacks.Validation, list[keras.callbacks.Callback]]:
    """The chief's validation and its callbacks, the checkpoint last: it commits the epoch."""
    data = run.data
    val_data = dataset.make_dataset(
        data.shards["val"],
        settings.image_size,
        settings.batch_size,
        training=False,
        normalization=NORMALIZATION,
        resize=settings.resize,
    )
    validation = callbacks.Validation(val_data, data.labels)
    return validation, [
        validation,
        callbacks.LearningRate(),
        callbacks.Scalars(str(Path(tensorboard_dir(run.output_dir), stage or ""))),
        callbacks.EpochCheckpoint(run.checkpoints(stage), history, key),
    ]


def train(data_dir: Path, output_dir: Path, settings: TrainSettings) -> dict:
    """Train (or resume), write the model directory, return the final metrics.

    With --warm-start-epochs the run first trains those epochs at --warm-start-size, then its
    --epochs at --image-size from the warm start's last weights; a run restarted during the
    warm start resumes it, one restarted after it resumes the second stage.

    On several machines every one trains, and only the chief writes and returns the metrics
    (the others return {}).
    """
    check_settings(settings)
    tf_config = cluster.cluster_config(os.environ)
    strategy = distribute.make_strategy(tf_config)  # first: it may set up TensorFlow's devices
    data = data_folder.read_prepared(data_dir)
    run = Run(
        data,
        Path(output_dir),
        strategy,
        cluster.task_name(tf_config),
        cluster.is_chief(tf_config),
        use_mixed_precision(settings.mixed_precision),
        class_weights(data, settings),
    )
    start = None
    if settings.warm_start_epochs and not checkpoints.list_checkpoints(run.checkpoints()):
        warm = warm_start_settings(settings)
        log.info(
            "warm start: %d epochs at %s, then %d at %s",
            warm.epochs, "x".join(map(str, warm.image_size)),
            settings.epochs, "x".join(map(str, settings.image_size)),
        )  # fmt: skip
        start, *_ = fit_stage(run, warm, WARM_START)
    model, history, validation, scale = fit_stage(run, settings, start=start)
    if not run.chief:
        log.info("done: the chief writes the model dir %s", output_dir)
        return {}
    best = publish_best_epoch(model, run.checkpoints(), history, validation)
    final = {f"val_{name}": value for name, value in validation.evaluate_once(model).items()}
    final["best_epoch"] = best
    final["epochs"] = len(history)
    final["final_loss"] = history[-1].get("loss") if history else None
    write_model_dir(run, model, settings, history, final, scale)
    log.info(
        "done: val pixel accuracy %s, val mean IoU %s -> %s",
        final["val_pixel_accuracy"],
        final[checkpoints.BEST_METRIC],
        output_dir,
    )
    return final


def fit_stage(
    run: Run, settings: TrainSettings, stage: str | None = None, start: keras.Model | None = None
) -> tuple[keras.Model, list[dict], callbacks.Validation | None, Scaling]:
    """Build the model `settings` describe; start it from the stage's latest checkpoint, else
    from `start`'s weights, else as --fine-tune-from or --init say; fit the epochs left.
    Returns the model, the history, the chief's validation (None elsewhere) and the scaling."""
    data = run.data
    scale = scaling(settings, run.strategy.num_replicas_in_sync, data.records["train"])
    key = resume_key(settings, scale, data.labels, run.mixed_precision, run.class_weights)
    resume_from = checkpoints.latest(run.checkpoints(stage), key)  # the chief's
    keras.utils.set_random_seed(settings.seed)  # the same everywhere: see shard_by_data
    log.info(
        "training on %d records, validating on %d; %d classes, %s, alpha %s, "
        "%d steps x %d epochs, mixed precision %s",
        data.records["train"], data.records["val"], len(data.labels),
        "x".join(map(str, settings.image_size)), settings.alpha,
        scale.steps_per_epoch, settings.epochs, "on" if run.mixed_precision else "off",
    )  # fmt: skip
    log.info(
        "%s: %d replica(s) x batch %d = global batch %d, learning rate %g (%g per replica)",
        run.task, scale.replicas,
        settings.batch_size, scale.global_batch_size, scale.learning_rate, settings.learning_rate,
    )  # fmt: skip
    with run.strategy.scope():
        total_steps = scale.steps_per_epoch * settings.epochs
        model = build_model(
            run.class_weights, settings, total_steps, run.mixed_precision, scale.replicas
        )
        history: list[dict] = []
        if resume_from:
            history = checkpoints.restore(resume_from, model)["history"]
            log.info("resuming from %s (epoch %d done)", resume_from.name, len(history))
            if settings.fine_tune_from or settings.init != "random":
                log.info("not initializing the weights again: the checkpoint supersedes that")
        elif start is not None:
            copy_weights(start, model)
            log.info("starting from the warm start's last weights")
        else:
            report = None
            if settings.fine_tune_from:
                load_fine_tune_weights(model, settings.fine_tune_from, settings)
            elif settings.init != "random":
                report = pretrained.initialize(model, settings.init)
            if run.chief:  # read back for config.json, also by a resumed run
                checkpoints.save_init_report(run.checkpoints(), report)
    train_data = training_data(data, settings, scale, output_sizes(model, settings))
    validation, chief_only = None, []  # only the chief validates and writes
    if run.chief:
        validation, chief_only = chief_callbacks(run, settings, stage, history, key)
    if len(history) < settings.epochs:
        model.fit(
            train_data,
            epochs=settings.epochs,
            initial_epoch=len(history),
            steps_per_epoch=scale.steps_per_epoch,
            callbacks=[callbacks.Finite(), *chief_only],
            shuffle=False,  # the dataset shuffles itself (Keras cannot shuffle a tf.data one)
            verbose=2,
        )
    return model, history, validation, scale


def publish_best_epoch(
    model: keras.Model, directory: Path, history: list[dict], validation: callbacks.Validation
) -> int:
    """Give the model the weights of the epoch with the best validation mean IoU (kept among
    the checkpoints), the one the model folder publishes; return that epoch."""
    best = checkpoints.best_epoch(history)
    if best != len(history):
        checkpoints.restore(checkpoints.path_of(directory, best), model, optimizer=False)
        validation.last = None  # its scores are the last epoch's
        log.info(
            "publishing epoch %d, the best by validation mean IoU (%.4f; the last, epoch %d: "
            "%.4f)",
            best, history[best - 1][checkpoints.BEST_METRIC], len(history),
            history[-1].get(checkpoints.BEST_METRIC, float("nan")),
        )  # fmt: skip
    return best


def write_model_dir(
    run: Run,
    model: keras.Model,
    settings: TrainSettings,
    history: list[dict],
    scores: dict,
    scale: Scaling,
) -> None:
    """The model folder (model_folder.py): weights, history, scores, and config.json last."""
    data = run.data
    training = asdict(settings)
    del training["image_size"], training["alpha"], training["resize"]
    training |= {
        "steps_per_epoch": scale.steps_per_epoch,
        "mixed_precision": "on" if run.mixed_precision else "off",
        "replicas": scale.replicas,
        "global_batch_size": scale.global_batch_size,
        "effective_learning_rate": scale.learning_rate,
        "train_records": data.records["train"],
        "val_records": data.records["val"],
        "class_weights": dict(zip(data.labels, run.class_weights, strict=True)),
        "best_epoch": scores["best_epoch"],
        "init_report": checkpoints.read_init_report(run.checkpoints()),
    }
    model_folder.write_model_dir(
        run.output_dir,
        write_weights=model.save_weights,
        config={
            "labels": data.labels,
            "num_classes": len(data.labels),
            "image_size": list(settings.image_size),
            "alpha": settings.alpha,
            "normalization": asdict(NORMALIZATION),
            "preprocessing": {"resize": settings.resize},
            "main_output": MAIN_OUTPUT,
            "training": training,
        },
        history=history,
        training_metrics=scores,
    )
