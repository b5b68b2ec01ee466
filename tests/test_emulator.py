"""The compiled Vertex template, run as Vertex runs it (pipelines/emulator/).

Every step runs its exact command line as a real process that sees Cloud Storage at /gcs; the
train task runs Google's own CustomJob launcher (from the locked google-cloud-pipeline-components)
against the loopback CustomJob service, which parses the request strictly and runs the worker
pools as processes with CLUSTER_SPEC, TF_CONFIG and AIP_* set. The dataset comes from a
loopback HTTP server and the models are published to the GCS emulator. The runs share one
step cache, as runs of one project share Vertex's: download and prepare run once.
"""

import json
from pathlib import Path

import pytest
import yaml

from components import Images
from pipelines import pipeline
from pipelines.emulator import custom_jobs, run, steps, template

IMAGES = Images("europe-west4-docker.pkg.dev/p/image-segmentation", "v1")
TINY = {
    "image_size": 64,
    "epochs": 2,
    "steps_per_epoch": 2,
    "batch_size": 2,
    "threshold": 0.0,
    "train_shards": 1,
    "val_shards": 1,
    "init": "random",  # the ImageNet file is in the train image only
}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def vertex(tmp_path_factory, served_zip, gcs_emulator):
    """The compiled template, a folder standing in for Cloud Storage, the shared step cache,
    the run's parameters and the bucket models are published to."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    root = tmp_path_factory.mktemp("vertex")
    template_file = Path(pipeline.compile_pipeline(IMAGES, str(root / "pipeline.yaml")))
    url, sha1, _ = served_zip
    client = storage.Client(project="test", credentials=AnonymousCredentials())
    bucket = client.create_bucket("emulated-models")
    parameters = {
        "source_url": url,
        "source_sha1": sha1,
        "destination": "gs://emulated-models/icnet",
        **TINY,
    }
    yield {
        "template": template_file,
        "gcs": root / "gcs",
        "cache": root / "cache.json",
        "parameters": parameters,
        "bucket": bucket,
    }
    bucket.delete(force=True)


def emulate(vertex: dict, service, **options) -> run.PipelineRun:
    parameters = {**vertex["parameters"], **options.pop("parameters", {})}
    runner = steps.ProcessSteps(vertex["gcs"])
    return run.emulate(
        vertex["template"],
        parameters,
        runner,
        cache_file=vertex["cache"],
        service=service,
        **options,
    )


def new_checkpoint_of_epoch(vertex: dict, epoch: int):
    """True once a model folder under the emulated bucket holds epoch `epoch`'s checkpoint that
    was not there when this was made (earlier tests leave theirs)."""
    pattern = f"**/model/checkpoints/epoch-{epoch:04d}.npz"
    before = set(vertex["gcs"].glob(pattern))
    return lambda: bool(set(vertex["gcs"].glob(pattern)) - before)


def states(finished: run.PipelineRun) -> dict[str, str]:
    return {path.rsplit(".", 1)[-1]: result.state for path, result in finished.results.items()}


def published_manifests(vertex: dict) -> list[dict]:
    blobs = vertex["bucket"].client.list_blobs("emulated-models")
    return [json.loads(b.download_as_text()) for b in blobs if b.name.endswith("manifest.json")]


def test_one_machine_a_preempted_job_is_retried_and_resumes(vertex, capfd):
    with custom_jobs.CustomJobService(steps.ProcessSteps(vertex["gcs"]).start) as service:
        service.preempt_when(new_checkpoint_of_epoch(vertex, 1), times=1)
        finished = emulate(vertex, service, substitution="typed", retry_in_new_folder=True)
        jobs = service.jobs()
    log = capfd.readouterr()
    ended = states(finished)
    for task in ("download", "prepare", "training-job", "train", "evaluate", "convert"):
        assert ended[task] in ("succeeded", "cached"), ended
    assert ended["not-champion"] == "skipped"  # the first model: no champion yet
    assert finished.results["root.train"].attempts == 2
    assert [job.state.name for job in jobs] == ["JOB_STATE_FAILED", "JOB_STATE_SUCCEEDED"]

    # The request Google's launcher made of the default machine settings, parsed strictly.
    request = jobs[0]
    spec = request.job_spec
    (pool,) = spec.worker_pool_specs
    assert pool.replica_count == 1
    assert (
        pool.machine_spec.machine_type,
        pool.machine_spec.accelerator_type.name,
        pool.machine_spec.accelerator_count,
    ) == ("g2-standard-8", "NVIDIA_L4", 1)
    assert pool.container_spec.image_uri == IMAGES.for_stage("train")
    command = list(pool.container_spec.command)
    model = finished.results["root.training-job"].artifacts["model"]
    assert command[:4] == ["python", "-m", "image_segmentation", "train"]
    assert command[command.index("--output-dir") + 1] == f"/gcs/{model['uri'][5:]}"
    assert command[command.index("--image-size") + 1] == "64"
    assert spec.base_output_directory.output_uri_prefix == model["uri"]
    assert spec.scheduling.strategy.name == "STANDARD"
    assert spec.scheduling.restart_job_on_worker_restart
    assert spec.service_account == "pipelines@emulated-project.iam.gserviceaccount.com"
    assert jobs[1].job_spec == spec  # the retry asked for the same job

    # The second job resumed in the same model folder; the launcher's gcp_resources file,
    # which the machines see too, did not stop the run.
    assert "resuming from epoch-0001.npz (epoch 1 done)" in log.err
    model_dir = vertex["gcs"] / model["uri"][5:]
    history = json.loads((model_dir / "history.json").read_text())
    assert [entry["epoch"] for entry in history] == [1, 2]
    assert list((model_dir / "logs").rglob("events.out.tfevents.*"))  # AIP_TENSORBOARD_LOG_DIR
    (manifest,) = published_manifests(vertex)
    evaluated = finished.results["root.evaluate"].parameters["miou"]
    assert manifest["metrics"]["miou"] == pytest.approx(evaluated)
    assert manifest["challenge"]["rule"] == "first champion"
    pointer = vertex["bucket"].blob("icnet/icnet-living-room/champion.json")
    assert json.loads(pointer.download_as_text())["version"] == manifest["version"]


def test_two_machines_train_together(vertex, capfd):
    """Publishing is the first test's: this run is gated off (min_miou 1) after evaluate, which
    reads the model folder the chief wrote, so no conversion is paid for twice."""
    with custom_jobs.CustomJobService(steps.ProcessSteps(vertex["gcs"]).start) as service:
        finished = emulate(
            vertex,
            service,
            substitution="text",
            parameters={"replica_count": 2, "epochs": 1, "min_miou": 1.0},
        )
        (job,) = service.jobs()
    ended = states(finished)
    assert ended["download"] == ended["prepare"] == "cached"  # the first test's, as on Vertex
    assert ended["evaluate"] == "succeeded" and ended["not-champion"] == "succeeded"
    assert finished.results["root.evaluate"].parameters["miou"] < 1.0
    chief, workers = job.job_spec.worker_pool_specs
    assert (chief.replica_count, workers.replica_count) == (1, 1)
    assert workers.container_spec == chief.container_spec
    assert job.state.name == "JOB_STATE_SUCCEEDED"
    assert "2 replica(s) x batch 2 = global batch 4" in capfd.readouterr().err


def test_a_retry_in_the_same_folder_fails_fast_and_a_rerun_resumes(vertex, capfd):
    """If Vertex gives a retried task its failed attempt's folder, Google's launcher finds its
    gcp_resources file and only polls the failed job again: the run fails in seconds. Running
    the same settings again takes the training-job step from the cache, so its new job trains
    into the same model folder and resumes."""
    gated = {"min_miou": 1.0, "learning_rate": 0.002}  # new settings: a new model folder
    with custom_jobs.CustomJobService(steps.ProcessSteps(vertex["gcs"]).start) as service:
        service.preempt_when(new_checkpoint_of_epoch(vertex, 1), times=1)
        with pytest.raises(template.StepFailed, match="train failed after 3 attempt"):
            emulate(vertex, service, retry_in_new_folder=False, parameters=gated)
        assert len(service.jobs()) == 1  # three attempts, one job: the retries only polled it
        finished = emulate(vertex, service, parameters=gated)
        assert len(service.jobs()) == 2
    ended = states(finished)
    assert ended["training-job"] == "cached" and ended["train"] == "succeeded"
    assert ended["not-published"] == "succeeded" and ended["quality-gate"] == "skipped"
    assert "resuming from epoch-0001.npz (epoch 1 done)" in capfd.readouterr().err


def test_the_train_request_does_not_depend_on_how_vertex_substitutes(vertex):
    """No placeholder is left in the worker pools for Vertex to fill: the task's inputs come
    whole from the training-job step, typed."""
    spec = yaml.safe_load(vertex["template"].read_text())
    (train,) = [
        t for t in spec["root"]["dag"]["tasks"].values() if t["taskInfo"]["name"] == "train"
    ]
    sources = train["inputs"]["parameters"]
    assert sources["worker_pool_specs"] == {
        "taskOutputParameter": {
            "producerTask": "training-job",
            "outputParameterKey": "worker_pool_specs",
        }
    }
    constants = json.dumps([s for s in sources.values() if "runtimeValue" in s])
    assert "{{$.inputs" not in constants
