"""Stage 1: fetch ADEChallengeData2016.zip and verify it; the verified zip is the output.

The output folder gets the zip itself, not extracted, and then `manifest.json`, written last as
the completion marker. On Vertex AI the output is a Cloud Storage FUSE mount, where every file
is an object, appending rewrites one and a folder cannot be renamed: so the zip is downloaded to
a scratch folder on local disk and copied into the output once (elsewhere the scratch folder is
the output folder itself, and nothing is copied).

The MIT server is slow and flaky, so HTTP downloads resume with Range requests (also across
runs, from the `.partial` file a killed run leaves in the scratch folder) and retry transient
failures, including a server that keeps the connection alive with a trickle of bytes. The zip is
accepted only after its size and SHA-1 match and it opens as a zip whose members are all safe
to extract (no absolute path, `..` or symlink), declare sane sizes (no zip bomb), pass their
CRC-32 check and hold the ADEChallengeData2016 layout. A zip that fails a check is deleted, also
one left by an earlier run, so a bad file is never reused. A rerun over a complete output does
nothing. Folders are checked (writable, enough free space) before anything is downloaded, and
those this run created are removed again if it fails before writing anything into them.
"""

import argparse
import contextlib
import errno
import hashlib
import http.client
import json
import logging
import math
import os
import re
import shutil
import stat
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from tqdm import tqdm

from image_segmentation import ade20k, files, storage
from image_segmentation.errors import StageError

log = logging.getLogger(__name__)

ARCHIVE_NAME = ade20k.ARCHIVE_NAME
MANIFEST_NAME = ade20k.MANIFEST_NAME
MANIFEST_FORMAT = 2  # 1: the zip was extracted into ADEChallengeData2016/
# ADE20K's JPEG and PNG files barely compress (the whole zip's ratio is about 1.0): members that
# claim more in total than this many times the zip's size are a zip bomb.
MAX_COMPRESSION_RATIO = 10
# Slower than this, averaged over --timeout seconds, a download counts as stalled and is retried.
MIN_BYTES_PER_SECOND = 1024
_CHUNK = 1 << 20
_MAX_DELAY = 60.0
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# What zipfile raises for a damaged or unsupported member, besides BadZipFile.
_DAMAGED_MEMBER = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    NotImplementedError,
    RuntimeError,
    ValueError,
    OSError,
)


