"""Champion and challenger: the challenge stage's decision and the upload stage's champion
pointer, against the Cloud Storage emulator through the real client.

The champion scored through TFLite is a tiny ICNet (64x64, alpha 0.25) that says "red thing"
on every pixel; its Core ML files are stand-ins, since only its FP32 TFLite file is scored.
"""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import keras
import numpy as np
import pytest
from test_evaluate import LABELS, MODEL_SIZE, make_masks, write_data_dir
from test_upload import FAST_RETRY, FaultProxy, snapshot

from image_segmentation.cloud import champion as champions
from image_segmentation.cloud import storage, upload
from image_segmentation.contracts import challenge_folder, evaluation_folder, export_folder
from image_segmentation.data import labels
from image_segmentation.errors import StageError
from image_segmentation.evaluation import challenge, evaluator, metrics
from image_segmentation.export import tflite
from image_segmentation.model import icnet

DESTINATION = "gs://models/seg"
POINTER = "seg/icnet/champion.json"
DIGEST = "a" * 64  # the validation data the recorded numbers were measured on
NORMALIZATION = {"scale": 1 / 255, "offset": -0.5}


def make_export(
    root: Path,
    miou: float,
    digest: str = DIGEST,
    class_labels=LABELS,
    tflite_bytes: bytes | None = None,
) -> Path:
    """An export folder whose record carries the evaluate stage's `miou` measured on the data
    of `digest`; stand-in model files unless `tflite_bytes` is a real FP32 TFLite model."""
    export = root / f"export-{miou}-{len(class_labels)}"
    package = export / "model.mlpackage"
    package.mkdir(parents=True, exist_ok=True)
    (package / "Manifest.json").write_text('{"fileFormatVersion": "1.0.0"}')
    (export / "labels.txt").write_text(labels.format_labels_file(class_labels))
    (export / "model.tflite").write_bytes(tflite_bytes or os.urandom(900))
    (export / "model_fp16.tflite").write_bytes(os.urandom(450))
    metrics = {"miou": miou, evaluation_folder.DATA_DIGEST: digest}
    description = {
        "model_name": "model",
        "format": "mlprogram",
        "labels": class_labels,
        "tflite": {"float32": {"file": "model.tflite"}, "float16": {"file": "model_fp16.tflite"}},
        "image_size": list(MODEL_SIZE),
        "normalization": NORMALIZATION,
        "output": {"kind": "probabilities"},
        "config": {"preprocessing": {"resize": "stretch"}},
        "metrics": metrics,
    }
    export_folder.write_record(
        export, export_folder.file_names("model", "mlprogram", True), description
    )
    return export


def result(miou: float, digest: str = DIGEST, class_labels=LABELS) -> dict:
    """What the challenge reads of the evaluate stage's metrics.json."""
    return {"miou": miou, "labels": class_labels, evaluation_folder.DATA_DIGEST: digest}


def publish(tmp_path, client, version: str, miou: float, **options) -> tuple[dict, dict]:
    """Challenge, then upload if the challenge says so: (decision, upload result or {})."""
    digest = options.pop("digest", DIGEST)
    export = options.pop("export", None) or make_export(tmp_path, miou, digest)
    decision = challenge.challenge(
        result(miou, digest, options.pop("labels", LABELS)),
        options.pop("data_dir", tmp_path),
        DESTINATION,
        "icnet",
        client=client,
        min_miou=options.pop("min_miou", 0.0),
        min_improvement=options.pop("min_improvement", 0.0),
        replace_champion=options.pop("replace_champion", False),
    )
    if not decision["publish"]:
        return decision, {}
    return decision, upload.upload_model(
        export, DESTINATION, "icnet", version, client=client, decision=decision
    )


def read(client, name: str) -> dict:
    return json.loads(client.bucket("models").blob(name).download_as_bytes())


