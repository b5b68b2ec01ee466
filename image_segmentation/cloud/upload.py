"""The upload stage's work: publish an export directory as one immutable model version in Cloud
Storage.

Layout: `gs://BUCKET/PREFIX/MODEL/VERSION/` holds the export folder's files, those its record
lists and the record itself (an `.mlpackage` is a folder: relative paths are kept), and a
`manifest.json`, written last, that lists every file with its size and checksums plus the
labels, metrics and source run. A version with a manifest is complete and verified; one
without is an interrupted upload. An export folder that is not complete is refused before
anything is uploaded, and so is one made from another model than `--model-dir` (other labels).

Every write carries a generation precondition (0 = "must not exist", or the generation being
replaced), so nothing is overwritten silently, and retrying a write after a transient error is
safe. A retried create that finds its own first attempt already stored compares checksums
instead of failing. Each request is retried for at most `--deadline` seconds, every retry
logged with the time left, so an unreachable Cloud Storage ends the step with a one-line error
instead of holding it for long.

With the challenge stage's decision, the version is then made the champion of its model folder
(cloud/champion.py): `champion.json` is written after the manifest, under the precondition
that it is still the generation the challenge compared against. When another run changed it
first, this version stays published, complete and verified, but is not the champion: upload
says so in one warning line and still succeeds (the version is sound; only the race was
lost, and a retry would lose it again), and its result says "champion": false.
"""

import contextlib
import json
import logging
import math
import mimetypes
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from google.api_core import exceptions as api_exceptions
from google.api_core.retry import Retry
from google.cloud import storage as gcs

from image_segmentation.cloud import champion as champions
from image_segmentation.cloud import storage
from image_segmentation.contracts import evaluation_folder, export_folder, model_folder
from image_segmentation.errors import StageError, short_json

log = logging.getLogger(__name__)


MANIFEST = champions.MANIFEST


MANIFEST_FORMAT_VERSION = 1


SOURCE_RUN_ENV_VARS = ("AIP_PIPELINE_JOB_NAME", "CLOUD_ML_JOB_ID")


DEFAULT_DEADLINE = 300.0  # seconds a failing request is retried before the stage gives up


RETRY = storage.RETRY.with_timeout(DEFAULT_DEADLINE)


def default_source_run() -> str | None:
    """The Vertex pipeline job (or legacy training job) this process runs in, if any."""
    return next((os.environ[var] for var in SOURCE_RUN_ENV_VARS if os.environ.get(var)), None)


def version_prefix(destination: str, model_name: str, version: str) -> tuple[str, str]:
    """(bucket, "PREFIX/MODEL/VERSION/") after checking every part, so no path can escape."""
    bucket, prefix = champions.model_prefix(destination, model_name)
    champions.check_name("version", version)
    return bucket, f"{prefix}{version}/"


def challenge_record(decision: dict, metrics: dict | None, model_folder_uri: str) -> dict:
    """What the manifest says of the challenge this version won, after checking that the
    decision publishes, is about this model folder and about these metrics' model."""
    if not decision["publish"]:
        raise StageError(f"the challenge decided not to publish: {decision.get('reason')}")
    if decision.get("model_folder") != model_folder_uri:
        raise StageError(
            f"the challenge decided for {decision.get('model_folder')}, not {model_folder_uri}"
        )
    if (metrics or {}).get("miou") != decision.get("miou"):
        raise StageError(
            f"the challenge decided on mIoU {decision.get('miou')}, but the export's is "
            f"{(metrics or {}).get('miou')}: pass the challenge of this model's evaluation"
        )
    keys = ("rule", "champion_version", "champion_generation", "champion_miou", "improvement",
            "compared_by", "min_improvement")  # fmt: skip
    return {key: decision.get(key) for key in keys}


def model_info(record: dict, model_dir: Path | None, evaluation_dir: Path | None) -> dict:
    """Labels, model config and metrics for the manifest, each tied to what made the export.

    The metrics are the export's record of the evaluate stage's (the published numbers are
    the gated ones), checked to be numbers where numbers belong; with `evaluation_dir` they
    must equal that evaluation's of `model_dir`'s weights. Labels and config come from the
    model folder when given, once its weights are the ones the export was made from (their
    sha256), else from the export's record, which holds them too."""
    metrics = record.get("metrics")
    check_metrics(metrics)
    if model_dir is None:
        if evaluation_dir is not None:
            raise StageError("--evaluation-dir needs --model-dir, the model it evaluated")
        return {"labels": record.get("labels"), "config": record.get("config"), "metrics": metrics}
    config = model_folder.require_complete(model_dir)
    check_same_labels(record["labels"], config["labels"], model_dir)
    if record.get("model_weights_sha256") != model_folder.weights_digest(model_dir):
        raise StageError(
            f"the export was not made from {model_dir}'s weights (export.json records "
            f"{str(record.get('model_weights_sha256'))[:12]}...); pass the model folder it was "
            "exported from, or export it again"
        )
    if evaluation_dir is not None:
        evaluated = evaluation_folder.published_metrics(evaluation_dir, model_dir)
        if evaluated != metrics:
            claimed = short_json((metrics or {}).get("miou"))
            raise StageError(
                f"export.json's metrics are not the evaluation's in {evaluation_dir} (miou "
                f"{claimed}, evaluated {evaluated['miou']}): export again from it"
            )
    return {
        "labels": config["labels"],
        "config": {key: value for key, value in config.items() if key != "labels"},
        "metrics": metrics,
    }


