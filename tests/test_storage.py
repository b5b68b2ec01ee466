"""storage.py against a real gcp-storage-emulator server through the real client."""

import os
import re
import time

import pytest
from google.api_core import exceptions as api_exceptions

from image_segmentation.cloud import storage
from image_segmentation.errors import StageError


def test_uri_helpers():
    assert storage.is_gcs_uri("gs://bucket/a/b")
    assert not storage.is_gcs_uri("/gcs/bucket/a")
    assert storage.split_gcs_uri("gs://my-bucket/a/b.txt") == ("my-bucket", "a/b.txt")
    assert storage.split_gcs_uri("gs://my-bucket") == ("my-bucket", "")
    for bad in ("s3://bucket/x", "gs://", "gs://Bad_Bucket/x", "gs:///x"):
        with pytest.raises(StageError):
            storage.split_gcs_uri(bad)


def test_file_checksums_match_gcs(gcs_client, tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(os.urandom(3000) + b"tail")
    blob = gcs_client.create_bucket("sums").blob("data.bin")
    blob.upload_from_filename(str(path))
    sums = storage.file_checksums(path)
    assert (sums["crc32c"], sums["md5"]) == (blob.crc32c, blob.md5_hash)
    assert len(sums["sha256"]) == 64


def test_client_uses_emulator(gcs_emulator, gcs_client):
    gcs_client.create_bucket("via-client").blob("x").upload_from_string(b"hello")
    client = storage.gcs_client()
    assert client.project == storage.EMULATOR_PROJECT
    assert client.bucket("via-client").blob("x").download_as_bytes() == b"hello"


def test_download_file(gcs_client, tmp_path):
    bucket = gcs_client.create_bucket("downloads")
    contents = {"run/a.txt": b"alpha", "run/sub/b.bin": os.urandom(2048)}
    for name, data in contents.items():
        bucket.blob(name).upload_from_string(data)

    single = storage.download_file("gs://downloads/run/sub/b.bin", tmp_path / "one" / "b.bin")
    assert single.read_bytes() == contents["run/sub/b.bin"]
    into_folder = storage.download_file("gs://downloads/run/a.txt", tmp_path / "one")
    assert into_folder == tmp_path / "one" / "a.txt"
    assert into_folder.read_bytes() == b"alpha"
    assert not list(tmp_path.rglob("*.part"))


def test_download_missing(gcs_client, tmp_path):
    gcs_client.create_bucket("empty-one")
    with pytest.raises(StageError, match="does not exist"):
        storage.download_file("gs://empty-one/nothing.bin", tmp_path / "x.bin")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(StageError, match="folder"):
        storage.download_file("gs://empty-one/prefix/", tmp_path / "x.bin")


def refused_connection():
    raise ConnectionRefusedError(111, "Connection refused")


def test_retry_logs_each_retry_with_the_time_left_and_gives_up_in_time(caplog):
    retry = storage.RETRY.with_delay(initial=0.02, maximum=0.05).with_timeout(0.5)
    started = time.monotonic()
    with pytest.raises(api_exceptions.RetryError):
        retry(refused_connection)()
    assert time.monotonic() - started <= 0.5 + 0.5  # the last attempt starts before 0.5 s
    messages = [record.getMessage() for record in caplog.records]
    pattern = r"Cloud Storage request failed \(\[Errno 111\] Connection refused\); ([\d.]+) s left"
    left = [float(re.fullmatch(pattern + " to retry", message)[1]) for message in messages]
    assert len(left) >= 5 and left == sorted(left, reverse=True)  # the sleeps are at most 0.05
    assert left[0] == 0.5 and left[-1] < 0.1


def test_giving_up_is_a_one_line_error():
    with (
        pytest.raises(StageError) as error,
        storage.explained_errors("gs://bucket/models"),
    ):
        storage.RETRY.with_delay(initial=0.01, maximum=0.01).with_timeout(0.2)(refused_connection)()
    assert str(error.value) == (
        "gave up on gs://bucket/models: Timeout of 0.2s exceeded; "
        "last error: [Errno 111] Connection refused"
    )
