"""Bad input gives one line `error: ...` on stderr and exit status 2: no traceback, no silence.

Every case runs the real command, `python -m image_segmentation [--executor-input JSON] STAGE
...`, in a subprocess, against real parts: the loopback HTTP server of http_fixtures, the GCS
emulator, small tmpfs mounts for a full or read-only disk (these cases are skipped where
mounting is not permitted) and RLIMIT_FSIZE for a file size limit. Each test also checks what
is, and is not, left on disk. "Before any work" means the server saw no request and no output
folder was left behind.

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
executor input
  not JSON, [1, 2], {}, no outputFile       refused in well under a second, before any work
  artifact without uri / empty / not list   refused in well under a second, before any work
  artifact metadata not an object           refused in well under a second, before any work
  parameter without outputFile              refused in well under a second, before any work
  --metrics-from naming no output           refused in well under a second, before any work
  --metrics-from alone, no value, no stage  refused in well under a second, before any work
command line
  unknown stage                             refused, listing the stages
"""

import functools
import io
import json
import os
import resource
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from conftest import free_port
from http_fixtures import FileServer

from image_segmentation import ade20k, synthetic

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


@pytest.fixture
def small_disk(tmp_path):
    """Mounts a tmpfs of a given size (and options such as "ro") under tmp_path; unmounted after
    the test. Skips the test where mounting is not permitted."""
    points = []

    def mount(size: str, *options: str) -> Path:
        point = tmp_path / f"disk{len(points)}"
        point.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs", point],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        points.append(point)
        return point

    yield mount
    for point in points:
        subprocess.run(["umount", point], check=True)


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
    (out / "manifest.json").write_text("{not json")
    assert_refused(download(server, out), "is not readable JSON; remove")
    assert server.behaviour.seen == [] and os.listdir(out) == ["manifest.json"]


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
    assert sorted(os.listdir(out)) == [ARCHIVE, "manifest.json"]


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
    assert "free some space or choose another --output-dir/--archive-dir" in result.stderr
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
