"""Stage 2: filter ADE20K by a class whitelist into sharded TFRecords for training.

Each sample is checked in this order, and the first failure decides its fate: the image file
opens as a JPEG; the annotation exists and is an 8-bit single-channel PNG of the image's size
with values 0..150; the whole JPEG stream decodes; its whitelisted classes reach the threshold
(not counting `none`). Bad samples are skipped with a warning and counted by reason; images below
the threshold are counted apart. Kept images keep their original JPEG bytes unless they are
grayscale or CMYK (re-encoded as RGB); masks are remapped to output classes and stored as PNG:
non-whitelisted classes to 0 (`none`), ADE20K's unlabelled 0 to IGNORE (255), never scored.

The dataset is read where it lies, never extracted: from the download stage's zip, member by
member, or from an extracted folder. A zip in Cloud Storage or on a FUSE mount (Vertex AI's
/gcs/) is first copied to local scratch disk, since there every read is a request.

Samples go to shards by a seeded shuffle (ADE20K's names are ordered by scene); each shard is
written by one worker process, in order, so the output is byte-identical for any number of
workers (parallelism is per shard: more workers than shards would idle).

The output goes through `data_folder`: a rerun writes a new generation beside a complete output
and switches to it when done, so a failed or killed run leaves the earlier output readable. A
run that keeps no sample at all fails, saying why.
"""

import contextlib
import functools
import io
import logging
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from image_segmentation import disk
from image_segmentation.contracts import data_folder
from image_segmentation.data import ade20k, labels, records
from image_segmentation.errors import StageError

log = logging.getLogger(__name__)


DEFAULT_THRESHOLD = 0.6


DEFAULT_TRAIN_SHARDS = 16


DEFAULT_VAL_SHARDS = 2


SPLITS = {"train": "training", "val": "validation"}  # output prefix -> ADE20K folder


REASONS = (
    "unreadable_image",
    "missing_annotation",
    "unreadable_annotation",
    "size_mismatch",
    "mask_value_out_of_range",
)


KEPT, BELOW_THRESHOLD = "kept", "below_threshold"


JPEG_QUALITY = 95  # only for the few images that must be re-encoded


@dataclass(frozen=True)
class Options:
    """What every worker needs to process a sample: small, so it pickles cheaply."""

    dataset: Path  # the local zip or dataset folder; each worker opens it itself
    lookup: tuple[int, ...]  # 256 entries: ADE20K pixel value -> output class
    num_classes: int
    threshold: float | None  # None: keep every readable sample


@dataclass(frozen=True)
class Result:
    """The fate of one sample; `record` and `pixel_counts` are set only when it is kept."""

    name: str
    status: str  # KEPT, BELOW_THRESHOLD or one of REASONS
    detail: str = ""
    record: bytes = b""
    pixel_counts: tuple[int, ...] = ()
    unlabelled_pixels: int = 0
    converted_to_rgb: bool = False


