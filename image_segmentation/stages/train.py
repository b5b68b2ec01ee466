"""The train stage's command line, without TensorFlow: ICNet trained on the prepared TFRecords
into a model folder (`model_folder.py`). The settings and their checks are
training/settings.py; the training, and how it goes, is training/trainer.py, imported only
when the stage runs, so `--help` and bad settings answer at once.
"""

import argparse
import contextlib
import functools
import math
import os
from pathlib import Path

from image_segmentation import cli, disk
from image_segmentation.cloud import cluster
from image_segmentation.data import photo_input
from image_segmentation.errors import StageError
from image_segmentation.training.settings import (
    CLASS_BALANCING,
    LOSS_RESOLUTIONS,
    TrainSettings,
    settings_from_args,
    settings_problems,
)


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
        "--warm-start-size",
        type=parse_image_size,
        default=None,
        help="with --warm-start-epochs: first train that many epochs at this smaller size, then "
        "--epochs at --image-size from those weights (cheaper epochs, so more of them)",
    )
    add(
        "--warm-start-epochs",
        type=int,
        default=defaults.warm_start_epochs,
        help="epochs of the warm start at --warm-start-size (default %(default)s: none)",
    )
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
        "the training pixels, so small classes are learnt; sqrt-frequency: the square root of "
        "that, gentler (default %(default)s)",
    )
    add(
        "--max-class-weight",
        type=float,
        default=defaults.max_class_weight,
        help="cap of the class weights (and 1/cap their floor) (default %(default)s)",
    )
    add(
        "--loss-resolution",
        choices=LOSS_RESOLUTIONS,
        default=defaults.loss_resolution,
        help="output: masks resized (nearest) to each output's size; label: logits upsampled "
        "(bilinear) to the crop's, so thin objects stay in the targets (default %(default)s)",
    )
    add(
        "--ohem-threshold",
        type=float,
        default=defaults.ohem_threshold,
        help="online hard example mining: learn only from pixels whose true class has at most "
        "this probability (default %(default)s; 1: every pixel)",
    )
    add(
        "--ohem-min-kept",
        type=float,
        default=defaults.ohem_min_kept,
        help="with --ohem-threshold: at least this share of each batch's labelled pixels, the "
        "hardest (default %(default)s)",
    )
    add(
        "--focal-gamma",
        type=float,
        default=defaults.focal_gamma,
        help="focal loss: each pixel's cross-entropy times (1 - p) ** gamma, e.g. 2 "
        "(default %(default)s: plain cross-entropy)",
    )
    add(
        "--lovasz-weight",
        type=float,
        default=defaults.lovasz_weight,
        help="add this times the Lovasz-softmax loss, which optimizes each class's IoU "
        "directly, e.g. 1 (default %(default)s: none)",
    )
    add(
        "--repeat-threshold",
        type=float,
        default=defaults.repeat_threshold,
        help="repeat-factor sampling: a training image whose rarest class has the pixel share "
        "s < T of the training pixels is drawn sqrt(T / s) times as often, e.g. 0.01 "
        "(default %(default)s: every image alike)",
    )
    add(
        "--resize",
        choices=photo_input.RESIZE_MODES,
        default=defaults.resize,
        help=f"{photo_input.RESIZE_HELP} (default %(default)s)",
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
    with (
        cluster.stop_on_sigterm(functools.partial(disk.release_lease, args.output_dir)),
        held(args.output_dir) if chief else contextlib.nullcontext(),
    ):
        if config:
            cluster.wait_for_peers(config, args.peer_timeout)
        from image_segmentation.training import trainer

        trainer.train(args.data_dir, args.output_dir, settings)
    return 0
