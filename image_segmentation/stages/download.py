"""The download stage's command line: fetch ADEChallengeData2016.zip and verify it (the work, and
how it goes, is data/download.py; the output folder is contracts/download_folder.py).
"""

import argparse
from pathlib import Path

from image_segmentation import cli
from image_segmentation.contracts.download_folder import ARCHIVE_NAME, MANIFEST_NAME
from image_segmentation.data import ade20k, fetch
from image_segmentation.data.download import download_dataset, normalize_sha1, resolve_size


def retry_count(text: str) -> int:
    """An argparse type: a whole number of retries, 0 or more."""
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"must be a whole number, 0 or more, got {text!r}")
    return int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "An interrupted download resumes on the next run from the .partial file in ARCHIVE_DIR. "
        "A zip that fails a check is deleted (a local --source is left in place) and nothing is "
        "written to OUTPUT_DIR. Nothing is extracted. A rerun over a complete output does "
        "nothing. The folders must be writable and have room for the zip before it starts."
    )
    parser.add_argument(
        "--source",
        default=ade20k.OFFICIAL_URL,
        help="where ADEChallengeData2016.zip is: an http(s) URL, a gs://bucket/object mirror "
        "or a local file (default: the official MIT URL)",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        required=True,
        help=f"gets the verified {ARCHIVE_NAME} (not extracted) and, last, {MANIFEST_NAME}: "
        "the source, SHA-1, size and image counts per split",
    )
    parser.add_argument(
        "--sha1",
        default=ade20k.OFFICIAL_SHA1,
        help="expected SHA-1 of the zip; the official one by default, also for a mirror, since "
        "a mirror holds the same file; 'none' skips the check (the manifest still records the "
        "actual SHA-1)",
    )
    parser.add_argument(
        "--size",
        default="auto",
        help="expected size of the zip in bytes, compared with the server's length before "
        f"downloading; 'auto' (default) means {ade20k.OFFICIAL_SIZE} when --sha1 is the "
        "official one, else no check; 'none' skips it",
    )
    parser.add_argument(
        "--archive-dir",
        type=Path,
        help="scratch folder the zip is downloaded to, through a .partial file a rerun resumes "
        "from, before it is copied into OUTPUT_DIR (default: OUTPUT_DIR itself, or a temporary "
        "folder when OUTPUT_DIR is on a FUSE mount such as Vertex AI's /gcs/)",
    )
    parser.add_argument(
        "--retries",
        type=retry_count,
        default=5,
        help="consecutive failed attempts to retry with exponential backoff; an attempt "
        "that received data resets the count, unless it stalled (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=cli.positive_seconds,
        default=60.0,
        help="seconds to wait for the server to connect or send data; a download that gets "
        f"less than {fetch.MIN_BYTES_PER_SECOND} bytes/s over that long has stalled and is "
        "retried (default: %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    sha1 = normalize_sha1(args.sha1)
    zip_path = download_dataset(
        args.source,
        args.output_dir,
        sha1,
        resolve_size(args.size, sha1),
        archive_dir=args.archive_dir,
        retries=args.retries,
        timeout=args.timeout,
    )
    print(zip_path)
    return 0
