"""The prepared-data folder: what the prepare stage writes and the train and evaluate stages read.

It holds the TFRecord shards of the train and val splits, `labels.txt` and `stats.json`, which
lists the shards and is written last: a folder without it is incomplete, and every reader
refuses it with a one-line StageError, as it refuses a labels.txt whose names differ from the
labels stats.json records.

On Vertex AI the folder is a Cloud Storage FUSE mount, where a folder cannot be renamed, so a
rerun writes in place, as a new generation whose shards have names of their own: a first run
writes `train-00000-of-00016.tfrecord`, ..., the next over its complete output
`train-00000-of-00016.gen2.tfrecord`, .... The earlier output stays readable until stats.json, a
single-file replace, switches to the new one, and only then are its shards removed: a run killed
midway leaves it as it was, and the next run removes what the killed one left. No TensorFlow
here, so the light stages can use it.
"""

import contextlib
import io
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from image_segmentation import files
from image_segmentation.data import labels, records
from image_segmentation.data.labels import IGNORE  # class ids stay below it
from image_segmentation.errors import StageError

# 3: ADE20K's unlabelled pixels are IGNORE, apart from `none`. 2: they were merged into `none`.
# 1: every rerun deleted the earlier output first, and had no generation.
FORMAT_VERSION = 3
STATS_FILE = "stats.json"  # written last: the folder's completion marker
LABELS_FILE = "labels.txt"
SPLITS = ("train", "val")
LABEL_CHECK_RECORDS = 16  # records per split whose masks are checked against the labels
_SHARD = re.compile(r"(train|val)-\d{5}-of-\d{5}(\.gen\d+)?\.tfrecord")


@dataclass(frozen=True)
class PreparedData:
    """A complete folder, checked: its class labels, the shards and records of each split, and
    the pixels of each class in each split (what class balancing weighs by)."""

    labels: list[str]
    shards: dict[str, list[Path]]
    records: dict[str, int]
    pixel_counts: dict[str, list[int]]


def shard_names(split: str, num_shards: int, generation: int = 1) -> list[str]:
    """`train-00000-of-00016.tfrecord`, ...; from the second generation on, `....gen2.tfrecord`."""
    tag = f".gen{generation}" if generation > 1 else ""
    return [f"{split}-{i:05d}-of-{num_shards:05d}{tag}.tfrecord" for i in range(num_shards)]


def check_stats(stats: object, source: str) -> None:
    """Refuse stats that do not describe a folder this code reads; `source` names them."""
    files.check_format(stats, source, FORMAT_VERSION, "; run prepare again")
    generation = stats.get("generation")
    if not (isinstance(generation, int) and not isinstance(generation, bool) and generation > 0):
        raise StageError(f"{source}: generation needs a whole number > 0, got {generation!r}")
    names = stats.get("labels")
    if not (isinstance(names, list) and all(isinstance(name, str) for name in names)):
        raise StageError(f"{source}: labels needs a list of class names")
    splits = stats.get("splits")
    for split in SPLITS:
        entry = splits.get(split) if isinstance(splits, dict) else None
        shards = entry.get("shards") if isinstance(entry, dict) else None
        counts = entry.get("records_per_shard") if isinstance(entry, dict) else None
        if not (
            isinstance(shards, list)
            and all(isinstance(name, str) and _is_shard(name, split) for name in shards)
            and isinstance(counts, list)
            and all(isinstance(count, int) and count >= 0 for count in counts)
            and len(counts) == len(shards)
        ):
            raise StageError(
                f"{source}: splits.{split} needs 'shards' ({split} shard names) and "
                "'records_per_shard' (a count for each)"
            )
        pixels = entry.get("pixel_counts")
        if not (
            isinstance(pixels, dict)
            and set(pixels) == set(names)
            and all(isinstance(n, int) and n >= 0 for n in pixels.values())
        ):
            raise StageError(f"{source}: splits.{split}.pixel_counts needs a count for each label")


def _is_shard(name: str, split: str) -> bool:
    """Whether `name` is a shard file name of `split`: never a path that leaves the folder."""
    return bool(_SHARD.fullmatch(name)) and name.startswith(f"{split}-")


def read_stats(data_dir: Path) -> dict:
    """The checked stats.json of a complete folder, whose labels.txt names the same classes."""
    data_dir = Path(data_dir)
    path = data_dir / STATS_FILE
    stats = files.read_completion_marker(data_dir, STATS_FILE, "data dir", "prepare")
    check_stats(stats, str(path))
    labels_path = data_dir / LABELS_FILE
    if not labels_path.is_file():
        raise StageError(f"{data_dir} has no {LABELS_FILE}: is it the prepare stage's output?")
    names = labels.read_labels_file(labels_path)
    if names != stats["labels"]:
        raise StageError(
            f"{labels_path} does not match {STATS_FILE} ({_difference(names, stats['labels'])}): "
            "they come from different prepare runs; run prepare again"
        )
    return stats


def _difference(found: list[str], expected: list[str]) -> str:
    for index, (name, listed) in enumerate(zip(found, expected, strict=False)):
        if name != listed:
            return f"class {index} is {name!r}, not {listed!r}"
    return f"{len(found)} classes, not {len(expected)}"


def _shard_paths(data_dir: Path, stats: dict, split: str) -> list[Path]:
    paths = [Path(data_dir) / name for name in stats["splits"][split]["shards"]]
    for path in paths:
        if not path.is_file():
            raise StageError(
                f"{path}, listed in {STATS_FILE}, is missing: the folder is incomplete"
            )
    return paths


