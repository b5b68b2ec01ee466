"""The train stage: ICNet on the prepared TFRecords, into a model folder (`model_folder.py`).

This module is the stage's command line and settings, without TensorFlow: the training itself
is `trainer.py`, imported only when the stage runs, so `--help` answers at once.

The loss is cross-entropy on the logits of all three ICNet outputs (cascade label guidance),
against the masks resized (nearest) to each output's size, each pixel weighted by its class
(`losses.py`: median-frequency balancing from the pixel counts prepare recorded, so the small
classes are learnt too; the weights go into config.json). Unlabelled pixels count for nothing.
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

Photos become the model's input as --resize says (`preprocessing.py`), recorded in config.json
for every later stage: "stretch" (the whole photo, aspect not kept) or "crop" (the centred
window of the input's aspect).

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
import math
import os
from dataclasses import dataclass
from pathlib import Path

from image_segmentation import cli, cluster, disk, model_folder, shapes
from image_segmentation.errors import StageError

CLASS_BALANCING = ("median-frequency", "none")


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
    class_balance: str = "median-frequency"
    max_class_weight: float = 10.0
    resize: str = model_folder.DEFAULT_RESIZE
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
    if len(weights) != 3 or not all(math.isfinite(weight) and weight >= 0 for weight in weights):
        raise argparse.ArgumentTypeError(f"expected three weights >= 0 like 1.0,0.4,0.16: {text!r}")
    return weights


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
        "--class-balance",
        choices=CLASS_BALANCING,
        default=defaults.class_balance,
        help="weigh each pixel's loss by its class: median frequency / the class's frequency in "
        "the training pixels, so small classes are learnt (default %(default)s)",
    )
    add(
        "--max-class-weight",
        type=float,
        default=defaults.max_class_weight,
        help="cap of the class weights (and 1/cap their floor) (default %(default)s)",
    )
    add(
        "--resize",
        choices=model_folder.RESIZE_MODES,
        default=defaults.resize,
        help="how a photo becomes the model input, for this model's whole life: stretch (the "
        "whole photo, aspect not kept; Vision scaleFill) or crop (the centred window of the "
        "input's aspect; Vision centerCrop) (default %(default)s)",
    )
    add(
        "--init",
        default=defaults.init,
        help="how a new run's weights start: random; imagenet (the residual stages from "
        "Keras' ImageNet ResNet-50, pruned by L1 norm to ICNet's widths: what the pipeline "
        "uses); or PATH, a ResNet-50 weights file, local or gs:// (default %(default)s)",
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
    add(
        "--peer-timeout",
        type=cli.positive_seconds,
        default=cluster.PEER_TIMEOUT,
        help="on several machines: seconds to wait for the others to start (default %(default)s)",
    )


def settings_problems(settings: TrainSettings) -> list[str]:
    """What cannot train in `settings`, one line per problem; no TensorFlow needed, so a bad
    setting is refused in a second. Every number must be finite: an infinite learning rate or
    a NaN loss weight would train a NaN model."""
    problems = shapes.problems(2, settings.image_size, settings.alpha)
    if settings.epochs < 1:
        problems.append(f"--epochs must be >= 1, got {settings.epochs}")
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
    if settings.seed < 0:
        problems.append(f"--seed must be >= 0, got {settings.seed}")
    return problems


def settings_from_args(args: argparse.Namespace) -> TrainSettings:
    """The settings the parsed command line asks for."""
    return TrainSettings(
        image_size=args.image_size,
        alpha=args.alpha,
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        optimizer=args.optimizer,
        schedule=args.schedule,
        loss_weights=args.loss_weights,
        class_balance=args.class_balance,
        max_class_weight=args.max_class_weight,
        resize=args.resize,
        init=args.init,
        fine_tune_from=args.fine_tune_from,
        mixed_precision=args.mixed_precision,
        seed=args.seed,
    )


@contextlib.contextmanager
def held(output_dir: Path):
    """The model folder, made and checked writable, and held by this run alone."""
    with (
        disk.usable_folder(output_dir, "--output-dir"),
        disk.sole_writer(output_dir, "--output-dir"),
    ):
        yield


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    problems = settings_problems(settings)
    if problems:
        raise StageError("; ".join(problems))
    config = cluster.cluster_config(os.environ)
    # The chief alone writes the model folder, so it alone holds it; the others write nothing.
    chief = cluster.is_chief(config)
    with cluster.stop_on_sigterm(), held(args.output_dir) if chief else contextlib.nullcontext():
        if config:
            cluster.wait_for_peers(config, args.peer_timeout)
        from image_segmentation import trainer  # TensorFlow: imported when the stage runs

        trainer.train(args.data_dir, args.output_dir, settings)
    return 0
