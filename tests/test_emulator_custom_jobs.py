"""The loopback CustomJob service (pipelines/emulator/custom_jobs.py), serving on 127.0.0.1
from this process, under Google's own CustomJob launcher (pipelines/emulator/launcher.py).

Each launcher run is a real `python -m pipelines.emulator.launcher` with the arguments a
compiled template gives the launcher; the job's replicas are real processes. Importing the
launcher takes most of each run's time (about 5 s of CPU), so runs that do not depend on each
other go side by side.
"""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import requests
from google.cloud.aiplatform_v1.types import CustomJob, JobState

from pipelines.emulator.custom_jobs import CustomJobService

PROJECT = "test-project"
LOCATION = "us-central1"
# Nothing may reach Google: google-auth would otherwise ask the metadata server.
OFFLINE = {"GCE_METADATA_HOST": "127.0.0.1:1", "GCE_METADATA_IP": "127.0.0.1:1"}
LAUNCHER_TIMEOUT = 120  # seconds; a run takes about 5, mostly imports

# Writes the Vertex variables it got to OUT_DIR/TASKTYPE-INDEX.json; "x" fails a second run.
REPORT = """
import json, os, sys
names = ("CLUSTER_SPEC", "TF_CONFIG", "CLOUD_ML_JOB_ID", "POOL_NAME")
env = {k: v for k, v in os.environ.items() if k in names or k.startswith("AIP_")}
task = json.loads(env["CLUSTER_SPEC"])["task"]
with open(os.path.join(sys.argv[1], f"{task['type']}-{task['index']}.json"), "x") as file:
    json.dump(env, file)
"""
SLEEP = "import time; time.sleep(60)"
# Says it has started (argv[1]/started) and, on SIGTERM, writes argv[1]/terminated and exits 143.
SLEEP_UNTIL_TERMINATED = """
import signal, sys, time
from pathlib import Path
out = Path(sys.argv[1])
def terminated(*_):
    (out / "terminated").touch()
    sys.exit(143)
signal.signal(signal.SIGTERM, terminated)
(out / "started").touch()
time.sleep(60)
"""


def start_replica(image: str, command: list[str], env: dict[str, str], name: str):
    """Run a replica's command on this machine (python: this interpreter)."""
    if command[0] in ("python", "python3"):
        command = [sys.executable, *command[1:]]
    return subprocess.Popen(command, env={**os.environ, **env})


@pytest.fixture
def service():
    with CustomJobService(start_replica, grace_seconds=2) as service:
        yield service


def pool(script: str, *args: str, replicas: int = 1, **machine) -> dict:
    """A worker pool spec as the template writes it: `python -c script args...`."""
    return {
        "machine_spec": {"machine_type": "n1-standard-4", **machine},
        "replica_count": replicas,
        "container_spec": {
            "image_uri": "europe-docker.pkg.dev/test-project/images/train:1",
            "command": ["python", "-c", textwrap.dedent(script)],
            "args": list(args),
        },
    }


def payload(*pools: dict, timeout: str = "604800s", output_dir: str = "") -> dict:
    """The launcher's payload, shaped as google-cloud-pipeline-components' CustomJob
    component writes it (empty values and all)."""
    return {
        "display_name": "train",
        "job_spec": {
            "worker_pool_specs": list(pools),
            "scheduling": {
                "timeout": timeout,
                "restart_job_on_worker_restart": True,
                "strategy": "STANDARD",
                "max_wait_duration": "86400s",
            },
            "service_account": "",
            "tensorboard": "",
            "base_output_directory": {"output_uri_prefix": output_dir},
        },
        "labels": {},
        "encryption_spec": {"kms_key_name": ""},
    }


