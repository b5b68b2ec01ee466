"""Cloud Storage access shared by the stages that talk to remote storage (download, upload).

Every call goes through the official client with its transient-error retry (429, 5xx,
connection resets); downloads resume from the last byte received and land in place only
once complete and checksum-verified by the client.
"""

import base64
import hashlib
import logging
import os
import re
import tempfile
from pathlib import Path

import google_crc32c
from google.api_core import exceptions as api_exceptions
from google.api_core.retry import Retry
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.cloud.storage.retry import DEFAULT_RETRY

from image_segmentation.errors import StageError

log = logging.getLogger(__name__)

# The client's retry (transient errors only) with a total budget long enough for a big
# download that fails late: the deadline counts from the first attempt.
RETRY = DEFAULT_RETRY.with_timeout(900.0)

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
    with tempfile.NamedTemporaryFile(
        dir=dest.parent, prefix=f".{dest.name}.", suffix=".part", delete=False
    ) as part:
        part_path = Path(part.name)
        try:
            blob.download_to_file(part, retry=retry, checksum="auto")
        except api_exceptions.NotFound as error:
            part_path.unlink()
            raise StageError(f"{uri} does not exist") from error
        except BaseException:
            part_path.unlink()
            raise
    part_path.replace(dest)
    log.info("downloaded %s -> %s (%d bytes)", uri, dest, dest.stat().st_size)
    return dest


def download_dir(
    uri_prefix: str, dest: Path, client: storage.Client | None = None, retry: Retry = RETRY
) -> Path:
    """Copy every object under `uri_prefix` into `dest`, keeping the paths below the prefix."""
    bucket_name, prefix = split_gcs_uri(uri_prefix)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    client = client or gcs_client()
    blobs = [
        blob
        for blob in client.list_blobs(bucket_name, prefix=prefix, retry=retry)
        if not blob.name.endswith("/")  # folder placeholders made by the console
    ]
    if not blobs:
        raise StageError(f"no objects under {uri_prefix}")
    dest = Path(dest)
    for blob in blobs:
        relative = blob.name[len(prefix) :]
        if ".." in relative.split("/"):
            raise StageError(f"refusing object name that leaves the folder: {blob.name!r}")
        download_file(f"gs://{bucket_name}/{blob.name}", dest / relative, client, retry)
    return dest
