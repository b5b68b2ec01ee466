"""One command-line entry point for every stage: `python -m image_segmentation STAGE --help`.

Each stage module provides `add_arguments(parser)` and `run(args)`. Only the chosen stage's
module is imported, so light stages (download) never pay for importing TensorFlow; the stages
that use it import it only in `run` (train.py and trainer.py, evaluate.py and evaluator.py), so
every stage's `--help` answers at once.
"""

import argparse
import importlib
import logging
import math
import os
import sys

from image_segmentation.cloud import cluster, kfp_executor
from image_segmentation.errors import StageError

STAGES = {
    "download": ("image_segmentation.stages.download", "Download and verify the ADE20K zip."),
    "prepare": (
        "image_segmentation.stages.prepare",
        "Whitelist-filter ADE20K into TFRecord shards.",
    ),
    "train": ("image_segmentation.stages.train", "Train ICNet on the prepared TFRecords."),
    "training-job": (
        "image_segmentation.stages.training_job",
        "Write the Vertex AI training job's worker pools.",
    ),
    "evaluate": (
        "image_segmentation.stages.evaluate",
        "Score a trained model on the validation split.",
    ),
    "challenge": (
        "image_segmentation.stages.challenge",
        "Decide whether a model beats the published champion.",
    ),
    "export": (
        "image_segmentation.stages.export",
        "Convert a trained model to Core ML and TFLite.",
    ),
    "upload": ("image_segmentation.stages.upload", "Upload exported models to Cloud Storage."),
    "predict": (
        "image_segmentation.stages.predict",
        "Segment your own photos with a trained model.",
    ),
    "demo": ("image_segmentation.stages.demo", "Run the stages end to end on generated data."),
}


def _usage() -> str:
    lines = ["usage: python -m image_segmentation STAGE [options]", "", "stages:"]
    lines += [f"  {name:<10} {summary}" for name, (_, summary) in STAGES.items()]
    lines += ["", "Run `python -m image_segmentation STAGE --help` for a stage's options."]
    lines += ["Kubeflow steps put `--executor-input JSON [--metrics-from OUTPUT/FILE]` first."]
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    """A stage's argument parser whose errors are one line, like every other bad input."""

    def error(self, message: str):
        self.exit(_error(f"{message} (see {self.prog} --help)"))


def _error(message: object) -> int:
    """Tell the user what is wrong in one line on stderr; return the exit status, 2."""
    print(f"error: {' '.join(str(message).splitlines())}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:  # a Kubeflow container step passes `--executor-input '{{$}}'` before the stage
        executor, argv = kfp_executor.split_options(argv)
        if executor:  # checked now: a bad one must not cost a whole download or training run
            kfp_executor.check_executor_input(executor)
    except StageError as error:
        return _error(error)
    if executor and not argv:
        return _error("--executor-input needs a stage after it")
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES:
        return _error(f"unknown stage {stage!r}; the stages are {', '.join(STAGES)}")
    try:
        if executor:
            kfp_executor.check_outputs_writable(executor)
    except StageError as error:
        return _error(error)
    module_name, summary = STAGES[stage]
    # TensorFlow's C++ start-up chatter (CPU features, XLA, MLIR passes) buries the stage's own
    # log; errors still show. Set TF_CPP_MIN_LOG_LEVEL=0 to see everything.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    module = importlib.import_module(module_name)
    parser = _Parser(prog=f"python -m image_segmentation {stage}", description=summary)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        status = module.run(args) or 0
        # Every machine of a multi-machine training job runs this command; the chief alone
        # writes the outputs, so it alone tells Kubeflow about them.
        if executor and status == 0 and cluster.is_chief(cluster.cluster_config(os.environ)):
            declared = getattr(module, "OUTPUT_PARAMETERS", {})
            kfp_executor.write_executor_output(executor, declared)
        return status
    except StageError as error:
        return _error(error)


def positive_seconds(text: str) -> float:
    """An argparse type for the stages' time limits: a finite number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, got {text!r}")
    return value
