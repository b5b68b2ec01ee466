"""Download stage against a real loopback HTTP server, the GCS emulator and local files.

Its output is the verified zip, never extracted, and download.json.
"""

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

from image_segmentation.data import ade20k, download, fetch, synthetic
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


def download_zip(server: FileServer, out: Path, dataset_zip, **options) -> Path:
    options = {"retries": 2, "backoff": 0.01, "timeout": 10.0, **options}
    sha1, size = options.pop("sha1", dataset_zip[3]), options.pop("size", len(dataset_zip[2]))
    return download.download_dataset(server.url + ZIP_PATH, out, sha1, size, **options)


def assert_complete(out: Path, dataset_zip) -> dict:
    """The output is the zip itself, not extracted, and a manifest that describes it."""
    assert sorted(path.name for path in out.iterdir()) == [ARCHIVE, "download.json"]
    assert (out / ARCHIVE).read_bytes() == dataset_zip[2]
    manifest = json.loads((out / "download.json").read_text())
    assert manifest["format_version"] == 2 and manifest["archive"] == ARCHIVE
    assert manifest["sha1"] == dataset_zip[3] and manifest["sha1_verified"] is True
    assert manifest["size"] == len(dataset_zip[2])
    assert manifest["counts"] == COUNTS
    assert manifest["created"].endswith("+00:00")
    assert (out / "download.json").stat().st_mode & 0o777 == new_file_mode()
    return manifest


