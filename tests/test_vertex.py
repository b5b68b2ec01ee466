"""`make pipeline-run` and `make pipeline-upload`, through the real Google clients, offline.

The commands make would run (`make -n`) are run in-process against loopback fakes of the
Vertex AI REST API and of Artifact Registry (tests/vertex_fake.py); the pipeline-root bucket
check goes to the real GCS emulator. Only the project-number lookup is stubbed.
"""

import json
import shlex
import subprocess
from pathlib import Path

import pytest
import vertex_fake
import yaml

from pipelines.__main__ import main as pipelines_main

REPO = Path(__file__).resolve().parents[1]
PROJECT, REGION, BUCKET = "my-project", "europe-west4", "my-bucket"
SERVICE_ACCOUNT = f"pipelines@{PROJECT}.iam.gserviceaccount.com"
REGISTRY, TAG = f"{REGION}-docker.pkg.dev/{PROJECT}/image-segmentation", "v1.2"


@pytest.fixture
def fake():
    state, url, server = vertex_fake.start()
    yield state, url
    server.shutdown()
    server.server_close()


def make_commands(target: str, tmp_path: Path, **settings: str) -> list[list[str]]:
    """The `python -m pipelines ...` commands `make -n TARGET` would run, as argv lists."""
    variables = {"PIPELINE_FILE": str(tmp_path / "pipeline.yaml"), **settings}
    result = subprocess.run(
        ["make", "--no-print-directory", "-n", target,
         *(f"{name}={value}" for name, value in variables.items())],
        cwd=REPO, capture_output=True, text=True, check=True,
    )  # fmt: skip
    lines = result.stdout.replace("\\\n", " ").splitlines()
    return [shlex.split(line)[3:] for line in lines if " -m pipelines " in line]


def vertex_settings(**extra: str) -> dict[str, str]:
    base = {"PROJECT": PROJECT, "REGION": REGION, "BUCKET": BUCKET, "TAG": TAG,
            "SERVICE_ACCOUNT": SERVICE_ACCOUNT}  # fmt: skip
    return {**base, **extra}


@pytest.fixture
def pipeline_root_bucket(gcs_client, monkeypatch):
    """The run's bucket in the emulator, owned (as the project-number stub says) by PROJECT."""
    from google.cloud.aiplatform.utils import resource_manager_utils

    bucket = gcs_client.bucket(BUCKET)
    if not bucket.exists():
        gcs_client.create_bucket(BUCKET)
    bucket.reload()

    def project_number(project_id: str, credentials=None) -> str:
        assert project_id == PROJECT
        return str(bucket.project_number)

    monkeypatch.setattr(resource_manager_utils, "get_project_number", project_number)
    return bucket