class _Transient(Exception):
    """A failure worth retrying (5xx, 429, reset, timeout, short read)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class _Stalled(_Transient):
    """Bytes still arrive, too slowly to count as progress: retried, but never resets the count."""


def download_dataset(
    source: str,
    output_dir: Path,
    sha1: str | None = ade20k.OFFICIAL_SHA1,
    size: int | None = ade20k.OFFICIAL_SIZE,
    *,
    archive_dir: Path | None = None,
    retries: int = 5,
    timeout: float = 60.0,
    backoff: float = 1.0,
) -> Path:
    """Put the verified zip in `output_dir`, then `manifest.json`; return the zip's path.

    `sha1`/`size` None skip that check. A download goes to `archive_dir` (see `archive_folder`)
    and is deleted there once copied; a local source file is copied and never deleted.
    """
    output_dir = Path(output_dir)
    target = output_dir / ARCHIVE_NAME
    sha1 = normalize_sha1(sha1)
    local = local_source(source)
    if existing_output_is_complete(output_dir, sha1):
        log.info("%s is complete (it matches %s); nothing to do", target, MANIFEST_NAME)
        return target
    started = time.monotonic()
    with (
        usable_folder(output_dir, "--output-dir"),
        archive_folder(archive_dir, output_dir) as folder,
    ):
        check_free_space(space_needed(local, folder, output_dir, size))
        with disk_full_error(folder / ARCHIVE_NAME, size):
            archive, actual_sha1, counts = verified_archive(
                source, local, folder, sha1, size, retries=retries, timeout=timeout, backoff=backoff
            )
        if not (target.exists() and os.path.samefile(archive, target)):
            copy_into_output(archive, target)
            if local is None:
                archive.unlink()
    manifest = {
        "format_version": MANIFEST_FORMAT,
        "source": public_source(source),
        "archive": ARCHIVE_NAME,
        "sha1": actual_sha1,
        "sha1_verified": sha1 is not None,
        "size": target.stat().st_size,
        "counts": counts,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - started, 1),
    }
    with disk_full_error(output_dir / MANIFEST_NAME, None):
        files.write_json(output_dir / MANIFEST_NAME, manifest)
    log.info("%s: %s", target, json.dumps(counts))
    return target


@contextlib.contextmanager
def archive_folder(archive_dir: Path | None, output_dir: Path) -> Iterator[Path]:
    """Where the zip is downloaded: `archive_dir` if given, else `output_dir`, unless that is a
    FUSE mount (Vertex AI's /gcs/): then a temporary folder on local disk, removed afterwards."""
    if archive_dir is not None:
        with usable_folder(Path(archive_dir), "--archive-dir"):
            yield Path(archive_dir)
    elif ade20k.on_fuse_mount(output_dir):
        with tempfile.TemporaryDirectory(prefix="ade20k-archive-") as folder:
            yield Path(folder)
    else:
        yield output_dir


@contextlib.contextmanager
def usable_folder(path: Path, option: str) -> Iterator[None]:
    """Make `path` if missing and check that it can be written, before any download; on the
    way out remove the folders made here that are still empty, so a failed run leaves none."""
    made = [folder for folder in (path, *path.parents) if not folder.exists()]  # deepest first
    try:
        if path.exists() and not path.is_dir():
            raise StageError(f"{option} {path} is a file, not a folder")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StageError(f"cannot create {option} {path}: {error.strerror}") from None
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            raise StageError(f"{option} {path} is on a read-only filesystem")
        if not os.access(path, os.W_OK | os.X_OK):
            raise StageError(f"{option} {path} is not writable by this user")
        yield
    finally:
        for folder in made:
            try:
                folder.rmdir()
            except OSError:  # not empty (or never made): everything above it stays too
                break


def partial_path(dest: Path) -> Path:
    """Where a download to `dest` collects its bytes until complete; a rerun resumes from it."""
    return dest.with_name(dest.name + ".partial")


def _size(path: Path) -> int:
    """The size of a file that may not exist (0 then)."""
    return path.stat().st_size if path.exists() else 0


def space_needed(
    local: Path | None, folder: Path, output_dir: Path, size: int | None
) -> list[tuple[Path, int]]:
    """The bytes still to be written into each folder, when the archive's size is known: the
    rest of the download, then the copy into the output (net of what those files hold now)."""
    expected = local.stat().st_size if local is not None else size
    if expected is None:
        return []
    target = output_dir / ARCHIVE_NAME
    if local is not None:
        copied = not (target.exists() and os.path.samefile(local, target))
        return [(output_dir, expected - _size(target))] if copied else []
    needs = []
    download = folder / ARCHIVE_NAME
    if not download.exists():
        needs.append((folder, expected - _size(partial_path(download))))
    if not os.path.samefile(folder, output_dir):
        needs.append((output_dir, expected - _size(target)))
    return needs


def check_free_space(needs: list[tuple[Path, int]]) -> None:
    """Refuse to start when a filesystem has less free space than the bytes bound for it.

    Needs on one filesystem add up: the download stays until its copy in the output is complete.
    """
    per_device: dict[int, tuple[Path, int]] = {}
    for folder, amount in needs:
        device = folder.stat().st_dev
        first, total = per_device.get(device, (folder, 0))
        per_device[device] = (first, total + amount)
    for folder, amount in per_device.values():
        free = shutil.disk_usage(folder).free
        if amount > free:
            raise StageError(
                f"not enough space in {folder}: {ARCHIVE_NAME} needs {amount} bytes there, "
                f"{free} are free; free some space or choose another --output-dir/--archive-dir"
            )


@contextlib.contextmanager
def disk_full_error(path: Path, needed: int | None) -> Iterator[None]:
    """Turn a full disk (or a file size limit) while writing `path` into one clear error."""
    try:
        yield
    except OSError as error:
        if error.errno not in _DISK_FULL:
            raise
        free = shutil.disk_usage(path.parent).free
        need = f", {needed} needed" if needed is not None else ""
        raise StageError(
            f"cannot write {path}: {error.strerror} ({free} bytes free in {path.parent}{need}); "
            "free some space or choose another folder, then run again"
        ) from None


def copy_into_output(archive: Path, target: Path) -> None:
    """Copy the verified zip into the output in place (on a FUSE mount a rename is a copy too);
    an incomplete copy is removed, never left to look like the archive."""
    log.info("copying %s to %s", archive, target)
    try:
        with disk_full_error(target, archive.stat().st_size):
            shutil.copyfile(archive, target)
    except BaseException:
        target.unlink(missing_ok=True)
        raise


def verified_archive(
    source: str, local: Path | None, folder: Path, sha1: str | None, size: int | None, **http
) -> tuple[Path, str, dict[str, dict[str, int]]]:
    """The checked archive, its SHA-1 and counts: the local file, or a download into `folder`.

    A download that fails a check is deleted. So is a zip an earlier run left in `folder`
    (killed before its checks ended) that fails one; it is then downloaded afresh.
    """
    if local is not None:
        try:
            return local, *validate(local, sha1, size)
        except StageError as error:
            raise StageError(f"{error}; the file was left in place") from None
    dest = folder / ARCHIVE_NAME
    if dest.exists():
        log.info("checking %s from an earlier run", dest)
        try:
            return dest, *validate(dest, sha1, size)
        except StageError as error:
            log.warning("deleting %s from an earlier run and downloading afresh: %s", dest, error)
            dest.unlink()
    fetch(source, dest, size=size, **http)
    try:
        return dest, *validate(dest, sha1, size)
    except StageError as error:
        dest.unlink()
        raise StageError(
            f"{error}; deleted the download, run again to fetch it afresh "
            "(or give the right --sha1/--size, or none, for a different archive)"
        ) from None


def validate(path: Path, sha1: str | None, size: int | None) -> tuple[str, dict]:
    """The archive's SHA-1 and counts, once every check passed; else a StageError."""
    return verify_archive(path, sha1, size), check_archive(path)


def normalize_sha1(sha1: str | None) -> str | None:
    """Lower-case hex, or None for "do not check"; reject anything that is not a SHA-1."""
    if sha1 is None or sha1.strip().lower() in ("", "none"):
        return None
    sha1 = sha1.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{40}", sha1):
        raise StageError(f"--sha1 must be 40 hex digits or 'none', got {sha1!r}")
    return sha1


def existing_output_is_complete(output_dir: Path, sha1: str | None) -> bool:
    """True when a previous run finished here with the expected archive; raise on a conflict.

    A manifest that does not describe this stage's output was not written by it (or by this
    version of it): we refuse to touch the folder rather than overwrite someone's data.
    """
    manifest_path = output_dir / MANIFEST_NAME
    if not manifest_path.exists():
        return False
    archive = output_dir / ARCHIVE_NAME
    remove_hint = f"remove {manifest_path} to download again"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        raise StageError(f"{manifest_path} is not readable JSON; {remove_hint}") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != MANIFEST_FORMAT:
        raise StageError(
            f"{manifest_path} is not a manifest of this stage's format {MANIFEST_FORMAT} "
            f"(format 1 came with an extracted {ade20k.DATASET_DIR}/); {remove_hint}"
        )
    if sha1 is not None and manifest.get("sha1") != sha1:
        raise StageError(
            f"{manifest_path} records an archive with SHA-1 {manifest.get('sha1')}, not {sha1}; "
            f"{remove_hint}"
        )
    if not archive.is_file() or archive.stat().st_size != manifest.get("size"):
        raise StageError(
            f"{archive} is not the {manifest.get('size')}-byte file {manifest_path} lists; "
            f"{remove_hint}"
        )
    return True


def source_kind(source: str) -> str:
    """'http', 'gcs' or 'local'; other URL schemes are refused."""
    if storage.is_gcs_uri(source):
        return "gcs"
    scheme = urllib.parse.urlsplit(source).scheme.lower()
    if scheme in ("http", "https"):
        return "http"
    if re.match(r"[a-z][a-z0-9+.-]*://", source, re.IGNORECASE):
        raise StageError(f"unsupported source {source!r}: give an http(s) URL, gs:// or a path")
    return "local"


def public_source(source: str) -> str:
    """The source without user info or query, so a signed URL's token never reaches a log."""
    if source_kind(source) != "http":
        return source
    parts = urllib.parse.urlsplit(source)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def local_source(source: str) -> Path | None:
    """The source file when `source` is a local path (checked before any folder is made), None
    for a URL."""
    if source_kind(source) != "local":
        return None
    path = Path(source).expanduser()
    if not path.is_file():
        raise StageError(f"source {path} {'is not a file' if path.exists() else 'does not exist'}")
    return path


def fetch(
    source: str, dest: Path, *, size: int | None, retries: int, timeout: float, backoff: float
) -> None:
    """Download `source` (gs:// or http(s)) to `dest`."""
    if storage.is_gcs_uri(source):
        fetch_gcs(source, dest)
    else:
        fetch_http(source, dest, size=size, retries=retries, timeout=timeout, backoff=backoff)


def fetch_gcs(uri: str, dest: Path) -> None:
    """Download a gs:// object; a missing or refused login is told with how to log in."""
    with storage.explained_errors(uri):
        storage.download_file(uri, dest)


def fetch_http(
    url: str, dest: Path, *, size: int | None, retries: int, timeout: float, backoff: float
) -> None:
    """Download `url` to `dest` through `dest.partial`, resuming and retrying.

    `retries` bounds consecutive failed attempts; an attempt that received data resets the
    count (unless it stalled), so a long download over a link that drops now and then still
    finishes, and a server that only trickles does not hold it forever.
    """
    partial = partial_path(dest)
    failures = 0
    while True:
        before = _size(partial)
        try:
            _http_attempt(url, partial, size, timeout)
            break
        except _Transient as error:
            after = _size(partial)
            progressed = after > before and not isinstance(error, _Stalled)
            failures = 1 if progressed else failures + 1
            if failures > retries:
                raise StageError(
                    f"download of {public_source(url)} failed {failures} times in a row, "
                    f"last: {error}; run again to resume from byte {after}"
                ) from None
            delay = min(backoff * 2 ** (failures - 1), _MAX_DELAY)
            if error.retry_after is not None:
                delay = min(max(delay, error.retry_after), _MAX_DELAY)
            log.warning("%s; retry %d/%d in %.1f s", error, failures, retries, delay)
            time.sleep(delay)
    partial.replace(dest)


def _http_attempt(url: str, partial: Path, size: int | None, timeout: float) -> None:
    """One GET, continuing `partial` with a Range request when it holds bytes already.

    The socket timeout bounds each wait for bytes; a server that sends a byte now and then never
    hits it, so the rate is also checked over every `timeout` seconds.
    """
    offset = _size(partial)
    if size is not None and offset > size:
        log.warning("%s is larger than the expected %d bytes; starting over", partial, size)
        partial.unlink()
        offset = 0
    if size is not None and offset == size:
        return  # a killed run had received every byte
    headers = {"User-Agent": "image-segmentation-download"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=timeout
        )
    except urllib.error.HTTPError as error:
        _raise_for_status(error, url, partial, offset)
        return  # the partial file was already complete
    except (http.client.HTTPException, OSError) as error:  # URLError, reset, timeout
        reason = getattr(error, "reason", error)
        raise _Transient(f"cannot reach {public_source(url)}: {reason}") from None
    with response:
        mode, total = _plan_write(response, partial, offset)
        if size is not None and total is not None and total != size:
            raise StageError(
                f"{public_source(url)} is {total} bytes, expected {size}: "
                "a different file (give the right --size/--sha1, or none)"
            )
        if total is not None:  # the whole file replaces or completes the partial one
            check_free_space([(partial.parent, total - offset)])
        received = offset if mode == "ab" else 0
        window_start, window_bytes = time.monotonic(), 0
        with open(partial, mode) as file, _progress(total, received, "download") as bar:
            while True:
                try:
                    chunk = response.read1(_CHUNK)  # what one recv gives, so the loop sees time
                except (http.client.HTTPException, OSError) as error:
                    raise _Transient(f"connection lost after {received} bytes: {error}") from None
                if not chunk:
                    break
                file.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
                window_bytes += len(chunk)
                elapsed = time.monotonic() - window_start
                if elapsed >= timeout:
                    if window_bytes < MIN_BYTES_PER_SECOND * elapsed:
                        raise _Stalled(
                            f"download stalled: {window_bytes} bytes in {elapsed:.1f} s, under "
                            f"{MIN_BYTES_PER_SECOND} bytes/s"
                        )
                    window_start, window_bytes = time.monotonic(), 0
    if total is not None and received < total:
        raise _Transient(f"connection closed after {received} of {total} bytes")


def _raise_for_status(error: urllib.error.HTTPError, url: str, partial: Path, offset: int) -> None:
    """Sort an HTTP error status into retry, restart, done, or a final StageError."""
    error.close()
    if error.code == 416 and offset:
        match = re.fullmatch(r"bytes \*/(\d+)", error.headers.get("Content-Range", ""))
        if match and int(match.group(1)) == offset:
            return
        partial.unlink()
        raise _Transient("server refused to resume (HTTP 416); starting over")
    if error.code == 429 or error.code >= 500:
        retry_after = error.headers.get("Retry-After", "")
        raise _Transient(
            f"HTTP {error.code} {error.reason}",
            float(retry_after) if retry_after.isdigit() else None,
        )
    raise StageError(f"HTTP {error.code} {error.reason} for {public_source(url)}")


def _plan_write(
    response: http.client.HTTPResponse, partial: Path, offset: int
) -> tuple[str, int | None]:
    """File mode ("ab" to continue, "wb" to start over) and the full size, from the reply."""
    length = response.headers.get("Content-Length")
    if response.status == 206:
        match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
        if not match or int(match.group(1)) != offset:
            partial.unlink()
            raise _Transient("server answered a different range; starting over")
        total = match.group(3)
        return "ab", int(total) if total != "*" else None
    if offset:
        log.warning("server ignored the Range request (status %d); starting over", response.status)
    return "wb", int(length) if length is not None else None


def _progress(total: int | None, initial: int, desc: str) -> tqdm:
    """A byte progress bar on stderr; a line every 30 s when stderr is a log, not a terminal."""
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        mininterval=0.5 if sys.stderr.isatty() else 30.0,
    )