@dataclass
class SplitStats:
    """What stats.json says about one split; pixel counts are over the kept samples, per output
    class, and apart from them the pixels ADE20K leaves unlabelled (IGNORE in the masks)."""

    considered: int = 0
    kept: int = 0
    below_threshold: int = 0
    converted_to_rgb: int = 0
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    pixel_counts: list[int] = field(default_factory=list)
    unlabelled_pixels: int = 0
    shards: list[str] = field(default_factory=list)
    records_per_shard: list[int] = field(default_factory=list)

    def add_shard(self, name: str, results: list[Result]) -> None:
        for result in results:
            self.considered += 1
            if result.status == KEPT:
                self.kept += 1
                self.converted_to_rgb += result.converted_to_rgb
                self.pixel_counts = [
                    a + b for a, b in zip(self.pixel_counts, result.pixel_counts, strict=True)
                ]
                self.unlabelled_pixels += result.unlabelled_pixels
            elif result.status == BELOW_THRESHOLD:
                self.below_threshold += 1
            else:
                self.skipped[result.status] += 1
        self.shards.append(name)
        self.records_per_shard.append(sum(r.status == KEPT for r in results))

    def dropped(self, threshold: float | None) -> str:
        """Why samples were not kept, e.g. `3 missing_annotation, 2 below threshold 0.6`."""
        reasons = [f"{count} {reason}" for reason, count in self.skipped.items() if count]
        if self.below_threshold:
            reasons.append(f"{self.below_threshold} below threshold {threshold}")
        return ", ".join(reasons)

    def to_json(self, class_labels: tuple[str, ...]) -> dict:
        return {
            "considered": self.considered,
            "kept": self.kept,
            "below_threshold": self.below_threshold,
            "converted_to_rgb": self.converted_to_rgb,
            "skipped": self.skipped,
            "pixel_counts": dict(zip(class_labels, self.pixel_counts, strict=True)),
            "unlabelled_pixels": self.unlabelled_pixels,
            "shards": self.shards,
            "records_per_shard": self.records_per_shard,
        }


def assign_shards(
    samples: list[ade20k.Sample], num_shards: int, seed: int
) -> list[list[ade20k.Sample]]:
    """Split samples into shards of near-equal size after a seeded shuffle.

    ADE20K's training names run scene by scene, so contiguous shards would each hold a few
    scenes and a small shuffle buffer in training would see one scene at a time.
    """
    order = np.random.default_rng(seed).permutation(len(samples))
    return [[samples[i] for i in part] for part in np.array_split(order, num_shards)]


def _rgb_jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def process_sample(sample: ade20k.Sample, source: ade20k.Source, options: Options) -> Result:
    """Check, filter and encode one sample read from `source`; never raises for bad data."""
    name = sample.name
    # PIL (and zipfile, on a corrupt member) raise many exception types, hence the broad excepts.
    try:
        image_bytes = source.read(sample.image)
        if image_bytes is None:
            return Result(name, "unreadable_image", f"no file {sample.image}")
        image = Image.open(io.BytesIO(image_bytes))
    except Image.UnidentifiedImageError:
        return Result(name, "unreadable_image", "not an image file")
    except Exception as error:
        return Result(name, "unreadable_image", str(error))
    if image.format != "JPEG":
        return Result(name, "unreadable_image", f"not a JPEG file ({image.format})")
    try:
        mask_bytes = source.read(sample.annotation)
        if mask_bytes is None:
            return Result(name, "missing_annotation", f"no {sample.annotation}")
        mask = Image.open(io.BytesIO(mask_bytes))
        mask.load()
    except Image.UnidentifiedImageError:
        return Result(name, "unreadable_annotation", "not an image file")
    except Exception as error:
        return Result(name, "unreadable_annotation", str(error))
    if mask.mode != "L":
        return Result(name, "unreadable_annotation", f"mode {mask.mode}, expected 8-bit gray")
    if mask.size != image.size:
        return Result(name, "size_mismatch", f"image {image.size}, annotation {mask.size}")
    histogram = mask.histogram()
    if any(histogram[labels.NUM_ADE_CLASSES + 1 :]):
        top = max(v for v, n in enumerate(histogram) if n)
        return Result(name, "mask_value_out_of_range", f"value {top} > {labels.NUM_ADE_CLASSES}")
    width, height = image.size
    converted = image.mode != "RGB"  # grayscale or CMYK
    try:
        if not converted:
            # Decoding at libjpeg's smallest scale (1/8) still reads the whole stream, and
            # costs a fraction of a full decode: enough to catch truncated files.
            image.draft("L", (1, 1))
        image.load()
    except Exception as error:
        return Result(name, "unreadable_image", str(error))
    counts = np.bincount(options.lookup, weights=histogram, minlength=options.num_classes)
    pixel_counts = tuple(int(n) for n in counts[: options.num_classes])
    if options.threshold is not None:
        present = sum(1 for n in pixel_counts[1:] if n)
        if present / (options.num_classes - 1) < options.threshold:
            return Result(name, BELOW_THRESHOLD, f"{present} of {options.num_classes - 1}")
    if converted:
        image_bytes = _rgb_jpeg(image)
    mask_png = records.encode_png(mask.point(options.lookup))
    filename = Path(sample.image).name
    record = records.segmentation_example(image_bytes, filename, height, width, mask_png)
    return Result(
        name,
        KEPT,
        record=record,
        pixel_counts=pixel_counts,
        unlabelled_pixels=int(counts[labels.IGNORE]),
        converted_to_rgb=converted,
    )