@pytest.mark.slow  # importing the Vertex SDK takes 10-30 s
def test_pipeline_run_submits_the_job(fake, pipeline_root_bucket, tmp_path, capsys, caplog):
    from google.auth.credentials import AnonymousCredentials

    state, url = fake
    tensorboard = f"projects/{PROJECT}/locations/{REGION}/tensorboards/42"
    params = (
        "epochs=3 alpha=0.5 model_version=v9 machine_type=a2-highgpu-2g "
        f"accelerator_type=NVIDIA_TESLA_A100 accelerator_count=2 replica_count=3 "
        f"scheduling_strategy=SPOT tensorboard={tensorboard} train_timeout=7200s"
    )
    compile_args, run_args = make_commands(
        "pipeline-run", tmp_path, **vertex_settings(PARAMS=params)
    )
    assert compile_args[:1] == ["compile"] and run_args[:1] == ["run"]
    assert pipelines_main(compile_args) == 0
    status = pipelines_main([*run_args, "--api-endpoint", url], credentials=AnonymousCredentials())
    assert status == 0

    assert "get or create a GCS bucket" not in caplog.text  # the bucket check passed
    (request,) = [r for r in state.requests if r.method == "POST"]
    assert request.path == f"/v1/projects/{PROJECT}/locations/{REGION}/pipelineJobs"
    (job_id,) = request.query["pipelineJobId"]
    assert job_id.startswith("image-segmentation-")
    body = request.json()
    assert body["serviceAccount"] == SERVICE_ACCOUNT
    assert body["labels"]["image-tag"] == "v1-2"  # label values allow no dots
    runtime = body["runtimeConfig"]
    assert runtime["gcsOutputDirectory"] == f"gs://{BUCKET}/pipeline-root"
    assert runtime["parameterValues"] == {
        "destination": f"gs://{BUCKET}/models",
        "epochs": 3,
        "alpha": 0.5,
        "model_version": "v9",
        "machine_type": "a2-highgpu-2g",
        "accelerator_type": "NVIDIA_TESLA_A100",
        "accelerator_count": 2,
        "replica_count": 3,
        "scheduling_strategy": "SPOT",
        "tensorboard": tensorboard,
        "train_timeout": "7200s",
    }
    spec = body["pipelineSpec"]
    assert spec == yaml.safe_load((tmp_path / "pipeline.yaml").read_text())
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert {f"{REGISTRY}/image-segmentation-{name}:{TAG}" for name in ("light", "export")} < images
    (launcher,) = {image for image in images if not image.startswith(f"{REGISTRY}/")}
    assert launcher.startswith("gcr.io/ml-pipeline/google-cloud-pipeline-components:")

    # The train step: a CustomJob whose worker pools the training-job step writes at run time
    # from the run's values (sized and checked there: tests/test_pipeline.py); the job takes
    # them whole, with the strategy, TensorBoard and timeout of the run and its service account.
    tasks = spec["root"]["dag"]["tasks"]
    ((name, train),) = vertex_fake.custom_job_tasks(spec).items()
    assert train["taskInfo"]["name"] == "train"
    assert train["dependentTasks"] == ["training-job"]
    assert name in tasks["evaluate"]["dependentTasks"]
    wired = train["inputs"]["parameters"]
    for output in ("worker_pool_specs", "base_output_directory"):
        assert wired[output] == {
            "taskOutputParameter": {"producerTask": "training-job", "outputParameterKey": output}
        }
    assert wired["strategy"] == {"componentInputParameter": "scheduling_strategy"}
    assert wired["tensorboard"] == {"componentInputParameter": "tensorboard"}
    assert wired["timeout"] == {"componentInputParameter": "train_timeout"}
    assert wired["service_account"] == {
        "runtimeValue": {"constant": "{{$.pipeline_service_account}}"}
    }  # Vertex fills in the run's, body["serviceAccount"] above
    assert wired["restart_job_on_worker_restart"] == {"runtimeValue": {"constant": True}}
    assert train["retryPolicy"]["maxRetryCount"] == 2
    settings = tasks["training-job"]["inputs"]["parameters"]
    for parameter in ("machine_type", "accelerator_type", "accelerator_count", "replica_count",
                      "scheduling_strategy", "epochs", "alpha"):  # fmt: skip
        assert settings[parameter] == {"componentInputParameter": parameter}
    step = spec["deploymentSpec"]["executors"]["exec-training-job"]["container"]
    assert step["image"] == f"{REGISTRY}/image-segmentation-light:{TAG}"
    assert step["args"][step["args"].index("--train-image") + 1] == (
        f"{REGISTRY}/image-segmentation-train:{TAG}"
    )
    out = capsys.readouterr().out
    assert (
        f"https://console.cloud.google.com/vertex-ai/locations/{REGION}/pipelines/runs/"
        f"{job_id}?project={PROJECT}"
    ) in out


