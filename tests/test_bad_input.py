"""Bad input gives one line `error: ...` on stderr and exit status 2: no traceback, no silence.

Every case runs the real command, `python -m image_segmentation [--executor-input JSON] STAGE
...`, in a subprocess, against real parts: the loopback HTTP server of http_fixtures, the GCS
emulator, small tmpfs mounts for a full or read-only disk (these cases are skipped where
mounting is not permitted), RLIMIT_FSIZE for a file size limit and SIGKILL for an interrupted
run. Each test also checks what is, and is not, left on disk. "Before any work" means the
server saw no request and no output folder was left behind. The train and evaluate cases call
the command's entry point in this process instead (see their section).

case                                        expected
------------------------------------------  -------------------------------------------------
download
  --timeout -1 / 0 / nan / soon             refused while parsing arguments, before any work
  --retries -1 / 1.5                        refused while parsing arguments, before any work
  --sha1 abc, --size -5                     refused before any work
  --source ftp://..., missing local file    refused before any work
  unknown option, no --output-dir           refused while parsing arguments
  output folder holds a foreign manifest    refused, folder untouched, no request
  HTTP 404, server down, 503 (no retries)   refused, no output folder left behind
  server length differs from --size         refused before the body is read
  wrong SHA-1, not a zip                    download deleted, no output folder left behind
  member with a bad CRC-32 (download)       download deleted, no output folder left behind
  member with a bad CRC-32 (local file)     the local file left in place, nothing written
  member claiming > 100 MB, ratio > 10      zip bomb refused before reading members
  member ../x, /abs/x, symlink              refused, nothing written
  zip without the ADE20K layout             refused, nothing written
  gs:// without credentials                 says how to log in; no output folder left
  gs:// missing object, bad bucket name     refused, no output folder left
  server trickling bytes                    stall detected in --timeout s; .partial kept to resume
  bad zip left by an earlier run            deleted with a warning, downloaded afresh (exit 0)
  --output-dir is a file / below a file     refused before any work, the file untouched
  --archive-dir is a file                   refused before any work
  output on a read-only filesystem          refused before any work
  not enough free space for --size          refused before any work
  disk fills up mid-download (no length)    refused naming the file; no zip, no manifest
  file size limit while copying the zip     incomplete copy removed, no output folder left
prepare
  --output-dir is a file / below a file     refused before any work, the file untouched
  --scratch-dir a file / below a file       refused before the zip is copied, no traceback
  --scratch-dir too small for a gs:// zip   refused before the copy, naming the sizes
  gs:// download folder without manifest    refused as the same local folder is (test_prepare)
  no images, zip without its manifest       refused, no output folder left behind
  unknown class, --train-shards 0           refused before any work
  no sample kept (no annotations folder)    refused with the reasons; an earlier output kept
  disk fills up (first run, rerun)          refused naming the shard; none of the run's shards
                                            left, nor its folder; an earlier output kept
  rerun killed (SIGKILL) midway             the earlier output still read, labels included;
                                            the next run removes what the killed one left
  a second run into a folder being written  refused at once naming the first (pid, machine),
                                            which finishes; a killed run's lease is taken
                                            over at once here, after 120 s from elsewhere
train
  a second run into a model folder being    refused before TensorFlow loads, naming the first
  written (multi-machine: the chief holds)
  --learning-rate inf / nan, --alpha nan,   refused by the command line before TensorFlow
  --loss-weights nan,1,1, --seed -1,        loads, every problem named at once
  --max-class-weight inf, --epochs 0
  a run whose loss or weights turn NaN      stopped naming the epoch and step; no checkpoint,
  (--optimizer sgd --learning-rate 1e35)    no model folder of it
  labels.txt naming other classes than      refused before any work (as many classes: the
  stats.json                                masks alone would pass)
  --fine-tune-from a truncated weights file refused naming the file; no model folder written
  --fine-tune-from weights of other classes refused in one short line (no weight values);
  (no config.json beside them)              no model folder written
  disk fills up writing a checkpoint        refused naming the file and the free bytes; no
                                            .partial file, no model folder
  several machines: a peer never starts,    the awaited machines logged, refused after
  SIGTERM while waiting or training         --peer-timeout; a SIGTERM ends the run at once
                                            (exit 143): test_multiworker.py
evaluate
  no weights, truncated weights             refused naming the file; no output folder left
  weights holding NaN                       refused (so are export and predict, which load
                                            the weights the same way); no output folder left
  config.json not JSON                      refused; no output folder left
  config.json edited to other classes       refused: the labels differ from the data's, or
                                            (data of those classes) the weights do not fit
export
  --model-dir missing                       refused before any work, no output folder left
  incomplete model folder, bad options,     refused before any work, nothing written (in
  output folder holding other files         process: test_export.py, test_export_folder.py)
  rerun killed (SIGKILL) at its first file  the earlier export untouched; upload accepts it
upload
  no export.json, a listed file gone        refused, nothing uploaded
  a file truncated, no Core ML model        refused, nothing uploaded
  --model-dir of a model with other labels  refused, nothing uploaded
  Cloud Storage unreachable, --deadline 3   each retry logged with the time left; gives up
                                            within the deadline
  --output-uris FILE under umask 022        written with mode 0644
  --deadline 0 / -1 / soon                  refused while parsing arguments
  no export dir, s3://, bad bucket name     refused, nothing uploaded
  bucket missing                            refused, nothing uploaded
  --model-dir of other weights, same labels refused (the export records its weights' sha256)
  metrics "great", 1.7, class IoU "high"    refused, nothing uploaded
  miou hand-edited to 0.99 (--evaluation-   refused: not the evaluation's of the model's
  dir given, as the pipeline gives it)      weights; nothing uploaded
executor input
  executor output or a Metrics artifact     refused before any work (a download or a training
  path below a file                         would be lost)
  evaluate --report-html, --metrics-json,   refused before scoring the split
  --confusion-matrix-json, --miou-output
  below a file
  not JSON, [1, 2], {}, no outputFile,      refused in well under a second, before any work
  nested 50,000 deep
  artifact without uri / empty / not list   refused in well under a second, before any work
  artifact metadata not an object           refused in well under a second, before any work
  parameter without outputFile              refused in well under a second, before any work
  --metrics-from naming no output           refused in well under a second, before any work
  --metrics-from alone, no value, no stage  refused in well under a second, before any work
predict (test_predict.py)
  output disk fills up                      refused naming the file and the free bytes
command line
  unknown stage                             refused, listing the stages
"""

import contextlib
import functools
import io
import json
import os
import re
import resource
import shutil
import signal
import stat
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port
from http_fixtures import FileServer
from test_data_folder import folder_files

from image_segmentation import cli, disk
from image_segmentation.contracts import data_folder, model_folder
from image_segmentation.data import ade20k, labels, synthetic
from image_segmentation.data.prepare import prepare_dataset
from image_segmentation.errors import StageError

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = ade20k.ARCHIVE_NAME
ZIP_PATH = f"/mirror/{ARCHIVE}"


