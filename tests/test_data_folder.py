"""The prepared-data folder: names, the checks every reader makes, and generations that keep an
earlier complete output readable until a rerun has finished."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from image_segmentation.contracts import data_folder
from image_segmentation.data import labels, records
from image_segmentation.errors import StageError

LABELS = ["none", "wall", "floor"]


def example(mask_values: list[int]) -> bytes:
    """A record of a 6x8 image whose mask holds `mask_values`, in stripes."""
    mask = np.resize(np.array(mask_values, np.uint8), (6, 8))
    jpeg = io.BytesIO()
    Image.new("RGB", (8, 6), "gray").save(jpeg, format="JPEG")
    png = records.encode_png(Image.fromarray(mask))
    return records.segmentation_example(jpeg.getvalue(), "sample.jpg", 6, 8, png)


def pixel_counts(shards: list[list[bytes]], class_labels: list[str]) -> dict[str, int]:
    """The pixels of each class in the records' masks, as prepare counts them."""
    counts = np.zeros(256, np.int64)
    for record in (record for shard in shards for record in shard):
        png = records.decode_example(record)[records.MASK_ENCODED]
        counts += np.bincount(np.asarray(Image.open(io.BytesIO(png))).ravel(), minlength=256)
    return dict(zip(class_labels, map(int, counts), strict=False))


def write_folder(
    out: Path, shards: dict[str, list[list[bytes]]], class_labels: list[str] = LABELS
) -> Path:
    """A complete folder whose shard i of each split holds `shards[split][i]`, written through
    data_folder as prepare writes one (a rerun over a complete folder: a new generation)."""
    out.mkdir(parents=True, exist_ok=True)
    with data_folder.new_generation(out) as generation:
        splits = {}
        for split, contents in shards.items():
            names = data_folder.shard_names(split, len(contents), generation)
            for name, shard_records in zip(names, contents, strict=True):
                with records.TFRecordWriter(out / name) as writer:
                    for record in shard_records:
                        writer.write(record)
            splits[split] = {
                "shards": names,
                "records_per_shard": list(map(len, contents)),
                "pixel_counts": pixel_counts(contents, class_labels),
            }
        data_folder.publish(out, generation, {"labels": class_labels, "splits": splits})
    return out


def small_folder(out: Path, class_labels: list[str] = LABELS) -> Path:
    """Two train shards (2 and 1 records) and one val shard (1 record)."""
    records_ = [example([0, 1]), example([2]), example([1, 2])]
    shards = {"train": [records_[:2], records_[2:]], "val": [[example([0, 2])]]}
    return write_folder(out, shards, class_labels)


def test_shard_names_carry_the_generation_from_the_second_on():
    assert data_folder.shard_names("val", 2) == [
        "val-00000-of-00002.tfrecord",
        "val-00001-of-00002.tfrecord",
    ]
    assert data_folder.shard_names("train", 1, generation=3) == [
        "train-00000-of-00001.gen3.tfrecord"
    ]


def test_a_complete_folder_is_read_with_its_labels_shards_and_records(tmp_path):
    small_folder(tmp_path)
    data = data_folder.read_prepared(tmp_path)
    assert data.labels == LABELS
    assert data.shards == {
        "train": [
            tmp_path / "train-00000-of-00002.tfrecord",
            tmp_path / "train-00001-of-00002.tfrecord",
        ],
        "val": [tmp_path / "val-00000-of-00001.tfrecord"],
    }
    assert data.records == {"train": 3, "val": 1}
    # masks of 6x8: train [0, 1], [2] and [1, 2] in stripes, val [0, 2]
    assert data.pixel_counts == {"train": [24, 48, 72], "val": [24, 0, 24]}
    assert data_folder.list_shards(tmp_path, "val") == data.shards["val"]
    assert data_folder.count_records(data.shards["train"]) == 3
    assert labels.read_labels_file(tmp_path / "labels.txt") == LABELS
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert (stats["format_version"], stats["generation"]) == (data_folder.FORMAT_VERSION, 1)
    assert data_folder.read_prepared(tmp_path, splits=("val",)).shards.keys() == {"val"}


def edit_stats(folder: Path, change) -> None:
    stats = json.loads((folder / "stats.json").read_text())
    change(stats)
    (folder / "stats.json").write_text(json.dumps(stats))