@dataclass(frozen=True)
class Shard:
    """One output file and the samples, in order, that go into it."""

    split: str  # "train" or "val"
    path: Path
    samples: tuple[ade20k.Sample, ...]


def write_shard(shard: Shard, options: Options) -> list[Result]:
    """Process a shard's samples in order and write the kept ones' records to its file.

    Runs in a worker process, which opens the dataset itself: a zip handle inherited over fork
    would share its file position with the other workers. Returns the results without their
    records, so little data goes back to the main process.
    """
    results = []
    with (
        disk.disk_full_error(shard.path, None),
        ade20k.open_source(options.dataset) as source,
        records.TFRecordWriter(shard.path) as writer,
    ):
        for sample in shard.samples:
            result = process_sample(sample, source, options)
            if result.status == KEPT:
                writer.write(result.record)
                result = replace(result, record=b"")
            results.append(result)
    return results


def _threshold(whitelist: str | None, threshold: float | None) -> float | None:
    """The threshold in force: none without a whitelist, DEFAULT_THRESHOLD when not given."""
    if not whitelist:
        if threshold is not None:
            log.warning("no whitelist: --threshold %s is ignored", threshold)
        return None
    threshold = DEFAULT_THRESHOLD if threshold is None else threshold
    if not 0.0 <= threshold <= 1.0:
        raise StageError(f"threshold must be between 0 and 1, got {threshold}")
    return threshold


def find_samples(dataset: Path, named: str) -> dict[str, list[ade20k.Sample]]:
    """The samples of each split (by output prefix); `named` is the dataset as the user gave it."""
    with ade20k.open_source(dataset) as source:
        samples = {prefix: source.list_samples(split) for prefix, split in SPLITS.items()}
    if not any(samples.values()):
        raise StageError(
            f"no images in {named} under images/training/ or images/validation/: expected the "
            f"download stage's output, {ade20k.ARCHIVE_NAME} or an extracted {ade20k.DATASET_DIR}/"
        )
    for prefix, found in samples.items():
        if not found:
            log.warning(
                "no %s images in %s: writing empty %s shards", SPLITS[prefix], named, prefix
            )
    return samples


@contextlib.contextmanager
def _ordered_results(task, items: list, workers: int) -> Iterator:
    """`task` over `items`, results in order: in this process for one worker, else from a pool.

    The pool uses the platform's start method: fork on Linux (before Python 3.14) starts workers
    in milliseconds instead of seconds; workers only decode, encode and write files.
    """
    if workers == 1:
        yield map(task, items)
        return
    with multiprocessing.Pool(min(workers, len(items))) as pool:
        yield pool.imap(task, items)


def write_shards(shards: list[Shard], options: Options, workers: int) -> dict[str, SplitStats]:
    """Write every shard, over `workers` processes, logging each skipped sample; stats by split."""
    stats = {prefix: SplitStats(pixel_counts=[0] * options.num_classes) for prefix in SPLITS}
    task = functools.partial(write_shard, options=options)
    total = sum(len(shard.samples) for shard in shards)
    with (
        _ordered_results(task, shards, workers) as shard_results,
        logging_redirect_tqdm(),
        tqdm(total=total, desc="prepare", unit="img", file=sys.stderr) as progress,
    ):
        for shard, results in zip(shards, shard_results, strict=True):
            stats[shard.split].add_shard(shard.path.name, results)
            for result in results:
                if result.status not in (KEPT, BELOW_THRESHOLD):
                    log.warning("skipped %s: %s (%s)", result.name, result.status, result.detail)
            progress.update(len(results))
    return stats


