"""The prepare stage's command line: ADE20K filtered by a class whitelist into sharded TFRecords
(the work, and how it goes, is data/prepare.py).
"""

import argparse
import sys
from pathlib import Path

from image_segmentation.data import ade20k, labels
from image_segmentation.data.prepare import (
    DEFAULT_THRESHOLD,
    DEFAULT_TRAIN_SHARDS,
    DEFAULT_VAL_SHARDS,
    prepare_dataset,
)
from image_segmentation.errors import StageError


def list_labels() -> str:
    """The 150 ADE20K classes as `idx<TAB>name`, the names a whitelist may use."""
    return "".join(f"{c.index}\t{c.name}\n" for c in labels.load_ade_classes())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset-dir",
        help=f"the download stage's output folder ({ade20k.ARCHIVE_NAME} and "
        f"{ade20k.MANIFEST_NAME}), the zip itself, a gs:// URI of either, or an extracted "
        f"{ade20k.DATASET_DIR}/ or the folder that holds it; a zip is read in place, after a "
        "copy to SCRATCH_DIR when it is in Cloud Storage or on a FUSE mount (Vertex AI's /gcs/)",
    )
    parser.add_argument("--output-dir", type=Path, help="where the shards and stats go")
    parser.add_argument(
        "--whitelist",
        help="output classes separated by '|', ADE20K classes merged into one by ':', e.g. "
        "'person|car:truck|wall' (see --list-labels); class 0 is always 'none'. "
        "Default: all 150 classes, and no threshold filtering",
    )
    parser.add_argument(
        "--threshold", type=float,
        help="with --whitelist: keep an image when at least this fraction of the whitelisted "
        f"classes (not counting 'none') appear in its mask (default {DEFAULT_THRESHOLD}); "
        "ignored without --whitelist",
    )  # fmt: skip
    parser.add_argument(
        "--train-shards", type=int, default=DEFAULT_TRAIN_SHARDS,
        help="TFRecord files for the training split (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--val-shards", type=int, default=DEFAULT_VAL_SHARDS,
        help="TFRecord files for the validation split (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--workers", type=int,
        help="processes, at most one per shard (default: the number of CPUs); the output "
        "does not depend on it",
    )  # fmt: skip
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the shuffle into shards (default 0)"
    )
    parser.add_argument(
        "--scratch-dir", type=Path,
        help="local folder for that copy of the zip, removed when done (default: the system's "
        "temporary folder)",
    )  # fmt: skip
    parser.add_argument(
        "--list-labels", action="store_true",
        help="print the 150 ADE20K classes (idx<TAB>name) and exit",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    if args.list_labels:
        sys.stdout.write(list_labels())
        return 0
    if args.dataset_dir is None or args.output_dir is None:
        raise StageError("--dataset-dir and --output-dir are required (or use --list-labels)")
    prepare_dataset(
        args.dataset_dir,
        args.output_dir,
        whitelist=args.whitelist,
        threshold=args.threshold,
        train_shards=args.train_shards,
        val_shards=args.val_shards,
        workers=args.workers,
        seed=args.seed,
        scratch_dir=args.scratch_dir,
    )
    return 0