def run_stage(*args: str, env: dict[str, str] | None = None, **options):
    """`python -m image_segmentation ARGS` in a subprocess, as a container step runs it; `env`
    replaces this process's environment."""
    return subprocess.run(
        [sys.executable, "-m", "image_segmentation", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env or {**os.environ, "PYTHONPATH": str(REPO)},
        **options,
    )


def assert_refused(result: subprocess.CompletedProcess, words: str, alone: bool = True) -> None:
    """Exit status 2, no traceback, and one `error:` line holding `words`, last on stderr; with
    `alone`, nothing else on stderr (the stage failed before logging anything)."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:]
    assert words in lines[-1]
    if alone:
        assert len(lines) == 1, result.stderr


# --- download ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset_zip(tmp_path_factory) -> tuple[bytes, str]:
    """A tiny generated ADEChallengeData2016.zip: its bytes and SHA-1."""
    root = tmp_path_factory.mktemp("source")
    dataset = synthetic.generate_ade20k(root, num_train=3, num_val=2, sizes=((48, 64),))
    sha1 = synthetic.make_zip(dataset, root / ARCHIVE)
    return (root / ARCHIVE).read_bytes(), sha1


@pytest.fixture
def server(dataset_zip):
    server = FileServer().start()
    server.behaviour.files[ZIP_PATH] = dataset_zip[0]
    yield server
    server.stop()


def download(server: FileServer, out: Path, *args: str, **options):
    """The download stage from the loopback server's zip into `out`."""
    return run_stage(
        "download", "--source", server.url + ZIP_PATH, "--output-dir", str(out), *args, **options
    )


def sized(data: bytes) -> tuple[str, ...]:
    """The options that make `data` the expected archive."""
    return "--sha1", "none", "--size", str(len(data))


def with_members(data: bytes, path: Path, members: dict[str, bytes], **options) -> Path:
    """Write the zip `data` to `path` with `members` added (zipfile options in `options`)."""
    path.write_bytes(data)
    with zipfile.ZipFile(path, "a", **options) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return path


def damaged(data: bytes) -> bytes:
    """The zip with one byte of one image member's data flipped: its CRC-32 no longer matches."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(".jpg"))
    header = data[info.header_offset : info.header_offset + 30]  # the member's local header
    name_length, extra_length = (int.from_bytes(header[i : i + 2], "little") for i in (26, 28))
    start = info.header_offset + 30 + name_length + extra_length
    return data[:start] + bytes([data[start] ^ 0xFF]) + data[start + 1 :]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--timeout", "-1"], "argument --timeout: must be a number of seconds above 0, got '-1'"),
        (["--timeout", "0"], "argument --timeout: must be a number of seconds above 0, got '0'"),
        (["--timeout", "nan"], "argument --timeout: must be a number of seconds above 0"),
        (["--timeout", "soon"], "argument --timeout: must be a number of seconds above 0"),
        (["--retries", "-1"], "argument --retries: must be a whole number, 0 or more, got '-1'"),
        (["--retries", "1.5"], "argument --retries: must be a whole number, 0 or more"),
        (["--sha1", "abc"], "--sha1 must be 40 hex digits or 'none', got 'abc'"),
        (["--size", "-5"], "--size must be a positive byte count"),
        (["--source", "ftp://example.com/ADE.zip"], "unsupported source 'ftp://example.com/"),
        (["--source", "/no/such/ADE.zip"], "source /no/such/ADE.zip does not exist"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(server, tmp_path, args, words):
    result = download(server, tmp_path / "out", *args)
    assert_refused(result, words)
    assert server.behaviour.seen == [] and not (tmp_path / "out").exists()


def test_missing_output_dir():
    assert_refused(run_stage("download"), "the following arguments are required: --output-dir")


def test_an_output_with_a_foreign_manifest_is_left_alone(server, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "download.json").write_text("{not json")
    assert_refused(download(server, out), "is not readable JSON; remove")
    assert server.behaviour.seen == [] and os.listdir(out) == ["download.json"]


@pytest.mark.parametrize(
    ("path", "status", "words"),
    [
        ("/missing.zip", None, "HTTP 404 Not Found for http://127.0.0.1:"),
        (ZIP_PATH, 503, "failed 1 times in a row, last: HTTP 503"),
    ],
)
def test_http_errors(server, tmp_path, path, status, words):
    server.behaviour.fail_statuses = [status] if status else []
    out = tmp_path / "out"
    result = run_stage(
        "download", "--source", server.url + path, "--output-dir", str(out), "--retries", "0"
    )
    assert_refused(result, words)
    assert len(server.behaviour.seen) == 1 and not out.exists()


def test_server_down(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/{ARCHIVE}"
    result = run_stage(
        "download", "--source", url, "--output-dir", str(tmp_path / "out"), "--retries", "0"
    )
    assert_refused(result, f"cannot reach {url}: [Errno 111] Connection refused")
    assert not (tmp_path / "out").exists()


def test_length_other_than_size_is_refused_before_the_body(server, dataset_zip, tmp_path):
    size = len(dataset_zip[0]) + 1
    result = download(server, tmp_path / "out", "--sha1", "none", "--size", str(size))
    assert_refused(result, f"is {size - 1} bytes, expected {size}: a different file")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("served", "args", "words"),
    [
        ("dataset", ("--sha1", "f" * 40), f"expected {'f' * 40}; deleted the download"),
        ("html", ("--sha1", "none"), "is not a zip archive; deleted the download"),
        ("damaged", ("--sha1", "none"), "Bad CRC-32 for file 'ADEChallengeData2016/images/"),
    ],
)
def test_a_bad_download_is_deleted(server, dataset_zip, tmp_path, served, args, words):
    server.behaviour.files[ZIP_PATH] = {
        "dataset": dataset_zip[0],
        "html": b"<html>mirror moved</html>",
        "damaged": damaged(dataset_zip[0]),
    }[served]
    result = download(server, tmp_path / "out", *args)
    assert_refused(result, words, alone=False)
    assert "deleted the download" in result.stderr
    assert not (tmp_path / "out").exists()


def local_refusal(source: Path, out: Path, words: str) -> None:
    """The download stage refuses the local zip `source`, leaves it alone and writes nothing."""
    before = source.read_bytes()
    result = run_stage(
        "download", "--source", str(source), "--output-dir", str(out), "--sha1", "none"
    )
    assert_refused(result, words, alone=False)
    assert result.stderr.rstrip().endswith("; the file was left in place")
    assert source.read_bytes() == before and not out.exists()


def test_a_damaged_local_zip_is_left_in_place(dataset_zip, tmp_path):
    source = tmp_path / "damaged.zip"
    source.write_bytes(damaged(dataset_zip[0]))
    local_refusal(source, tmp_path / "out", f"{source} is damaged: member 'ADEChallengeData2016/")


def test_a_member_claiming_a_huge_size_is_refused(dataset_zip, tmp_path):
    """A zip bomb: one member inflates to 101 MB of zeros from under 0.5 MB."""
    source = tmp_path / "bomb.zip"
    source.write_bytes(dataset_zip[0])
    name = f"{ade20k.DATASET_DIR}/images/bomb.jpg"
    with (
        zipfile.ZipFile(source, "a", zipfile.ZIP_DEFLATED, compresslevel=1) as archive,
        archive.open(name, "w", force_zip64=True) as bomb,
    ):
        for _ in range(101):
            bomb.write(bytes(2**20))
    local_refusal(source, tmp_path / "out", f"claims {101 * 2**20} bytes, more than {2**20 * 100}")


def test_members_that_inflate_far_beyond_the_zip_are_refused(dataset_zip, tmp_path):
    bombs = {f"{ade20k.DATASET_DIR}/images/bomb{i}.png": bytes(2**20) for i in range(20)}
    source = with_members(
        dataset_zip[0], tmp_path / "bomb.zip", bombs, compression=zipfile.ZIP_DEFLATED
    )
    local_refusal(source, tmp_path / "out", "times its size, more than 10 (a zip bomb?)")


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("../evil.txt", "member '../evil.txt' would land outside the target folder"),
        ("/tmp/evil.txt", "member '/tmp/evil.txt' has an absolute path"),
        ("link", "is a symbolic link"),
    ],
)
def test_members_unsafe_to_extract_are_refused(dataset_zip, tmp_path, name, words):
    member: str | zipfile.ZipInfo = name
    if name == "link":
        member = zipfile.ZipInfo(f"{ade20k.DATASET_DIR}/images/link")
        member.external_attr = 0o120777 << 16  # S_IFLNK | rwxrwxrwx
    source = tmp_path / "unsafe.zip"
    source.write_bytes(dataset_zip[0])
    with zipfile.ZipFile(source, "a") as archive:
        archive.writestr(member, "/etc/passwd")
    local_refusal(source, tmp_path / "out", words)


def test_a_zip_without_the_layout_is_refused(tmp_path):
    source = tmp_path / "other.zip"
    with zipfile.ZipFile(source, "w") as archive:
        archive.writestr(f"{ade20k.DATASET_DIR}/images/training/a.jpg", b"jpeg")
    local_refusal(source, tmp_path / "out", "missing ADEChallengeData2016/images/validation/")


def without_credentials(home: Path) -> dict[str, str]:
    """An environment with no Google Cloud login and no emulator, as on a fresh laptop (and no
    look for a Compute Engine metadata server, in case the tests run on one)."""
    unset = ("GOOGLE_APPLICATION_CREDENTIALS", "STORAGE_EMULATOR_HOST")
    kept = {key: value for key, value in os.environ.items() if key not in unset}
    return {**kept, "HOME": str(home), "CLOUDSDK_CONFIG": str(home / "gcloud"),
            "NO_GCE_CHECK": "true", "PYTHONPATH": str(REPO)}  # fmt: skip


def test_gcs_without_credentials_says_how_to_log_in(tmp_path):
    uri, out = "gs://ade-mirror/ADEChallengeData2016.zip", tmp_path / "out"
    env = without_credentials(tmp_path)
    result = run_stage("download", "--source", uri, "--output-dir", str(out), env=env)
    words = "no usable Google Cloud credentials (DefaultCredentialsError); log in"
    assert_refused(result, words, alone=False)  # google.auth logs its own warning first
    assert "gcloud auth application-default login" in result.stderr
    assert "GOOGLE_APPLICATION_CREDENTIALS" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("uri", "words"),
    [
        ("gs://no-such-bucket/ADEChallengeData2016.zip", "does not exist"),
        ("gs://b/ADEChallengeData2016.zip", "bad bucket name 'b'"),
    ],
)
def test_gcs_source_errors(gcs_emulator, tmp_path, uri, words):
    assert_refused(
        run_stage("download", "--source", uri, "--output-dir", str(tmp_path / "out")), words
    )
    assert not (tmp_path / "out").exists()


def test_a_trickling_server_counts_as_stalled(server, dataset_zip, tmp_path):
    """One byte every 50 ms never hits the socket timeout, but it is under 1 KiB/s."""
    server.behaviour.trickle = [0.05]
    out = tmp_path / "out"
    started = time.monotonic()
    result = download(server, out, "--timeout", "0.5", "--retries", "0", *sized(dataset_zip[0]))
    assert time.monotonic() - started < 5
    assert_refused(result, "failed 1 times in a row, last: download stalled: ", alone=False)
    assert "under 1024 bytes/s; run again to resume from byte" in result.stderr
    assert os.listdir(out) == [f"{ARCHIVE}.partial"]  # what a rerun resumes from


def test_a_bad_zip_left_by_an_earlier_run_is_not_reused(server, dataset_zip, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ARCHIVE).write_bytes(b"<html>mirror moved</html>")  # checks were cut short
    result = download(server, out, "--sha1", dataset_zip[1], "--size", str(len(dataset_zip[0])))
    assert result.returncode == 0, result.stderr
    assert f"deleting {out / ARCHIVE} from an earlier run and downloading afresh" in result.stderr
    assert (out / ARCHIVE).read_bytes() == dataset_zip[0]
    assert sorted(os.listdir(out)) == [ARCHIVE, "download.json"]


@pytest.mark.parametrize(
    ("option", "where", "words"),
    [
        ("--output-dir", "file", "--output-dir {path} is a file, not a folder"),
        ("--output-dir", "file/out", "cannot create --output-dir {path}: Not a directory"),
        ("--archive-dir", "file", "--archive-dir {path} is a file, not a folder"),
    ],
)
def test_a_folder_that_is_a_file_is_refused(server, tmp_path, option, where, words):
    (tmp_path / "file").write_text("someone's notes")
    path = tmp_path / where
    folders = {"--output-dir": str(tmp_path / "out"), option: str(path)}
    result = run_stage(
        "download",
        "--source",
        server.url + ZIP_PATH,
        *(part for item in folders.items() for part in item),
    )
    assert_refused(result, words.format(path=path))
    assert server.behaviour.seen == [] and sorted(os.listdir(tmp_path)) == ["file"]
    assert (tmp_path / "file").read_text() == "someone's notes"


@pytest.mark.parametrize("exists", [True, False])
def test_an_output_on_a_read_only_filesystem_is_refused(server, small_disk, exists):
    disk = small_disk("1m", "ro")
    out = disk if exists else disk / "out"
    words = (
        f"--output-dir {out} is on a read-only filesystem"
        if exists
        else (f"cannot create --output-dir {out}: Read-only file system")
    )
    assert_refused(download(server, out), words)
    assert server.behaviour.seen == [] and os.listdir(disk) == []


def test_not_enough_free_space_is_refused_before_downloading(server, small_disk):
    disk = small_disk("2m")
    data = os.urandom(3 * 2**20)
    server.behaviour.files[ZIP_PATH] = data
    result = download(server, disk / "out", *sized(data))
    assert_refused(result, f"not enough space in {disk / 'out'}: {ARCHIVE} needs {len(data)} ")
    assert "free some space or choose another folder" in result.stderr
    assert server.behaviour.seen == [] and os.listdir(disk) == []


def test_a_disk_that_fills_up_during_the_download(server, small_disk):
    """The server sends no length, so only the write itself finds out."""
    disk = small_disk("2m")
    server.behaviour.files[ZIP_PATH] = os.urandom(3 * 2**20)
    server.behaviour.hide_length = True
    result = download(server, disk / "out", "--sha1", "none", "--size", "none")
    words = f"cannot write {disk / 'out' / ARCHIVE}: No space left on device (0 bytes free in "
    assert_refused(result, words, alone=False)
    assert os.listdir(disk / "out") == [f"{ARCHIVE}.partial"]  # no zip, no manifest


def test_a_file_size_limit_while_copying_into_the_output(dataset_zip, tmp_path):
    """RLIMIT_FSIZE stops the copy of a valid 2 MB zip into the output at 1 MB."""
    padding = {f"{ade20k.DATASET_DIR}/sceneCategories-extra.txt": os.urandom(2 * 2**20)}
    source = with_members(dataset_zip[0], tmp_path / "source.zip", padding)
    out = tmp_path / "out"

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, 2**20))

    result = run_stage(
        "download",
        "--source",
        str(source),
        "--output-dir",
        str(out),
        "--sha1",
        "none",
        preexec_fn=limit_file_size,
    )
    size = source.stat().st_size
    assert_refused(result, f"cannot write {out / ARCHIVE}: File too large (", alone=False)
    assert f" free in {out}, {size} needed); free some space" in result.stderr
    assert not out.exists()  # the incomplete copy was removed, then the folder it made


# --- prepare ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ade_folder(tmp_path_factory) -> Path:
    """A tiny generated ADEChallengeData2016 folder: 3 training and 2 validation samples."""
    root = tmp_path_factory.mktemp("ade")
    return synthetic.generate_ade20k(root, num_train=3, num_val=2, sizes=((48, 64),))


@pytest.fixture(scope="module")
def big_ade_folder(tmp_path_factory) -> Path:
    """8 + 2 samples of 480x640: about 1 MB of shards, more than a small disk holds."""
    root = tmp_path_factory.mktemp("big-ade")
    return synthetic.generate_ade20k(root, num_train=8, num_val=2, sizes=((480, 640),))


@pytest.fixture(scope="module")
def many_samples(ade_folder, tmp_path_factory) -> Path:
    """ade_folder's samples copied 60 times over: 300 samples, most of a second of work."""
    dataset = tmp_path_factory.mktemp("many") / ade20k.DATASET_DIR
    for split, prefix in ade20k.SPLIT_PREFIX.items():
        for kind, suffix in (("images", "jpg"), ("annotations", "png")):
            (dataset / kind / split).mkdir(parents=True)
            sources = sorted((ade_folder / kind / split).glob(f"*.{suffix}"))
            for number in range(60 * len(sources)):
                target = dataset / kind / split / f"{prefix}_{number:08d}.{suffix}"
                shutil.copyfile(sources[number % len(sources)], target)
    return dataset


def prepare(dataset: Path, out: Path, *args: str, **options) -> subprocess.CompletedProcess:
    """The prepare stage from `dataset` into `out`, on one worker."""
    return run_stage(
        "prepare", "--dataset-dir", str(dataset), "--output-dir", str(out), "--workers", "1",
        *args, **options,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("where", "words"),
    [
        ("file", "--output-dir {path} is a file, not a folder"),
        ("file/out", "cannot create --output-dir {path}: Not a directory"),
    ],
)
def test_prepare_into_a_file_is_refused_before_any_work(ade_folder, tmp_path, where, words):
    (tmp_path / "file").write_text("someone's notes")
    path = tmp_path / where
    assert_refused(prepare(ade_folder, path), words.format(path=path))
    assert os.listdir(tmp_path) == ["file"] and (tmp_path / "file").read_text() == "someone's notes"


@pytest.mark.parametrize(
    ("dataset", "args", "words"),
    [
        ("empty", [], "no images in {dataset} under images/training/ or images/validation/"),
        ("zip without manifest", [], "no download.json: the download stage did not finish"),
        ("ade", ["--whitelist", "persn|wall"], "unknown class 'persn'; did you mean 'person'"),
        ("ade", ["--train-shards", "0"], "--train-shards and --val-shards must be at least 1"),
    ],
)
def test_prepare_errors_before_writing_leave_no_folder(ade_folder, tmp_path, dataset, args, words):
    folders = {"empty": tmp_path / "empty", "zip without manifest": tmp_path / "downloaded"}
    source = folders.get(dataset, ade_folder)
    for folder in folders.values():
        folder.mkdir()
    (tmp_path / "downloaded" / ARCHIVE).write_bytes(b"not checked yet")
    assert_refused(
        prepare(source, tmp_path / "out" / "prepared", *args), words.format(dataset=source)
    )
    assert sorted(os.listdir(tmp_path)) == ["downloaded", "empty"]


def test_prepare_that_keeps_no_sample_fails_and_keeps_the_earlier_output(ade_folder, tmp_path):
    """No annotations folder: every sample is skipped; exit 2 naming why, not a silent 0."""
    unannotated = tmp_path / "unannotated" / ade20k.DATASET_DIR
    shutil.copytree(ade_folder / "images", unannotated / "images")
    out = tmp_path / "out"
    words = (
        "no sample kept: train: none of 3 kept (3 missing_annotation); "
        "val: none of 2 kept (2 missing_annotation)"
    )
    result = prepare(unannotated, out)
    assert_refused(result, words, alone=False)
    assert "skipped ADE_train_00000001: missing_annotation" in result.stderr
    assert "threshold" not in result.stderr.splitlines()[-1]
    assert not out.exists()

    prepare_dataset(ade_folder, out, workers=1)  # an earlier complete output
    before, files = data_folder.read_prepared(out), folder_files(out)
    assert_refused(prepare(unannotated, out, "--train-shards", "3"), words, alone=False)
    assert folder_files(out) == files and data_folder.read_prepared(out) == before


def test_prepare_on_a_full_disk_leaves_no_partial_shards(ade_folder, big_ade_folder, small_disk):
    """A 256 KiB disk holds the small output, not the big one: a rerun that fills it fails with
    one line and leaves the earlier output as it was; a first run leaves nothing."""
    disk = small_disk("256k")
    out = disk / "out"
    prepare_dataset(ade_folder, out, workers=1)
    before, files = data_folder.read_prepared(out), folder_files(out)
    for target in (out, disk / "fresh"):
        result = prepare(big_ade_folder, target, "--train-shards", "4")
        assert_refused(result, f"cannot write {target}/", alone=False)
        assert "No space left on device (" in result.stderr.splitlines()[-1]
        assert "free some space or choose another folder, then run again" in result.stderr
    assert os.listdir(disk) == ["out"]
    assert folder_files(out) == files and data_folder.read_prepared(out) == before


def test_prepare_killed_midway_through_a_rerun_leaves_the_earlier_output_readable(
    many_samples, tmp_path
):
    """SIGKILL as soon as the rerun (other labels, other shards) has written a shard: the folder
    still reads as the first run's output, and the next run removes what the killed one left."""
    out = tmp_path / "out"
    prepare_dataset(many_samples, out, "wall|floor|ceiling", threshold=0, workers=1)
    before, files = data_folder.read_prepared(out), folder_files(out)
    command = [sys.executable, "-m", "image_segmentation", "prepare", "--dataset-dir",
               str(many_samples), "--output-dir", str(out), "--workers", "1",
               "--train-shards", "12"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL) as process:
        deadline = time.monotonic() + 60
        while not list(out.glob("*.gen2.tfrecord")):
            assert process.poll() is None and time.monotonic() < deadline, "the rerun ended"
            time.sleep(0.001)
        process.send_signal(signal.SIGKILL)
    assert process.returncode == -signal.SIGKILL
    assert data_folder.read_prepared(out) == before
    assert folder_files(out).items() >= files.items()
    assert {name for name in os.listdir(out) if name not in files}  # what the killed run left

    prepare_dataset(many_samples, out, train_shards=12, workers=1)
    after = data_folder.read_prepared(out)
    assert len(after.labels) == 151 and after.records == before.records
    shards = data_folder.shard_names("train", 12, 2) + data_folder.shard_names("val", 2, 2)
    assert sorted(os.listdir(out)) == sorted(["labels.txt", "stats.json", *shards])


@contextlib.contextmanager
def paused_holder(args: list[str], folder: Path) -> Iterator[subprocess.Popen]:
    """`python -m image_segmentation ARGS` started, and paused (SIGSTOP) as soon as its lease
    on `folder` is written, so a second run meets it however fast its work would be."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "image_segmentation", *args]
    with subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL) as process:
        deadline = time.monotonic() + 60
        while not disk._read_lease(folder / disk.LEASE_FILE):  # created, its holder written
            assert process.poll() is None and time.monotonic() < deadline, "the run ended"
            time.sleep(0.001)
        process.send_signal(signal.SIGSTOP)
        yield process


@pytest.mark.parametrize("scratch", ["a-file", "a-file/below"])
def test_prepare_refuses_a_scratch_dir_it_cannot_copy_the_zip_into(
    gcs_client, dataset_zip, tmp_path, scratch
):
    """A gs:// zip is copied to --scratch-dir first (on Vertex, the container's disk): a
    folder that cannot take it is refused before the copy, with no traceback."""
    gcs_client.create_bucket("mirror").blob(ARCHIVE).upload_from_string(dataset_zip[0])
    (tmp_path / "a-file").write_text("")
    result = run_stage("prepare", "--dataset-dir", f"gs://mirror/{ARCHIVE}", "--output-dir",
                       str(tmp_path / "out"), "--scratch-dir", str(tmp_path / scratch))  # fmt: skip
    assert_refused(result, "--scratch-dir", alone=False)
    assert not (tmp_path / "out").exists()


def test_prepare_refuses_a_scratch_disk_too_small_for_the_zip(
    gcs_client, dataset_zip, tmp_path, small_disk
):
    """On Vertex the zip is copied to the container's disk: its free space is checked first."""
    gcs_client.create_bucket("mirror").blob(ARCHIVE).upload_from_string(dataset_zip[0])
    scratch = small_disk("8k")
    result = run_stage("prepare", "--dataset-dir", f"gs://mirror/{ARCHIVE}", "--output-dir",
                       str(tmp_path / "out"), "--scratch-dir", str(scratch))  # fmt: skip
    assert_refused(result, f"{len(dataset_zip[0])} bytes", alone=False)
    assert "--scratch-dir" in result.stderr.splitlines()[-1]
    assert list(scratch.iterdir()) == [] and not (tmp_path / "out").exists()


def test_a_second_prepare_into_a_folder_being_written_is_refused(many_samples, tmp_path):
    """One writer per folder: the second run is refused at once, naming the first, which
    finishes unharmed; its lease is gone afterwards."""
    out = tmp_path / "out"
    args = ["prepare", "--dataset-dir", str(many_samples), "--output-dir", str(out),
            "--workers", "1"]  # fmt: skip
    with paused_holder(args, out) as first:
        second = run_stage(*args)
        first.send_signal(signal.SIGCONT)
    assert_refused(
        second, f"--output-dir {out} is being written by another run (pid {first.pid} on"
    )
    assert first.returncode == 0
    assert data_folder.read_prepared(out).records["train"] > 0
    assert not (out / disk.LEASE_FILE).exists()


@pytest.mark.parametrize(
    ("elsewhere", "age", "taken"),
    [(False, 0, False), (True, 0, False), (True, disk.LEASE_SECONDS + 5, True)],
)
def test_a_lease_is_taken_over_only_from_a_run_that_is_gone(tmp_path, elsewhere, age, taken):
    """A live run's lease holds (here, or on another machine); a dead one's does not stick:
    on this machine at once, from another machine once it has not been renewed for long."""
    lease = tmp_path / disk.LEASE_FILE
    holder = {"pid": os.getpid(), "host": "another-machine" if elsewhere else None}
    if not elsewhere:
        holder = {"pid": os.getpid(), **disk._process_space()}
    lease.write_text(json.dumps({**holder, "started": "earlier"}))
    os.utime(lease, (time.time() - age, time.time() - age))
    if taken:
        with disk.sole_writer(tmp_path, "--output-dir"):
            assert json.loads(lease.read_text())["host"] != "another-machine"
        assert not lease.exists()
    else:
        refused = pytest.raises(StageError, match="is being written by another run")
        with refused, disk.sole_writer(tmp_path, "--output-dir"):
            pass
        assert lease.exists()


def test_a_killed_runs_lease_on_this_machine_is_taken_over_at_once(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    lease = tmp_path / disk.LEASE_FILE
    lease.write_text(json.dumps({"pid": int(dead.stdout), **disk._process_space()}))
    with disk.sole_writer(tmp_path, "--output-dir"):
        assert json.loads(lease.read_text())["pid"] == os.getpid()


# --- train ------------------------------------------------------------------------------------
# The train and evaluate cases call the command's entry point, `cli.main`, in this process and
# read its stderr at the file-descriptor level: in a subprocess each would spend ~10 s
# importing TensorFlow. A failure other than a one-line refusal raises here instead.


def refused_in_process(capfd, args: list[str], words: str, alone: bool = True) -> str:
    """`assert_refused` for `cli.main(args)` run here; returns the error line."""
    capfd.readouterr()
    result = subprocess.CompletedProcess(args, cli.main(args), "", capfd.readouterr().err)
    assert_refused(result, words, alone)
    return result.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def prepared_data(tmp_path_factory) -> Path:
    """A prepared data folder of 4 classes: none, wall, floor, bed."""
    from test_dataset import write_prepared  # TensorFlow: only these sections need it

    return write_prepared(tmp_path_factory.mktemp("prepared"), num_train=4, num_val=2)


def icnet_weights(path: Path, num_classes: int) -> Path:
    """Untrained ICNet weights (64x64, alpha 0.25) of `num_classes` classes."""
    from image_segmentation.model import icnet

    icnet.build_icnet(num_classes, (64, 64), alpha=0.25).save_weights(path)
    return path


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory, prepared_data) -> Path:
    """A complete model folder for the prepared data's classes."""
    names = labels.read_labels_file(prepared_data / "labels.txt")
    folder = tmp_path_factory.mktemp("model")
    model_folder.write_model_dir(
        folder,
        write_weights=lambda path: icnet_weights(path, len(names)),
        config={
            "labels": names,
            "num_classes": len(names),
            "image_size": [64, 64],
            "alpha": 0.25,
            "normalization": {"scale": 1 / 255, "offset": -0.5},
        },
        history=[],
        training_metrics={},
    )
    return folder


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "--data-dir", str(data), "--output-dir", str(out), "--image-size", "64",
        "--alpha", "0.25", "--epochs", "1", "--steps-per-epoch", "1", *extra,
    ]  # fmt: skip