def test_the_rules_in_order():
    found = champions.Champion(
        {"version": "v1"},
        7,
        {"labels": LABELS, "metrics": {"miou": 0.5, "validation_data_sha256": DIGEST}},
        "gs://x",
    )

    def decide(miou, **options):
        options = {"min_miou": 0.0, "min_improvement": 0.0, "replace_champion": False} | options
        scored = options.pop("scored", None)
        return challenge.decide(
            result(miou, options.pop("digest", DIGEST), options.pop("labels", LABELS)),
            options.pop("found", found),
            score=lambda: scored,
            **options,
        )

    stopped = decide(0.3, min_miou=0.4)
    assert (stopped["publish"], stopped["rule"]) == (False, "min_miou")
    assert stopped["reason"].startswith("min_miou: mIoU 0.3000 is below min_miou 0.4000 by 0.1000")
    first = decide(0.3, found=None)
    assert (first["publish"], first["rule"], first["champion_generation"]) == (
        True,
        "first champion",
        0,
    )
    worse = decide(0.52, min_improvement=0.05)
    assert (worse["publish"], worse["rule"], worse["champion_generation"]) == (
        False,
        "min_improvement",
        7,
    )
    assert (
        "vs champion v1's 0.5000 (recorded mIoU, same validation data): +0.0200"
        in (worse["reason"])
    )
    assert "short of min_improvement 0.0500 by 0.0300" in worse["reason"]
    better = decide(0.56, min_improvement=0.05)
    assert (better["publish"], better["champion_miou"]) == (True, 0.5)
    assert better["improvement"] == pytest.approx(0.06)
    # other data: the champion is measured on this run's, whatever it recorded
    measured = decide(0.45, digest="b" * 64, scored=0.4)
    assert (measured["publish"], measured["champion_miou"]) == (True, 0.4)
    assert measured["compared_by"] == "champion's FP32 TFLite scored on this run's data"
    other = ["none", "sofa", "green thing"]
    refused = decide(0.9, labels=other)
    assert (refused["publish"], refused["rule"]) == (False, "labels differ")
    assert "class 1 is 'sofa', not 'red thing'" in refused["reason"]
    assert "replace_champion=true" in refused["reason"]
    forced = decide(0.1, labels=other, replace_champion=True)
    assert (forced["publish"], forced["rule"]) == (True, "replace_champion")
    with pytest.raises(StageError, match="--min-improvement must be a number from -1 to 1"):
        challenge.check_thresholds(0.0, float("nan"))


def test_a_worse_challenger_is_not_published_and_a_better_one_becomes_champion(
    gcs_client, tmp_path
):
    gcs_client.create_bucket("models")
    decision, first = publish(tmp_path, gcs_client, "v1", 0.5)
    assert decision["rule"] == "first champion" and first["champion"] is True
    pointer = read(gcs_client, POINTER)
    assert pointer["version"] == "v1" and pointer["miou"] == 0.5 and pointer["beat"] is None
    assert pointer["validation_data_sha256"] == DIGEST and pointer["labels"] == LABELS
    manifest = read(gcs_client, "seg/icnet/v1/manifest.json")
    assert pointer["manifest_generation"] == (
        gcs_client.bucket("models").get_blob("seg/icnet/v1/manifest.json").generation
    )
    assert manifest["challenge"]["rule"] == "first champion"

    before = snapshot(gcs_client, "models")
    decision, uploaded = publish(tmp_path, gcs_client, "v2", 0.52, min_improvement=0.05)
    assert (decision["publish"], decision["rule"], uploaded) == (False, "min_improvement", {})
    assert snapshot(gcs_client, "models") == before  # nothing published, the pointer unchanged
    # the upload stage refuses to publish what the challenge stopped
    with pytest.raises(StageError, match="the challenge decided not to publish: min_improvement"):
        upload.upload_model(
            make_export(tmp_path, 0.52),
            DESTINATION,
            "icnet",
            "v2",
            client=gcs_client,
            decision=decision,
        )
    assert snapshot(gcs_client, "models") == before

    generation = gcs_client.bucket("models").get_blob(POINTER).generation
    decision, uploaded = publish(tmp_path, gcs_client, "v3", 0.6, min_improvement=0.05)
    assert decision["champion_generation"] == generation
    assert uploaded["champion"] is True
    assert uploaded["champion_pointer"] == "gs://models/seg/icnet/champion.json"
    pointer = read(gcs_client, POINTER)
    assert pointer["version"] == "v3" and pointer["uri"] == "gs://models/seg/icnet/v3/"
    assert pointer["beat"]["champion_version"] == "v1"
    assert pointer["beat"]["improvement"] == pytest.approx(0.1)
    beaten = read(gcs_client, "seg/icnet/v3/manifest.json")["challenge"]
    assert (beaten["champion_version"], beaten["champion_generation"]) == ("v1", generation)
    assert beaten["compared_by"] == "recorded mIoU, same validation data"

    # labels that differ: published only when asked, and then the champion
    other = ["none", "sofa", "green thing"]
    export = make_export(tmp_path, 0.3, class_labels=other)
    decision, uploaded = publish(tmp_path, gcs_client, "v4", 0.3, labels=other, export=export)
    assert decision["rule"] == "labels differ" and uploaded == {}
    decision, uploaded = publish(
        tmp_path, gcs_client, "v4", 0.3, labels=other, export=export, replace_champion=True
    )
    assert uploaded["champion"] is True and read(gcs_client, POINTER)["labels"] == other


