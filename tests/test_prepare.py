"""The prepare stage on generated data, on three real ADE20K images, and through the CLI.

It reads the download stage's zip in place or an extracted folder, with the same output.
"""

import collections
import errno
import functools
import io
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ADE_SAMPLE
from PIL import Image
from test_data_folder import folder_files

from image_segmentation import cli
from image_segmentation.contracts import data_folder
from image_segmentation.data import ade20k, download, labels, prepare, records, synthetic
from image_segmentation.errors import StageError

SMALL_SIZES = ((96, 128), (128, 96))
# Classes in the three real images: 0 1 2 3 5 7 10 12 14 18 21 44 81 88 97 103 (SOURCE.md).
REAL_WHITELIST = "building|sky:tree|road:sidewalk|car:van|person"
REAL_GROUPS = [[2], [3, 5], [7, 12], [21, 103], [13]]  # ADE20K values of output classes 1..5


def read_split(output: Path, prefix: str) -> dict[str, dict]:
    """The decoded examples of a split's shards, by file name, read without TensorFlow."""
    examples = {}
    for shard in sorted(output.glob(f"{prefix}-*.tfrecord")):
        for record in records.read_records(shard):
            example = records.decode_example(record)
            examples[example[records.IMAGE_FILENAME].decode()] = example
    return examples


@pytest.fixture(scope="module")
def bad_dataset(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """12 + 4 small generated samples, plus one training sample of every bad kind."""
    root = tmp_path_factory.mktemp("bad")
    dataset = synthetic.generate_ade20k(root, num_train=12, num_val=4, sizes=SMALL_SIZES)
    outcomes = synthetic.add_bad_samples(dataset)
    # Unreadable annotations, the one bad kind add_bad_samples does not make: not a PNG at all,
    # and a colour PNG where class values should be.
    image = dataset / "images/training/ADE_train_00000001.jpg"
    for name in ("ADE_train_90000008", "ADE_train_90000009"):
        shutil.copy(image, dataset / f"images/training/{name}.jpg")
        outcomes[name] = "unreadable_annotation"
    (dataset / "annotations/training/ADE_train_90000008.png").write_bytes(b"not a png")
    colour = Image.open(image).convert("RGB")
    colour.save(dataset / "annotations/training/ADE_train_90000009.png")
    return dataset, outcomes


@pytest.fixture(scope="module")
def bad_zip(bad_dataset, tmp_path_factory) -> Path:
    """bad_dataset zipped as ADE20K ships it."""
    archive = tmp_path_factory.mktemp("zip") / ade20k.ARCHIVE_NAME
    synthetic.make_zip(bad_dataset[0], archive)
    return archive


@pytest.fixture(scope="module")
def real_dataset(tmp_path_factory) -> Path:
    """The three real ADE20K validation images in the ADEChallengeData2016 layout."""
    dataset = tmp_path_factory.mktemp("real") / ade20k.DATASET_DIR
    for kind, suffix in (("images", "jpg"), ("annotations", "png")):
        folder = dataset / kind / "validation"
        folder.mkdir(parents=True)
        for path in sorted((ADE_SAMPLE / kind).glob(f"*.{suffix}")):
            shutil.copy(path, folder / path.name)
    return dataset


def expected_mask(raw: np.ndarray) -> np.ndarray:
    """REAL_WHITELIST's remap, written out by hand: unlabelled 0 to 255, other classes to 0."""
    expected = np.where(raw == 0, 255, 0).astype(raw.dtype)
    for output_class, values in enumerate(REAL_GROUPS, start=1):
        expected[np.isin(raw, values)] = output_class
    return expected


def test_bad_samples_are_skipped_counted_and_named(bad_dataset, tmp_path, caplog):
    dataset, outcomes = bad_dataset
    with caplog.at_level(logging.WARNING):
        stats = prepare.prepare_dataset(dataset, tmp_path, train_shards=3, workers=1)
    train = stats["splits"]["train"]
    expected = collections.Counter(v for v in outcomes.values() if v != "kept")
    assert train["skipped"] == {reason: expected[reason] for reason in prepare.REASONS}
    assert train["considered"] == 12 + len(outcomes)
    assert train["kept"] == 12 + 2 and train["below_threshold"] == 0
    assert train["converted_to_rgb"] == 2
    assert stats["splits"]["val"]["kept"] == 4 and stats["threshold"] is None
    for name, outcome in outcomes.items():
        if outcome != "kept":
            assert any(name in m and outcome in m for m in caplog.messages), name

    examples = read_split(tmp_path, "train")
    assert sorted(examples) == sorted(
        [f"ADE_train_{i:08d}.jpg" for i in range(1, 13)]
        + [f"{n}.jpg" for n, outcome in outcomes.items() if outcome == "kept"]
    )
    for name in ("ADE_train_90000006.jpg", "ADE_train_90000007.jpg"):  # grayscale, CMYK
        image = Image.open(io.BytesIO(examples[name][records.IMAGE_ENCODED]))
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (320, 240))
    original = (dataset / "images/training/ADE_train_00000003.jpg").read_bytes()
    assert examples["ADE_train_00000003.jpg"][records.IMAGE_ENCODED] == original
    assert sum(train["records_per_shard"]) == 14 and len(train["shards"]) == 3


