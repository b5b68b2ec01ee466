"""Stage 1: fetch ADEChallengeData2016.zip, verify it, and extract it safely.

The MIT server is slow and flaky, so HTTP downloads resume with Range requests (also
across runs, from the `.partial` file a killed run leaves) and retry transient failures.
The archive is checked before anything is extracted, extraction happens in a hidden folder
that is renamed into place, and `manifest.json` is written before that rename: a dataset
folder never appears unless it is complete, and a rerun over a complete one does nothing.
"""

import argparse
import hashlib
import http.client
import json
import logging
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
from datetime import UTC, datetime
from pathlib import Path

from tqdm import tqdm

from image_segmentation import ade20k, files, storage
from image_segmentation.errors import StageError

log = logging.getLogger(__name__)

ARCHIVE_NAME = f"{ade20k.DATASET_DIR}.zip"
MANIFEST_NAME = "manifest.json"
EXTRACTING_PREFIX = f".{ade20k.DATASET_DIR}.extracting-"
MANIFEST_FORMAT = 1
_CHUNK = 1 << 20
_MAX_DELAY = 60.0
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class _Transient(Exception):
    """A failure worth retrying (5xx, 429, reset, timeout, short read)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def download_dataset(
    source: str,
    output_dir: Path,
    sha1: str | None = ade20k.OFFICIAL_SHA1,
    size: int | None = ade20k.OFFICIAL_SIZE,
    *,
    archive_dir: Path | None = None,
    keep_archive: bool = False,
    retries: int = 5,
    timeout: float = 60.0,
    backoff: float = 1.0,
) -> Path:
    """Make `output_dir/ADEChallengeData2016` plus `manifest.json`; return the dataset folder.

    `sha1`/`size` None skip that check. A downloaded archive lives in `archive_dir` (default
    `output_dir`) and is deleted after extraction unless `keep_archive`; a local source file
    is read in place and never deleted.
    """
    output_dir = Path(output_dir)
    dataset = output_dir / ade20k.DATASET_DIR
    sha1 = normalize_sha1(sha1)
    if existing_dataset_is_complete(output_dir, sha1):
        log.info("%s is complete (it matches %s); nothing to do", dataset, MANIFEST_NAME)
        return dataset
    output_dir.mkdir(parents=True, exist_ok=True)
    for stale in output_dir.glob(f"{EXTRACTING_PREFIX}*"):
        log.info("removing %s left by an interrupted run", stale)
        shutil.rmtree(stale)
    started = time.monotonic()
    local = source_kind(source) == "local"
    archive = fetch(
        source,
        Path(archive_dir or output_dir) / ARCHIVE_NAME,
        size=size,
        retries=retries,
        timeout=timeout,
        backoff=backoff,
    )
    try:
        actual_sha1 = verify_archive(archive, sha1, size)
    except StageError as error:
        if local:
            raise StageError(f"{error}; the file was left in place") from None
        archive.unlink()
        raise StageError(
            f"{error}; deleted the download, run again to fetch it afresh "
            "(or give the right --sha1/--size, or none, for a different archive)"
        ) from None
    manifest = {
        "format_version": MANIFEST_FORMAT,
        "source": public_source(source),
        "archive": archive.name,
        "sha1": actual_sha1,
        "sha1_verified": sha1 is not None,
        "size": archive.stat().st_size,
        "dataset_dir": ade20k.DATASET_DIR,
    }
    extract_archive(archive, output_dir, manifest, started)
    if not local and not keep_archive:
        archive.unlink()
    return dataset


def normalize_sha1(sha1: str | None) -> str | None:
    """Lower-case hex, or None for "do not check"; reject anything that is not a SHA-1."""
    if sha1 is None or sha1.strip().lower() in ("", "none"):
        return None
    sha1 = sha1.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{40}", sha1):
        raise StageError(f"--sha1 must be 40 hex digits or 'none', got {sha1!r}")
    return sha1


def existing_dataset_is_complete(output_dir: Path, sha1: str | None) -> bool:
    """True when a previous run finished here from the expected archive; raise on a conflict.

    A dataset folder without a matching manifest was not made (or was changed) by this stage:
    we refuse to touch it rather than delete someone's data.
    """
    dataset = output_dir / ade20k.DATASET_DIR
    if not dataset.exists():
        return False
    manifest_path = output_dir / MANIFEST_NAME
    remove_hint = f"remove {dataset} and {manifest_path} to download again"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        raise StageError(
            f"{dataset} exists but has no readable {MANIFEST_NAME}; {remove_hint}"
        ) from None
    if sha1 is not None and manifest.get("sha1") != sha1:
        raise StageError(
            f"{dataset} was extracted from an archive with SHA-1 {manifest.get('sha1')}, "
            f"not {sha1}; {remove_hint}"
        )
    if count_files(dataset) != manifest.get("counts"):
        raise StageError(f"{dataset} does not hold the files {manifest_path} lists; {remove_hint}")
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


def fetch(
    source: str, dest: Path, *, size: int | None, retries: int, timeout: float, backoff: float
) -> Path:
    """Return a local path holding the archive: downloaded to `dest`, or the local file."""
    kind = source_kind(source)
    if kind == "local":
        path = Path(source).expanduser()
        if not path.is_file():
            raise StageError(f"source file {path} does not exist")
        return path
    if dest.exists():
        log.info("reusing %s from an earlier run", dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    if kind == "gcs":
        return storage.download_file(source, dest)
    return fetch_http(source, dest, size=size, retries=retries, timeout=timeout, backoff=backoff)


def fetch_http(
    url: str, dest: Path, *, size: int | None, retries: int, timeout: float, backoff: float
) -> Path:
    """Download `url` to `dest` through `dest.partial`, resuming and retrying.

    `retries` bounds consecutive failed attempts; an attempt that received data resets the
    count, so a long download over a link that drops now and then still finishes.
    """
    partial = dest.with_name(dest.name + ".partial")
    failures = 0
    while True:
        before = partial.stat().st_size if partial.exists() else 0
        try:
            _http_attempt(url, partial, size, timeout)
            break
        except _Transient as error:
            after = partial.stat().st_size if partial.exists() else 0
            failures = 1 if after > before else failures + 1
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
    return dest


def _http_attempt(url: str, partial: Path, size: int | None, timeout: float) -> None:
    """One GET, continuing `partial` with a Range request when it holds bytes already."""
    offset = partial.stat().st_size if partial.exists() else 0
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
        received = offset if mode == "ab" else 0
        with open(partial, mode) as file, _progress(total, received, "download") as bar:
            while True:
                try:
                    chunk = response.read(_CHUNK)
                except (http.client.HTTPException, OSError) as error:
                    raise _Transient(f"connection lost after {received} bytes: {error}") from None
                if not chunk:
                    break
                file.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
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
    """Why a member must not be extracted (absolute, `..`, symlink), or None when it is safe."""
    name = info.filename
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        return "has an absolute path"
    if ".." in re.split(r"[\\/]", name):
        return "would land outside the target folder"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "is a symbolic link"
    return None


def extract_archive(archive_path: Path, output_dir: Path, manifest: dict, started: float) -> Path:
    """Extract into a hidden folder beside the target, check it, write the manifest, rename.

    Every member is checked before the first byte is written, so a malicious archive leaves
    nothing behind.
    """
    dataset = output_dir / ade20k.DATASET_DIR
    try:
        archive = zipfile.ZipFile(archive_path)
    except zipfile.BadZipFile:
        raise StageError(f"{archive_path} is not a zip archive") from None
    with archive:
        members = archive.infolist()
        for info in members:
            if reason := unsafe_member(info):
                raise StageError(f"refusing to extract {archive_path}: {info.filename!r} {reason}")
        work = Path(tempfile.mkdtemp(prefix=EXTRACTING_PREFIX, dir=output_dir))
        try:
            total = sum(info.file_size for info in members)
            with _progress(total, 0, "extract") as bar:
                for info in members:
                    archive.extract(info, work)
                    bar.update(info.file_size)
            counts = check_layout(work / ade20k.DATASET_DIR)
            manifest = {
                **manifest,
                "counts": counts,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "seconds": round(time.monotonic() - started, 1),
            }
            files.write_json(output_dir / MANIFEST_NAME, manifest)
            (work / ade20k.DATASET_DIR).rename(dataset)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    log.info("extracted %s: %s", dataset, json.dumps(manifest["counts"]))
    return dataset


def check_layout(dataset: Path) -> dict[str, dict[str, int]]:
    """Require images/ and annotations/ for both splits; return the file counts."""
    missing = [
        f"{kind}/{split}/"
        for kind in ("images", "annotations")
        for split in ade20k.SPLITS
        if not (dataset / kind / split).is_dir()
    ]
    if missing:
        raise StageError(
            f"the archive does not hold the {ade20k.DATASET_DIR} layout: "
            f"missing {', '.join(f'{ade20k.DATASET_DIR}/{path}' for path in missing)}"
        )
    return count_files(dataset)


def count_files(dataset: Path) -> dict[str, dict[str, int]]:
    """Images (.jpg) and annotations (.png) per split, as recorded in the manifest."""
    return {
        split: {
            "images": sum(1 for _ in (dataset / "images" / split).glob("*.jpg")),
            "annotations": sum(1 for _ in (dataset / "annotations" / split).glob("*.png")),
        }
        for split in ade20k.SPLITS
    }


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "An interrupted download resumes on the next run from the .partial file in ARCHIVE_DIR. "
        "A zip that fails the size or SHA-1 check is deleted (a local --source is left in "
        "place) and nothing is extracted. A rerun over a complete dataset does nothing."
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
        help="gets ADEChallengeData2016/ in its original layout and manifest.json",
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
        help="where the zip and its .partial file go (default: OUTPUT_DIR); local disk is "
        "best when OUTPUT_DIR is a mounted bucket",
    )
    parser.add_argument(
        "--keep-archive",
        action="store_true",
        help="keep the downloaded zip after extraction (a local --source is never deleted)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=5,
        help="consecutive failed attempts to retry with exponential backoff; an attempt "
        "that received data resets the count (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds to wait for the server to connect or send data (default: %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    sha1 = normalize_sha1(args.sha1)
    dataset = download_dataset(
        args.source,
        args.output_dir,
        sha1,
        resolve_size(args.size, sha1),
        archive_dir=args.archive_dir,
        keep_archive=args.keep_archive,
        retries=args.retries,
        timeout=args.timeout,
    )
    print(dataset)
    return 0