def half_of(path: Path, into: Path) -> Path:
    """A copy of `path` cut off halfway, as an interrupted copy leaves it."""
    into.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return into


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--learning-rate", "inf"], "--learning-rate must be a finite number > 0, got inf"),
        (["--learning-rate", "nan"], "--learning-rate must be a finite number > 0, got nan"),
        (["--loss-weights", "nan,1,1"], "expected three weights >= 0 like 1.0,0.4,0.16"),
        (["--max-class-weight", "inf"], "--max-class-weight must be a finite number >= 1"),
        (["--alpha", "nan"], "alpha scales every layer's width and must be > 0, got nan"),
        (["--seed", "-1"], "--seed must be >= 0, got -1"),
        (["--epochs", "0", "--image-size", "100"], "--epochs must be >= 1, got 0"),
    ],
)
def test_settings_that_cannot_train_are_refused_before_tensorflow_loads(tmp_path, extra, words):
    """Non-finite numbers would train a NaN model and publish it; every bad setting is named at
    once, by the command line alone: TensorFlow is never imported."""
    probe = (
        "import sys\nfrom image_segmentation import cli\n"
        "try:\n    sys.exit(cli.main(sys.argv[1:]))\n"
        "finally:\n    print('tensorflow' in sys.modules)"
    )
    args = train_args(tmp_path / "data", tmp_path / "model", *extra)
    result = subprocess.run(
        [sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert_refused(result, words)
    assert result.stdout.strip() == "False"
    if "--image-size" in extra:
        assert "image size 100x100 is not supported" in result.stderr
    assert not (tmp_path / "model").exists()


def test_a_second_train_into_a_model_folder_being_written_is_refused(prepared_data, tmp_path):
    """Two trains into one --output-dir would replace each other's checkpoints and model: the
    second is refused before TensorFlow loads, naming the first (then SIGKILLed: its lease is
    taken over by the next run on this machine at once)."""
    out = tmp_path / "model"
    args = train_args(prepared_data, out)
    with paused_holder(args, out) as first:
        second = run_stage(*args)
        first.send_signal(signal.SIGKILL)
    words = f"--output-dir {out} is being written by another run (pid {first.pid} on"
    assert_refused(second, words)
    with disk.sole_writer(out, "--output-dir"):  # the killed run's lease does not stick
        pass


def test_a_training_run_that_diverges_stops_and_publishes_nothing(prepared_data, tmp_path, capfd):
    """A learning rate far too high makes the loss NaN within a step or two: the run stops with
    the epoch and step, and leaves no checkpoint or model of the NaN weights."""
    out = tmp_path / "model"
    args = train_args(
        prepared_data,
        out,
        "--optimizer",
        "sgd",
        "--learning-rate",
        "1e35",
        "--steps-per-epoch",
        "3",
    )
    line = refused_in_process(
        capfd, args, "nothing of this epoch is saved or published", alone=False
    )
    assert re.search(r"the training diverged (at epoch 1, step \d+|in epoch 1)", line), line
    assert not list(out.glob("checkpoints/epoch-*.npz"))
    assert not (out / model_folder.CONFIG_FILE).exists()


def test_a_checkpoint_on_a_full_disk_is_one_line_and_leaves_no_partial_file(
    prepared_data, small_disk, capfd
):
    out = small_disk("256k") / "model"
    args = train_args(prepared_data, out)
    line = refused_in_process(capfd, args, "No space left on device", alone=False)
    assert "epoch-0001.npz" in line, line
    assert not list(out.rglob("*.partial")) and not (out / model_folder.CONFIG_FILE).exists()


def test_a_model_folder_with_nan_weights_is_refused(prepared_data, trained_model, tmp_path, capfd):
    """Weights that are not numbers (a diverged run from before the training stopped on it,
    or a damaged file) are refused by every stage that reads a model folder."""
    import h5py

    model = tmp_path / "model"
    shutil.copytree(trained_model, model)
    with h5py.File(model_folder.weights_path(model), "r+") as weights:
        kernels = []
        weights.visititems(lambda name, item: kernels.append(item) if name.endswith("/0") else None)
        kernels[0][...] = np.nan
    words = "weight arrays hold NaN or infinity (a training run that diverged)"
    evaluation = tmp_path / "evaluation"
    refused_in_process(capfd, ["evaluate", "--data-dir", str(prepared_data),
                               "--model-dir", str(model), "--output-dir", str(evaluation)],
                       words, alone=False)  # fmt: skip
    assert not evaluation.exists()


def test_labels_that_differ_from_the_stats_are_refused(prepared_data, tmp_path, capfd):
    """As many classes as stats.json lists, one named otherwise: the mask check alone passes."""
    data = tmp_path / "data"
    shutil.copytree(prepared_data, data)
    names = labels.read_labels_file(data / "labels.txt")
    (data / "labels.txt").write_text(labels.format_labels_file([*names[:3], "sofa"]))
    words = "does not match stats.json (class 3 is 'sofa', not 'bed')"
    refused_in_process(capfd, train_args(data, tmp_path / "model"), words)
    assert not (tmp_path / "model").exists()


def test_a_truncated_fine_tune_weights_file_is_refused(
    prepared_data, trained_model, tmp_path, capfd
):
    weights = half_of(trained_model / model_folder.WEIGHTS_FILE, tmp_path / "cut.weights.h5")
    args = train_args(prepared_data, tmp_path / "model", "--fine-tune-from", str(weights))
    refused_in_process(capfd, args, "cut.weights.h5 cannot be loaded: Unable to", alone=False)
    assert not (tmp_path / "model" / model_folder.CONFIG_FILE).exists()


def test_fine_tune_weights_of_other_classes_are_refused_in_a_short_line(
    prepared_data, tmp_path, capfd
):
    """A bare weights file, with no config.json beside it to compare first: 5 classes for 4."""
    weights = icnet_weights(tmp_path / "five.weights.h5", 5)
    args = train_args(prepared_data, tmp_path / "model", "--fine-tune-from", str(weights))
    line = refused_in_process(capfd, args, "five.weights.h5 cannot be loaded: ", alone=False)
    assert "variable.shape=" in line and len(line) < 500, line


# --- evaluate ---------------------------------------------------------------------------------


def edit_config(folder: Path, **changes) -> None:
    path = folder / model_folder.CONFIG_FILE
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


FIVE_LABELS = ["none", "wall", "floor, flooring", "bed", "sofa"]


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ("no weights", "has no model.weights.h5: training did not finish"),
        ("truncated weights", "cannot be loaded into the model config.json describes: Unable"),
        ("config not JSON", "config.json is not valid JSON"),
        ("config of other classes", "different labels: model has 5 classes, data 4"),
        ("config and data of other classes", "variable.shape=(1, 1, 32, 5), Received: value"),
    ],
)
def test_a_bad_model_folder_is_refused(
    change, words, prepared_data, trained_model, tmp_path, capfd
):
    model, data = tmp_path / "model", prepared_data
    shutil.copytree(trained_model, model)
    weights = model / model_folder.WEIGHTS_FILE
    if change == "no weights":
        weights.unlink()
    elif change == "truncated weights":
        half_of(trained_model / model_folder.WEIGHTS_FILE, weights)
    elif change == "config not JSON":
        (model / model_folder.CONFIG_FILE).write_text('{"labels": ["none", ')
    else:
        edit_config(model, labels=FIVE_LABELS, num_classes=5)
    if change == "config and data of other classes":
        data = tmp_path / "data"  # a folder of 5 classes, whose masks use only the first 4
        shutil.copytree(prepared_data, data)
        stats = json.loads((data / "stats.json").read_text())
        for split in stats["splits"].values():
            counts = [*split["pixel_counts"].values(), 0]
            split["pixel_counts"] = dict(zip(FIVE_LABELS, counts, strict=True))
        (data / "stats.json").write_text(json.dumps(stats | {"labels": FIVE_LABELS}))
        (data / "labels.txt").write_text(labels.format_labels_file(FIVE_LABELS))
    args = ["evaluate", "--model-dir", str(model), "--data-dir", str(data)]
    line = refused_in_process(capfd, [*args, "--output-dir", str(tmp_path / "out")], words)
    assert len(line) < 500, line
    assert not (tmp_path / "out").exists()


