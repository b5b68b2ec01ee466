"""What a training run depends on besides the data, and its checks; no TensorFlow here, so a
bad setting is refused before TensorFlow loads (by the train and training-job stages alike).

Batch and learning rate: `batch_size` is the batch of one replica (one GPU, or one CPU
machine) and `learning_rate` the rate for that batch. The run trains on all GPUs of all
machines: the global batch is batch size x replicas, the learning rate is scaled linearly with
the replicas, and an epoch is by default one pass over the training records at the global
batch (`scaling`).
"""

import argparse
import math
from dataclasses import asdict, dataclass, fields, replace

from image_segmentation.data import photo_input
from image_segmentation.model import shapes

CLASS_BALANCING = ("median-frequency", "sqrt-frequency", "none")
LOSS_RESOLUTIONS = ("output", "label")  # where the loss is taken: each output's size, the mask's


@dataclass(frozen=True)
class TrainSettings:
    """Everything a training run depends on besides the data; recorded in config.json."""

    image_size: tuple[int, int] = (768, 768)
    alpha: float = 0.25
    epochs: int = 10
    steps_per_epoch: int | None = None  # None: one pass over the training records
    batch_size: int = 8  # per replica (see `scaling`)
    learning_rate: float = 1e-2  # for one replica's batch
    optimizer: str = "adam"
    schedule: str = "poly"
    loss_weights: tuple[float, float, float] = (1.0, 0.4, 0.16)
    class_balance: str = "sqrt-frequency"
    max_class_weight: float = 10.0
    loss_resolution: str = "output"  # "label": logits upsampled to the crop, not masks shrunk
    ohem_threshold: float | None = 0.7  # hard pixels only: true-class probability <= this
    ohem_min_kept: float = 0.1  # with ohem_threshold: at least this share of labelled pixels
    focal_gamma: float = 0.0  # focal loss: each pixel's cross-entropy times (1 - p) ** gamma
    lovasz_weight: float = 0.0  # plus this times the Lovasz-softmax loss (mean IoU, smoothed)
    repeat_threshold: float = 0.0  # repeat-factor sampling of images with rarer classes; 0: off
    warm_start_size: tuple[int, int] | None = None  # first train this many epochs at this size
    warm_start_epochs: int = 0
    resize: str = photo_input.DEFAULT_RESIZE
    init: str = "random"  # or "imagenet", or a ResNet-50 weights file (`pretrained.py`)
    fine_tune_from: str | None = None
    mixed_precision: str = "auto"
    seed: int = 0


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


def settings_problems(settings: TrainSettings) -> list[str]:
    """What cannot train in `settings`, one line per problem; no TensorFlow needed, so a bad
    setting is refused in a second. Every number must be finite: an infinite learning rate or
    a NaN loss weight would train a NaN model."""
    problems = shapes.problems(2, settings.image_size, settings.alpha)
    if settings.epochs < 1:
        problems.append(f"--epochs must be >= 1, got {settings.epochs}")
    if settings.warm_start_epochs < 0:
        problems.append(f"--warm-start-epochs must be >= 0, got {settings.warm_start_epochs}")
    elif (settings.warm_start_size is None) != (settings.warm_start_epochs == 0):
        problems.append("--warm-start-size and --warm-start-epochs go together: give both")
    elif settings.warm_start_size is not None:
        warm = shapes.size_problems(settings.warm_start_size)
        problems += [f"--warm-start-size: {problem}" for problem in warm]
    if settings.steps_per_epoch is not None and settings.steps_per_epoch < 1:
        problems.append(f"--steps-per-epoch must be >= 1, got {settings.steps_per_epoch}")
    if settings.batch_size < 1:
        problems.append(f"--batch-size must be >= 1, got {settings.batch_size}")
    if not (math.isfinite(settings.learning_rate) and settings.learning_rate > 0):
        rate = settings.learning_rate
        problems.append(f"--learning-rate must be a finite number > 0, got {rate}")
    if not any(settings.loss_weights):
        problems.append("--loss-weights are all 0: nothing would be learnt")
    if settings.init != "random" and settings.fine_tune_from:
        problems.append("--init and --fine-tune-from both say where the weights start: pick one")
    if not (math.isfinite(settings.max_class_weight) and settings.max_class_weight >= 1):
        problems.append(
            f"--max-class-weight must be a finite number >= 1, got {settings.max_class_weight}"
        )
    if settings.loss_resolution not in LOSS_RESOLUTIONS:
        problems.append(
            f"--loss-resolution must be one of {', '.join(LOSS_RESOLUTIONS)}, "
            f"got {settings.loss_resolution!r}"
        )
    if settings.class_balance not in CLASS_BALANCING:
        problems.append(
            f"--class-balance must be one of {', '.join(CLASS_BALANCING)}, "
            f"got {settings.class_balance!r}"
        )
    threshold = settings.ohem_threshold
    if threshold is not None and not (math.isfinite(threshold) and 0 < threshold <= 1):
        problems.append(f"--ohem-threshold must be a probability in (0, 1], got {threshold}")
    if not (math.isfinite(settings.ohem_min_kept) and 0 <= settings.ohem_min_kept <= 1):
        problems.append(f"--ohem-min-kept must be a share in [0, 1], got {settings.ohem_min_kept}")
    elif threshold is None and settings.ohem_min_kept != TrainSettings.ohem_min_kept:
        problems.append("--ohem-min-kept does nothing without --ohem-threshold")
    if not (math.isfinite(settings.focal_gamma) and settings.focal_gamma >= 0):
        problems.append(f"--focal-gamma must be a finite number >= 0, got {settings.focal_gamma}")
    if not (math.isfinite(settings.lovasz_weight) and settings.lovasz_weight >= 0):
        problems.append(
            f"--lovasz-weight must be a finite number >= 0, got {settings.lovasz_weight}"
        )
    if not (math.isfinite(settings.repeat_threshold) and 0 <= settings.repeat_threshold <= 1):
        problems.append(
            f"--repeat-threshold must be a pixel share in [0, 1], got {settings.repeat_threshold}"
        )
    if settings.seed < 0:
        problems.append(f"--seed must be >= 0, got {settings.seed}")
    return problems