def file_sha1(path: Path) -> str:
    """SHA-1 of a file, read in blocks so a 1 GB archive needs no 1 GB of memory."""
    digest = hashlib.sha1()
    with open(path, "rb") as file:
        while block := file.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def verify_archive(path: Path, sha1: str | None, size: int | None) -> str:
    """Check size (cheap) then SHA-1; return the actual SHA-1 or raise StageError."""
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        raise StageError(f"{path} is {actual_size} bytes, expected {size}")
    actual = file_sha1(path)
    if sha1 is not None and actual != sha1:
        raise StageError(f"SHA-1 of {path} is {actual}, expected {sha1}")
    log.info("%s: %d bytes, SHA-1 %s%s", path, actual_size, actual, "" if sha1 else " (unchecked)")
    return actual


def unsafe_member(info: zipfile.ZipInfo) -> str | None:
    """Why a member would be unsafe to extract (absolute, `..`, symlink), or None when safe."""
    name = info.filename
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        return "has an absolute path"
    if ".." in re.split(r"[\\/]", name):
        return "would land outside the target folder"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "is a symbolic link"
    return None


def check_archive(path: Path) -> dict[str, dict[str, int]]:
    """Check the zip without extracting it; return the image and annotation counts per split.

    The artifact is meant to be unzipped or read by later steps, so a member that would be
    unsafe to extract is refused here, as is a zip bomb, a damaged member or a zip without the
    ADEChallengeData2016 layout. Cheap checks of the central directory come first.
    """
    try:
        source = ade20k.ZipSource(path)
    except NotImplementedError as error:  # e.g. a zip split over several files
        raise StageError(f"{path} is not a zip archive this tool can read: {error}") from None
    with source:
        members = source.archive.infolist()
        for info in members:
            if reason := unsafe_member(info):
                raise StageError(f"refusing {path}: member {info.filename!r} {reason}")
        check_declared_sizes(path, members)
        if missing := source.missing_folders():
            raise StageError(
                f"the archive does not hold the {ade20k.DATASET_DIR} layout: missing "
                + ", ".join(f"{ade20k.DATASET_DIR}/{folder}/" for folder in missing)
            )
        check_members_intact(path, source.archive)
        return source.count_files()


