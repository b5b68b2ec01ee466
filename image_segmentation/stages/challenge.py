"""The challenge stage's command line: decide whether this run's evaluated model is published
and becomes the champion of DESTINATION/MODEL_NAME/ (the rules, and how the champion is
measured, are evaluation/challenge.py). TensorFlow loads only to score a champion.
"""

import argparse
import math
from pathlib import Path

from image_segmentation import cli, disk, files
from image_segmentation.cloud import storage
from image_segmentation.cloud.upload import DEFAULT_DEADLINE, RETRY
from image_segmentation.contracts import challenge_folder, evaluation_folder
from image_segmentation.errors import StageError
from image_segmentation.evaluation import challenge

# The Kubeflow outputs the pipeline branches on: publish is "true" or "false".
OUTPUT_PARAMETERS = {"publish": str, "reason": str}


def boolean(text: str) -> bool:
    """An argparse type for the true/false a Kubeflow boolean parameter renders as."""
    value = {"true": True, "1": True, "false": False, "0": False}.get(text.strip().lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"must be true or false, got {text!r}")
    return value


def number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Publish only a model that reaches --min-miou and beats the champion named by "
        "DESTINATION/MODEL_NAME/champion.json by at least --min-improvement, both scored on "
        "the same validation data: the champion's recorded mIoU when its manifest records "
        "this run's validation data digest, else its FP32 TFLite model scored here on "
        "--data-dir. With no champion, the model becomes the first; with other labels it is "
        "published only with --replace-champion true. Writes OUTPUT/decision.json, which the "
        "upload stage needs to make the model the champion."
    )
    add = parser.add_argument
    add("--evaluation-dir", type=Path, required=True, help="the evaluate stage's output")
    add("--data-dir", type=Path, required=True, help="the prepared data it scored (val shards)")
    add("--destination", required=True, help="gs://BUCKET/PREFIX under which models live")
    add("--model-name", required=True, help="model folder name, e.g. icnet")
    add("--min-miou", type=number, default=0.0, help="absolute floor of the mIoU (default 0)")
    add(
        "--min-improvement",
        type=number,
        default=0.0,
        help="how much the mIoU must beat the champion's by (default 0: at least equal)",
    )
    add(
        "--replace-champion",
        type=boolean,
        default=False,
        help="true: publish even when the labels differ from the champion's (default false)",
    )
    add("--output-dir", type=Path, required=True, help="where decision.json goes")
    add("--publish-output", type=Path, help="write true or false here (a KFP string output)")
    add("--reason-output", type=Path, help="write the reason here (a KFP string output)")
    add(
        "--deadline",
        type=cli.positive_seconds,
        default=DEFAULT_DEADLINE,
        help="seconds to keep retrying a failing Cloud Storage request",
    )


def run(args: argparse.Namespace) -> int:
    challenge.check_thresholds(args.min_miou, args.min_improvement)
    for option in ("publish_output", "reason_output"):
        if getattr(args, option):
            disk.check_writable_file(getattr(args, option), f"--{option.replace('_', '-')}")
    result = evaluation_folder.read_result(args.evaluation_dir)
    if not args.data_dir.is_dir():
        raise StageError(f"data dir {args.data_dir} does not exist")
    with storage.explained_errors(args.destination):
        decision = challenge.challenge(
            result,
            args.data_dir,
            args.destination,
            args.model_name,
            min_miou=args.min_miou,
            min_improvement=args.min_improvement,
            replace_champion=args.replace_champion,
            retry=RETRY.with_timeout(args.deadline),
        )
    challenge_folder.write_decision(args.output_dir, decision)
    for path, text in ((args.publish_output, str(decision["publish"]).lower()),
                       (args.reason_output, decision["reason"])):  # fmt: skip
        if path:
            files.atomic_write(path, lambda part, text=text: part.write_text(text))
    print(("publish: " if decision["publish"] else "not published: ") + decision["reason"])
    return 0