def list_shards(data_dir: Path, split: str) -> list[Path]:
    """The shards of a split of a complete folder, in order; checks that none is missing."""
    return _shard_paths(data_dir, read_stats(data_dir), split)


def count_records(paths: list[Path]) -> int:
    """Number of records in TFRecord files, reading only the length headers (fast)."""
    total = 0
    for path in paths:
        with open(path, "rb") as file:
            while header := file.read(12):
                if len(header) < 12:
                    raise StageError(f"{path}: truncated TFRecord file")
                (length,) = struct.unpack("<Q", header[:8])
                file.seek(length + 4, 1)
                total += 1
    return total


def _max_mask_value(mask_png: bytes) -> int:
    """Largest class in a mask PNG, IGNORE left out: channel 0, which also reads the legacy RGB
    masks (where unlabelled pixels are `none`, 0)."""
    with Image.open(io.BytesIO(mask_png)) as mask:
        pixels = np.asarray(mask)
    classes = (pixels[..., 0] if pixels.ndim == 3 else pixels).ravel()
    classes = classes[classes != IGNORE]
    return int(classes.max()) if classes.size else 0


def check_labels_match(shards: list[Path], num_labels: int) -> None:
    """Fail when a mask holds a class that labels.txt does not have (cheap: a few records)."""
    for number, record in enumerate(records.read_records(shards[0])):
        if number >= LABEL_CHECK_RECORDS:
            return
        try:
            value = _max_mask_value(records.decode_example(record)[records.MASK_ENCODED])
        except (ValueError, KeyError, OSError) as error:
            raise StageError(f"{shards[0].name} record {number}: unreadable ({error})") from error
        if value >= num_labels:
            raise StageError(
                f"{shards[0].name} record {number} has mask value {value}, but {LABELS_FILE} "
                f"lists only {num_labels} classes (0..{num_labels - 1}): the labels file does "
                f"not belong to these records"
            )


def read_prepared(data_dir: Path, splits: tuple[str, ...] = SPLITS) -> PreparedData:
    """Check a complete folder before training (evaluation reads splits=("val",)).

    Every split asked for must hold records, as many in each shard as stats.json lists, and
    the first masks must hold no class beyond the labels.
    """
    stats = read_stats(data_dir)
    class_labels = stats["labels"]
    if not 2 <= len(class_labels) < IGNORE:
        raise StageError(
            f"{Path(data_dir) / LABELS_FILE} lists {len(class_labels)} classes; "
            f"need 2..{IGNORE - 1} (none + at least one label)"
        )
    shards, counts = {}, {}
    for split in splits:
        shards[split] = _shard_paths(data_dir, stats, split)
        listed_counts = stats["splits"][split]["records_per_shard"]
        for path, listed in zip(shards[split], listed_counts, strict=True):
            if (found := count_records([path])) != listed:
                raise StageError(
                    f"{path} holds {found} records, {STATS_FILE} lists {listed}: the shard was "
                    "changed after prepare wrote it"
                )
        counts[split] = sum(listed_counts)
        if not counts[split]:
            raise StageError(f"{data_dir} has no {split} records: prepare kept no {split} sample")
        check_labels_match(shards[split], len(class_labels))
    pixel_counts = {
        split: [stats["splits"][split]["pixel_counts"][name] for name in class_labels]
        for split in splits
    }
    return PreparedData(class_labels, shards, counts, pixel_counts)


def _remove_unlisted(output_dir: Path, stats: dict | None) -> None:
    """Remove every shard file (finished or .partial) that `stats` does not list (all of them
    without stats): the files of unfinished runs, or of a generation replaced."""
    listed = (
        {name for split in SPLITS for name in stats["splits"][split]["shards"]} if stats else ()
    )
    for path in Path(output_dir).iterdir():
        if _SHARD.fullmatch(path.name.removesuffix(".partial")) and path.name not in listed:
            path.unlink()


def _tidy(output_dir: Path) -> dict | None:
    """Keep only the shards of the complete output, if any; return its stats."""
    try:
        stats = read_stats(output_dir)
    except StageError:
        stats = None
    _remove_unlisted(output_dir, stats)
    return stats


@contextlib.contextmanager
def new_generation(output_dir: Path) -> Iterator[int]:
    """The number of the generation a run writes into `output_dir`: 1 without a complete output
    there, else one more than its. If the run fails, what it wrote is removed again."""
    previous = _tidy(output_dir)
    try:
        yield previous["generation"] + 1 if previous else 1
    except BaseException:
        _tidy(output_dir)  # also right when the run failed after switching to its generation
        raise


def publish(output_dir: Path, generation: int, stats: dict) -> dict:
    """Make a generation's shards the folder's content; return the stats as written.

    labels.txt first, then stats.json, a single-file replace and the switch itself, then the
    earlier generation's shards go. Killed between the first two, the folder is refused (when the
    labels changed), never read with the wrong labels.
    """
    stats = {"format_version": FORMAT_VERSION, "generation": generation, **stats}
    check_stats(stats, f"the stats for {output_dir}")
    output_dir = Path(output_dir)
    text = labels.format_labels_file(stats["labels"])
    files.atomic_write(output_dir / LABELS_FILE, lambda part: part.write_text(text))
    files.write_json(output_dir / STATS_FILE, stats)
    _remove_unlisted(output_dir, stats)
    return stats