def warm_start_settings(settings: TrainSettings) -> TrainSettings:
    """The warm start's own run: --warm-start-epochs at --warm-start-size, alike otherwise."""
    return replace(
        settings,
        image_size=settings.warm_start_size,
        epochs=settings.warm_start_epochs,
        warm_start_size=None,
        warm_start_epochs=0,
    )


def settings_from_args(args: argparse.Namespace) -> TrainSettings:
    """The settings the parsed command line asks for (each field is the option of its name)."""
    return TrainSettings(
        **{field.name: getattr(args, field.name) for field in fields(TrainSettings)}
    )


# Loss and sampling options added after checkpoints were in use, each with the value that
# trains as before it existed: at that value they stay out of the key, so a checkpoint written
# before them still resumes a run that asks for the same.
OMITTED_WHEN = {
    "loss_resolution": "output", "ohem_threshold": None, "ohem_min_kept": 0.1, "focal_gamma": 0.0,
    "lovasz_weight": 0.0, "repeat_threshold": 0.0, "warm_start_size": None, "warm_start_epochs": 0,
}  # fmt: skip

# Settings that a checkpoint need not share with the run that resumes it, and why. The others
# must match (`resume_key`).
NOT_IN_RESUME_KEY = {
    "steps_per_epoch": "the key holds the effective steps (`Scaling`)",
    "learning_rate": "the key holds the effective rate, scaled for the replicas",
    "mixed_precision": "the key holds whether it is on (auto resolves per machine)",
    "class_balance": "the key holds the class weights it gives",
    "max_class_weight": "the key holds the class weights it gives",
    "fine_tune_from": "where a new run's weights start: a checkpoint supersedes it",
    "seed": "shuffling and augmentation: a resumed run draws its batches anew either way",
}


def resume_key(
    settings: TrainSettings, scale: Scaling, labels: list[str], mixed: bool, weights: list[float]
) -> dict:
    """What a checkpoint must share with a run to be resumed by it: every setting that shapes
    the variables or would train the remaining epochs differently, with the effective values
    where the settings only lead to them."""
    key = {
        name: list(value) if isinstance(value, tuple) else value
        for name, value in asdict(settings).items()
        if name not in NOT_IN_RESUME_KEY
        and not (name in OMITTED_WHEN and value == OMITTED_WHEN[name])
    }
    return key | {
        "labels": labels,
        "steps_per_epoch": scale.steps_per_epoch,
        "learning_rate": scale.learning_rate,
        "mixed_precision": mixed,
        "class_weights": weights,
    }
