"""Real image builds with podman, one stage through `make run-component`, and the whole
Vertex template through `make pipeline-local` (the Vertex emulator, each step in its image).

The base image is made offline with debootstrap (`make base-image`, kept between runs on the
same machine) and the builds run with --network=none from wheels fetched on the host, so
nothing is pulled from a container registry.
"""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from image_segmentation.data import labels, records

REPO = Path(__file__).resolve().parents[1]
BASE_IMAGE = "localhost/python-base:3.11-bookworm"
TAG = "test"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def make(target: str, env: dict[str, str], **variables: str) -> subprocess.CompletedProcess:
    settings = {"CONTAINER_ENGINE": "podman", "BASE_IMAGE": BASE_IMAGE, "TAG": TAG, **variables}
    return subprocess.run(
        ["make", "--no-print-directory", target, *(f"{k}={v}" for k, v in settings.items())],
        cwd=REPO, env=env, capture_output=True, text=True,
    )  # fmt: skip


def check(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, (
        f"{result.args}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    )
    return result


def test_dockerfiles_pass_hadolint():
    dockerfiles = sorted(str(path) for path in (REPO / "docker").glob("*.Dockerfile"))
    assert len(dockerfiles) == 3
    result = subprocess.run(
        [str(REPO / ".venv" / "bin" / "hadolint"), *dockerfiles], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="session")
def podman_env() -> dict[str, str]:
    """The environment for podman on this VM, with the offline base image made once."""
    if shutil.which("podman") is None:
        if os.environ.get("CI"):
            pytest.fail("podman is missing: .ci/run installs it")
        pytest.skip("podman is not installed (apt-get install podman buildah debootstrap ...)")
    env = {**os.environ, "CONTAINERS_CONF": str(REPO / "docker" / "containers.conf")}
    check(make("base-image", env))
    return env


@pytest.fixture(scope="session")
def light_image(podman_env) -> str:
    check(make("image-light", podman_env, IMAGE_REGISTRY="localhost"))
    return f"localhost/image-segmentation-light:{TAG}"


@pytest.mark.containers
def test_light_image_is_slim_and_runs_as_non_root(light_image, podman_env):
    probe = "import importlib.util, os; print(os.getuid(), importlib.util.find_spec('tensorflow'))"
    result = check(subprocess.run(
        ["podman", "run", "--rm", "--network=none", light_image, "python", "-c", probe],
        env=podman_env, capture_output=True, text=True,
    ))  # fmt: skip
    assert result.stdout.split() == ["10001", "None"]
    usage = check(subprocess.run(["podman", "run", "--rm", light_image], env=podman_env,
                                 capture_output=True, text=True))  # fmt: skip
    assert "usage: python -m image_segmentation STAGE" in usage.stdout
    size = subprocess.run(
        ["podman", "image", "inspect", "--format", "{{.Size}}", light_image],
        env=podman_env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    print(f"{light_image}: {int(size.stdout) / 1e6:.0f} MB")
    assert int(size.stdout) < 450e6  # the debootstrap base alone is ~180 MB


@pytest.mark.containers
def test_run_component_downloads_and_prepares_on_the_host_folder(
    light_image, podman_env, served_zip, tmp_path
):
    url, sha1, counts = served_zip
    check(make("run-component", podman_env, STEP="download", DATA=str(tmp_path),
               ARGS=f"--source {url} --sha1 {sha1} --output-dir /data/downloaded"))  # fmt: skip
    assert json.loads((tmp_path / "downloaded" / "download.json").read_text())
    check(make("run-component", podman_env, STEP="prepare", DATA=str(tmp_path),
               ARGS=f"--dataset-dir /data/downloaded --output-dir /data/prepared "
                    f"--whitelist '{labels.LIVING_ROOM_WHITELIST}' --threshold 0 "
                    f"--train-shards 2 --val-shards 1"))  # fmt: skip
    prepared = tmp_path / "prepared"
    assert sorted(path.name for path in prepared.glob("*.tfrecord")) == [
        "train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord",
        "val-00000-of-00001.tfrecord",
    ]  # fmt: skip
    assert labels.read_labels_file(prepared / "labels.txt")[0] == "none"
    assert prepared.stat().st_uid == os.getuid()  # the step ran as the calling user
    for split, count in counts.items():
        shards = sorted(prepared.glob(f"{split}-*.tfrecord"))
        examples = [records.decode_example(r) for s in shards for r in records.read_records(s)]
        assert len(examples) == count
        assert all(example[records.MASK_ENCODED].startswith(b"\x89PNG") for example in examples)


def task_states(log: str) -> dict[str, str]:
    """The emulator's closing summary: task name (last part of its path) -> how it ended."""
    found = re.findall(r"^([\w.-]+): (succeeded|cached|skipped)", log, re.MULTILINE)
    return {path.rsplit(".", 1)[-1]: state for path, state in found}


@pytest.mark.containers
@pytest.mark.slow
def test_pipeline_local_publishes_and_its_quality_gate_stops_a_rerun(
    podman_env, served_zip, gcs_client, tmp_path
):
    """`make pipeline-local` runs the template `make pipeline-compile` writes through the
    Vertex emulator, each step in its image, the training job's machine in the export image,
    and publishes (min_miou 0). The same run with min_miou 1, out of a tiny model's reach,
    takes every step up to evaluate from the cache, converts and uploads nothing, and
    succeeds with the reason in its log."""
    url, sha1, _ = served_zip
    gcs_client.create_bucket("local-models")
    env = {**podman_env, "STORAGE_EMULATOR_HOST": os.environ["STORAGE_EMULATOR_HOST"]}
    params = (
        f"source_url={url} source_sha1={sha1} image_size=64 epochs=1 steps_per_epoch=2 "
        "batch_size=2 threshold=0 train_shards=1 val_shards=1"
    )
    first_run = f"destination=gs://local-models/icnet max_miou_drop=1 {params}"
    result = check(make("pipeline-local", env, PIPELINE_ROOT=str(tmp_path), PARAMS=first_run))
    log = ANSI.sub("", result.stdout + result.stderr)
    states = task_states(log)
    for task in ("download", "prepare", "training-job", "train", "evaluate", "convert"):
        assert states[task] == "succeeded", log[-4000:]
    assert states["upload"] == "succeeded" and states["not-champion"] == "skipped"
    # The job's one machine ran the train image the request named, with the export image in
    # its place (no GPU here).
    assert (
        "[customjob-1-workerpool0-0] localhost/image-segmentation-train:test "
        "(in localhost/image-segmentation-export:test)"
    ) in log
    names = [blob.name for blob in gcs_client.list_blobs("local-models")]
    (manifest_name,) = [name for name in names if name.endswith("/manifest.json")]
    version = manifest_name.split("/")[2]
    assert re.fullmatch(r"image-segmentation-[0-9]+", version)  # default: the run's name
    published = {name.split("/", 3)[3] for name in names if name.count("/") >= 3}
    (pointer,) = [name for name in names if name.endswith("/champion.json")]  # the first run
    champion = json.loads(gcs_client.bucket("local-models").blob(pointer).download_as_text())
    assert champion["version"] == version
    assert {"labels.txt", "icnet.mlpackage/Manifest.json"} <= published
    (run_root,) = (tmp_path / "gcs" / "emulated-bucket" / "pipeline-root").iterdir()
    model = run_root / "root" / "training-job" / "model"
    metrics = json.loads((model / "training_metrics.json").read_text())
    assert 0.0 <= metrics["val_pixel_accuracy"] <= 1.0
    evaluation = json.loads((run_root / "root" / "evaluate" / "metrics").read_text())
    assert 0.0 <= evaluation["miou"] <= 1.0
    matrix = json.loads((run_root / "root" / "evaluate" / "confusion_matrix").read_text())
    assert len(matrix["confusionMatrix"]["rows"]) == 11  # none + the ten living-room classes
    assert "<html" in (run_root / "root" / "evaluate" / "report").read_text()
    # The published numbers are the gated ones: the evaluate step's, not training's.
    manifest = json.loads(gcs_client.bucket("local-models").blob(manifest_name).download_as_text())
    assert manifest["metrics"]["source"] == "evaluate stage, validation split"
    for name in ("miou", "pixel_accuracy"):
        assert manifest["metrics"][name] == evaluation[name]
    for label, iou in manifest["metrics"]["class_iou"].items():  # undefined: not a KFP metric
        assert evaluation.get(f"iou: {label}") == iou
    # max_miou_drop 1: the smallest compression, scored on its own weights beside them
    coreml = manifest["coreml"]
    assert coreml["compression"] == "palettize-2" and coreml["file"] == "icnet.mlpackage"
    assert coreml["quality"]["weights"] == "decompressed from the file"
    assert 0.0 <= coreml["quality"]["miou"] <= 1.0

    # The same images and template, so the cache applies: straight to the command `make
    # pipeline-local` runs after building them.
    gated = subprocess.run(
        [str(REPO / ".venv" / "bin" / "python"), "-m", "pipelines", "local",
         "--template", str(tmp_path / "pipeline.yaml"), "--gcs-dir", str(tmp_path / "gcs"),
         "--engine", "podman", "--substitute", "image-segmentation-train=image-segmentation-export",
         *(f"--param={p}" for p in [*params.split(), "init=random",
                                    "destination=gs://local-models/gated", "min_miou=1"])],
        cwd=REPO, env=env, capture_output=True, text=True,
    )  # fmt: skip
    log = ANSI.sub("", gated.stdout + gated.stderr)
    assert gated.returncode == 0, log[-4000:]
    states = task_states(log)
    for task in ("download", "prepare", "training-job", "train", "evaluate"):
        assert states[task] == "cached"
    assert states["not-published"] == "succeeded"
    assert states["quality-gate"] == "skipped" and "convert" not in states
    miou = evaluation["miou"]
    assert (
        f"not converted or uploaded, stopped by min_miou: mIoU {miou:.4f} is below min_miou "
        f"1.0000 by {1 - miou:.4f}; not published"
    ) in log
    assert [blob.name for blob in gcs_client.list_blobs("local-models")] == names


@pytest.mark.containers
def test_pipeline_local_fails_when_a_step_fails(podman_env, served_zip, tmp_path):
    url, _, _ = served_zip
    params = f"destination=gs://nowhere/x source_url={url} source_sha1={'0' * 40}"
    result = make(
        "pipeline-local", podman_env, PIPELINE_ROOT=str(tmp_path), PARAMS=params,
        LOCAL_IMAGES="light",  # the run stops at download: the other images are not needed
    )  # fmt: skip
    log = ANSI.sub("", result.stdout + result.stderr)
    assert result.returncode != 0
    assert "error: task root.download failed after 1 attempt(s)" in log
    assert "SHA-1" in log or "sha1" in log.lower()  # the stage's own error is shown
    assert "[root.prepare]" not in log