def test_bad_parameters_are_refused_before_anything_is_sent(fake, tmp_path, capsys):
    state, url = fake
    template = tmp_path / "pipeline.yaml"
    assert pipelines_main(["compile", "--image-registry", REGISTRY, "--tag", TAG,
                           "--output", str(template)]) == 0  # fmt: skip
    base = ["run", "--template", str(template), "--project", PROJECT, "--region", REGION,
            "--pipeline-root", f"gs://{BUCKET}/root", "--service-account", SERVICE_ACCOUNT,
            "--api-endpoint", url]  # fmt: skip
    assert pipelines_main([*base, "--param", "epoch=3"]) == 2
    assert "unknown pipeline parameter 'epoch'" in capsys.readouterr().err
    assert pipelines_main([*base, "--param", "epochs=many"]) == 2
    assert "'epochs' wants NUMBER_INTEGER, got 'many'" in capsys.readouterr().err
    params = tmp_path / "params.json"
    params.write_text(json.dumps(["not", "an", "object"]))
    assert pipelines_main([*base, "--params-file", str(params)]) == 2
    assert "expected a JSON object" in capsys.readouterr().err
    assert state.requests == []


def test_a_run_that_could_only_fail_later_is_refused_with_every_problem(fake, tmp_path, capsys):
    """The stages' own checks run on the parameters (with the template's defaults) before
    anything is sent: a bad destination would otherwise fail in the upload step, after the
    whole GPU training."""
    state, url = fake
    template = tmp_path / "pipeline.yaml"
    assert pipelines_main(["compile", "--image-registry", REGISTRY, "--tag", TAG,
                           "--output", str(template)]) == 0  # fmt: skip
    bad = ("destination=not-a-uri model_version=../v1 image_size=100 epochs=-1 alpha=0 "
           "resize=fit init=foo whitelist=nosuchclass replica_count=0 min_miou=2 threshold=nan "
           "scheduling_strategy=CHEAP accelerator_type= source_sha1=abc")  # fmt: skip
    status = pipelines_main(
        ["run", "--template", str(template), "--project", PROJECT, "--region", REGION,
         "--pipeline-root", f"gs://{BUCKET}/root", "--service-account", SERVICE_ACCOUNT,
         "--api-endpoint", url, *(f"--param={p}" for p in bad.split())]
    )  # fmt: skip
    error = capsys.readouterr().err
    assert status == 2 and "Traceback" not in error
    for words in (
        "destination: not a gs:// URI: 'not-a-uri'",
        "bad version '../v1'",
        "image size 100x100 is not supported",
        "--epochs must be >= 1, got -1",
        "alpha scales every layer's width and must be > 0",
        "invalid choice: 'fit'",
        "init must be imagenet, random or a gs:// weights file, got 'foo'",
        "unknown class 'nosuchclass'",
        "replica_count must be at least 1, got 0",
        "min_miou must be a number from 0 to 1, got 2.0",
        "threshold must be a number from 0 to 1, got nan",
        "scheduling_strategy must be one of STANDARD, SPOT, FLEX_START",
        "accelerator_count 1 needs an accelerator_type",
        "source_sha1: --sha1 must be 40 hex digits or 'none'",
    ):
        assert words in error
    assert state.requests == []


@pytest.mark.slow  # importing the Vertex SDK takes 10-30 s
def test_a_pipeline_root_bucket_that_does_not_exist_is_refused(fake, gcs_client, tmp_path, capsys):
    """The SDK would create a mistyped bucket and run there; the run is refused instead."""
    from google.auth.credentials import AnonymousCredentials

    state, url = fake
    template = tmp_path / "pipeline.yaml"
    assert pipelines_main(["compile", "--image-registry", REGISTRY, "--tag", TAG,
                           "--output", str(template)]) == 0  # fmt: skip
    status = pipelines_main(
        ["run", "--template", str(template), "--project", PROJECT, "--region", REGION,
         "--pipeline-root", "gs://my-buckett/root", "--service-account", SERVICE_ACCOUNT,
         "--api-endpoint", url, "--param", "destination=gs://my-bucket/models"],
        credentials=AnonymousCredentials(),
    )  # fmt: skip
    assert status == 2
    assert "the pipeline root's bucket gs://my-buckett does not exist" in capsys.readouterr().err
    assert state.requests == []
    assert [bucket.name for bucket in gcs_client.list_buckets()] == []