def check_declared_sizes(path: Path, members: list[zipfile.ZipInfo]) -> None:
    """Refuse a zip bomb from the sizes its members declare, before reading any of them.

    zipfile never inflates a member past its declared size, so these limits also bound the
    reading that checks the members, and prepare's reading of them.
    """
    for info in members:
        if info.file_size > ade20k.MAX_MEMBER_BYTES:
            raise StageError(
                f"refusing {path}: member {info.filename!r} claims {info.file_size} bytes, "
                f"more than {ade20k.MAX_MEMBER_BYTES} (a zip bomb?)"
            )
    declared, actual = sum(info.file_size for info in members), path.stat().st_size
    if declared > MAX_COMPRESSION_RATIO * actual:
        raise StageError(
            f"refusing {path}: its members claim {declared} bytes, {declared / actual:.0f} times "
            f"its size, more than {MAX_COMPRESSION_RATIO} (a zip bomb?)"
        )


def check_members_intact(path: Path, archive: zipfile.ZipFile) -> None:
    """Read every member through zipfile, which checks its CRC-32; nothing is written to disk."""
    for info in archive.infolist():
        try:
            with archive.open(info) as member:
                while member.read(_CHUNK):
                    pass
        except _DAMAGED_MEMBER as error:
            raise StageError(f"{path} is damaged: member {info.filename!r}: {error}") from None


