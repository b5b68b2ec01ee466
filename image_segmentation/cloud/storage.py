"""Cloud Storage access shared by the stages that talk to remote storage (download, upload).

Every call goes through the official client with its transient-error retry (429, 5xx,
connection resets), each retry logged with the time left before it gives up; downloads resume
from the last byte received and land in place only once complete and checksum-verified by the
client.
"""

import base64
import contextlib
import functools
import hashlib
import logging
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import google.auth.exceptions
import google_crc32c
from google.api_core import exceptions as api_exceptions
from google.api_core.retry import Retry
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.cloud.storage.retry import DEFAULT_RETRY

from image_segmentation import files
from image_segmentation.errors import StageError

log = logging.getLogger(__name__)


class LoggedRetry(Retry):
    """A Retry that logs each failed attempt with the time left before it gives up, which
    counts from the request's first attempt: a stage that waits on an unreachable Cloud
    Storage says so, instead of staying silent for minutes."""

    def __call__(self, func, on_error=None):
        @functools.wraps(func)
        def call_logging_retries(*args, **kwargs):
            give_up_at = time.monotonic() + self.timeout

            def log_failure(error: Exception) -> None:
                log.warning(
                    "Cloud Storage request failed (%s); %.1f s left to retry",
                    root_cause(error),
                    give_up_at - time.monotonic(),
                )
                if on_error is not None:
                    on_error(error)

            return Retry.__call__(self, func, on_error=log_failure)(*args, **kwargs)

        return call_logging_retries


# The client's retry (transient errors only, its predicate) with a total budget long enough
# for a big download that fails late.
RETRY = LoggedRetry(predicate=DEFAULT_RETRY._predicate, timeout=900.0)

EMULATOR_PROJECT = "emulator-project"
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")
_HASH_BLOCK = 1 << 20


def is_gcs_uri(text: str) -> bool:
    """True for `gs://...` text, so stages can accept a local path or a bucket URI."""
    return str(text).startswith("gs://")


def split_gcs_uri(uri: str) -> tuple[str, str]:
    """`gs://bucket/some/name` -> ("bucket", "some/name"); the name may be empty."""
    if not is_gcs_uri(uri):
        raise StageError(f"not a gs:// URI: {uri!r}")
    bucket, _, name = str(uri)[len("gs://") :].partition("/")
    if not _BUCKET_NAME.fullmatch(bucket):
        raise StageError(f"bad bucket name {bucket!r} in {uri!r}")
    return bucket, name


def gcs_client() -> storage.Client:
    """A client with default credentials, or an anonymous one when STORAGE_EMULATOR_HOST is set.

    The emulator needs no credentials, and a placeholder project avoids a metadata-server
    lookup that would hang offline.
    """
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        return storage.Client(project=EMULATOR_PROJECT, credentials=AnonymousCredentials())
    return storage.Client()


def file_checksums(path: Path) -> dict[str, str]:
    """sha256 (hex) plus crc32c and md5 in GCS's base64 form, from one read of the file."""
    sha256, md5, crc32c = hashlib.sha256(), hashlib.md5(), google_crc32c.Checksum()
    with open(path, "rb") as file:
        while block := file.read(_HASH_BLOCK):
            sha256.update(block)
            md5.update(block)
            crc32c.update(block)
    return {
        "sha256": sha256.hexdigest(),
        "crc32c": base64.b64encode(crc32c.digest()).decode("ascii"),
        "md5": base64.b64encode(md5.digest()).decode("ascii"),
    }


def download_file(
    uri: str, dest: Path, client: storage.Client | None = None, retry: Retry = RETRY
) -> Path:
    """Stream one object to `dest` (a file path, or an existing folder to put it in).

    The bytes go to a temporary file beside `dest` that is renamed into place after the
    client has checked them against the object's crc32c/md5, so `dest` is never partial.
    Call it inside `explained_errors` to turn a missing login into a one-line error.
    """
    bucket_name, name = split_gcs_uri(uri)
    if not name or name.endswith("/"):
        raise StageError(f"{uri} names a folder, not an object")
    dest = Path(dest)
    if dest.is_dir():
        dest = dest / name.rsplit("/", 1)[-1]
    dest.parent.mkdir(parents=True, exist_ok=True)
    client = client or gcs_client()
    blob = client.bucket(bucket_name).blob(name)

    def write(part: Path) -> None:
        with open(part, "wb") as file:
            blob.download_to_file(file, retry=retry, checksum="auto")

    try:
        files.atomic_write(dest, write)
    except api_exceptions.NotFound as error:
        raise StageError(f"{uri} does not exist") from error
    log.info("downloaded %s -> %s (%d bytes)", uri, dest, dest.stat().st_size)
    return dest


def object_size(uri: str, client: storage.Client | None = None, retry: Retry = RETRY) -> int:
    """The size in bytes of the object `uri`, to check for room before downloading it."""
    bucket_name, name = split_gcs_uri(uri)
    blob = (client or gcs_client()).bucket(bucket_name).get_blob(name, retry=retry)
    if blob is None:
        raise StageError(f"{uri} does not exist")
    return blob.size


def list_objects(uri: str, client: storage.Client | None = None, retry: Retry = RETRY) -> list[str]:
    """The gs:// URIs of the objects under a prefix (`gs://bucket/folder/`), sorted."""
    bucket_name, prefix = split_gcs_uri(uri)
    client = client or gcs_client()
    try:
        blobs = client.list_blobs(bucket_name, prefix=prefix, retry=retry)
        return sorted(f"gs://{bucket_name}/{blob.name}" for blob in blobs)
    except api_exceptions.NotFound as error:
        raise StageError(f"bucket gs://{bucket_name} does not exist") from error


@contextlib.contextmanager
def explained_errors(uri: str) -> Iterator[None]:
    """Cloud Storage failures inside the block as one-line errors; a missing login says how to
    log in, since that is the usual first-run mistake."""
    try:
        yield
    except google.auth.exceptions.GoogleAuthError as error:
        raise StageError(
            f"cannot use {uri}: no usable Google Cloud credentials ({type(error).__name__}); "
            "log in with `gcloud auth application-default login`, set "
            "GOOGLE_APPLICATION_CREDENTIALS to a service account key file, or run on Vertex AI "
            "with a service account"
        ) from None
    except api_exceptions.GoogleAPICallError as error:
        raise StageError(f"cannot use {uri}: {error}") from None
    except api_exceptions.RetryError as error:
        raise StageError(
            f"gave up on {uri}: {error.message}; last error: {root_cause(error)}"
        ) from None


def root_cause(error: BaseException) -> BaseException:
    """The innermost error of a chain: `[Errno 111] Connection refused` rather than the
    client's wrappers around it."""
    while error.__cause__ or error.__context__:
        error = error.__cause__ or error.__context__
    return error