def coreml_summary(record: dict) -> dict:
    """The Core ML file's weight compression and its own scores (measured on its
    decompressed weights when the export had validation data), as export.json records them."""
    coreml = record.get("coreml") or {}
    return {key: coreml.get(key) for key in ("file", "bytes", "compression", "quality")}


def check_metrics(metrics: object) -> None:
    """Refuse metrics that are not what the evaluate stage writes: apps and dashboards read
    these numbers from the manifest."""
    if metrics is None:
        return
    problems = []
    if not isinstance(metrics, dict):
        raise StageError(f"export.json's metrics are not a JSON object: {short_json(metrics)}")
    for key in ("miou", "pixel_accuracy"):
        if key in metrics and not _fraction_or_none(metrics[key]):
            problems.append(f"{key} is {short_json(metrics[key])}, not a number from 0 to 1")
    class_iou = metrics.get("class_iou", {})
    if not isinstance(class_iou, dict) or not all(map(_fraction_or_none, class_iou.values())):
        problems.append(f"class_iou is {short_json(class_iou)}, not numbers from 0 to 1 by class")
    if problems:
        raise StageError(
            f"export.json's metrics are not the evaluate stage's: {'; '.join(problems)}"
        )


def _fraction_or_none(value: object) -> bool:
    if value is None:
        return True
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return number and math.isfinite(value) and 0 <= value <= 1


def check_same_labels(exported: list[str], trained: list[str], model_dir: Path) -> None:
    """Refuse to describe an export with the labels of another model: apps would name the
    classes wrongly."""
    if exported == trained:
        return
    if len(exported) != len(trained):
        difference = f"{len(exported)} labels in the export, {len(trained)} in the model"
    else:
        i = next(i for i in range(len(exported)) if exported[i] != trained[i])
        difference = f"label {i} is {exported[i]!r} in the export, {trained[i]!r} in the model"
    raise StageError(
        f"the export was not made from {model_dir}: {difference}; pass the model folder it was "
        "exported from"
    )


def same_content(blob: gcs.Blob, checksums: dict[str, str], size: int) -> bool:
    """Whether a stored object holds exactly the local bytes (size, crc32c and md5 agree)."""
    return (
        blob.size == size
        and blob.crc32c == checksums["crc32c"]
        and blob.md5_hash == checksums["md5"]
    )


def put_file(
    bucket: gcs.Bucket,
    name: str,
    path: Path,
    checksums: dict[str, str],
    if_generation_match: int,
    retry: Retry = RETRY,
) -> gcs.Blob:
    """Write one object under a generation precondition and return it with its metadata.

    If the precondition fails because an earlier attempt of this very write landed (its
    response was lost and the client retried), the stored object has our checksums: accept
    it. Any other object there means someone else wrote it: refuse.
    """
    blob = bucket.blob(name)
    content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    try:
        blob.upload_from_filename(
            str(path),
            content_type=content_type,
            if_generation_match=if_generation_match,
            checksum="auto",
            crc32c_checksum_value=checksums["crc32c"],
            retry=retry,
        )
    except api_exceptions.PreconditionFailed:
        stored = bucket.get_blob(name, retry=retry)
        if stored is not None and same_content(stored, checksums, path.stat().st_size):
            log.info("%s was already written by an earlier attempt; checksums match", name)
            return stored
        raise StageError(
            f"gs://{bucket.name}/{name} was changed by someone else during the upload"
        ) from None
    if not same_content(blob, checksums, path.stat().st_size):
        raise StageError(f"gs://{bucket.name}/{name} does not match {path} after the upload")
    return blob


def verify_objects(
    bucket: gcs.Bucket, prefix: str, expected: dict[str, dict], retry: Retry = RETRY
) -> None:
    """List `prefix` and check it holds exactly the expected objects with their checksums.

    `expected` maps object names to {"size", "crc32c", "md5"}; the manifest is ignored.
    """
    stored = {
        blob.name: blob
        for blob in bucket.list_blobs(prefix=prefix, retry=retry)
        if blob.name != prefix + MANIFEST
    }
    problems = [f"missing {name}" for name in sorted(expected.keys() - stored.keys())]
    problems += [f"unexpected {name}" for name in sorted(stored.keys() - expected.keys())]
    problems += [
        f"checksum mismatch for {name}"
        for name, want in sorted(expected.items())
        if name in stored and not same_content(stored[name], want, want["size"])
    ]
    if problems:
        raise StageError(f"verification of gs://{bucket.name}/{prefix} failed: {problems}")