# --- export -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_to_export(tmp_path_factory) -> Path:
    """A small model folder as the train stage writes it (test_export's helper, no training)."""
    from test_export import LEGACY_NORMALIZATION, write_model_dir  # imports TensorFlow

    return write_model_dir(tmp_path_factory.mktemp("trained") / "model", LEGACY_NORMALIZATION)


def file_contents(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


@pytest.mark.slow
def test_export_with_a_bad_model_dir_leaves_no_output_folder(tmp_path):
    """The other refusals (an incomplete model folder, bad option combinations, an output
    folder holding other files) are checked in process by test_export.py and
    test_export_folder.py: each run here costs a TensorFlow import."""
    model, out = tmp_path / "missing", tmp_path / "out"
    result = run_stage("export", "--model-dir", str(model), "--output-dir", str(out))
    assert_refused(result, f"model dir {model} does not exist", alone=False)  # TF logs first
    assert not out.exists()


@pytest.mark.slow
def test_an_export_killed_midway_leaves_the_earlier_export_usable(
    model_to_export, gcs_client, tmp_path
):
    """SIGKILL a rerun as soon as its first output file appears: the export is made in a
    staging folder ($TMPDIR), so the earlier complete export is untouched and upload accepts
    it."""
    from test_upload import make_export  # stand-in files, named as `--model-name model` names them

    out, staging_root = make_export(tmp_path), tmp_path / "tmp"
    staging_root.mkdir()
    before = file_contents(out)
    env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(staging_root)}
    rerun = subprocess.Popen(
        [sys.executable, "-m", "image_segmentation", "export", "--model-dir", str(model_to_export),
         "--output-dir", str(out), "--model-name", "model"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        give_up = time.monotonic() + 300
        while not any(staging_root.rglob("*.tflite")) and (out / "export.json").exists():
            assert rerun.poll() is None, "the export ended before writing any file"
            assert time.monotonic() < give_up, "the export wrote no file in 300 s"
            time.sleep(0.02)
    finally:
        rerun.kill()
        rerun.wait()
    assert rerun.returncode == -signal.SIGKILL
    assert any(staging_root.rglob("model.tflite"))  # its first file, in its staging folder
    assert file_contents(out) == before
    gcs_client.create_bucket("published")
    result = upload_stage(out)
    assert result.returncode == 0, result.stderr
    assert gcs_client.bucket("published").get_blob("seg/icnet/1/manifest.json") is not None


# --- upload -----------------------------------------------------------------------------------


def upload_stage(export_dir: Path, *args: str, destination: str = "gs://published/seg", **options):
    """The upload stage of `export_dir` as version 1 of model icnet under `destination`."""
    return run_stage(
        "upload", "--export-dir", str(export_dir), "--destination", destination,
        "--model-name", "icnet", "--version", "1", *args, **options,
    )  # fmt: skip


def fake_export(root: Path) -> Path:
    """A complete export of stand-in files (test_upload's helper): no TensorFlow needed."""
    from test_upload import make_export

    return make_export(root)


def without_core_ml(export: Path) -> None:
    """Remove the Core ML model and record what is left, as if the export never wrote it."""
    from test_upload import EXPORT_NAMES, record_export

    shutil.rmtree(export / "model.mlpackage")
    record_export(export, EXPORT_NAMES[1:])


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (lambda d: (d / "export.json").unlink(), "has no export.json: the export stage"),
        (lambda d: (d / "model_fp16.tflite").unlink(), "model_fp16.tflite is missing"),
        (lambda d: os.truncate(d / "model.tflite", 4000), "model.tflite is 4000 bytes, not 9000"),
        (without_core_ml, "does not list a complete model export (mlprogram, with TFLite): no "
                          "model.mlpackage"),
    ],
    ids=["no export.json", "a listed file gone", "a file truncated", "no Core ML model"],
)  # fmt: skip
def test_upload_refuses_an_incomplete_export(gcs_client, tmp_path, damage, words):
    gcs_client.create_bucket("published")
    export = fake_export(tmp_path)
    damage(export)
    assert_refused(upload_stage(export), words)
    assert list(gcs_client.list_blobs("published")) == []