@pytest.fixture(scope="module")
def champion_tflite() -> tuple[bytes, keras.Model]:
    """The FP32 TFLite model of an ICNet that says "red thing" everywhere, and the model."""
    keras.utils.set_random_seed(0)
    model = icnet.build_icnet(len(LABELS), MODEL_SIZE, alpha=0.25)
    classifier = model.get_layer("conv6_cls_logits")
    kernel, bias = classifier.get_weights()
    classifier.set_weights([np.zeros_like(kernel), np.array([0.0, 2.0, 0.0], bias.dtype)])
    inference = icnet.inference_model(model)
    return tflite.convert_tflite(inference, "float32"), inference


def test_the_champion_is_scored_through_tflite_when_the_data_differ(
    gcs_client, tmp_path, champion_tflite, caplog
):
    """The champion recorded mIoU 0.99 on other data; on this run's, its TFLite model scores
    what the evaluate stage's scorer gives it, and the challenger is compared with that."""
    caplog.set_level("INFO")
    content, model = champion_tflite
    data_dir = write_data_dir(tmp_path / "prepared", make_masks())
    gcs_client.create_bucket("models")
    export = make_export(tmp_path, 0.99, digest="b" * 64, tflite_bytes=content)
    publish(tmp_path, gcs_client, "v1", 0.99, digest="b" * 64, export=export)

    shards = sorted(data_dir.glob("val-*.tfrecord"))
    digest = evaluation_folder.validation_digest(shards, data_dir / "labels.txt", None)
    batches = evaluator.validation_batches(shards, MODEL_SIZE, NORMALIZATION, "stretch", 2, None)
    confusion, _, _ = evaluator.evaluate_model(model, batches, len(LABELS), 5, 0)
    expected = metrics.summary(confusion, LABELS)["miou"]  # Keras, same scorer
    assert 0 < expected < 0.5

    decision, uploaded = publish(
        tmp_path, gcs_client, "v2", expected + 0.01, digest=digest, data_dir=data_dir
    )
    assert decision["compared_by"] == "champion's FP32 TFLite scored on this run's data"
    assert decision["champion_miou"] == pytest.approx(expected, abs=1e-6)
    assert decision["publish"] and uploaded["champion"] is True
    assert "scoring" in caplog.text and "model.tflite" in caplog.text
    decision, _ = publish(
        tmp_path,
        gcs_client,
        "v3",
        expected + 0.01,
        digest=digest,
        data_dir=data_dir,
        min_improvement=0.02,
    )
    assert decision["compared_by"] == "recorded mIoU, same validation data"  # v2's, this data
    assert decision["publish"] is False