def test_a_bucket_given_as_a_uri_is_taken_as_its_name(tmp_path):
    (_, run_args) = make_commands(
        "pipeline-run", tmp_path, **vertex_settings(BUCKET=f"gs://{BUCKET}/")
    )
    assert run_args[run_args.index("--pipeline-root") + 1] == f"gs://{BUCKET}/pipeline-root"
    assert f"destination=gs://{BUCKET}/models" in run_args


def test_params_file_values_keep_their_spaces(tmp_path):
    from pipelines import vertex

    template = tmp_path / "pipeline.yaml"
    pipelines_main(["compile", "--image-registry", "r", "--tag", "t", "--output", str(template)])
    parsed = vertex.parse_parameters(
        template,
        [
            "whitelist=sofa, couch, lounge|lamp",
            "threshold=0.25",
            "image_size=512",
            "destination=gs://my-bucket/models",
        ],
    )
    assert parsed == {
        "whitelist": "sofa, couch, lounge|lamp",
        "threshold": 0.25,
        "image_size": 512,
        "destination": "gs://my-bucket/models",
    }


def test_pipeline_upload_publishes_the_template(fake, tmp_path, capsys):
    state, url = fake
    compile_args, upload_args = make_commands("pipeline-upload", tmp_path, **vertex_settings())
    host = f"https://{REGION}-kfp.pkg.dev/{PROJECT}/image-segmentation-pipelines"
    assert upload_args[upload_args.index("--host") + 1] == host
    assert pipelines_main(compile_args) == 0
    upload_args[upload_args.index("--host") + 1] = f"{url}/{PROJECT}/image-segmentation-pipelines"
    assert pipelines_main(upload_args) == 0

    (request,) = state.requests
    assert request.method == "POST"
    assert request.path == f"/{PROJECT}/image-segmentation-pipelines"
    form = request.form()
    assert form["tags"] == (None, f"latest,{TAG}".encode())
    filename, content = form["content"]
    assert filename == "pipeline.yaml"
    assert content == (tmp_path / "pipeline.yaml").read_bytes()
    assert "uploaded image-segmentation sha256:" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("target", "settings", "missing"),
    [
        ("pipeline-compile", {}, "IMAGE_REGISTRY"),
        ("pipeline-run", {}, "PROJECT REGION BUCKET SERVICE_ACCOUNT"),  # as the README asks
        ("pipeline-run", {"IMAGE_REGISTRY": REGISTRY}, "PROJECT REGION BUCKET SERVICE_ACCOUNT"),
        ("pipeline-run", vertex_settings(SERVICE_ACCOUNT=""), "SERVICE_ACCOUNT"),
        ("pipeline-upload", {"IMAGE_REGISTRY": REGISTRY, "PROJECT": PROJECT}, "REGION"),
        ("push", {}, "IMAGE_REGISTRY"),
        ("run-component", {}, "STEP"),
    ],
)
def test_missing_settings_name_every_variable(target, settings, missing, tmp_path):
    """All the missing settings at once, not one per try."""
    result = subprocess.run(
        ["make", "-n", target, f"PIPELINE_FILE={tmp_path}/p.yaml",
         *(f"{name}={value}" for name, value in settings.items())],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode != 0
    assert f"{missing} not set: make {target} " in result.stderr
    assert " ".join(f"{name}=..." for name in missing.split()) in result.stderr


def test_pipeline_local_without_a_container_engine_says_so(tmp_path):
    result = subprocess.run(
        ["make", "--no-print-directory", "pipeline-local", "CONTAINER_ENGINE=no-such-engine",
         f"PIPELINE_ROOT={tmp_path}"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode != 0
    assert "error: no-such-engine not found: install docker or podman" in result.stderr
    assert "Traceback" not in result.stderr and list(tmp_path.iterdir()) == []


def _compiled(tmp_path: Path) -> Path:
    template = tmp_path / "pipeline.yaml"
    assert pipelines_main(["compile", "--image-registry", REGISTRY, "--tag", TAG,
                           "--output", str(template)]) == 0  # fmt: skip
    return template


@pytest.fixture
def distinct_job_ids(monkeypatch):
    """The SDK names a job after the second it was made: two runs in one second would clash."""
    from datetime import datetime, timedelta

    from google.cloud.aiplatform import pipeline_jobs

    clock = iter(datetime(2026, 1, 5, 3) + timedelta(seconds=n) for n in range(1000))
    monkeypatch.setattr(pipeline_jobs, "_get_current_time", lambda: next(clock))


@pytest.mark.slow  # importing the Vertex SDK takes 10-30 s
def test_pipeline_runs_with_an_experiment_line_up_in_it(
    fake, pipeline_root_bucket, distinct_job_ids, tmp_path, capsys
):
    """docs/vertex.md's comparison: two runs into one experiment. The real client gets or
    makes the default metadata store and the experiment's context (system.Experiment) before
    it creates the job, then adds the run's own context, which Vertex names in the job, to
    the experiment's: that is what lines the runs up in Vertex AI -> Experiments."""
    from google.auth.credentials import AnonymousCredentials

    state, url = fake
    location = f"projects/{PROJECT}/locations/{REGION}"
    store = f"{location}/metadataStores/default"
    experiment = f"{store}/contexts/init-comparison"
    jobs = []
    for init in ("imagenet", "random"):
        compile_args, run_args = make_commands(
            "pipeline-run", tmp_path,
            **vertex_settings(EXPERIMENT="init-comparison", PARAMS=f"init={init}"),
        )  # fmt: skip
        assert run_args[-2:] == ["--experiment", "init-comparison"]
        assert pipelines_main(compile_args) == 0
        status = pipelines_main(
            [*run_args, "--api-endpoint", url], credentials=AnonymousCredentials()
        )
        assert status == 0
        (job,) = [name for name in state.jobs if name not in jobs]
        jobs.append(job)
        assert state.jobs[job]["runtimeConfig"]["parameterValues"]["init"] == init
        assert "experiment: init-comparison" in capsys.readouterr().out

    calls = [(r.method, r.path.removeprefix(f"/v1/{location}")) for r in state.requests]
    first_run = calls[: calls.index(("POST", "/pipelineJobs")) + 1]
    assert first_run == [
        ("GET", "/metadataStores/default"),  # a new project has none: made on first use
        ("POST", "/metadataStores"),
        ("GET", "/metadataStores/default"),
        ("GET", "/metadataStores/default/contexts/init-comparison"),
        ("POST", "/metadataStores/default/contexts"),
        ("POST", "/pipelineJobs"),
    ]
    creates = [r for r in state.requests if r.path.endswith("/contexts") and r.method == "POST"]
    (create,) = creates  # the second run finds the experiment
    assert create.query["contextId"] == ["init-comparison"]
    body = create.json()
    assert body["schemaTitle"] == "system.Experiment" and body["displayName"] == "init-comparison"
    assert state.contexts[experiment]["schemaTitle"] == "system.Experiment"
    adds = [r for r in state.requests if r.path.endswith(":addContextChildren")]
    assert [r.path for r in adds] == [f"/v1/{experiment}:addContextChildren"] * 2
    run_contexts = [f"{store}/contexts/{job.rsplit('/', 1)[1]}" for job in jobs]
    assert state.children[experiment] == run_contexts
    assert {state.contexts[c]["schemaTitle"] for c in run_contexts} == {"system.PipelineRun"}


@pytest.mark.parametrize(
    "name", ["Init-Comparison", "init_comparison", "abc", "x" * 129, "init comparison"]
)
def test_a_bad_experiment_name_is_refused_before_anything_is_sent(name, fake, tmp_path, capsys):
    state, url = fake
    template = tmp_path / "pipeline.yaml"
    template.write_text("not read: the name is checked first")
    status = pipelines_main(
        ["run", "--template", str(template), "--project", PROJECT, "--region", REGION,
         "--pipeline-root", f"gs://{BUCKET}/root", "--service-account", SERVICE_ACCOUNT,
         "--api-endpoint", url, "--experiment", name]
    )  # fmt: skip
    error = capsys.readouterr().err
    assert status == 2
    assert error == (
        f"error: bad experiment name {name!r}: 4 to 128 lowercase letters, digits and '-' "
        "(Vertex's rule), e.g. init-comparison\n"
    )
    assert state.requests == []


@pytest.mark.slow  # importing the Vertex SDK takes 10-30 s
def test_pipeline_schedule_and_its_targets(fake, pipeline_root_bucket, tmp_path, capsys):
    """make pipeline-schedule creates a schedule of the compiled template that runs it as
    pipeline-run would, one run at a time; the list, pause, resume and delete targets act on
    it through the real client, and Vertex's state rules (no pause of a paused schedule)."""
    from google.auth.credentials import AnonymousCredentials

    state, url = fake
    credentials = AnonymousCredentials()
    location = f"projects/{PROJECT}/locations/{REGION}"
    cron = "TZ=Europe/Amsterdam 0 3 * * 1"
    compile_args, create_args = make_commands(
        "pipeline-schedule", tmp_path, **vertex_settings(CRON=cron, PARAMS="epochs=20")
    )
    assert create_args[:2] == ["schedule", "create"]
    assert create_args[-2:] == ["--cron", cron]
    assert pipelines_main(compile_args) == 0
    assert pipelines_main([*create_args, "--api-endpoint", url], credentials=credentials) == 0
    (request,) = state.requests
    assert (request.method, request.path) == ("POST", f"/v1/{location}/schedules")
    body = request.json()
    assert body["cron"] == cron
    assert body["maxConcurrentRunCount"] == "1"  # int64: a string in JSON
    assert "allowQueueing" not in body  # a run due while one trains is skipped, not queued
    assert body["displayName"] == f"image-segmentation {cron}"
    job_request = body["createPipelineJobRequest"]
    assert job_request["parent"] == location
    job = job_request["pipelineJob"]
    assert job["serviceAccount"] == SERVICE_ACCOUNT
    assert job["labels"] == {"image-tag": "v1-2"}
    assert job["pipelineSpec"] == yaml.safe_load((tmp_path / "pipeline.yaml").read_text())
    assert job["runtimeConfig"]["gcsOutputDirectory"] == f"gs://{BUCKET}/pipeline-root"
    assert job["runtimeConfig"]["parameterValues"] == {
        "destination": f"gs://{BUCKET}/models",
        "epochs": 20,
    }
    (name,) = state.schedules
    schedule_id = name.rsplit("/", 1)[1]
    out = capsys.readouterr().out
    assert f"scheduled {name}" in out and f"{schedule_id}  ACTIVE" in out

    def target(goal: str, **settings: str) -> int:
        (args,) = make_commands(goal, tmp_path, PROJECT=PROJECT, REGION=REGION, **settings)
        return pipelines_main([*args, "--api-endpoint", url], credentials=credentials)

    assert target("pipeline-schedules") == 0
    out = capsys.readouterr().out
    assert f"{schedule_id}  ACTIVE" in out and repr(cron) in out
    assert target("pipeline-schedule-pause", SCHEDULE=schedule_id) == 0
    assert state.schedules[name]["state"] == "PAUSED"
    assert f"paused {name}" in capsys.readouterr().out
    assert target("pipeline-schedule-pause", SCHEDULE=schedule_id) == 1  # Vertex refuses
    error = capsys.readouterr().err
    assert error.startswith("error: Vertex AI: 400 ") and "Traceback" not in error
    assert target("pipeline-schedule-resume", SCHEDULE=name) == 0  # a full name works too
    assert state.schedules[name]["state"] == "ACTIVE"
    assert target("pipeline-schedule-delete", SCHEDULE=schedule_id) == 0
    assert state.schedules == {}
    assert f"deleted {name}" in capsys.readouterr().out
    assert target("pipeline-schedules") == 0
    assert "no pipeline schedules" in capsys.readouterr().out
    assert target("pipeline-schedule-resume", SCHEDULE=schedule_id) == 1
    assert "error: Vertex AI: 404 " in capsys.readouterr().err
    actions = [(r.method, r.path.split(location)[1]) for r in state.requests]
    assert ("POST", f"/schedules/{schedule_id}:pause") in actions
    assert ("POST", f"/schedules/{schedule_id}:resume") in actions
    assert ("DELETE", f"/schedules/{schedule_id}") in actions


@pytest.mark.parametrize(
    ("cron", "words"),
    [
        ("0 3 * *", "want 5 fields"),
        ("0 3 * * 1 2", "want 5 fields"),
        ("60 3 * * 1", "minute '60' is not *, a number from 0 to 59"),
        ("0 24 * * 1", "hour '24'"),
        ("0 3 0 * 1", "day of month '0'"),
        ("0 3 * 13 1", "month '13'"),
        ("0 3 * * MOX", "day of week 'MOX'"),
        ("*/0 3 * * 1", "minute '*/0'"),
        ("TZ=Mars/Olympus 0 3 * * 1", "unknown time zone 'Mars/Olympus'"),
    ],
)
def test_a_malformed_cron_is_refused_before_anything_is_sent(cron, words, fake, tmp_path, capsys):
    state, url = fake
    template = tmp_path / "pipeline.yaml"
    template.write_text("not read: the cron is checked first")
    status = pipelines_main(
        ["schedule", "create", "--template", str(template), "--project", PROJECT,
         "--region", REGION, "--pipeline-root", f"gs://{BUCKET}/root",
         "--service-account", SERVICE_ACCOUNT, "--api-endpoint", url, "--cron", cron]
    )  # fmt: skip
    error = capsys.readouterr().err
    assert status == 2 and error.count("\n") == 1
    assert error.startswith(f"error: bad cron {cron!r}: ") and words in error
    assert state.requests == []


def test_good_crons_pass_as_vertex_takes_them():
    from pipelines import vertex

    for cron in ("0 3 * * 1", "*/15 0-6,22-23 1-7 JAN-MAR,dec mon-fri", "0 3 * * 7",
                 "CRON_TZ=America/New_York 1 * * * *"):  # fmt: skip
        assert vertex_fake.CRON.fullmatch(vertex.check_cron(cron))
    assert vertex.check_cron("TZ=Europe/Paris  0 3 * * 1") == "TZ=Europe/Paris 0 3 * * 1"


def test_schedule_targets_need_their_settings(tmp_path):
    for target, settings, missing in [
        ("pipeline-schedule", vertex_settings(), "CRON"),
        ("pipeline-schedule", {}, "PROJECT REGION BUCKET SERVICE_ACCOUNT CRON"),
        ("pipeline-schedules", {"PROJECT": PROJECT}, "REGION"),
        ("pipeline-schedule-pause", {"PROJECT": PROJECT, "REGION": REGION}, "SCHEDULE"),
    ]:
        result = subprocess.run(
            ["make", "-n", target, f"PIPELINE_FILE={tmp_path}/p.yaml",
             *(f"{name}={value}" for name, value in settings.items())],
            cwd=REPO, capture_output=True, text=True,
        )  # fmt: skip
        assert result.returncode != 0
        assert f"{missing} not set: make {target} " in result.stderr
    result = subprocess.run(
        ["make", "--no-print-directory", "-n", "pipeline-schedule", "CRON=0 3 * * 1",
         "EXPERIMENT=init-comparison",
         *(f"{name}={value}" for name, value in vertex_settings().items())],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode != 0 and result.stdout == ""  # refused before compiling
    assert "EXPERIMENT is for pipeline-run only" in result.stderr