def launch(service: CustomJobService, job: dict, gcp_resources: Path, **env) -> subprocess.Popen:
    """Start the launcher shim as the template's command line would run the launcher."""
    arguments = ["--type", "CustomJob", "--payload", json.dumps(job), "--project", PROJECT]
    arguments += ["--location", LOCATION, "--gcp_resources", str(gcp_resources)]
    shim = [sys.executable, "-m", "pipelines.emulator.launcher"]
    return subprocess.Popen(
        [*shim, "--endpoint", service.url, "--poll-seconds", "0.5", "--", *arguments],
        env={**os.environ, **OFFLINE, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(launcher: subprocess.Popen) -> tuple[int, str]:
    """The launcher's exit status and output."""
    output, _ = launcher.communicate(timeout=LAUNCHER_TIMEOUT)
    return launcher.returncode, output


def job_name(gcp_resources: Path) -> str:
    """The job the launcher wrote to gcp_resources, checked against the format it uses."""
    (resource,) = json.loads(gcp_resources.read_text())["resources"]
    assert resource["resourceType"] == "CustomJob"
    prefix = f"https://{LOCATION}-aiplatform.googleapis.com/v1/"
    name = resource["resourceUri"].removeprefix(prefix)
    assert re.fullmatch(rf"projects/{PROJECT}/locations/{LOCATION}/customJobs/\d+", name)
    return name


def test_two_pools_run_with_the_cluster_vertex_describes(service, tmp_path):
    job = payload(
        pool(REPORT, str(tmp_path), accelerator_type="NVIDIA_L4", accelerator_count=1),
        pool(REPORT, str(tmp_path), replicas=2),
        output_dir="gs://bucket/run-1",
    )
    job["job_spec"]["worker_pool_specs"][1]["container_spec"]["env"] = [
        {"name": "POOL_NAME", "value": "workers"}
    ]
    labels = {"vertex-ai-pipelines-run-billing-id": "1234"}
    gcp_resources = tmp_path / "gcp_resources"

    returncode, output = finish(
        launch(service, job, gcp_resources, VERTEX_AI_PIPELINES_RUN_LABELS=json.dumps(labels))
    )

    assert returncode == 0, output
    name = job_name(gcp_resources)
    assert service.job(name).state == JobState.JOB_STATE_SUCCEEDED
    (create,) = service.creates
    assert create.status == 200
    assert CustomJob.from_json(create.body, ignore_unknown_fields=False) == create.job
    assert create.job.display_name == "train"
    assert dict(create.job.labels) == labels  # the launcher adds the run's labels
    # The launcher drops max_wait_duration unless the strategy is FLEX_START.
    assert "max_wait_duration" not in create.job.job_spec.scheduling

    reports = {path.stem: json.loads(path.read_text()) for path in tmp_path.glob("*.json")}
    assert sorted(reports) == ["workerpool0-0", "workerpool1-0", "workerpool1-1"]
    clusters = [json.loads(env["CLUSTER_SPEC"])["cluster"] for env in reports.values()]
    cluster = clusters[0]
    assert all(other == cluster for other in clusters)
    assert [len(cluster["workerpool0"]), len(cluster["workerpool1"])] == [1, 2]
    addresses = cluster["workerpool0"] + cluster["workerpool1"]
    assert len(set(addresses)) == 3
    assert all(address.startswith("127.0.0.1:") for address in addresses)
    for task, env in reports.items():
        pool_name, index = task.split("-")
        cluster_spec = json.loads(env["CLUSTER_SPEC"])
        assert cluster_spec["task"] == {"type": pool_name, "index": int(index)}
        assert cluster_spec["environment"] == "cloud"
        assert cluster_spec["job"]["base_output_directory"] == {
            "output_uri_prefix": "gs://bucket/run-1"
        }
        tf_config = json.loads(env["TF_CONFIG"])
        tf_type = {"workerpool0": "chief", "workerpool1": "worker"}[pool_name]
        assert tf_config["task"] == {"type": tf_type, "index": int(index)}
        assert tf_config["cluster"] == {
            "chief": cluster["workerpool0"],
            "worker": cluster["workerpool1"],
        }
        assert env["CLOUD_ML_JOB_ID"] == name.rsplit("/", 1)[1]
        assert env["AIP_MODEL_DIR"] == "gs://bucket/run-1/model/"
        assert env["AIP_CHECKPOINT_DIR"] == "gs://bucket/run-1/checkpoints/"
        assert env["AIP_TENSORBOARD_LOG_DIR"] == "gs://bucket/run-1/logs/"
        assert env.get("POOL_NAME") == ("workers" if pool_name == "workerpool1" else None)


def test_a_failing_replica_fails_the_job_and_a_rerun_only_polls_it(service, tmp_path):
    gcp_resources = tmp_path / "gcp_resources"
    job = payload(pool(SLEEP), pool("import sys; sys.exit(1)"))

    returncode, output = finish(launch(service, job, gcp_resources))

    # A failed job is a RuntimeError to the launcher, which exits with its internal error code.
    assert returncode == 13, output
    name = job_name(gcp_resources)
    failed = service.job(name)
    assert failed.state == JobState.JOB_STATE_FAILED
    assert failed.error.code == 13
    assert "workerpool1-0 exited with a non-zero status of 1" in failed.error.message
    chief, worker = service.replicas(name)
    assert (chief.process.returncode, worker.process.returncode) == (-signal.SIGTERM, 1)

    # A retried task's launcher finds the job in gcp_resources: it creates none, polls the
    # old one once and fails as it did.
    seen = len(service.requests)
    returncode, output = finish(launch(service, job, gcp_resources))

    assert returncode == 13, output
    assert len(service.creates) == 1
    assert service.requests[seen:] == [("GET", f"/v1/{name}")]


def test_a_wrongly_typed_or_invalid_payload_creates_no_job(tmp_path):
    text_count = payload(pool(SLEEP, accelerator_type="NVIDIA_L4", accelerator_count="1"))
    two_chiefs = payload(pool(SLEEP, replicas=2))
    with (
        CustomJobService(start_replica) as typed_service,
        CustomJobService(start_replica) as checked_service,
    ):
        typed = launch(typed_service, text_count, tmp_path / "typed")
        checked = launch(checked_service, two_chiefs, tmp_path / "checked")
        (typed_returncode, typed_output), (checked_returncode, checked_output) = (
            finish(typed),
            finish(checked),
        )

        # proto-plus refuses the text "1" for an int32 while building the request.
        assert typed_returncode == 1, typed_output
        assert "TypeError" in typed_output
        assert typed_service.requests == []
        # The service refuses a chief pool of two machines; the launcher does not catch it.
        assert checked_returncode == 1, checked_output
        assert "400" in checked_output
        assert "replica_count must be 1" in checked_output
        (create,) = checked_service.creates
        assert create.status == 400
        assert create.job.job_spec.worker_pool_specs[0].replica_count == 2
    assert not (tmp_path / "typed").exists()
    assert not (tmp_path / "checked").exists()


def test_a_preempted_job_fails_and_its_replicas_get_sigterm(service, tmp_path):
    service.preempt_when(lambda: (tmp_path / "started").exists())
    gcp_resources = tmp_path / "gcp_resources"
    job = payload(pool(SLEEP_UNTIL_TERMINATED, str(tmp_path)), pool(SLEEP))

    returncode, output = finish(launch(service, job, gcp_resources))

    assert returncode == 13, output
    name = job_name(gcp_resources)
    preempted = service.job(name)
    assert preempted.state == JobState.JOB_STATE_FAILED
    assert preempted.error.code == 14  # UNAVAILABLE
    assert (tmp_path / "terminated").exists()
    chief, worker = service.replicas(name)
    assert (chief.process.returncode, worker.process.returncode) == (143, -signal.SIGTERM)


def test_timeout_cancel_and_errors_over_rest(service):
    """What the launcher does not exercise: a job's timeout, cancel, and the error bodies."""
    jobs = f"{service.url}/v1/projects/{PROJECT}/locations/{LOCATION}/customJobs"

    def post(job: dict) -> requests.Response:
        return requests.post(jobs, data=CustomJob.to_json(CustomJob(job)), timeout=10)

    def create(job: dict) -> str:
        del job["job_spec"]["scheduling"]["max_wait_duration"]  # as the launcher does
        response = post(job)
        assert response.status_code == 200, response.text
        assert response.json()["state"] == "JOB_STATE_PENDING"
        return response.json()["name"]

    waits_without_flex_start = post(payload(pool(SLEEP)))
    assert waits_without_flex_start.status_code == 400
    assert "FLEX_START" in waits_without_flex_start.json()["error"]["message"]
    timed = create(payload(pool(SLEEP), timeout="1s"))
    cancelled = create(payload(pool(SLEEP)))
    deadline = time.monotonic() + 10
    while service.job(cancelled).state != JobState.JOB_STATE_RUNNING:
        assert time.monotonic() < deadline, "the job did not start"
        time.sleep(0.05)
    response = requests.post(f"{service.url}/v1/{cancelled}:cancel", timeout=10)
    assert (response.status_code, response.json()) == (200, {})

    assert service.wait(cancelled).state == JobState.JOB_STATE_CANCELLED
    assert [r.process.returncode for r in service.replicas(cancelled)] == [-signal.SIGTERM]
    timed_out = service.wait(timed)
    assert timed_out.state == JobState.JOB_STATE_FAILED
    assert timed_out.error.code == 4  # DEADLINE_EXCEEDED
    assert [replica.process.returncode for replica in service.replicas(timed)] == [-signal.SIGTERM]
    response = requests.post(f"{service.url}/v1/{cancelled}:cancel", timeout=10)
    assert response.status_code == 400
    assert response.json()["error"]["status"] == "FAILED_PRECONDITION"

    unknown_field = requests.post(jobs, data='{"displayName": "x", "bogus": 1}', timeout=10)
    assert unknown_field.status_code == 400
    assert unknown_field.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert "bogus" in unknown_field.json()["error"]["message"]
    missing = requests.get(f"{service.url}/v1/projects/p/locations/l/customJobs/99", timeout=10)
    assert (missing.status_code, missing.json()["error"]["status"]) == (404, "NOT_FOUND")