def new_file_mode() -> int:
    """The permissions open() gives a new file under the current umask (0644 under 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def assert_nothing_written(out: Path) -> None:
    assert not (out / ARCHIVE).exists()
    assert not (out / "download.json").exists()


def test_full_download(server, dataset_zip, tmp_path):
    archive = download_zip(server, tmp_path / "out", dataset_zip)
    assert archive == tmp_path / "out" / ARCHIVE
    manifest = assert_complete(tmp_path / "out", dataset_zip)
    assert manifest["source"] == server.url + ZIP_PATH
    assert [(seen.range, seen.status) for seen in server.behaviour.seen] == [(None, 200)]


def test_resumes_after_a_cut_connection(server, dataset_zip, tmp_path):
    cut = len(dataset_zip[2]) // 2
    server.behaviour.cut_after = [cut]
    download_zip(server, tmp_path / "out", dataset_zip)
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
        download_zip(server, out, dataset_zip, retries=0)
    partial = out / f"{ARCHIVE}.partial"
    assert partial.read_bytes() == dataset_zip[2][:cut]
    assert_nothing_written(out)

    download_zip(server, out, dataset_zip)
    assert [(seen.range, seen.status) for seen in server.behaviour.seen[1:]] == [
        (f"bytes={cut}-", 206)
    ]
    assert_complete(out, dataset_zip)


def test_archive_dir_keeps_the_partial_download_out_of_the_output(server, dataset_zip, tmp_path):
    """As on Vertex AI, where the output is a bucket mount: only the verified zip is copied in."""
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    cut = len(dataset_zip[2]) // 3
    server.behaviour.cut_after = [cut]
    with pytest.raises(StageError, match="run again to resume"):
        download_zip(server, out, dataset_zip, retries=0, archive_dir=scratch)
    assert [path.name for path in scratch.iterdir()] == [f"{ARCHIVE}.partial"]
    assert not out.exists()  # made by the run, left empty, so removed

    download_zip(server, out, dataset_zip, archive_dir=scratch)
    assert server.behaviour.seen[-1].range == f"bytes={cut}-"
    assert_complete(out, dataset_zip)
    assert list(scratch.iterdir()) == []  # the copy in the output is the only one


def test_on_a_fuse_mount_the_default_archive_dir_is_a_local_temporary_folder(tmp_path):
    with download.archive_folder(None, tmp_path) as folder:
        assert folder == tmp_path
    with download.archive_folder(None, Path("/gcs/bucket/pipeline-root/dataset")) as folder:
        assert folder.is_dir() and not ade20k.on_fuse_mount(folder)
    assert not folder.exists()


def test_a_stalled_download_is_resumed(server, dataset_zip, tmp_path):
    """A byte every 50 ms never hits the socket timeout, but is too slow: retried from there."""
    server.behaviour.trickle = [0.05]
    download_zip(server, tmp_path / "out", dataset_zip, timeout=0.5)
    first, second = server.behaviour.seen
    assert (first.range, first.status, second.status) == (None, 200, 206)
    assert second.range.startswith("bytes=") and second.range != "bytes=0-"
    assert_complete(tmp_path / "out", dataset_zip)


def test_a_server_that_only_trickles_is_given_up(server, dataset_zip, tmp_path):
    """Each stalled attempt receives a few bytes, yet counts as a failure."""
    server.behaviour.trickle = [0.05] * 3
    with pytest.raises(StageError, match="failed 2 times in a row, last: download stalled"):
        download_zip(server, tmp_path / "out", dataset_zip, timeout=0.3, retries=1)
    assert len(server.behaviour.seen) == 2


def test_server_that_ignores_range_means_starting_over(server, dataset_zip, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / f"{ARCHIVE}.partial").write_bytes(b"garbage from another file")
    server.behaviour.ignore_range = True
    download_zip(server, out, dataset_zip)
    assert [(seen.range, seen.status) for seen in server.behaviour.seen] == [
        (f"bytes={len(b'garbage from another file')}-", 200)
    ]
    assert_complete(out, dataset_zip)


def test_retries_503_then_succeeds(server, dataset_zip, tmp_path):
    server.behaviour.fail_statuses = [503, 429]
    download_zip(server, tmp_path / "out", dataset_zip)
    assert [seen.status for seen in server.behaviour.seen] == [503, 429, 200]
    assert_complete(tmp_path / "out", dataset_zip)


def test_gives_up_after_bounded_retries(server, dataset_zip, tmp_path):
    server.behaviour.fail_statuses = [503] * 10
    with pytest.raises(StageError, match="failed 3 times in a row, last: HTTP 503"):
        download_zip(server, tmp_path / "out", dataset_zip, retries=2)
    assert len(server.behaviour.seen) == 3
    assert_nothing_written(tmp_path / "out")


def test_client_errors_are_not_retried(server, dataset_zip, tmp_path):
    with pytest.raises(StageError, match="HTTP 404"):
        download.download_dataset(server.url + "/missing.zip", tmp_path / "out", None, None)
    assert len(server.behaviour.seen) == 1


def test_bad_checksum_writes_nothing_and_deletes_the_download(server, dataset_zip, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(
        StageError, match=f"SHA-1 .* is {dataset_zip[3]}, expected 0{{40}}.*deleted"
    ):
        download_zip(server, out, dataset_zip, sha1="0" * 40)
    assert not out.exists()


def test_wrong_size_fails_before_the_body_is_read(server, dataset_zip, tmp_path):
    size = len(dataset_zip[2]) + 1
    with pytest.raises(StageError, match=f"is {size - 1} bytes, expected {size}"):
        download_zip(server, tmp_path / "out", dataset_zip, size=size)
    assert len(server.behaviour.seen) == 1
    assert_nothing_written(tmp_path / "out")


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("parent", "would land outside the target folder"),
        ("absolute", "has an absolute path"),
        ("symlink", "is a symbolic link"),
    ],
)
def test_malicious_archive_is_refused(dataset_zip, tmp_path, kind, reason):
    bad_zip, out = tmp_path / "bad.zip", tmp_path / "out"
    outside = tmp_path / "evil.txt"
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
    with pytest.raises(StageError, match=f"refusing {bad_zip}: member .* {reason}; the file was"):
        download.download_dataset(str(bad_zip), out, None, None)
    assert_nothing_written(out)
    assert bad_zip.exists()  # a local source is never deleted


def test_a_download_that_is_not_a_zip_is_refused_and_deleted(server, tmp_path):
    server.behaviour.files[ZIP_PATH] = b"<html>mirror moved</html>"
    with pytest.raises(StageError, match=r"is not a zip archive; deleted the download"):
        download.download_dataset(server.url + ZIP_PATH, tmp_path / "out", None, None)
    assert not (tmp_path / "out").exists()


def test_archive_without_the_layout_is_refused(dataset_zip, tmp_path):
    incomplete = tmp_path / "incomplete.zip"
    with zipfile.ZipFile(dataset_zip[1]) as source, zipfile.ZipFile(incomplete, "w") as target:
        for info in source.infolist():
            if "/images/validation" not in info.filename:
                target.writestr(info, source.read(info))
    with pytest.raises(StageError, match="missing ADEChallengeData2016/images/validation/"):
        download.download_dataset(str(incomplete), tmp_path / "out", None, None)
    assert_nothing_written(tmp_path / "out")


def test_second_run_does_no_work(server, dataset_zip, tmp_path, caplog):
    out = tmp_path / "out"
    download_zip(server, out, dataset_zip)
    manifest = (out / "download.json").read_text()
    with caplog.at_level(logging.INFO, logger="image_segmentation.data.download"):
        assert download_zip(server, out, dataset_zip) == out / ARCHIVE
    assert "nothing to do" in caplog.text
    assert len(server.behaviour.seen) == 1
    assert (out / "download.json").read_text() == manifest


@pytest.mark.parametrize(
    ("manifest", "error"),
    [
        ("{not json", "is not readable JSON"),
        ('{"format_version": 1, "sha1": "SHA1"}', "not a manifest of this stage's format 2"),
        ('{"format_version": 2, "sha1": "SHA1", "size": 1}', r"is not the 1-byte file"),
        (f'{{"format_version": 2, "sha1": "{"0" * 40}"}}', "SHA-1 0{40}, not"),
    ],
)
def test_an_output_this_stage_did_not_make_is_left_alone(
    server, dataset_zip, tmp_path, manifest, error
):
    """An old extracted dataset, a broken or foreign manifest: refused, nothing touched."""
    out = tmp_path / "out"
    foreign = out / ade20k.DATASET_DIR / "images"
    foreign.mkdir(parents=True)
    (out / "download.json").write_text(manifest.replace("SHA1", dataset_zip[3]))
    (out / ARCHIVE).write_bytes(b"someone's data")
    with pytest.raises(StageError, match=rf"{error}.*; remove .*download\.json to download again"):
        download_zip(server, out, dataset_zip)
    assert server.behaviour.seen == []
    assert foreign.is_dir() and (out / ARCHIVE).read_bytes() == b"someone's data"


def test_a_zip_left_without_manifest_is_replaced(server, dataset_zip, tmp_path):
    """What a run killed while copying into the output leaves behind."""
    out = tmp_path / "out"
    out.mkdir()
    (out / ARCHIVE).write_bytes(dataset_zip[2][:100])
    download_zip(server, out, dataset_zip, archive_dir=tmp_path / "scratch")
    assert_complete(out, dataset_zip)


def test_gcs_mirror(gcs_client, dataset_zip, tmp_path):
    bucket = gcs_client.create_bucket("ade-mirror")
    bucket.blob("datasets/ADEChallengeData2016.zip").upload_from_filename(dataset_zip[1])
    uri = "gs://ade-mirror/datasets/ADEChallengeData2016.zip"
    download.download_dataset(uri, tmp_path / "out", dataset_zip[3], len(dataset_zip[2]))
    assert assert_complete(tmp_path / "out", dataset_zip)["source"] == uri


def test_local_file_is_copied_into_the_output(dataset_zip, tmp_path):
    source = tmp_path / "copy.zip"
    source.write_bytes(dataset_zip[2])
    download.download_dataset(str(source), tmp_path / "out", dataset_zip[3], len(dataset_zip[2]))
    assert assert_complete(tmp_path / "out", dataset_zip)["source"] == str(source)
    assert source.read_bytes() == dataset_zip[2]
    assert not (tmp_path / "out" / ARCHIVE).samefile(source)


def test_local_file_already_in_the_output_is_kept_in_place(dataset_zip, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ARCHIVE).write_bytes(dataset_zip[2])
    download.download_dataset(str(out / ARCHIVE), out, dataset_zip[3], len(dataset_zip[2]))
    assert_complete(out, dataset_zip)


def test_signed_url_secrets_stay_out_of_the_manifest():
    url = "https://user:pw@storage.example.com:8443/b/ADE.zip?X-Goog-Signature=secret"
    assert fetch.public_source(url) == "https://storage.example.com:8443/b/ADE.zip"
    with pytest.raises(StageError, match="unsupported source"):
        fetch.source_kind("ftp://example.com/ADE.zip")


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
    assert not out.exists()

    good = cli("--source", url, "--output-dir", str(out), "--sha1", dataset_zip[3].upper())
    assert good.returncode == 0, good.stderr
    assert good.stdout.strip() == str(out / ARCHIVE)
    assert_complete(out, dataset_zip)

    usage = cli("--help")
    assert usage.returncode == 0
    options = ("--source", "--sha1", "--size", "--archive-dir", "--retries")
    assert all(option in usage.stdout for option in options)