def break_folder(case: str, folder: Path) -> Path:
    """`folder`, complete, then spoilt in one way; returns the data dir to read."""
    small_folder(folder)
    if case == "missing dir":
        return folder / "nothing-here"
    if case == "no stats":
        (folder / "stats.json").unlink()
    elif case == "stats not json":
        (folder / "stats.json").write_text("{not json")
    elif case == "format 2":  # unlabelled pixels merged into none
        edit_stats(folder, lambda stats: stats.update(format_version=2))
    elif case == "no pixel counts":
        edit_stats(folder, lambda stats: stats["splits"]["train"].pop("pixel_counts"))
    elif case == "shard outside":
        edit_stats(folder, lambda stats: stats["splits"]["val"]["shards"].__setitem__(0, "../x"))
    elif case == "no labels":
        (folder / "labels.txt").unlink()
    elif case == "other labels":  # as many classes, other names
        (folder / "labels.txt").write_text(labels.format_labels_file(["none", "floor", "wall"]))
    elif case == "missing shard":
        (folder / "train-00001-of-00002.tfrecord").unlink()
    elif case == "shorter shard":
        with records.TFRecordWriter(folder / "train-00000-of-00002.tfrecord") as writer:
            writer.write(example([1]))
    elif case == "empty split":
        write_folder(folder, {"train": [[example([1])]], "val": [[]]})
    elif case == "one class":
        write_folder(folder, {"train": [[example([0])]], "val": [[example([0])]]}, ["none"])
    elif case == "masks beyond labels":  # unlabelled pixels (IGNORE) are no class
        write_folder(
            folder, {"train": [[example([0, 255, 2])]], "val": [[example([1])]]}, LABELS[:2]
        )
    return folder


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("missing dir", r"data dir .*nothing-here does not exist"),
        ("no stats", r"has no stats\.json: the prepare stage did not finish there, or it is not"),
        ("stats not json", r"stats\.json is not valid JSON"),
        ("format 2", r"unsupported format_version 2 \(this code reads 3\); run prepare again"),
        ("no pixel counts", r"splits\.train\.pixel_counts needs a count for each label"),
        ("shard outside", r"splits\.val needs 'shards' \(val shard names\)"),
        ("no labels", r"has no labels\.txt"),
        (
            "other labels",
            r"labels\.txt does not match stats\.json \(class 1 is 'floor', not 'wall'\)",
        ),
        ("missing shard", r"train-00001-of-00002\.tfrecord, listed in stats\.json, is missing"),
        ("shorter shard", r"train-00000-of-00002\.tfrecord holds 1 records, stats\.json lists 2"),
        ("empty split", r"has no val records: prepare kept no val sample"),
        ("one class", r"lists 1 classes; need 2\.\.254"),
        ("masks beyond labels", r"record 0 has mask value 2, but labels\.txt lists only 2 classes"),
    ],
)
def test_an_incomplete_or_inconsistent_folder_is_refused(case, words, tmp_path):
    with pytest.raises(StageError, match=words):
        data_folder.read_prepared(break_folder(case, tmp_path / "data"))


def folder_files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_a_rerun_writes_a_new_generation_and_switches_to_it_when_published(tmp_path):
    small_folder(tmp_path)
    (tmp_path / "notes.txt").write_text("not ours")
    first = folder_files(tmp_path)
    with data_folder.new_generation(tmp_path) as generation:
        assert generation == 2
        names = data_folder.shard_names("train", 1, generation) + data_folder.shard_names(
            "val", 1, generation
        )
        for name in names:
            with records.TFRecordWriter(tmp_path / name) as writer:
                writer.write(example([1]))
        assert folder_files(tmp_path).items() >= first.items()  # the first still intact
        assert data_folder.read_prepared(tmp_path).records == {"train": 3, "val": 1}
        splits = {split: {"shards": [name], "records_per_shard": [1],
                          "pixel_counts": dict.fromkeys(LABELS[:2], 6 * 8)}
                  for split, name in zip(data_folder.SPLITS, names, strict=True)}  # fmt: skip
        data_folder.publish(tmp_path, generation, {"labels": LABELS[:2], "splits": splits})
    assert sorted(folder_files(tmp_path)) == sorted(
        ["labels.txt", "notes.txt", "stats.json", *names]
    )
    data = data_folder.read_prepared(tmp_path)
    assert data.labels == LABELS[:2] and data.records == {"train": 1, "val": 1}


def test_a_failed_rerun_removes_what_it_wrote_and_the_next_removes_what_a_killed_one_left(
    tmp_path,
):
    small_folder(tmp_path)
    first = folder_files(tmp_path)
    with (
        pytest.raises(OSError, match="disk full"),
        data_folder.new_generation(tmp_path) as generation,
    ):
        with records.TFRecordWriter(
            tmp_path / data_folder.shard_names("train", 1, generation)[0]
        ) as writer:
            writer.write(example([1]))
        raise OSError("disk full")
    assert folder_files(tmp_path) == first

    # What a killed rerun leaves: a finished shard and a .partial one of the next generation.
    (tmp_path / "train-00000-of-00002.gen2.tfrecord").write_bytes(b"")
    (tmp_path / "train-00001-of-00002.gen2.tfrecord.partial").write_bytes(b"")
    assert data_folder.read_prepared(tmp_path).records == {"train": 3, "val": 1}
    with data_folder.new_generation(tmp_path) as generation:
        assert generation == 2 and folder_files(tmp_path) == first


def test_a_folder_without_a_complete_output_starts_over_at_generation_one(tmp_path):
    small_folder(tmp_path)
    (tmp_path / "stats.json").unlink()  # a first run killed before its end
    with data_folder.new_generation(tmp_path) as generation:
        assert generation == 1
        assert sorted(path.name for path in tmp_path.iterdir()) == ["labels.txt"]
