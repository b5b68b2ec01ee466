"""The champion of a model folder in Cloud Storage: `gs://BUCKET/PREFIX/MODEL/champion.json`
names the published version apps should use.

The pointer is small and is the last thing a winning upload writes, after the version's
manifest, under a generation precondition: the generation the challenge read (0 when there was
no champion). Two runs that finish together both publish their versions, but only the first
pointer write lands; the other finds the generation changed and leaves the pointer alone, so
a reader never sees a pointer to a version that lost, or to one that is not yet complete.

champion.json (format_version 1): model_name, version, uri (the version folder), manifest and
manifest_generation (the manifest it was made from), miou, validation_data_sha256 (what that
mIoU was measured on), labels, since (UTC, ISO 8601), source_run, and beat (the champion it
replaced: version, generation, miou, improvement, compared_by; null for the first).
"""

import base64
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from google.api_core import exceptions as api_exceptions
from google.api_core.retry import Retry
from google.cloud import storage as gcs

from image_segmentation import files
from image_segmentation.cloud import storage
from image_segmentation.errors import StageError

log = logging.getLogger(__name__)

CHAMPION_FILE = "champion.json"
MANIFEST = "manifest.json"
FORMAT_VERSION = 1
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class Champion:
    """The champion pointer as read, its object generation and its version's manifest."""

    pointer: dict
    generation: int
    manifest: dict
    uri: str  # of champion.json


def check_name(what: str, value: str) -> None:
    if not _NAME.fullmatch(value):
        raise StageError(f"bad {what} {value!r}: use letters, digits, '.', '_' and '-'")


def model_prefix(destination: str, model_name: str) -> tuple[str, str]:
    """(bucket, "PREFIX/MODEL/") after checking every part, so no path can escape."""
    bucket, prefix = storage.split_gcs_uri(destination)
    check_name("model name", model_name)
    parts = [part for part in prefix.split("/") if part]
    if any(part in (".", "..") for part in parts):
        raise StageError(f"bad destination {destination!r}: '.' and '..' are not allowed")
    return bucket, "/".join([*parts, model_name]) + "/"


def read_json(blob: gcs.Blob, retry: Retry) -> dict:
    """An object's JSON, exactly the generation listed (a rewrite in between is an error)."""
    try:
        data = json.loads(blob.download_as_bytes(if_generation_match=blob.generation, retry=retry))
    except (ValueError, UnicodeDecodeError) as error:
        raise StageError(f"gs://{blob.bucket.name}/{blob.name} is not JSON: {error}") from None
    if not isinstance(data, dict):
        raise StageError(f"gs://{blob.bucket.name}/{blob.name} does not hold a JSON object")
    return data


def read_champion(bucket: gcs.Bucket, prefix: str, retry: Retry = storage.RETRY) -> Champion | None:
    """The champion of the model folder `prefix` ("PREFIX/MODEL/"), None when there is none.

    A pointer to a version without a manifest is refused: the pointer is written only after
    the manifest, so someone deleted the version."""
    uri = f"gs://{bucket.name}/{prefix}{CHAMPION_FILE}"
    try:
        blob = bucket.get_blob(prefix + CHAMPION_FILE, retry=retry)
    except api_exceptions.NotFound as error:
        raise StageError(f"bucket gs://{bucket.name} does not exist") from error
    if blob is None:
        return None
    generation = blob.generation  # a download refreshes it from the reply's headers
    pointer = read_json(blob, retry)
    files.check_format(pointer, uri, FORMAT_VERSION)
    version = pointer.get("version")
    if not isinstance(version, str) or not _NAME.fullmatch(version):
        raise StageError(f"{uri} names no version folder (version {version!r})")
    manifest_blob = bucket.get_blob(f"{prefix}{version}/{MANIFEST}", retry=retry)
    if manifest_blob is None:
        raise StageError(
            f"{uri} names version {version}, which has no {MANIFEST}: the champion was "
            "deleted; point champion.json at a published version, or delete it"
        )
    return Champion(pointer, generation, read_json(manifest_blob, retry), uri)


def download_tflite(
    bucket: gcs.Bucket, champion: Champion, into: Path, retry: Retry = storage.RETRY
) -> tuple[Path, dict]:
    """The champion's FP32 TFLite file and its export.json, downloaded into `into` and checked
    against the sha256 its manifest records."""
    manifest = champion.manifest
    listed = {entry.get("path"): entry for entry in manifest.get("files", [])}
    version_uri = manifest.get("uri") or f"gs://{bucket.name}/"

    def fetch(relative: str) -> Path:
        entry = listed.get(relative)
        if entry is None or "/" in relative:
            raise StageError(f"the champion {version_uri} publishes no {relative}")
        name = f"{storage.split_gcs_uri(version_uri)[1]}{relative}"
        path = storage.download_file(
            f"gs://{bucket.name}/{name}", Path(into) / relative, bucket.client, retry
        )
        if storage.file_checksums(path)["sha256"] != entry.get("sha256"):
            raise StageError(f"{version_uri}{relative} does not match its manifest's sha256")
        return path

    record = json.loads(fetch("export.json").read_text())
    tflite = (record.get("tflite") or {}).get("float32") or {}
    if not isinstance(tflite.get("file"), str):
        raise StageError(f"the champion {version_uri} has no FP32 TFLite file to score")
    return fetch(tflite["file"]), record


def make_pointer(manifest: dict, manifest_generation: int, beat: dict | None) -> dict:
    """champion.json for a version whose manifest was just written (see the module doc)."""
    metrics = manifest.get("metrics") or {}
    return {
        "format_version": FORMAT_VERSION,
        "model_name": manifest["model_name"],
        "version": manifest["version"],
        "uri": manifest["uri"],
        "manifest": manifest["uri"] + MANIFEST,
        "manifest_generation": manifest_generation,
        "miou": metrics.get("miou"),
        "validation_data_sha256": metrics.get("validation_data_sha256"),
        "labels": manifest.get("labels"),
        "since": datetime.now(UTC).isoformat(timespec="seconds"),
        "source_run": manifest.get("source_run"),
        "beat": beat,
    }


def point_champion(
    bucket: gcs.Bucket,
    prefix: str,
    pointer: dict,
    if_generation_match: int,
    retry: Retry = storage.RETRY,
) -> bool:
    """Write champion.json if it is still at generation `if_generation_match` (0: absent).

    Returns False when another writer changed it first: this version lost the race. A retried
    write whose first attempt landed (its response lost) finds its own bytes there: won."""
    data = (json.dumps(pointer, indent=2) + "\n").encode()
    blob = bucket.blob(prefix + CHAMPION_FILE)
    try:
        blob.upload_from_string(
            data,
            content_type="application/json",
            if_generation_match=if_generation_match,
            retry=retry,
        )
        return True
    except api_exceptions.PreconditionFailed:
        stored = bucket.get_blob(prefix + CHAMPION_FILE, retry=retry)
        md5 = base64.b64encode(hashlib.md5(data).digest()).decode("ascii")
        return stored is not None and stored.md5_hash == md5