def test_two_uploads_racing_for_the_champion_leave_exactly_one_winner(
    gcs_client, gcs_emulator, tmp_path, monkeypatch, caplog
):
    gcs_client.create_bucket("models")
    publish(tmp_path, gcs_client, "v1", 0.4)
    with FaultProxy(gcs_emulator) as proxy:  # enforces generation preconditions, as GCS does
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        client = storage.gcs_client()
        exports = {
            version: make_export(tmp_path / version, miou)
            for version, miou in (("v2", 0.5), ("v3", 0.6))
        }
        decisions = {
            version: challenge.challenge(
                result(miou),
                tmp_path,
                DESTINATION,
                "icnet",
                client=client,
                min_miou=0.0,
                min_improvement=0.0,
            )
            for version, miou in (("v2", 0.5), ("v3", 0.6))
        }
        generation = decisions["v2"]["champion_generation"]
        assert decisions["v3"]["champion_generation"] == generation > 0  # both read v1
        results, start = {}, threading.Barrier(2)

        def run(version):
            start.wait()
            results[version] = upload.upload_model(
                exports[version],
                DESTINATION,
                "icnet",
                version,
                client=storage.gcs_client(),
                decision=decisions[version],
                retry=FAST_RETRY,
            )

        threads = [threading.Thread(target=run, args=(version,)) for version in exports]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # a retried pointer write whose first attempt landed (its reply lost) finds its own
        # bytes there: still the winner; anyone else's write of a stale generation loses
        bucket, pointer = client.bucket("models"), read(gcs_client, POINTER)
        assert champions.point_champion(bucket, "seg/icnet/", pointer, generation) is True
        assert (
            champions.point_champion(bucket, "seg/icnet/", {**pointer, "version": "v9"}, generation)
            is False
        )
    assert sorted(result["champion"] for result in results.values()) == [False, True]
    (winner,) = [version for version, result in results.items() if result["champion"]]
    (loser,) = set(results) - {winner}
    pointer = read(gcs_client, POINTER)
    assert pointer["version"] == winner and pointer["beat"]["champion_version"] == "v1"
    for version in results:  # both published, complete
        assert read(gcs_client, f"seg/icnet/{version}/manifest.json")["version"] == version
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelname == "WARNING" and "NOT the champion" in r.getMessage()
    ]
    assert len(warnings) == 1 and f"/{loser}/ is published but NOT the champion" in warnings[0]


def test_the_stage_command_lines(gcs_client, gcs_emulator, tmp_path):
    """challenge, then upload --challenge-dir, as the pipeline's steps run them: a first run,
    with no champion, publishes and becomes the champion; a worse one is stopped."""
    gcs_client.create_bucket("models")
    env = {**os.environ, "STORAGE_EMULATOR_HOST": gcs_emulator}
    data_dir = write_data_dir(tmp_path / "prepared", make_masks())
    evaluation = tmp_path / "evaluation"
    evaluation.mkdir()

    def run(stage, *args):
        command = [sys.executable, "-m", "image_segmentation", stage, *map(str, args)]
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)

    def challenged(miou, name):
        (evaluation / "metrics.json").write_text(json.dumps(result(miou)))
        out = tmp_path / name
        done = run(
            "challenge",
            "--evaluation-dir",
            evaluation,
            "--data-dir",
            data_dir,
            "--destination",
            DESTINATION,
            "--model-name",
            "icnet",
            "--min-miou",
            "0.2",
            "--min-improvement",
            "0.01",
            "--replace-champion",
            "false",
            "--output-dir",
            out,
            "--publish-output",
            out / "publish",
            "--reason-output",
            out / "reason",
        )
        assert done.returncode == 0, done.stderr
        return out, done.stdout

    out, stdout = challenged(0.45, "first")
    assert (out / "publish").read_text() == "true"
    assert stdout.startswith("publish: mIoU 0.4500 reaches min_miou 0.2000")
    decision = challenge_folder.read_decision(out)
    assert decision["champion_generation"] == 0
    done = run(
        "upload",
        "--export-dir",
        make_export(tmp_path, 0.45),
        "--destination",
        DESTINATION,
        "--model-name",
        "icnet",
        "--version",
        "v1",
        "--challenge-dir",
        out,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["champion"] is True
    assert read(gcs_client, POINTER)["version"] == "v1"

    out, stdout = challenged(0.455, "worse")
    assert (out / "publish").read_text() == "false"
    assert (out / "reason").read_text().startswith("min_improvement: mIoU 0.4550 vs champion")
    assert "short of min_improvement 0.0100 by 0.0050" in stdout
    out, _ = challenged(0.1, "low")
    assert (out / "reason").read_text() == (
        "min_miou: mIoU 0.1000 is below min_miou 0.2000 by 0.1000; not published"
    )
    bad = run(
        "challenge",
        "--evaluation-dir",
        evaluation,
        "--data-dir",
        data_dir,
        "--destination",
        DESTINATION,
        "--model-name",
        "icnet",
        "--output-dir",
        out,
        "--replace-champion",
        "maybe",
    )
    assert bad.returncode == 2 and "must be true or false" in bad.stderr