def test_upload_refuses_the_export_of_another_model(gcs_client, tmp_path):
    """--model-dir names the model the manifest describes: its labels must be the export's."""
    from test_upload import make_model_dir

    gcs_client.create_bucket("published")
    export = fake_export(tmp_path)
    fewer = make_model_dir(tmp_path / "fewer", ["none", "sofa", "lamp"])
    result = upload_stage(export, "--model-dir", str(fewer))
    assert_refused(result, f"the export was not made from {fewer}: 4 labels in the export, 3 in")
    renamed = make_model_dir(tmp_path / "renamed", ["none", "wall", "floor", "sofa"])
    result = upload_stage(export, "--model-dir", str(renamed))
    assert_refused(result, "label 3 is 'bed' in the export, 'sofa' in the model; pass the model")
    assert list(gcs_client.list_blobs("published")) == []


def test_upload_refuses_an_export_of_other_weights_with_the_same_labels(gcs_client, tmp_path):
    """The manifest describes --model-dir (its resize mode, config): its weights must be the
    ones the export was made from, not only its labels."""
    from test_upload import make_model_dir

    gcs_client.create_bucket("published")
    export = fake_export(tmp_path)
    other = make_model_dir(tmp_path / "other")
    model_folder.weights_path(other).write_bytes(b"other weights, same labels")
    result = upload_stage(export, "--model-dir", str(other))
    assert_refused(result, f"the export was not made from {other}'s weights")
    assert list(gcs_client.list_blobs("published")) == []