def upload_model(
    export_dir: Path,
    destination: str,
    model_name: str,
    version: str,
    *,
    model_dir: Path | None = None,
    evaluation_dir: Path | None = None,
    source_run: str | None = None,
    replace: bool = False,
    decision: dict | None = None,
    client: gcs.Client | None = None,
    retry: Retry = RETRY,
) -> dict:
    """Upload `export_dir` as gs://.../MODEL/VERSION/, verify it, then write the manifest;
    with the challenge's `decision`, then make it the champion (see the module doc).

    Returns {"uri", "manifest", "files"} (gs:// URIs), and with a decision "champion" (whether
    this version is now the champion) and "champion_pointer". With `replace`, the old manifest
    goes first (the version reads as incomplete until the new one lands), unchanged files are
    kept, changed ones overwritten and files the new export lacks deleted.
    """
    bucket_name, prefix = version_prefix(destination, model_name, version)
    uri = f"gs://{bucket_name}/{prefix}"
    folder_uri = "gs://{}/{}".format(*champions.model_prefix(destination, model_name))
    record = export_folder.require_complete(export_dir)
    to_publish = export_folder.files_to_publish(export_dir, record)
    info = model_info(record, model_dir, evaluation_dir)
    beat = None if decision is None else challenge_record(decision, info["metrics"], folder_uri)
    client = client or storage.gcs_client()
    bucket = client.bucket(bucket_name)

    try:
        existing = {blob.name: blob for blob in bucket.list_blobs(prefix=prefix, retry=retry)}
    except api_exceptions.NotFound as error:
        raise StageError(f"bucket gs://{bucket_name} does not exist") from error
    old_manifest = existing.pop(prefix + MANIFEST, None)
    if (existing or old_manifest) and not replace:
        state = "complete" if old_manifest else "incomplete, no manifest"
        raise StageError(
            f"{uri} already exists ({len(existing)} files, {state}); pass --replace to replace it"
        )
    if old_manifest is not None:
        _delete(old_manifest, retry)

    entries = []
    total = len(to_publish)
    for index, (relative, path) in enumerate(to_publish.items(), start=1):
        name = prefix + relative
        size = path.stat().st_size
        checksums = storage.file_checksums(path)
        old = existing.get(name)
        if old is not None and same_content(old, checksums, size):
            log.info("[%d/%d] %s unchanged (%d bytes), kept", index, total, relative, size)
            blob = old
        else:
            log.info("[%d/%d] uploading %s (%d bytes)", index, total, relative, size)
            generation = old.generation if old is not None else 0
            blob = put_file(bucket, name, path, checksums, generation, retry)
        entries.append({"path": relative, "size": size, **checksums, "generation": blob.generation})

    for name in sorted(existing.keys() - {prefix + entry["path"] for entry in entries}):
        log.info("deleting stale gs://%s/%s", bucket_name, name)
        _delete(existing[name], retry)

    verify_objects(bucket, prefix, {prefix + entry["path"]: entry for entry in entries}, retry)
    log.info("verified %d files (%d bytes)", total, sum(entry["size"] for entry in entries))

    manifest = {
        "format_version": MANIFEST_FORMAT_VERSION,
        "model_name": model_name,
        "version": version,
        "uri": uri,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "source_run": source_run,
        **info,
        "coreml": coreml_summary(record),
        **({"challenge": beat} if beat is not None else {}),
        "files": entries,
    }
    with tempfile.TemporaryDirectory() as scratch:
        manifest_path = Path(scratch) / MANIFEST
        manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
        stored = put_file(
            bucket,
            prefix + MANIFEST,
            manifest_path,
            storage.file_checksums(manifest_path),
            0,
            retry,
        )
    log.info("wrote %s%s (%d bytes)", uri, MANIFEST, stored.size)
    result = {
        "uri": uri,
        "manifest": uri + MANIFEST,
        "files": [uri + entry["path"] for entry in entries],
    }
    if decision is not None:
        result |= crown(bucket, manifest, stored.generation, beat, retry)
    return result


def crown(bucket: gcs.Bucket, manifest: dict, generation: int, beat: dict, retry: Retry) -> dict:
    """Point champion.json at the version just published, if nobody changed it since the
    challenge read it; {"champion": won, "champion_pointer": its URI}."""
    folder = manifest["uri"].removesuffix(f"{manifest['version']}/")
    prefix = storage.split_gcs_uri(folder)[1]
    previous = beat["champion_generation"]
    replaced = None if previous == 0 else beat
    pointer = champions.make_pointer(manifest, generation, replaced)
    pointer_uri = folder + champions.CHAMPION_FILE
    won = champions.point_champion(bucket, prefix, pointer, previous, retry)
    if won:
        log.info("%s is now the champion (%s)", manifest["uri"], pointer_uri)
    else:
        log.warning(
            "%s is published but NOT the champion: %s changed after the challenge read "
            "generation %d (another run became champion first); run again to challenge it",
            manifest["uri"], pointer_uri, previous,
        )  # fmt: skip
    return {"champion": won, "champion_pointer": pointer_uri}


def _delete(blob: gcs.Blob, retry: Retry) -> None:
    """Delete exactly the generation we listed; a retry that finds it gone is fine."""
    with contextlib.suppress(api_exceptions.NotFound):
        blob.delete(if_generation_match=blob.generation, retry=retry)
