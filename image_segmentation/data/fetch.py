"""Fetching the dataset zip to local disk: over HTTP(S), resumable, or from Cloud Storage.

The MIT server is slow and flaky, so HTTP downloads resume with Range requests (also across
runs, from the `.partial` file a killed run leaves) and retry transient failures, including a
server that keeps the connection alive with a trickle of bytes.
"""

import http.client
import logging
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from image_segmentation import disk
from image_segmentation.cloud import storage
from image_segmentation.errors import StageError

log = logging.getLogger(__name__)

# Slower than this, averaged over --timeout seconds, a download counts as stalled and is retried.
MIN_BYTES_PER_SECOND = 1024
_CHUNK = 1 << 20
_MAX_DELAY = 60.0
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class _Transient(Exception):
    """A failure worth retrying (5xx, 429, reset, timeout, short read)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class _Stalled(_Transient):
    """Bytes still arrive, too slowly to count as progress: retried, but never resets the count."""


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


def partial_path(dest: Path) -> Path:
    """Where a download to `dest` collects its bytes until complete; a rerun resumes from it."""
    return dest.with_name(dest.name + ".partial")


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
        before = disk.file_size(partial)
        try:
            _http_attempt(url, partial, size, timeout)
            break
        except _Transient as error:
            after = disk.file_size(partial)
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
    offset = disk.file_size(partial)
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
            disk.check_free_space(
                [(partial.parent, total - offset)], partial.name.removesuffix(".partial")
            )
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