@pytest.mark.parametrize(
    ("metrics", "words"),
    [
        ({"miou": "great"}, 'miou is "great", not a number from 0 to 1'),
        ({"miou": 1.7, "pixel_accuracy": None}, "miou is 1.7, not a number from 0 to 1"),
        ({"miou": 0.5, "class_iou": {"wall": "high"}}, 'class_iou is {"wall": "high"}'),
        ("fine", "export.json's metrics are not a JSON object"),
    ],
)
def test_upload_refuses_metrics_that_are_not_numbers(gcs_client, tmp_path, metrics, words):
    gcs_client.create_bucket("published")
    export = fake_export(tmp_path)
    record = json.loads((export / "export.json").read_text())
    (export / "export.json").write_text(json.dumps({**record, "metrics": metrics}))
    assert_refused(upload_stage(export), words)
    assert list(gcs_client.list_blobs("published")) == []


def test_upload_refuses_metrics_that_are_not_the_evaluations(gcs_client, tmp_path):
    """A hand-edited miou in export.json: the evaluation of the model's weights says otherwise."""
    from test_upload import make_model_dir

    gcs_client.create_bucket("published")
    export = fake_export(tmp_path)
    model = make_model_dir(tmp_path)
    evaluation = tmp_path / "evaluation"
    evaluation.mkdir()
    scored = {"miou": 0.41, "pixel_accuracy": 0.8, "class_iou": {}, "classes_scored": 4,
              "pixels_scored": 100, "images": 2,
              "evaluation": {"model_weights_sha256": model_folder.weights_digest(model),
                             "resize": "stretch"}}  # fmt: skip
    (evaluation / "metrics.json").write_text(json.dumps(scored))
    record = json.loads((export / "export.json").read_text())
    (export / "export.json").write_text(json.dumps({**record, "metrics": {"miou": 0.99}}))
    result = upload_stage(export, "--model-dir", str(model), "--evaluation-dir", str(evaluation))
    assert_refused(result, "export.json's metrics are not the evaluation's")
    assert "(miou 0.99, evaluated 0.41)" in result.stderr
    assert list(gcs_client.list_blobs("published")) == []


