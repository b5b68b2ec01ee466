"""The pieces every stage shares: class list, whitelist parsing, TFRecord format, atomic files,
CLI."""

import os
import subprocess
import sys

import numpy as np
import pytest

from image_segmentation import files
from image_segmentation.data import labels, records
from image_segmentation.errors import StageError


def test_class_list_is_the_published_one():
    classes = labels.load_ade_classes()
    assert len(classes) == 150
    assert classes[0].name == "wall"
    assert classes[7].name == "bed"  # "bed " in the file: trailing space stripped
    assert classes[23].index == 24 and classes[23].name == "sofa, couch, lounge"  # index "24 "


def test_living_room_whitelist_from_the_legacy_readme():
    whitelist = labels.parse_whitelist(labels.LIVING_ROOM_WHITELIST)
    assert whitelist.labels[0] == "none"
    assert whitelist.labels[1:4] == ("chair", "wall", "coffee table, cocktail table")
    assert whitelist.groups[1:4] == ((20,), (1,), (65,))
    assert whitelist.num_classes == 11


def test_synonyms_and_merged_groups():
    whitelist = labels.parse_whitelist("person|car:truck:van|pavement")
    assert whitelist.groups == ((), (13,), (21, 84, 103), (12,))
    assert whitelist.labels[2] == "car, auto, automobile, machine, motorcar:truck, motortruck:van"
    table = whitelist.lookup_table()
    # ADE20K's unlabelled 0 is no class (255); classes not on the whitelist are "none"
    assert table[[0, 13, 21, 84, 103, 12, 1, 150]].tolist() == [255, 1, 2, 2, 2, 3, 0, 0]


def test_no_whitelist_means_all_150_classes():
    whitelist = labels.parse_whitelist(None)
    assert whitelist.num_classes == 151
    assert whitelist.lookup_table()[0] == 255
    assert np.array_equal(whitelist.lookup_table()[1:151], np.arange(1, 151))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("persn|wall", "unknown class 'persn'; did you mean 'person'"),
        ("screen|wall", "'screen' names several classes"),
        ("wall|wall", "listed twice"),
        ("wall||floor", "empty class name"),
    ],
)
def test_bad_whitelists_name_the_problem(text, message):
    with pytest.raises(StageError, match=message):
        labels.parse_whitelist(text)


def test_labels_file_round_trip_writes_merged_names_whole(tmp_path):
    whitelist = labels.parse_whitelist("chair|car:truck")
    text = labels.format_labels_file(whitelist.labels)
    assert text.splitlines()[3] == "2\tcar, auto, automobile, machine, motorcar:truck, motortruck"
    (tmp_path / "labels.txt").write_text(text)
    assert labels.read_labels_file(tmp_path / "labels.txt") == list(whitelist.labels)


def test_records_round_trip_and_detect_corruption(tmp_path):
    path = tmp_path / "a.tfrecord"
    with records.TFRecordWriter(path) as writer:
        writer.write(records.segmentation_example(b"\xff\xd8jpeg", "x.jpg", 3, 2**33, b"png"))
    [record] = list(records.read_records(path))
    example = records.decode_example(record)
    assert example[records.IMAGE_WIDTH] == 2**33
    assert example[records.MASK_ENCODED] == b"png"
    data = bytearray(path.read_bytes())
    data[20] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt"):
        list(records.read_records(path))


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_atomically_written_files_get_the_mode_of_any_new_file(tmp_path, umask):
    previous = os.umask(umask)
    try:
        files.write_json(tmp_path / "stats.json", {"kept": 3})
        (tmp_path / "plain.txt").write_text("made with open()")
    finally:
        os.umask(previous)
    assert (tmp_path / "stats.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "plain.txt").stat().st_mode & 0o777 == 0o666 & ~umask
    assert sorted(path.name for path in tmp_path.iterdir()) == ["plain.txt", "stats.json"]


def test_a_failed_atomic_write_leaves_nothing(tmp_path):
    def write(part):
        part.write_text("half")
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        files.atomic_write(tmp_path / "stats.json", write)
    assert list(tmp_path.iterdir()) == []


def test_cli_lists_stages_and_rejects_unknown_ones():
    run = [sys.executable, "-m", "image_segmentation"]
    listing = subprocess.run(run, capture_output=True, text=True, check=True)
    assert "download" in listing.stdout and "prepare" in listing.stdout
    unknown = subprocess.run([*run, "nope"], capture_output=True, text=True)
    assert unknown.returncode == 2 and "unknown stage 'nope'" in unknown.stderr


def test_gcs_emulator_serves_the_real_client(gcs_client):
    bucket = gcs_client.create_bucket("foundation-check")
    bucket.blob("a/b.txt").upload_from_string(b"hello")
    assert gcs_client.bucket("foundation-check").blob("a/b.txt").download_as_bytes() == b"hello"
