"""Download stage against a real loopback HTTP server, the GCS emulator and local files."""

import json
import logging
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from http_fixtures import FileServer

from image_segmentation import ade20k, download, synthetic
from image_segmentation.errors import StageError

ARCHIVE = "ADEChallengeData2016.zip"
ZIP_PATH = f"/mirror/{ARCHIVE}"
COUNTS = {
    "training": {"images": 3, "annotations": 3},
    "validation": {"images": 2, "annotations": 2},
}


@pytest.fixture(scope="module")
def dataset_zip(tmp_path_factory) -> tuple[Path, Path, bytes, str]:
    """A tiny generated dataset, its zip as ADE20K ships it, the zip's bytes and SHA-1."""
    root = tmp_path_factory.mktemp("source")
    dataset = synthetic.generate_ade20k(root, num_train=3, num_val=2, sizes=((48, 64),))
    sha1 = synthetic.make_zip(dataset, root / ARCHIVE)
    return dataset, root / ARCHIVE, (root / ARCHIVE).read_bytes(), sha1


@pytest.fixture
def server(dataset_zip):
    server = FileServer().start()
    server.behaviour.files[ZIP_PATH] = dataset_zip[2]
    yield server
    server.stop()


def fetch(server: FileServer, out: Path, dataset_zip, **options) -> Path:
    options = {"retries": 2, "backoff": 0.01, "timeout": 10.0, **options}
    sha1, size = options.pop("sha1", dataset_zip[3]), options.pop("size", len(dataset_zip[2]))
    return download.download_dataset(server.url + ZIP_PATH, out, sha1, size, **options)