def test_upload_gives_up_on_unreachable_storage_within_its_deadline(tmp_path):
    export = fake_export(tmp_path)
    nothing_listens = f"http://127.0.0.1:{free_port()}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "STORAGE_EMULATOR_HOST": nothing_listens}
    started = time.monotonic()
    result = upload_stage(export, "--deadline", "3", env=env)
    assert time.monotonic() - started < 3 + 5  # the deadline plus starting Python
    words = "gave up on gs://published/seg: Timeout of 3.0s exceeded; last error: [Errno 111] "
    assert_refused(result, words + "Connection refused", alone=False)
    failed = "Cloud Storage request failed ([Errno 111] Connection refused); "
    left = [
        float(line.split(failed)[1].split(" s left")[0])
        for line in result.stderr.splitlines()
        if failed in line
    ]
    assert len(left) >= 2 and left == sorted(left, reverse=True) and left[0] <= 3.0


def test_upload_writes_its_output_uris_with_normal_permissions(gcs_client, tmp_path):
    gcs_client.create_bucket("published")
    uris = tmp_path / "outputs" / "uris.json"
    result = upload_stage(
        fake_export(tmp_path), "--output-uris", str(uris), preexec_fn=lambda: os.umask(0o022)
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(uris.read_text())["manifest"] == "gs://published/seg/icnet/1/manifest.json"
    assert stat.S_IMODE(uris.stat().st_mode) == 0o644


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_upload_refuses_a_bad_deadline(tmp_path, value):
    result = upload_stage(tmp_path / "export", "--deadline", value)
    words = f"argument --deadline: must be a number of seconds above 0, got {value!r}"
    assert_refused(result, words)


@pytest.mark.parametrize(
    ("where", "destination", "words"),
    [
        ("missing", "gs://published/seg", "export dir {export} does not exist"),
        ("export", "s3://published/seg", "not a gs:// URI: 's3://published/seg'"),
        ("export", "gs://b/seg", "bad bucket name 'b' in 'gs://b/seg'"),
        ("export", "gs://no-such-bucket/seg", "bucket gs://no-such-bucket does not exist"),
    ],
)
def test_upload_refuses_bad_input_before_uploading(gcs_client, tmp_path, where, destination, words):
    gcs_client.create_bucket("published")
    fake_export(tmp_path)
    export = tmp_path / where
    assert_refused(upload_stage(export, destination=destination), words.format(export=export))
    assert list(gcs_client.list_blobs("published")) == []


# --- executor input ---------------------------------------------------------------------------


def executor_input(root: Path, **changes) -> dict:
    """A well-formed executor input for the download step, with `changes` to its outputs."""
    dataset = {
        "name": "dataset",
        "uri": str(root / "dataset"),
        "metadata": {},
        "type": {"schemaTitle": "system.Dataset"},
    }
    outputs = {
        "artifacts": {"dataset": {"artifacts": [dataset]}},
        "outputFile": str(root / "executor_output.json"),
    }
    return {"inputs": {}, "outputs": {**outputs, **changes}}


def test_a_well_formed_executor_input_is_answered(server, dataset_zip, tmp_path):
    request = json.dumps(executor_input(tmp_path))
    result = run_stage(
        "--executor-input",
        request,
        "download",
        "--source",
        server.url + ZIP_PATH,
        "--output-dir",
        str(tmp_path / "dataset"),
        *sized(dataset_zip[0]),
    )
    assert result.returncode == 0, result.stderr
    written = json.loads((tmp_path / "executor_output.json").read_text())
    assert written["artifacts"]["dataset"]["artifacts"][0]["uri"] == str(tmp_path / "dataset")


DATASET = "outputs.artifacts.dataset.artifacts"
UNWRITABLE = Path("/dev/null")  # nothing can be written below it, even by root
VALID = json.dumps(executor_input(UNWRITABLE))
_REMOVED = object()


def altered(path: str, value: object = _REMOVED) -> str:
    """The download step's executor input as JSON, with the field at the dotted `path` set to
    `value` or removed."""
    request = executor_input(UNWRITABLE)
    *parents, last = path.split(".")
    parent = functools.reduce(
        lambda node, key: node[int(key)] if isinstance(node, list) else node[key], parents, request
    )
    if value is _REMOVED:
        del parent[last]
    else:
        parent[last] = value
    return json.dumps(request)


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (["--executor-input", "{not json"], "--executor-input is not JSON"),
        (["--executor-input", "[1, 2]"], "--executor-input must be a JSON object, got [1, 2]"),
        (["--executor-input", "{}"], "--executor-input has no outputs"),
        (["--executor-input", altered("outputs", [])], "outputs must be a JSON object, got []"),
        (["--executor-input", altered("outputs.outputFile")], "has no outputs.outputFile"),
        (["--executor-input", altered("outputs.outputFile", "")],
         'outputs.outputFile must be a non-empty string, got ""'),
        (["--executor-input", altered(f"{DATASET}.0.uri")], f"has no {DATASET}[0].uri"),
        (["--executor-input", altered(DATASET, [])], f"{DATASET} is empty"),
        (["--executor-input", altered(DATASET, "gs://b/d")], f"{DATASET} must be a JSON list"),
        (["--executor-input", altered(f"{DATASET}.0.metadata", [])],
         f"{DATASET}[0].metadata must be a JSON object, got []"),
        (["--executor-input", altered("outputs.parameters", {"miou": {}})],
         "has no outputs.parameters.miou.outputFile"),
        (["--executor-input", VALID, "--metrics-from", "model/metrics.json"],
         "--metrics-from 'model/metrics.json': expected OUTPUT/FILE with OUTPUT one of"),
        (["--metrics-from", "dataset/manifest.json"], "--metrics-from needs --executor-input"),
        (["--executor-input", VALID],
         f"the executor output {UNWRITABLE}/executor_output.json cannot be written: "
         f"{UNWRITABLE} is a file"),
        (["--executor-input", "[" * 50_000 + "]" * 50_000],
         "--executor-input is nested too deeply to be an executor input"),
    ],
)  # fmt: skip
def test_a_malformed_executor_input_fails_at_once(server, tmp_path, options, words):
    out = tmp_path / "dataset"
    started = time.monotonic()
    result = run_stage(
        *options, "download", "--source", server.url + ZIP_PATH, "--output-dir", str(out)
    )
    assert time.monotonic() - started < 1.0
    assert_refused(result, words)
    assert server.behaviour.seen == [] and os.listdir(tmp_path) == []