def report_counts(stats: dict[str, SplitStats], threshold: float | None) -> None:
    """Log what each split kept; a run that kept no sample at all fails, saying why."""
    for prefix, split_stats in stats.items():
        log.info(
            "%s: kept %d of %d (%d below threshold, %d skipped, %d converted to RGB)",
            prefix, split_stats.kept, split_stats.considered, split_stats.below_threshold,
            sum(split_stats.skipped.values()), split_stats.converted_to_rgb,
        )  # fmt: skip
    empty = "; ".join(
        f"{prefix}: none of {split_stats.considered} kept ({split_stats.dropped(threshold)})"
        for prefix, split_stats in stats.items()
        if split_stats.considered and not split_stats.kept
    )
    if not any(split_stats.kept for split_stats in stats.values()):
        raise StageError(f"no sample kept: {empty}")
    if empty:
        log.warning("%s", empty)


def prepare_dataset(
    dataset_dir: str | Path,
    output_dir: Path,
    whitelist: str | None = None,
    threshold: float | None = None,
    train_shards: int = DEFAULT_TRAIN_SHARDS,
    val_shards: int = DEFAULT_VAL_SHARDS,
    workers: int | None = None,
    seed: int = 0,
    scratch_dir: Path | None = None,
) -> dict:
    """Write the TFRecord shards, then labels.txt and stats.json; return the stats.

    `dataset_dir` is anything `ade20k.local_dataset` accepts. Without a whitelist all 150
    classes are kept and no threshold applies; with one, the threshold defaults to
    DEFAULT_THRESHOLD. The output folder is checked before the dataset is read.
    """
    classes = labels.parse_whitelist(whitelist)  # raises before anything is written
    threshold = _threshold(whitelist, threshold)
    if train_shards < 1 or val_shards < 1:
        raise StageError("--train-shards and --val-shards must be at least 1")
    workers = workers if workers is not None else os.cpu_count() or 1
    if workers < 1:
        raise StageError(f"--workers must be at least 1, got {workers}")
    output_dir = Path(output_dir)
    shard_counts = {"train": train_shards, "val": val_shards}
    with (
        disk.usable_folder(output_dir, "--output-dir"),
        disk.sole_writer(output_dir, "--output-dir"),
        ade20k.local_dataset(dataset_dir, scratch_dir) as dataset,
    ):
        samples = find_samples(dataset, str(dataset_dir))
        lookup = tuple(int(v) for v in classes.lookup_table())
        options = Options(dataset, lookup, classes.num_classes, threshold)
        started = time.monotonic()
        with data_folder.new_generation(output_dir) as generation:
            shards = [
                Shard(prefix, output_dir / name, tuple(part))
                for prefix in SPLITS
                for part, name in zip(
                    assign_shards(samples[prefix], shard_counts[prefix], seed),
                    data_folder.shard_names(prefix, shard_counts[prefix], generation),
                    strict=True,
                )
            ]
            stats = write_shards(shards, options, workers)
            elapsed = time.monotonic() - started
            report_counts(stats, threshold)
            summary = {
                "whitelist": whitelist or None,
                "threshold": threshold,
                "seed": seed,
                "labels": list(classes.labels),
                "num_classes": classes.num_classes,
                "splits": {p: stats[p].to_json(classes.labels) for p in SPLITS},
            }
            with disk.disk_full_error(output_dir / data_folder.STATS_FILE, None):
                summary = data_folder.publish(output_dir, generation, summary)
    total = sum(split_stats.considered for split_stats in stats.values())
    log.info("%d images in %.1f s with %d workers", total, elapsed, workers)
    return summary