def resolve_size(text: str, sha1: str | None) -> int | None:
    """`--size` as bytes: "auto" is the official size for the official SHA-1, else no check."""
    text = text.strip().lower()
    if text == "auto":
        return ade20k.OFFICIAL_SIZE if sha1 == ade20k.OFFICIAL_SHA1 else None
    if text in ("", "none"):
        return None
    if not text.isdigit() or int(text) == 0:
        raise StageError(f"--size must be a positive byte count, 'auto' or 'none', got {text!r}")
    return int(text)


def positive_seconds(text: str) -> float:
    """An argparse type: a finite number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, got {text!r}")
    return value


def retry_count(text: str) -> int:
    """An argparse type: a whole number of retries, 0 or more."""
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"must be a whole number, 0 or more, got {text!r}")
    return int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "An interrupted download resumes on the next run from the .partial file in ARCHIVE_DIR. "
        "A zip that fails a check is deleted (a local --source is left in place) and nothing is "
        "written to OUTPUT_DIR. Nothing is extracted. A rerun over a complete output does "
        "nothing. The folders must be writable and have room for the zip before it starts."
    )
    parser.add_argument(
        "--source",
        default=ade20k.OFFICIAL_URL,
        help="where ADEChallengeData2016.zip is: an http(s) URL, a gs://bucket/object mirror "
        "or a local file (default: the official MIT URL)",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        required=True,
        help=f"gets the verified {ARCHIVE_NAME} (not extracted) and, last, {MANIFEST_NAME}: "
        "the source, SHA-1, size and image counts per split",
    )
    parser.add_argument(
        "--sha1",
        default=ade20k.OFFICIAL_SHA1,
        help="expected SHA-1 of the zip; the official one by default, also for a mirror, since "
        "a mirror holds the same file; 'none' skips the check (the manifest still records the "
        "actual SHA-1)",
    )
    parser.add_argument(
        "--size",
        default="auto",
        help="expected size of the zip in bytes, compared with the server's length before "
        f"downloading; 'auto' (default) means {ade20k.OFFICIAL_SIZE} when --sha1 is the "
        "official one, else no check; 'none' skips it",
    )
    parser.add_argument(
        "--archive-dir",
        type=Path,
        help="scratch folder the zip is downloaded to, through a .partial file a rerun resumes "
        "from, before it is copied into OUTPUT_DIR (default: OUTPUT_DIR itself, or a temporary "
        "folder when OUTPUT_DIR is on a FUSE mount such as Vertex AI's /gcs/)",
    )
    parser.add_argument(
        "--retries",
        type=retry_count,
        default=5,
        help="consecutive failed attempts to retry with exponential backoff; an attempt "
        "that received data resets the count, unless it stalled (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=positive_seconds,
        default=60.0,
        help="seconds to wait for the server to connect or send data; a download that gets "
        f"less than {MIN_BYTES_PER_SECOND} bytes/s over that long has stalled and is retried "
        "(default: %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    sha1 = normalize_sha1(args.sha1)
    archive = download_dataset(
        args.source,
        args.output_dir,
        sha1,
        resolve_size(args.size, sha1),
        archive_dir=args.archive_dir,
        retries=args.retries,
        timeout=args.timeout,
    )
    print(archive)
    return 0