def test_a_metrics_output_that_cannot_be_written_fails_before_the_download(server, tmp_path):
    """The Metrics artifact is written after the work: a path below a file is found first."""
    (tmp_path / "a-file").write_text("")
    metrics = {"name": "metrics", "uri": str(tmp_path / "a-file" / "metrics"),
               "type": {"schemaTitle": "system.Metrics"}}  # fmt: skip
    request = executor_input(tmp_path)
    request["outputs"]["artifacts"]["metrics"] = {"artifacts": [metrics]}
    source = server.url + ZIP_PATH
    result = run_stage("--executor-input", json.dumps(request), "download", "--source",
                       source, "--output-dir", str(tmp_path / "dataset"))  # fmt: skip
    assert_refused(result, f"output 'metrics' {tmp_path}/a-file/metrics cannot be written")
    assert server.behaviour.seen == [] and sorted(os.listdir(tmp_path)) == ["a-file"]


@pytest.mark.parametrize(
    "option", ["--report-html", "--metrics-json", "--confusion-matrix-json", "--miou-output"]
)
def test_evaluate_outputs_that_cannot_be_written_fail_before_scoring(tmp_path, option):
    (tmp_path / "a-file").write_text("")
    target = tmp_path / "a-file" / "out"
    result = run_stage("evaluate", "--model-dir", str(tmp_path / "m"), "--data-dir",
                       str(tmp_path / "d"), "--output-dir", str(tmp_path / "e"), option,
                       str(target))  # fmt: skip
    assert_refused(result, f"{option} {target} cannot be written: {tmp_path}/a-file is a file")
    assert sorted(os.listdir(tmp_path)) == ["a-file"]


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ([], "--executor-input needs a value"),
        (["{}"], "--executor-input has no outputs"),  # checked before the stage is looked for
        ([VALID], "--executor-input needs a stage after it"),
    ],
)
def test_an_executor_input_without_a_stage(options, words):
    assert_refused(run_stage("--executor-input", *options), words)


# --- command line -----------------------------------------------------------------------------


def test_an_unknown_stage_is_named_with_the_stages():
    assert_refused(run_stage("downlaod"), "unknown stage 'downlaod'; the stages are download, ")