def tree(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def assert_complete(out: Path, dataset_zip) -> dict:
    """The extracted tree equals the generated one and the manifest describes it."""
    assert tree(out / ade20k.DATASET_DIR) == tree(dataset_zip[0])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sha1"] == dataset_zip[3] and manifest["sha1_verified"] is True
    assert manifest["size"] == len(dataset_zip[2])
    assert manifest["counts"] == COUNTS
    assert manifest["created"].endswith("+00:00")
    assert sorted(path.name for path in out.iterdir()) == [ade20k.DATASET_DIR, "manifest.json"]
    return manifest


def assert_nothing_extracted(out: Path) -> None:
    assert not (out / ade20k.DATASET_DIR).exists()
    assert not (out / "manifest.json").exists()
    assert not list(out.glob(".*extracting*"))


def test_full_download(server, dataset_zip, tmp_path):
    dataset = fetch(server, tmp_path / "out", dataset_zip)
    assert dataset == tmp_path / "out" / ade20k.DATASET_DIR
    manifest = assert_complete(tmp_path / "out", dataset_zip)
    assert manifest["source"] == server.url + ZIP_PATH
    assert [(seen.range, seen.status) for seen in server.behaviour.seen] == [(None, 200)]


def test_resumes_after_a_cut_connection(server, dataset_zip, tmp_path):
    cut = len(dataset_zip[2]) // 2
    server.behaviour.cut_after = [cut]
    fetch(server, tmp_path / "out", dataset_zip)
    assert [(seen.range, seen.status) for seen in server.behaviour.seen] == [
        (None, 200),
        (f"bytes={cut}-", 206),
    ]
    assert_complete(tmp_path / "out", dataset_zip)


def test_a_killed_run_is_continued_by_the_next(server, dataset_zip, tmp_path):
    out = tmp_path / "out"
    cut = len(dataset_zip[2]) // 3
    server.behaviour.cut_after = [cut]
    with pytest.raises(StageError, match=f"run again to resume from byte {cut}"):
        fetch(server, out, dataset_zip, retries=0)
    partial = out / f"{ARCHIVE}.partial"
    assert partial.read_bytes() == dataset_zip[2][:cut]
    assert_nothing_extracted(out)

    fetch(server, out, dataset_zip)
    assert [(seen.range, seen.status) for seen in server.behaviour.seen[1:]] == [
        (f"bytes={cut}-", 206)
    ]
    assert_complete(out, dataset_zip)


def test_server_that_ignores_range_means_starting_over(server, dataset_zip, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / f"{ARCHIVE}.partial").write_bytes(b"garbage from another file")
    server.behaviour.ignore_range = True
    fetch(server, out, dataset_zip)
    assert [(seen.range, seen.status) for seen in server.behaviour.seen] == [
        (f"bytes={len(b'garbage from another file')}-", 200)
    ]
    assert_complete(out, dataset_zip)


def test_retries_503_then_succeeds(server, dataset_zip, tmp_path):
    server.behaviour.fail_statuses = [503, 429]
    fetch(server, tmp_path / "out", dataset_zip)
    assert [seen.status for seen in server.behaviour.seen] == [503, 429, 200]
    assert_complete(tmp_path / "out", dataset_zip)


def test_gives_up_after_bounded_retries(server, dataset_zip, tmp_path):
    server.behaviour.fail_statuses = [503] * 10
    with pytest.raises(StageError, match="failed 3 times in a row, last: HTTP 503"):
        fetch(server, tmp_path / "out", dataset_zip, retries=2)
    assert len(server.behaviour.seen) == 3
    assert_nothing_extracted(tmp_path / "out")


def test_client_errors_are_not_retried(server, dataset_zip, tmp_path):
    with pytest.raises(StageError, match="HTTP 404"):
        download.download_dataset(server.url + "/missing.zip", tmp_path / "out", None, None)
    assert len(server.behaviour.seen) == 1


def test_bad_checksum_extracts_nothing_and_deletes_the_download(server, dataset_zip, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(
        StageError, match=f"SHA-1 .* is {dataset_zip[3]}, expected 0{{40}}.*deleted"
    ):
        fetch(server, out, dataset_zip, sha1="0" * 40)
    assert_nothing_extracted(out)
    assert list(out.iterdir()) == []


def test_wrong_size_fails_before_the_body_is_read(server, dataset_zip, tmp_path):
    size = len(dataset_zip[2]) + 1
    with pytest.raises(StageError, match=f"is {size - 1} bytes, expected {size}"):
        fetch(server, tmp_path / "out", dataset_zip, size=size)
    assert len(server.behaviour.seen) == 1
    assert_nothing_extracted(tmp_path / "out")


@pytest.mark.parametrize("kind", ["parent", "absolute", "symlink"])
def test_malicious_archive_is_refused(dataset_zip, tmp_path, kind):
    bad_zip, out = tmp_path / "bad.zip", tmp_path / "deep" / "out"
    outside = tmp_path / "deep" / "evil.txt"
    bad_zip.write_bytes(dataset_zip[2])
    with zipfile.ZipFile(bad_zip, "a") as archive:
        if kind == "parent":
            archive.writestr("../evil.txt", "owned")
        elif kind == "absolute":
            archive.writestr(str(outside), "owned")
        else:
            link = zipfile.ZipInfo(f"{ade20k.DATASET_DIR}/images/link")
            link.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(link, str(outside))
    with pytest.raises(StageError, match="refusing to extract"):
        download.download_dataset(str(bad_zip), out, None, None)
    assert not outside.exists()
    assert sorted(path.name for path in (tmp_path / "deep").iterdir()) == ["out"]
    assert_nothing_extracted(out)
    assert bad_zip.exists()  # a local source is never deleted


def test_archive_without_the_layout_is_refused(dataset_zip, tmp_path):
    incomplete = tmp_path / "incomplete.zip"
    with zipfile.ZipFile(dataset_zip[1]) as source, zipfile.ZipFile(incomplete, "w") as target:
        for info in source.infolist():
            if "/images/validation" not in info.filename:
                target.writestr(info, source.read(info))
    with pytest.raises(StageError, match="missing ADEChallengeData2016/images/validation/"):
        download.download_dataset(str(incomplete), tmp_path / "out", None, None)
    assert_nothing_extracted(tmp_path / "out")


def test_second_run_does_no_work(server, dataset_zip, tmp_path, caplog):
    out = tmp_path / "out"
    fetch(server, out, dataset_zip)
    manifest = (out / "manifest.json").read_text()
    with caplog.at_level(logging.INFO, logger="image_segmentation.download"):
        assert fetch(server, out, dataset_zip) == out / ade20k.DATASET_DIR
    assert "nothing to do" in caplog.text
    assert len(server.behaviour.seen) == 1
    assert (out / "manifest.json").read_text() == manifest


def test_a_dataset_this_stage_did_not_make_is_left_alone(server, dataset_zip, tmp_path):
    foreign = tmp_path / "out" / ade20k.DATASET_DIR / "images"
    foreign.mkdir(parents=True)
    with pytest.raises(StageError, match=r"has no readable manifest\.json; remove"):
        fetch(server, tmp_path / "out", dataset_zip)
    assert foreign.is_dir() and server.behaviour.seen == []


def test_gcs_mirror(gcs_client, dataset_zip, tmp_path):
    bucket = gcs_client.create_bucket("ade-mirror")
    bucket.blob("datasets/ADEChallengeData2016.zip").upload_from_filename(dataset_zip[1])
    uri = "gs://ade-mirror/datasets/ADEChallengeData2016.zip"
    download.download_dataset(uri, tmp_path / "out", dataset_zip[3], len(dataset_zip[2]))
    assert assert_complete(tmp_path / "out", dataset_zip)["source"] == uri


def test_local_file(dataset_zip, tmp_path):
    source = tmp_path / "copy.zip"
    source.write_bytes(dataset_zip[2])
    download.download_dataset(str(source), tmp_path / "out", dataset_zip[3], len(dataset_zip[2]))
    assert assert_complete(tmp_path / "out", dataset_zip)["source"] == str(source)
    assert source.read_bytes() == dataset_zip[2]


def test_signed_url_secrets_stay_out_of_the_manifest():
    url = "https://user:pw@storage.example.com:8443/b/ADE.zip?X-Goog-Signature=secret"
    assert download.public_source(url) == "https://storage.example.com:8443/b/ADE.zip"
    with pytest.raises(StageError, match="unsupported source"):
        download.source_kind("ftp://example.com/ADE.zip")


def test_sha1_and_size_options():
    assert download.normalize_sha1("NONE") is None
    assert download.normalize_sha1(ade20k.OFFICIAL_SHA1.upper()) == ade20k.OFFICIAL_SHA1
    with pytest.raises(StageError, match="40 hex digits"):
        download.normalize_sha1("abc")
    assert download.resolve_size("auto", ade20k.OFFICIAL_SHA1) == ade20k.OFFICIAL_SIZE
    assert download.resolve_size("auto", "1" * 40) is None
    assert download.resolve_size("none", ade20k.OFFICIAL_SHA1) is None
    assert download.resolve_size("123", None) == 123
    with pytest.raises(StageError, match="positive byte count"):
        download.resolve_size("-5", None)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "image_segmentation", "download", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )


def test_cli(server, dataset_zip, tmp_path):
    out = tmp_path / "out"
    url = server.url + ZIP_PATH
    bad = cli("--source", url, "--output-dir", str(out), "--sha1", "f" * 40)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith(f"error: SHA-1 of {out / ARCHIVE}")

    good = cli("--source", url, "--output-dir", str(out), "--sha1", dataset_zip[3].upper())
    assert good.returncode == 0, good.stderr
    assert good.stdout.strip() == str(out / ade20k.DATASET_DIR)
    assert_complete(out, dataset_zip)

    usage = cli("--help")
    assert usage.returncode == 0
    assert all(option in usage.stdout for option in ("--source", "--sha1", "--size", "--retries"))