@pytest.mark.slow
def test_real_images_exact_remap_read_back_with_tensorflow(real_dataset, tmp_path):
    import tensorflow as tf

    stats = prepare.prepare_dataset(
        real_dataset, tmp_path, REAL_WHITELIST, threshold=0.0, val_shards=2, workers=1
    )
    raw = {
        path.stem: np.asarray(Image.open(path))
        for path in sorted((ADE_SAMPLE / "annotations").glob("*.png"))
    }
    class_labels = labels.read_labels_file(tmp_path / "labels.txt")
    assert class_labels == stats["labels"] and len(class_labels) == 6
    expected_counts = [sum(int(np.isin(m, v).sum()) for m in raw.values()) for v in REAL_GROUPS]
    total = sum(m.size for m in raw.values())
    unlabelled = sum(int((m == 0).sum()) for m in raw.values())
    val = stats["splits"]["val"]
    assert val["pixel_counts"] == dict(
        zip(
            class_labels,
            [total - unlabelled - sum(expected_counts), *expected_counts],
            strict=True,
        )
    )
    assert val["unlabelled_pixels"] == unlabelled > 0
    assert val["pixel_counts"]["person, individual, someone, somebody, mortal, soul"] == 0
    assert val["kept"] == 3 and stats["splits"]["train"]["considered"] == 0

    features = {
        key: tf.io.FixedLenFeature([], tf.string)
        for key in (records.IMAGE_ENCODED, records.IMAGE_FILENAME, records.MASK_ENCODED)
    } | {
        key: tf.io.FixedLenFeature([], tf.int64)
        for key in (records.IMAGE_HEIGHT, records.IMAGE_WIDTH)
    }
    files = sorted(str(p) for p in tmp_path.glob("val-*-of-00002.tfrecord"))
    seen = set()
    for record in tf.data.TFRecordDataset(files):
        example = tf.io.parse_single_example(record, features)
        name = Path(example[records.IMAGE_FILENAME].numpy().decode()).stem
        image = tf.io.decode_jpeg(example[records.IMAGE_ENCODED]).numpy()
        mask = tf.io.decode_png(example[records.MASK_ENCODED]).numpy()
        assert image.shape == (*raw[name].shape, 3) and mask.shape == (*raw[name].shape, 1)
        assert (int(example[records.IMAGE_HEIGHT]), int(example[records.IMAGE_WIDTH])) == raw[
            name
        ].shape
        assert np.array_equal(mask[..., 0], expected_mask(raw[name]))
        original = (ADE_SAMPLE / "images" / f"{name}.jpg").read_bytes()
        assert example[records.IMAGE_ENCODED].numpy() == original
        seen.add(name)
    assert seen == set(raw)


