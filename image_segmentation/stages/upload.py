"""The upload stage's command line: publish an export folder as one immutable model version in
Cloud Storage (the work, and how it goes, is cloud/upload.py).
"""

import argparse
import json
from pathlib import Path

from image_segmentation import cli, files
from image_segmentation.cloud import storage
from image_segmentation.cloud.upload import (
    DEFAULT_DEADLINE,
    RETRY,
    default_source_run,
    upload_model,
)
from image_segmentation.contracts import challenge_folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--export-dir", type=Path, required=True, help="folder to upload")
    parser.add_argument(
        "--destination", required=True, help="gs://BUCKET/PREFIX under which models live"
    )
    parser.add_argument("--model-name", required=True, help="model folder name, e.g. icnet")
    parser.add_argument("--version", required=True, help="version folder name, e.g. v3")
    parser.add_argument(
        "--model-dir",
        type=Path,
        help="trained model folder, for the manifest's labels and config; "
        "default: the export's own record of them",
    )
    parser.add_argument(
        "--evaluation-dir",
        type=Path,
        help="the evaluate stage's output for --model-dir: the published metrics must be its",
    )
    parser.add_argument(
        "--challenge-dir",
        type=Path,
        help="the challenge stage's output for this model: the version is published only if it "
        "decided so, and then becomes the champion (champion.json) unless another run took "
        "that first; without it no champion is named",
    )
    parser.add_argument(
        "--source-run",
        help="run that produced the model (default: $AIP_PIPELINE_JOB_NAME or $CLOUD_ML_JOB_ID)",
    )
    parser.add_argument(
        "--replace",
        action="store_true",
        help="replace an existing version (its objects the new one lacks are deleted)",
    )
    parser.add_argument(
        "--deadline",
        type=cli.positive_seconds,
        default=DEFAULT_DEADLINE,
        help="seconds to keep retrying a failing Cloud Storage request (unreachable, 429, 5xx) "
        "before giving up",
    )
    parser.add_argument("--output-uris", type=Path, help="write the uploaded URIs here as JSON")


def run(args: argparse.Namespace) -> int:
    decision = challenge_folder.read_decision(args.challenge_dir) if args.challenge_dir else None
    with storage.explained_errors(args.destination):
        result = upload_model(
            args.export_dir,
            args.destination,
            args.model_name,
            args.version,
            model_dir=args.model_dir,
            evaluation_dir=args.evaluation_dir,
            source_run=args.source_run or default_source_run(),
            replace=args.replace,
            decision=decision,
            retry=RETRY.with_timeout(args.deadline),
        )
    print(json.dumps(result, indent=2))
    if args.output_uris:
        files.write_json(args.output_uris, result)
    return 0
