"""The upload stage against a real gcp-storage-emulator server through the real client.

Transient faults come from a small threaded HTTP proxy in front of the emulator. The
emulator ignores `ifGenerationMatch`, so the proxy also enforces it on uploads the way real
GCS does (412; 0: the object must not exist, N: it must be at generation N), one conditional
write at a time as GCS applies them atomically, to exercise what a retried create meets there
and what two runs racing for the champion pointer meet.
"""

import base64
import contextlib
import hashlib
import http.client
import json
import os
import subprocess
import sys
import threading
import urllib.parse
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import google_crc32c
import pytest

from image_segmentation.cloud import storage, upload
from image_segmentation.contracts import export_folder, model_folder
from image_segmentation.data import labels
from image_segmentation.errors import StageError

FAST_RETRY = storage.RETRY.with_delay(initial=0.01, maximum=0.05).with_timeout(20.0)
LABELS = ["none", "wall", "floor", "bed"]
EXPORT_NAMES = export_folder.file_names("model", "mlprogram", tflite=True)


@dataclass
class Fault:
    kind: str  # "upload", "list", "media" or "delete"
    mode: str  # "503-before", "503-after" (forwarded, response lost), "drop", "truncate"
    times: int


def _request_kind(method: str, url: urllib.parse.SplitResult) -> str:
    if method == "POST" and url.path.startswith("/upload/"):
        return "upload"
    if method == "DELETE":
        return "delete"
    if method == "GET" and "alt=media" in url.query:
        return "media"
    if method == "GET" and url.path.endswith("/o"):
        return "list"
    return "other"