def write_sample(dataset: Path, name: str, present: list[int]) -> None:
    """A 48x64 validation sample whose mask holds exactly the ADE20K classes `present`."""
    mask = np.repeat(np.array(present, dtype=np.uint8), 64 * 48 // len(present) + 1)
    mask = mask[: 64 * 48].reshape(48, 64)
    for kind, array, suffix in (
        ("images", np.dstack([mask * 20] * 3), "jpg"),
        ("annotations", mask, "png"),
    ):
        folder = dataset / kind / "validation"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(folder / f"ADE_val_{name}.{suffix}")


def test_threshold_counts_whitelisted_classes_only_not_none(tmp_path):
    dataset = tmp_path / ade20k.DATASET_DIR
    samples = {  # whitelist wall=1 floor=4 ceiling=6 bed=8: four groups, none not counted
        "00000001": [0, 1],  # 1/4; the legacy tool counted none: 2/5 = 0.4, kept at 0.4
        "00000002": [1, 4],  # 2/4, no none pixel at all
        "00000003": [0, 1, 4, 6],  # 3/4
        "00000004": [0, 2, 3],  # no whitelisted class
    }
    for name, present in samples.items():
        write_sample(dataset, name, present)

    def kept(threshold: float | None) -> list[str]:
        output = tmp_path / f"out-{threshold}"
        prepare.prepare_dataset(dataset, output, "wall|floor|ceiling|bed", threshold, workers=1)
        return sorted(Path(n).stem[-8:] for n in read_split(output, "val"))

    assert kept(0.4) == ["00000002", "00000003"]
    assert kept(0.5) == ["00000002", "00000003"]  # exactly 2 of 4 is enough
    assert kept(0.75) == ["00000003"]
    assert kept(0.0) == sorted(samples)
    assert kept(None) == ["00000003"]  # the default, 0.6
    stats = json.loads((tmp_path / "out-0.4/stats.json").read_text())
    assert stats["splits"]["val"]["below_threshold"] == 2 and stats["threshold"] == 0.4
    everything = prepare.prepare_dataset(dataset, tmp_path / "all", threshold=0.9, workers=1)
    assert everything["threshold"] is None and everything["splits"]["val"]["kept"] == 4
    assert everything["num_classes"] == 151


def test_same_output_for_any_worker_count_and_through_the_cli(bad_dataset, tmp_path):
    dataset, _ = bad_dataset
    options = dict(whitelist=labels.LIVING_ROOM_WHITELIST, threshold=0.3, seed=7)
    prepare.prepare_dataset(dataset.parent, tmp_path / "one", train_shards=4, workers=1, **options)
    command = [
        sys.executable, "-m", "image_segmentation", "prepare", "--dataset-dir", str(dataset.parent),
        "--output-dir", str(tmp_path / "two"), "--whitelist", options["whitelist"],
        "--threshold", "0.3", "--seed", "7", "--train-shards", "4", "--workers", "2",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "skipped ADE_train_90000001: unreadable_image" in done.stderr
    one, two = folder_files(tmp_path / "one"), folder_files(tmp_path / "two")
    assert sorted(one) == sorted(
        ["labels.txt", "stats.json", "val-00000-of-00002.tfrecord", "val-00001-of-00002.tfrecord"]
        + [f"train-0000{i}-of-00004.tfrecord" for i in range(4)]
    )
    assert one == two
    stats = json.loads(one["stats.json"])
    assert 0 < stats["splits"]["train"]["kept"] < stats["splits"]["train"]["considered"]
    prepare.prepare_dataset(
        dataset, tmp_path / "three", train_shards=4, workers=1, **(options | {"seed": 8})
    )
    shards = {k: v for k, v in folder_files(tmp_path / "three").items() if "tfrecord" in k}
    assert shards != {k: v for k, v in one.items() if "tfrecord" in k}


def test_shards_are_a_seeded_shuffle_not_contiguous_runs():
    samples = [ade20k.Sample(f"ADE_train_{i:08d}", "training") for i in range(100)]
    shards = prepare.assign_shards(samples, 8, seed=0)
    assert sorted(s.name for shard in shards for s in shard) == [s.name for s in samples]
    assert {len(shard) for shard in shards} == {12, 13}
    assert shards == prepare.assign_shards(samples, 8, seed=0)
    assert shards != prepare.assign_shards(samples, 8, seed=1)
    assert shards[0] != samples[:13]  # scenes (name order) are spread over all shards
    assert data_folder.shard_names("val", 2) == [
        "val-00000-of-00002.tfrecord",
        "val-00001-of-00002.tfrecord",
    ]


def test_the_zip_is_read_in_place_with_the_same_output_as_the_extracted_folder(
    bad_dataset, bad_zip, tmp_path
):
    """The download stage's output, its zip alone and the extracted folder: identical shards and
    stats, with two workers that each read the zip through their own handle."""
    downloaded = tmp_path / "downloaded"
    download.download_dataset(str(bad_zip), downloaded, None, None)
    inputs = {"folder": bad_dataset[0].parent, "zip": bad_zip, "download output": downloaded}
    outputs = {}
    for kind, path in inputs.items():
        prepare.prepare_dataset(
            path, tmp_path / kind, labels.LIVING_ROOM_WHITELIST, 0.3, train_shards=3, workers=2
        )
        outputs[kind] = folder_files(tmp_path / kind)
    assert len(outputs["folder"]) == 2 + 3 + 2
    assert outputs["zip"] == outputs["folder"]
    assert outputs["download output"] == outputs["folder"]
    train = json.loads(outputs["zip"]["stats.json"])["splits"]["train"]
    expected = collections.Counter(bad_dataset[1].values())
    assert train["skipped"] == {reason: expected[reason] for reason in prepare.REASONS}
    assert train["skipped"]["missing_annotation"] == 1


def test_an_unfinished_download_or_a_file_that_is_not_a_zip_is_refused(bad_zip, tmp_path):
    incomplete = tmp_path / "downloaded"
    incomplete.mkdir()
    shutil.copy(bad_zip, incomplete)
    with pytest.raises(StageError, match=r"no download\.json: the download stage did not finish"):
        prepare.prepare_dataset(incomplete, tmp_path / "out")
    (tmp_path / "notes.txt").write_text("not a zip")
    with pytest.raises(StageError, match=r"notes\.txt is not a zip archive"):
        prepare.prepare_dataset(tmp_path / "notes.txt", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_zip_in_cloud_storage_is_read_from_a_local_copy(
    gcs_client, bad_dataset, bad_zip, tmp_path, capsys
):
    bucket = gcs_client.create_bucket("pipeline-root")
    bucket.blob(f"run/download/dataset/{ade20k.ARCHIVE_NAME}").upload_from_filename(bad_zip)
    scratch = tmp_path / "scratch"
    argv = ["prepare", "--dataset-dir", "gs://pipeline-root/run/download/dataset/"]
    argv += ["--output-dir", str(tmp_path / "gcs"), "--workers", "1", "--scratch-dir", str(scratch)]
    # without the manifest the download output is incomplete, as a local folder would be
    assert cli.main(argv) == 2
    assert f"holds {ade20k.ARCHIVE_NAME} but no download.json" in capsys.readouterr().err
    # the completion marker only: prepare reads the samples from the zip
    bucket.blob(f"run/download/dataset/{ade20k.MANIFEST_NAME}").upload_from_string("{}")
    assert cli.main(argv) == 0
    prepare.prepare_dataset(bad_dataset[0], tmp_path / "local", workers=1)
    assert folder_files(tmp_path / "gcs") == folder_files(tmp_path / "local")
    assert not scratch.exists()  # the copy, and the scratch folder made for it, are removed


def test_fuse_mounts_are_recognised_by_their_mount_point(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "/dev/vda / ext4 rw,relatime 0 0\n"
        f"gcsfuse {tmp_path}/bucket fuse.gcsfuse rw,nosuid,nodev 0 0\n"
        f"/dev/vdb {tmp_path}/bucket/local ext4 rw 0 0\n"
        f"gcsfuse {tmp_path}/my\\040bucket fuse rw 0 0\n"
    )
    on_fuse_mount = functools.partial(ade20k.on_fuse_mount, mounts=mounts)
    assert on_fuse_mount(tmp_path / "bucket" / "dataset" / ade20k.ARCHIVE_NAME)
    assert on_fuse_mount(tmp_path / "my bucket" / ade20k.ARCHIVE_NAME)
    assert not on_fuse_mount(tmp_path / "bucket" / "local" / ade20k.ARCHIVE_NAME)
    assert not on_fuse_mount(tmp_path / "bucketful" / ade20k.ARCHIVE_NAME)
    assert on_fuse_mount(Path("/gcs/bucket/pipeline-root/dataset"))  # where Vertex AI mounts


def test_unknown_whitelist_name_writes_nothing(bad_dataset, tmp_path, capsys):
    output = tmp_path / "out"
    argv = ["prepare", "--dataset-dir", str(bad_dataset[0]), "--output-dir", str(output)]
    assert cli.main([*argv, "--whitelist", "persn|wall"]) == 2
    assert "unknown class 'persn'; did you mean 'person'" in capsys.readouterr().err
    assert not output.exists()
    with pytest.raises(StageError, match="between 0 and 1"):
        prepare.prepare_dataset(bad_dataset[0], output, "wall", threshold=1.5)
    with pytest.raises(StageError, match="no images"):
        prepare.prepare_dataset(tmp_path, output)
    assert not output.exists()


def test_list_labels_needs_no_other_option(capsys):
    assert cli.main(["prepare", "--list-labels"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 150
    assert lines[0] == "1\twall" and lines[23] == "24\tsofa, couch, lounge"
    assert lines[149].startswith("150\t")
    assert cli.main(["prepare"]) == 2
    assert "--dataset-dir and --output-dir are required" in capsys.readouterr().err


def test_a_rerun_switches_to_a_new_generation_and_a_failed_one_changes_nothing(
    bad_dataset, tmp_path, monkeypatch
):
    dataset, _ = bad_dataset
    prepare.prepare_dataset(dataset, tmp_path, train_shards=5, workers=1)
    stats = prepare.prepare_dataset(dataset, tmp_path, train_shards=2, workers=1)
    assert stats["generation"] == 2
    names = sorted(p.name for p in tmp_path.glob("train-*"))
    assert names == data_folder.shard_names("train", 2, generation=2)
    files = folder_files(tmp_path)

    def disk_full(self, record):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(records.TFRecordWriter, "write", disk_full)
    words = r"cannot write .*train-00000-of-00003\.gen3\.tfrecord: No space left on device"
    with pytest.raises(StageError, match=words):
        prepare.prepare_dataset(dataset, tmp_path, train_shards=3, workers=1)
    assert folder_files(tmp_path) == files
