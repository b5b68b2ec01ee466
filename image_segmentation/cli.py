"""One command-line entry point for every stage: `python -m image_segmentation STAGE --help`.

Each stage module provides `add_arguments(parser)` and `run(args)`. Only the chosen stage's
module is imported, so light stages (download) never pay for importing TensorFlow.
"""

import argparse
import importlib
import logging
import os
import sys

from image_segmentation import kfp_executor
from image_segmentation.errors import StageError

STAGES = {
    "download": ("image_segmentation.download", "Download and verify the ADE20K zip."),
    "prepare": ("image_segmentation.prepare", "Whitelist-filter ADE20K into TFRecord shards."),
    "train": ("image_segmentation.train", "Train ICNet on the prepared TFRecords."),
    "evaluate": ("image_segmentation.evaluate", "Score a trained model on the validation split."),
    "export": ("image_segmentation.export", "Convert a trained model to Core ML and TFLite."),
    "upload": ("image_segmentation.upload", "Upload exported models to Cloud Storage."),
    "demo": ("image_segmentation.demo", "Run the stages end to end on generated data."),
}


def _usage() -> str:
    lines = ["usage: python -m image_segmentation STAGE [options]", "", "stages:"]
    lines += [f"  {name:<10} {summary}" for name, (_, summary) in STAGES.items()]
    lines += ["", "Run `python -m image_segmentation STAGE --help` for a stage's options."]
    lines += ["Kubeflow steps put `--executor-input JSON [--metrics-from OUTPUT/FILE]` first."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:  # a Kubeflow container step passes `--executor-input '{{$}}'` before the stage
        executor, argv = kfp_executor.split_options(argv)
    except StageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES:
        print(f"error: unknown stage {stage!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, summary = STAGES[stage]
    # TensorFlow's C++ start-up chatter (CPU features, XLA, MLIR passes) buries the stage's own
    # log; errors still show. Set TF_CPP_MIN_LOG_LEVEL=0 to see everything.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(
        prog=f"python -m image_segmentation {stage}", description=summary
    )
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        status = module.run(args) or 0
        if executor and status == 0:
            kfp_executor.write_executor_output(executor)
        return status
    except StageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