class FaultProxy:
    """Forwards to the emulator; injects the queued faults; counts what it injected."""

    def __init__(self, upstream: str):
        self.upstream = urllib.parse.urlsplit(upstream)
        self.faults: list[Fault] = []
        self.injected: Counter = Counter()
        self.seen: Counter = Counter()
        self.lock = threading.Lock()
        self.write_lock = threading.Lock()  # a precondition check and its write are one step
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def handle_any(self):
                proxy.handle(self)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = handle_any

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                if not isinstance(sys.exc_info()[1], ConnectionError):  # idle keep-alive resets
                    super().handle_error(request, client_address)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def _take_fault(self, kind: str) -> str | None:
        with self.lock:
            self.seen[kind] += 1
            for fault in self.faults:
                if fault.kind == kind and fault.times > 0:
                    fault.times -= 1
                    self.injected[f"{kind}/{fault.mode}"] += 1
                    return fault.mode
        return None

    def _forward(self, method: str, path: str, headers: dict, body: bytes):
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            conn.close()

    def _precondition_fails(self, url: urllib.parse.SplitResult, body: bytes) -> bool:
        """Whether an upload's ifGenerationMatch does not hold: for 0, the object exists; for
        N, the object is not at generation N."""
        query = urllib.parse.parse_qs(url.query)
        if "ifGenerationMatch" not in query or not url.path.startswith("/upload/"):
            return False
        wanted = int(query["ifGenerationMatch"][0])
        name = query.get("name", [None])[0]
        if name is None:  # multipart: the name is in the JSON part that comes first
            text = body.decode("latin-1")
            name = json.JSONDecoder().raw_decode(text[text.index("{") :])[0]["name"]
        bucket = url.path.split("/b/")[1].split("/")[0]
        path = f"/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}"
        status, _, reply = self._forward("GET", path, {}, b"")
        generation = int(json.loads(reply)["generation"]) if status == 200 else 0
        return generation != wanted

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        assert "chunked" not in handler.headers.get("Transfer-Encoding", "")
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        url = urllib.parse.urlsplit(handler.path)
        mode = self._take_fault(_request_kind(handler.command, url))
        if mode == "drop":
            handler.close_connection = True
            return
        if mode == "503-before":
            return self._reply(handler, 503, [], b'{"error": {"code": 503}}')
        headers = {k: v for k, v in handler.headers.items() if k.lower() != "connection"}
        with self.write_lock if "ifGenerationMatch" in url.query else contextlib.nullcontext():
            if self._precondition_fails(url, body):
                return self._reply(handler, 412, [], b'{"error": {"code": 412}}')
            status, reply_headers, reply = self._forward(
                handler.command, handler.path, headers, body
            )
        if mode == "503-after":
            return self._reply(handler, 503, [], b'{"error": {"code": 503}}')
        if mode == "truncate":
            handler.send_response(status)
            for key, value in reply_headers:
                if key.lower() not in ("content-length", "connection", "transfer-encoding"):
                    handler.send_header(key, value)
            handler.send_header("Content-Length", str(len(reply)))
            handler.end_headers()
            handler.wfile.write(reply[: len(reply) // 2])
            handler.close_connection = True
            return
        self._reply(handler, status, reply_headers, reply)

    @staticmethod
    def _reply(handler, status: int, headers, body: bytes) -> None:
        handler.send_response(status)
        for key, value in headers:
            if key.lower() not in ("content-length", "connection", "transfer-encoding"):
                handler.send_header(key, value)
        if not any(key.lower() == "content-type" for key, _ in headers):
            handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)


STAND_IN_WEIGHTS = b"weights"  # make_model_dir's weights file, whose digest the export records


def record_export(export: Path, names: list[str] = EXPORT_NAMES) -> None:
    """Write the export's record (export.json, which completes it) listing `names`."""
    digest = hashlib.sha256(STAND_IN_WEIGHTS).hexdigest()
    description = {"model_name": "model", "format": "mlprogram", "tflite": {}, "labels": LABELS,
                   "model_weights_sha256": digest}  # fmt: skip
    metrics = {"miou": 0.41, "source": "evaluate stage, validation split"}  # the gated ones
    export_folder.write_record(export, names, {**description, "metrics": metrics})


def make_export(root: Path) -> Path:
    """A fake export of an ML Program with TFLite: a nested .mlpackage folder, labels.txt, two
    .tflite files and export.json."""
    export = root / "export"
    package = export / "model.mlpackage"
    (package / "Data" / "com.apple.CoreML" / "weights").mkdir(parents=True)
    (package / "Manifest.json").write_text('{"fileFormatVersion": "1.0.0"}')
    (package / "Data" / "com.apple.CoreML" / "model.mlmodel").write_bytes(os.urandom(1500))
    (package / "Data" / "com.apple.CoreML" / "weights" / "weight.bin").write_bytes(
        os.urandom(20_000)
    )
    (export / "labels.txt").write_text(labels.format_labels_file(LABELS))
    (export / "model.tflite").write_bytes(os.urandom(9000))
    (export / "model_fp16.tflite").write_bytes(os.urandom(4500))
    record_export(export)
    return export


def make_model_dir(root: Path, label_names: list[str] = LABELS) -> Path:
    """A model folder as the train stage writes it, with stand-in weights."""
    model_dir = root / "model"
    config = {
        "labels": label_names,
        "num_classes": len(label_names),
        "image_size": [64, 64],
        "alpha": 0.25,
        "normalization": {"scale": 1 / 255, "offset": -0.5},
    }
    model_folder.write_model_dir(
        model_dir,
        write_weights=lambda path: path.write_bytes(STAND_IN_WEIGHTS),
        config=config,
        history=[],
        training_metrics={"val_pixel_accuracy": 0.83, "val_miou": 0.41},
    )
    return model_dir


def snapshot(client, bucket: str) -> dict[str, tuple]:
    return {
        blob.name: (blob.generation, blob.md5_hash, blob.size) for blob in client.list_blobs(bucket)
    }


def check_manifest(client, uri: str, export: Path) -> dict:
    """Download the manifest and check it against the local files and the stored objects."""
    bucket_name, prefix = storage.split_gcs_uri(uri)
    bucket = client.bucket(bucket_name)
    manifest = json.loads(bucket.blob(prefix + "manifest.json").download_as_bytes())
    local = {
        p.relative_to(export).as_posix(): p.read_bytes() for p in export.rglob("*") if p.is_file()
    }
    assert sorted(entry["path"] for entry in manifest["files"]) == sorted(local)
    for entry in manifest["files"]:
        data = local[entry["path"]]
        crc = base64.b64encode(google_crc32c.Checksum(data).digest()).decode()
        assert entry["size"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["md5"] == base64.b64encode(hashlib.md5(data).digest()).decode()
        assert entry["crc32c"] == crc
        stored = bucket.get_blob(prefix + entry["path"])
        assert (stored.crc32c, stored.md5_hash, stored.size) == (crc, entry["md5"], len(data))
        assert stored.generation == entry["generation"]
        assert stored.download_as_bytes() == data
    stored_names = {blob.name for blob in client.list_blobs(bucket_name, prefix=prefix)}
    assert stored_names == {prefix + path for path in local} | {prefix + "manifest.json"}
    return manifest


def test_first_upload_then_refused_then_replaced(gcs_client, tmp_path, monkeypatch):
    gcs_client.create_bucket("models")
    export, model_dir = make_export(tmp_path), make_model_dir(tmp_path)
    monkeypatch.setenv("AIP_PIPELINE_JOB_NAME", "projects/p/locations/l/pipelineJobs/run-7")

    result = upload.upload_model(
        export, "gs://models/segmentation", "icnet", "v1",
        model_dir=model_dir, source_run=upload.default_source_run(),
    )  # fmt: skip
    uri = "gs://models/segmentation/icnet/v1/"
    assert result["uri"] == uri
    assert result["manifest"] == uri + "manifest.json"
    assert uri + "model.mlpackage/Data/com.apple.CoreML/weights/weight.bin" in result["files"]
    assert len(result["files"]) == 7
    manifest = check_manifest(gcs_client, uri, export)
    assert manifest["labels"] == LABELS
    # the export's record of the evaluated metrics, not the model folder's training scores
    assert manifest["metrics"] == {"miou": 0.41, "source": "evaluate stage, validation split"}
    assert manifest["config"]["image_size"] == [64, 64]
    assert "labels" not in manifest["config"]
    assert manifest["source_run"] == "projects/p/locations/l/pipelineJobs/run-7"
    assert (manifest["model_name"], manifest["version"]) == ("icnet", "v1")

    # A second upload of the same version is refused and leaves the bucket as it was.
    before = snapshot(gcs_client, "models")
    (export / "model.tflite").write_bytes(b"a different model")
    record_export(export)
    with pytest.raises(StageError, match=r"already exists.*--replace"):
        upload.upload_model(export, "gs://models/segmentation", "icnet", "v1")
    assert snapshot(gcs_client, "models") == before

    # An explicit replace: the stale object goes, the changed one is rewritten, the unchanged
    # ones are kept (same generation), and the manifest describes the new export.
    (export / "model.mlpackage" / "Data" / "com.apple.CoreML" / "model.mlmodel").unlink()
    (export / "model_fp16.tflite").write_bytes(b"a smaller model")
    record_export(export)
    upload.upload_model(export, "gs://models/segmentation", "icnet", "v1", replace=True)
    after = snapshot(gcs_client, "models")
    prefix = "segmentation/icnet/v1/"
    assert prefix + "model.mlpackage/Data/com.apple.CoreML/model.mlmodel" not in after
    assert after[prefix + "model.tflite"][1] != before[prefix + "model.tflite"][1]
    kept = prefix + "model.mlpackage/Manifest.json"
    assert after[kept] == before[kept]
    manifest = check_manifest(gcs_client, uri, export)
    assert manifest["labels"] == LABELS  # from export.json this time
    assert manifest["metrics"]["miou"] == 0.41


def test_bad_inputs(gcs_client, tmp_path):
    gcs_client.create_bucket("inputs")
    export = make_export(tmp_path)
    with pytest.raises(StageError, match="does not exist"):
        upload.upload_model(tmp_path / "missing", "gs://inputs/m", "icnet", "v1")
    with pytest.raises(StageError, match="not a gs:// URI"):
        upload.upload_model(export, "s3://inputs/m", "icnet", "v1")
    with pytest.raises(StageError, match="bad version"):
        upload.upload_model(export, "gs://inputs/m", "icnet", "../v1")
    with pytest.raises(StageError, match="bucket gs://no-such-bucket does not exist"):
        upload.upload_model(export, "gs://no-such-bucket/m", "icnet", "v1")
    with pytest.raises(StageError, match=r"has no config\.json: the train stage did not finish"):
        upload.upload_model(export, "gs://inputs/m", "icnet", "v1", model_dir=tmp_path)
    assert list(gcs_client.list_blobs("inputs")) == []


def test_an_incomplete_export_is_refused_before_any_upload(gcs_client, tmp_path):
    gcs_client.create_bucket("partial")
    export = make_export(tmp_path)
    (export / "model.tflite").write_bytes(b"rewritten after the export finished")
    with pytest.raises(StageError, match=r"model\.tflite is 35 bytes, not 9000"):
        upload.upload_model(export, "gs://partial/m", "icnet", "v1")
    (export / "export.json").unlink()  # as after an export that did not finish
    with pytest.raises(StageError, match=r"has no export\.json: the export stage did not finish"):
        upload.upload_model(export, "gs://partial/m", "icnet", "v1")
    assert list(gcs_client.list_blobs("partial")) == []


def test_transient_faults_are_retried(gcs_client, gcs_emulator, tmp_path, monkeypatch, caplog):
    caplog.set_level("INFO", logger="image_segmentation.cloud.upload")
    gcs_client.create_bucket("flaky")
    export = make_export(tmp_path)
    with FaultProxy(gcs_emulator) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        proxy.faults = [
            Fault("list", "drop", 1),
            Fault("upload", "503-before", 2),
            # The write lands but its response is lost: the retried create meets a 412.
            Fault("upload", "503-after", 1),
            Fault("upload", "drop", 1),
        ]
        result = upload.upload_model(export, "gs://flaky/m", "icnet", "v2", retry=FAST_RETRY)
        assert proxy.injected == {
            "list/drop": 1, "upload/503-before": 2, "upload/503-after": 1, "upload/drop": 1,
        }  # fmt: skip
        # 7 files + manifest, plus one retry per injected upload fault.
        assert proxy.seen["upload"] == 8 + 4
        assert "already written by an earlier attempt; checksums match" in caplog.text
        retries = [
            r.getMessage() for r in caplog.records if r.name == "image_segmentation.cloud.storage"
        ]
        assert len(retries) == 5 and all(" s left to retry" in line for line in retries)
        # Objects written through the proxy carry its address in their mediaLink.
        manifest = check_manifest(gcs_client, result["uri"], export)
    assert manifest["labels"] == LABELS


def test_put_file_refuses_someone_elses_object(gcs_client, gcs_emulator, tmp_path, monkeypatch):
    bucket = gcs_client.create_bucket("race")
    bucket.blob("m/file.bin").upload_from_string(b"written by another run")
    mine = tmp_path / "file.bin"
    with FaultProxy(gcs_emulator) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        proxied = storage.gcs_client().bucket("race")
        mine.write_bytes(b"mine")
        with pytest.raises(StageError, match="changed by someone else"):
            upload.put_file(proxied, "m/file.bin", mine, storage.file_checksums(mine), 0)
        mine.write_bytes(b"written by another run")  # identical bytes: accepted as ours
        blob = upload.put_file(proxied, "m/file.bin", mine, storage.file_checksums(mine), 0)
        assert blob.crc32c == storage.file_checksums(mine)["crc32c"]
    assert bucket.blob("m/file.bin").download_as_bytes() == b"written by another run"


def test_download_retries_through_faults(gcs_client, gcs_emulator, tmp_path, monkeypatch):
    data = os.urandom(100_000)
    gcs_client.create_bucket("dl-bucket").blob("big.bin").upload_from_string(data)
    with FaultProxy(gcs_emulator) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        proxy.faults = [Fault("media", "503-before", 1), Fault("media", "truncate", 1)]
        path = storage.download_file(
            "gs://dl-bucket/big.bin", tmp_path / "big.bin", retry=FAST_RETRY
        )
        assert proxy.injected == {"media/503-before": 1, "media/truncate": 1}
    assert path.read_bytes() == data


def test_cli(gcs_client, gcs_emulator, tmp_path):
    gcs_client.create_bucket("cli-models")
    export, model_dir = make_export(tmp_path), make_model_dir(tmp_path)
    out = tmp_path / "outputs" / "uris.json"
    command = [
        sys.executable, "-m", "image_segmentation", "upload", "--export-dir", str(export),
        "--destination", "gs://cli-models/seg", "--model-name", "icnet", "--version", "3",
        "--model-dir", str(model_dir), "--source-run", "run-42", "--output-uris", str(out),
    ]  # fmt: skip
    env = {**os.environ, "STORAGE_EMULATOR_HOST": gcs_emulator}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    uris = json.loads(out.read_text())
    assert uris == json.loads(done.stdout)
    assert uris["manifest"] == "gs://cli-models/seg/icnet/3/manifest.json"
    assert "uploading model.tflite (9000 bytes)" in done.stderr
    assert check_manifest(gcs_client, uris["uri"], export)["source_run"] == "run-42"

    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [
        "error: gs://cli-models/seg/icnet/3/ already exists (7 files, complete); "
        "pass --replace to replace it"
    ]
