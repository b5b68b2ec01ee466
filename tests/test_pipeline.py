"""The compiled pipeline's structure, its steps' command lines, and the KFP executor protocol."""

import argparse
import importlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format
from kfp.local import executor_output_utils
from kfp.pipeline_spec import pipeline_spec_pb2
from vertex_fake import CUSTOM_JOB_LAUNCHER, custom_job_tasks

from components import STAGE_IMAGES, Images
from components.images import DOWNLOAD_SOURCES, download_tag
from image_segmentation import cli
from image_segmentation.cloud import kfp_executor
from image_segmentation.data import ade20k, labels
from image_segmentation.stages import evaluate, train, training_job
from pipelines.__main__ import main as pipelines_main
from pipelines.pipeline import compile_pipeline

REPO = Path(__file__).resolve().parents[1]
REGISTRY, TAG = "europe-west4-docker.pkg.dev/my-project/images", "v7"
TRAIN_IMAGE = f"{REGISTRY}/image-segmentation-train:{TAG}"
# The container steps that run a stage; the train task is Google's CustomJob launcher instead.
STEPS = ("download", "prepare", "training-job", "evaluate", "challenge", "convert", "upload",
         "upload-2")  # fmt: skip
TRAIN = "custom-training-job"  # the CustomJob task (display name "train")
PARAM = re.compile(r"\{\{\$\.inputs\.parameters\['([^']+)'\]\}\}")
ARTIFACT = re.compile(r"\{\{\$\.(inputs|outputs)\.artifacts\['([^']+)'\]\.(path|uri)\}\}")
OUTPUT_PARAM = re.compile(r"\{\{\$\.outputs\.parameters\['([^']+)'\]\.output_file\}\}")
KFP_TYPES = {float: "NUMBER_DOUBLE", list: "LIST", str: "STRING"}  # OUTPUT_PARAMETERS' kinds
GATE = "inputs.parameter_values['pipelinechannel--challenge-publish'] == 'true'"


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> dict:
    """The template as `make pipeline-compile IMAGE_REGISTRY=... TAG=...` writes it."""
    path = tmp_path_factory.mktemp("compiled") / "pipeline.yaml"
    assert pipelines_main(["compile", "--image-registry", REGISTRY, "--tag", TAG,
                           "--output", str(path)]) == 0  # fmt: skip
    return yaml.safe_load(path.read_text())


def executor(spec: dict, step: str) -> dict:
    return spec["deploymentSpec"]["executors"][f"exec-{step}"]["container"]


def all_tasks(spec: dict, tasks: dict | None = None) -> dict[str, dict]:
    """Every task of the pipeline, in nested DAGs too, by task name."""
    tasks = spec["root"]["dag"]["tasks"] if tasks is None else tasks
    found = dict(tasks)
    for task in tasks.values():
        component = spec["components"][task["componentRef"]["name"]]
        if "dag" in component:
            found |= all_tasks(spec, component["dag"]["tasks"])
    return found


def gate_task(spec: dict) -> dict:
    """The root task that holds the quality gate's two branches."""
    (gate,) = [
        task for task in spec["root"]["dag"]["tasks"].values()
        if "dag" in spec["components"][task["componentRef"]["name"]]
        and "quality-gate" in branches(spec, task)
    ]  # fmt: skip
    return gate


def artifact_sources(task: dict) -> dict[str, tuple[str, str]]:
    """Each input artifact of a task: (producer task, output) or ("input", DAG input name)."""
    sources = {}
    for name, source in task.get("inputs", {}).get("artifacts", {}).items():
        if "taskOutputArtifact" in source:
            output = source["taskOutputArtifact"]
            sources[name] = (output["producerTask"], output["outputArtifactKey"])
        else:
            sources[name] = ("input", source["componentInputArtifact"])
    return sources


def branches(spec: dict, task: dict) -> dict[str, dict]:
    """The tasks of a condition-branches task's DAG, by their condition's name."""
    tasks = spec["components"][task["componentRef"]["name"]]["dag"]["tasks"].values()
    return {branch["taskInfo"]["name"]: branch for branch in tasks}


def dag_tasks(spec: dict, task: dict) -> dict[str, dict]:
    return spec["components"][task["componentRef"]["name"]]["dag"]["tasks"]


def steps_under(spec: dict, tasks: dict[str, dict]) -> set[str]:
    """The components of every container step in `tasks` and in the DAGs nested under them."""
    found = set()
    for task in tasks.values():
        component = spec["components"][task["componentRef"]["name"]]
        if "dag" in component:
            found |= steps_under(spec, component["dag"]["tasks"])
        else:
            found.add(task["componentRef"]["name"])
    return found


def test_steps_run_in_order_with_artifacts_passed(spec):
    """download -> prepare -> training-job -> train (the CustomJob) -> evaluate -> challenge.
    The model is the training-job step's `model` output, which the CustomJob fills, so evaluate
    must wait for the job as well as take the artifact."""
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {"download", "prepare", "training-job", TRAIN, "evaluate", "challenge",
                          "condition-branches-1"}  # fmt: skip
    assert "dependentTasks" not in tasks["download"]
    assert tasks["prepare"]["dependentTasks"] == ["download"]
    assert tasks["training-job"]["dependentTasks"] == ["prepare"]
    assert tasks[TRAIN]["dependentTasks"] == ["training-job"]
    assert sorted(tasks["evaluate"]["dependentTasks"]) == [TRAIN, "prepare", "training-job"]
    assert artifact_sources(tasks["prepare"]) == {"dataset": ("download", "dataset")}
    assert artifact_sources(tasks["training-job"]) == {"data": ("prepare", "prepared")}
    assert artifact_sources(tasks[TRAIN]) == {}  # its worker pools name the folders
    assert artifact_sources(tasks["evaluate"]) == {
        "data": ("prepare", "prepared"),
        "model": ("training-job", "model"),
    }
    # the challenge compares the evaluation with the champion on the same validation data
    assert sorted(tasks["challenge"]["dependentTasks"]) == ["evaluate", "prepare"]
    assert artifact_sources(tasks["challenge"]) == {
        "evaluation": ("evaluate", "evaluation"),
        "data": ("prepare", "prepared"),
    }
    gate = tasks["condition-branches-1"]
    assert sorted(gate["dependentTasks"]) == ["challenge", "evaluate", "prepare", "training-job"]
    assert artifact_sources(gate) == {
        "pipelinechannel--training-job-model": ("training-job", "model"),
        "pipelinechannel--evaluate-evaluation": ("evaluate", "evaluation"),
        "pipelinechannel--prepare-prepared": ("prepare", "prepared"),
        "pipelinechannel--challenge-decision": ("challenge", "decision"),
    }
    (convert,) = [t for t in dag_tasks(spec, branches(spec, gate)["quality-gate"]).values()
                  if t["componentRef"]["name"] == "comp-convert-with-resources"]  # fmt: skip
    # the export is made from the trained model, carries its evaluation's metrics and scores
    # the Core ML file's own weights on the prepared validation split
    assert artifact_sources(convert) == {
        "model": ("input", "pipelinechannel--training-job-model"),
        "evaluation": ("input", "pipelinechannel--evaluate-evaluation"),
        "data": ("input", "pipelinechannel--prepare-prepared"),
    }
    assert artifact_sources(dag_tasks(spec, convert)["convert"]) == {
        "model": ("input", "model"),
        "evaluation": ("input", "evaluation"),
        "data": ("input", "data"),
    }
    # A rerun with the same settings takes training-job from the cache, so its job trains into
    # the same model folder and resumes; a finished job is taken from the cache too.
    for name in ("training-job", TRAIN, "evaluate"):
        assert tasks[name]["cachingOptions"] == {"enableCache": True}, name
    assert tasks["challenge"]["cachingOptions"] == {}  # the champion changes between runs
    # one template: no plain train step, no machine-count branches
    assert "comp-train" not in spec["components"]
    assert "comp-worker-replicas" not in spec["components"]
    assert set(custom_job_tasks(spec)) == {TRAIN}


def test_convert_and_upload_run_only_when_the_challenge_says_publish(spec):
    tasks = spec["root"]["dag"]["tasks"]
    gate = gate_task(spec)
    before_gate = {k: task for k, task in tasks.items() if task is not gate}
    assert steps_under(spec, before_gate) == {
        "comp-download", "comp-prepare", "comp-training-job", "comp-custom-training-job",
        "comp-evaluate", "comp-challenge",
    }  # fmt: skip
    # the challenge applies min_miou, then compares with the champion of the model folder
    assert tasks["challenge"]["inputs"]["parameters"] == {
        name: {"componentInputParameter": name}
        for name in ("destination", "model_name", "min_miou", "min_improvement",
                     "replace_champion")
    }  # fmt: skip
    wiring = gate["inputs"]["parameters"]
    assert wiring["pipelinechannel--challenge-publish"] == {
        "taskOutputParameter": {"producerTask": "challenge", "outputParameterKey": "publish"}
    }
    paths = branches(spec, gate)
    conditions = {name: branch["triggerPolicy"]["condition"] for name, branch in paths.items()}
    assert conditions == {"quality-gate": GATE, "not-champion": f"!({GATE})"}
    assert steps_under(spec, dag_tasks(spec, paths["quality-gate"])) == {
        "comp-convert", "comp-upload", "comp-upload-2",
    }  # fmt: skip
    (message,) = dag_tasks(spec, paths["not-champion"]).values()
    assert message["componentRef"]["name"] == "comp-not-published"
    assert message["inputs"]["parameters"] == {
        "reason": {"componentInputParameter": "pipelinechannel--challenge-reason"},
    }
    challenge_outputs = spec["components"]["comp-challenge"]["outputDefinitions"]
    assert challenge_outputs["parameters"] == {
        "publish": {"parameterType": "STRING"}, "reason": {"parameterType": "STRING"},
    }  # fmt: skip
    assert list(challenge_outputs["artifacts"]) == ["decision"]
    assert message["cachingOptions"] == {}  # the reason is logged on every gated run
    evaluate_outputs = spec["components"]["comp-evaluate"]["outputDefinitions"]
    assert evaluate_outputs["parameters"] == {"miou": {"parameterType": "NUMBER_DOUBLE"}}
    assert {name: a["artifactType"]["schemaTitle"] for name, a in
            evaluate_outputs["artifacts"].items()} == {
        "evaluation": "system.Artifact", "metrics": "system.Metrics",
        "confusion_matrix": "system.ClassificationMetrics", "report": "system.HTML",
    }  # fmt: skip


def test_min_miou_defaults_to_publishing_every_model(spec):
    parameter = spec["root"]["inputDefinitions"]["parameters"]["min_miou"]
    assert parameter["parameterType"] == "NUMBER_DOUBLE"
    assert parameter["defaultValue"] == 0.0
    assert parameter["isOptional"] is True
    description = parameter["description"]
    assert "mean IoU" in description and "class 0" in description and "ADE20K" in description
    assert "unlabelled pixels are not" in description
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert parameters["min_improvement"]["defaultValue"] == 0.0  # at least equal
    assert parameters["replace_champion"]["defaultValue"] is False
    assert parameters["replace_champion"]["parameterType"] == "BOOLEAN"
    assert "champion.json" in parameters["min_improvement"]["description"]


def test_the_gated_run_logs_why_nothing_was_published(spec):
    """The not-published step's own command line, run with the values Kubeflow fills in."""
    container = executor(spec, "not-published")
    assert container["image"] == f"{REGISTRY}/image-segmentation-light:{TAG}"
    assert container["command"][0] == "python"
    assert container["args"] == ["{{$.inputs.parameters['reason']}}"]
    reason = "min_miou: mIoU 0.1235 is below min_miou 0.5000 by 0.3765; not published"
    result = subprocess.run([sys.executable, *container["command"][1:], reason],
                            capture_output=True, text=True, check=True)  # fmt: skip
    assert result.stdout == f"not converted or uploaded, stopped by {reason}\n"


def test_one_upload_runs_with_the_given_version_or_the_job_name(spec):
    gate = branches(spec, gate_task(spec))
    inside = dag_tasks(spec, gate["quality-gate"])
    (versions_task,) = [name for name in inside if name.startswith("condition-branches-")]
    assert set(inside) == {"convert-with-resources", versions_task}
    model = artifact_sources(inside["convert-with-resources"])["model"]
    paths = branches(spec, inside[versions_task])
    conditions = {name: branch["triggerPolicy"]["condition"] for name, branch in paths.items()}
    empty = "inputs.parameter_values['pipelinechannel--model_version'] == ''"
    assert conditions == {"version-is-job-name": empty, "version-given": f"!({empty})"}
    versions = {}
    for name, branch in paths.items():
        (upload,) = dag_tasks(spec, branch).values()
        assert upload["componentRef"]["name"] in ("comp-upload", "comp-upload-2")
        assert upload["cachingOptions"] == {}  # every run publishes: never cached
        assert artifact_sources(upload) == {
            "exported": ("input", "pipelinechannel--convert-with-resources-Output"),
            "model": ("input", model[1]),  # the model that was converted
            # its evaluation: the manifest's metrics must be these
            "evaluation": ("input", "pipelinechannel--evaluate-evaluation"),
            # the decision: the champion generation its pointer write is conditional on
            "challenge": ("input", "pipelinechannel--challenge-decision"),
        }
        versions[name] = upload["inputs"]["parameters"]["version"]
    assert versions == {
        "version-is-job-name": {"runtimeValue": {"constant": "{{$.pipeline_job_name}}"}},
        "version-given": {"componentInputParameter": "pipelinechannel--model_version"},
    }


def test_images_come_from_the_registry_and_tag(spec):
    images = {step: executor(spec, step)["image"] for step in STEPS}
    assert images == {
        "download": f"{REGISTRY}/image-segmentation-light:{download_tag()}",
        "prepare": f"{REGISTRY}/image-segmentation-light:{TAG}",
        "training-job": f"{REGISTRY}/image-segmentation-light:{TAG}",
        "evaluate": f"{REGISTRY}/image-segmentation-export:{TAG}",
        "challenge": f"{REGISTRY}/image-segmentation-export:{TAG}",
        "convert": f"{REGISTRY}/image-segmentation-export:{TAG}",
        "upload": f"{REGISTRY}/image-segmentation-light:{TAG}",
        "upload-2": f"{REGISTRY}/image-segmentation-light:{TAG}",
    }
    # the training machines run the train image, which the training-job step writes into the
    # worker pools; the train task itself is Google's CustomJob launcher
    args = executor(spec, "training-job")["args"]
    assert args[args.index("--train-image") + 1] == TRAIN_IMAGE
    assert executor(spec, TRAIN)["image"].startswith(
        "gcr.io/ml-pipeline/google-cloud-pipeline-components:"
    )


def test_every_image_has_a_dockerfile():
    for name in set(STAGE_IMAGES.values()):
        assert (REPO / "docker" / f"{name}.Dockerfile").is_file(), name


def test_the_download_step_stays_cached_across_commits(tmp_path):
    """Vertex caches a step by image, command and inputs: another project tag leaves the
    download step as it was, while a change to a file it runs gives it a new image tag."""
    steps = {}
    for tag in ("commit-a", "commit-b"):
        compile_pipeline(Images(REGISTRY, tag), str(tmp_path / f"{tag}.yaml"))
        steps[tag] = yaml.safe_load((tmp_path / f"{tag}.yaml").read_text())
    a, b = steps["commit-a"], steps["commit-b"]
    assert executor(a, "download") == executor(b, "download")
    assert a["components"]["comp-download"] == b["components"]["comp-download"]
    assert executor(a, "prepare")["image"] != executor(b, "prepare")["image"]

    copy = tmp_path / "repo"
    for name in DOWNLOAD_SOURCES:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).write_bytes((REPO / name).read_bytes())
    assert download_tag(copy) == download_tag()
    (copy / "image_segmentation" / "stages" / "download.py").write_text("# changed\n", "utf-8")
    assert download_tag(copy) != download_tag()


def test_the_download_tag_covers_every_module_the_download_stage_imports():
    """The package files loaded by the download stage's command line, parsed as it runs."""
    probe = (
        "import sys; from image_segmentation import cli\n"
        "try: cli.main(['download', '--help'])\nexcept SystemExit: pass\n"
        "print('\\n'.join(m.__file__ for n, m in sys.modules.items()"
        " if n.split('.')[0] == 'image_segmentation'))"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True,
                            text=True, check=True)  # fmt: skip
    loaded = {
        str(Path(line).relative_to(REPO)) for line in result.stdout.splitlines() if ".py" in line
    }
    assert "image_segmentation/stages/download.py" in loaded
    entry_point = {"image_segmentation/__main__.py"}  # `python -m` runs it first
    assert loaded | entry_point == {
        name for name in DOWNLOAD_SOURCES if name.startswith("image_segmentation/")
    }


def test_training_is_a_custom_job_given_the_training_job_steps_outputs_whole(spec):
    """Vertex gets the worker pools and the base output directory as the training-job step
    wrote them: the train task holds no pool of its own with placeholders for Vertex to fill,
    so the job does not depend on how Vertex substitutes one (as text or typed)."""
    task = spec["root"]["dag"]["tasks"][TRAIN]
    assert task["taskInfo"]["name"] == "train"
    assert CUSTOM_JOB_LAUNCHER in executor(spec, TRAIN)["command"]
    parameters = task["inputs"]["parameters"]
    produced = spec["components"]["comp-training-job"]["outputDefinitions"]["parameters"]
    taken = spec["components"]["comp-custom-training-job"]["inputDefinitions"]["parameters"]
    for name in ("worker_pool_specs", "base_output_directory"):
        assert parameters[name] == {
            "taskOutputParameter": {"producerTask": "training-job", "outputParameterKey": name}
        }
        assert produced[name]["parameterType"] == taken[name]["parameterType"], name
    assert produced["worker_pool_specs"]["parameterType"] == "LIST"
    assert {name: source for name, source in parameters.items()
            if "componentInputParameter" in source} == {
        "strategy": {"componentInputParameter": "scheduling_strategy"},
        "tensorboard": {"componentInputParameter": "tensorboard"},
        "timeout": {"componentInputParameter": "train_timeout"},
    }  # fmt: skip
    constants = {name: source["runtimeValue"]["constant"]
                 for name, source in parameters.items() if "runtimeValue" in source}  # fmt: skip
    assert constants == {
        "display_name": "train",
        "restart_job_on_worker_restart": True,  # all workers resume from the same epoch
        "service_account": "{{$.pipeline_service_account}}",  # the run's, filled by Vertex
    }
    assert "{{$.inputs" not in json.dumps(parameters)
    assert len(parameters) == 2 + 3 + 3  # nothing else is wired in
    assert task["retryPolicy"]["maxRetryCount"] == 2
    assert task["retryPolicy"]["backoffDuration"] == "300s"
    # the launcher's payload takes the list as JSON (not inside quotes), so it arrives whole
    launcher_args = executor(spec, TRAIN)["args"]
    payload = launcher_args[launcher_args.index("--payload") + 1]
    assert "\"worker_pool_specs\": {{$.inputs.parameters['worker_pool_specs']}}," in payload
    # the training-job step gets every setting it checks and writes from the run's parameters
    settings = spec["root"]["dag"]["tasks"]["training-job"]["inputs"]["parameters"]
    assert settings == {
        name: {"componentInputParameter": name}
        for name in ("image_size", "alpha", "epochs", "steps_per_epoch", "batch_size",
                     "learning_rate", "init", "resize", "machine_type", "accelerator_type",
                     "accelerator_count", "replica_count", "scheduling_strategy")
    }  # fmt: skip


# The artifacts of the training-job step as Vertex gives them: gs:// URIs seen under /gcs.
DATA_URI = "gs://b/root/image-segmentation-1/prepare-2/prepared"
MODEL_URI = "gs://b/root/image-segmentation-1/training-job-3/model"


def run_training_job(
    spec: dict, tmp_path: Path, values: dict, more_outputs: dict[str, Path] | None = None
) -> subprocess.CompletedProcess:
    """Run the training-job step's own command line from the template as Vertex would: the
    run's `values` (the template's defaults for the rest) as text in its placeholders, output
    files under `tmp_path`, the executor input as `{{$}}`. `more_outputs` adds output parameter
    files that belong to someone else."""
    defaults = spec["root"]["inputDefinitions"]["parameters"]
    wiring = spec["root"]["dag"]["tasks"]["training-job"]["inputs"]["parameters"]
    types = spec["components"]["comp-training-job"]["inputDefinitions"]["parameters"]
    inputs = {}
    for name, source in wiring.items():
        parameter = source["componentInputParameter"]
        value = values.get(parameter, defaults[parameter].get("defaultValue"))
        if types[name]["parameterType"] == "NUMBER_INTEGER" and isinstance(value, float):
            value = int(value)  # the template's JSON holds every number as a float
        inputs[name] = value
    declared = spec["components"]["comp-training-job"]["outputDefinitions"]["parameters"]
    outputs = {name: str(tmp_path / "outputs" / name) for name in declared}
    outputs |= {name: str(path) for name, path in (more_outputs or {}).items()}
    uris = {("inputs", "data"): DATA_URI, ("outputs", "model"): MODEL_URI}
    request = {
        "inputs": {
            "parameterValues": inputs,
            "artifacts": {"data": {"artifacts": [{"name": "data", "uri": DATA_URI, "metadata": {},
                                                  "type": {"schemaTitle": "system.Dataset"}}]}},
        },
        "outputs": {
            "artifacts": {"model": {"artifacts": [{"name": "model", "uri": MODEL_URI,
                                                   "metadata": {},
                                                   "type": {"schemaTitle": "system.Model"}}]}},
            "parameters": {name: {"outputFile": path} for name, path in outputs.items()},
            "outputFile": str(tmp_path / "executor_output.json"),
        },
    }  # fmt: skip

    def artifact(match: re.Match) -> str:
        uri = uris[match.group(1), match.group(2)]
        return uri if match.group(3) == "uri" else str(kfp_executor.local_path(uri))

    def fill(arg: str) -> str:
        arg = PARAM.sub(lambda m: str(inputs[m.group(1)]), arg)
        arg = OUTPUT_PARAM.sub(lambda m: outputs[m.group(1)], arg)
        arg = ARTIFACT.sub(artifact, arg)
        return json.dumps(request) if arg == "{{$}}" else arg

    container = executor(spec, "training-job")
    command = [fill(part) for part in [*container["command"], *container["args"]]]
    assert not [part for part in command if "{{" in part]  # every placeholder filled
    assert command[0] == "python"
    return subprocess.run([sys.executable, *command[1:]], cwd=REPO, capture_output=True,
                          text=True, timeout=60)  # fmt: skip


MACHINES = {"machine_type": "a2-highgpu-1g", "accelerator_type": "NVIDIA_TESLA_A100",
            "accelerator_count": 1, "scheduling_strategy": "SPOT"}  # fmt: skip


@pytest.mark.parametrize("replicas", [1, 3])
def test_the_training_job_step_writes_worker_pools_a_custom_job_accepts(spec, tmp_path, replicas):
    """One machine: the chief's pool alone; three: the chief and a pool of two workers. Every
    value is final: JSON integers for the counts, the train command line as text with the
    /gcs paths of the data and model folders; proto-plus, which the launcher's client uses,
    takes the list as it is."""
    from google.cloud.aiplatform_v1.types import CustomJob

    values = {**MACHINES, "replica_count": replicas, "epochs": 4, "alpha": 0.5}
    result = run_training_job(spec, tmp_path, values)
    assert result.returncode == 0, result.stderr
    written = json.loads((tmp_path / "executor_output.json").read_text())
    pools = written["parameterValues"]["worker_pool_specs"]
    assert written["parameterValues"]["base_output_directory"] == MODEL_URI
    assert written["artifacts"]["model"]["artifacts"][0]["uri"] == MODEL_URI
    assert json.loads((tmp_path / "outputs" / "worker_pool_specs").read_text()) == pools
    assert (tmp_path / "outputs" / "base_output_directory").read_text() == MODEL_URI

    command = ["python", "-m", "image_segmentation", "train",
               "--data-dir", "/gcs/b/root/image-segmentation-1/prepare-2/prepared",
               "--output-dir", "/gcs/b/root/image-segmentation-1/training-job-3/model",
               "--image-size", "768", "--alpha", "0.5", "--epochs", "4", "--batch-size", "8",
               "--learning-rate", "0.003", "--steps-per-epoch", "200", "--init", "imagenet",
               "--resize", "stretch"]  # fmt: skip
    chief = {
        "machine_spec": {"machine_type": "a2-highgpu-1g", "accelerator_type": "NVIDIA_TESLA_A100",
                         "accelerator_count": 1},
        "replica_count": 1,
        "container_spec": {"image_uri": TRAIN_IMAGE, "command": command},
    }  # fmt: skip
    expected = [chief] if replicas == 1 else [chief, {**chief, "replica_count": 2}]
    assert pools == expected
    for pool in pools:  # JSON integers, not 1.0 or "1": proto-plus refuses those
        assert type(pool["replica_count"]) is int
        assert type(pool["machine_spec"]["accelerator_count"]) is int
    # the command line is one the train stage takes
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    parsed = parser.parse_args(command[4:])
    assert (parsed.epochs, parsed.alpha, parsed.init) == (4, 0.5, "imagenet")

    job = CustomJob({"display_name": "t", "job_spec": {
        "worker_pool_specs": pools, "base_output_directory": {"output_uri_prefix": MODEL_URI},
    }})  # fmt: skip
    built = job.job_spec.worker_pool_specs
    assert [pool.replica_count for pool in built] == [1, 2][: len(pools)]
    assert built[0].machine_spec.accelerator_type.name == "NVIDIA_TESLA_A100"
    assert list(built[-1].container_spec.command) == command
    assert job.job_spec.base_output_directory.output_uri_prefix == MODEL_URI


BAD_SETTINGS = [
    pytest.param({"replica_count": 0}, ["replica_count must be at least 1, got 0"],
                 id="no-machine"),
    pytest.param({"accelerator_type": "", "accelerator_count": 1},
                 ["accelerator_count 1 needs an accelerator_type"], id="gpu-of-no-type"),
    pytest.param({"scheduling_strategy": "CHEAP"},
                 ["scheduling_strategy must be one of STANDARD, SPOT, FLEX_START, got 'CHEAP'"],
                 id="strategy"),
    pytest.param({"epochs": "x"}, ["train option: argument --epochs: invalid int value: 'x'"],
                 id="train-option"),
    pytest.param({"replica_count": 0, "accelerator_type": "", "scheduling_strategy": "CHEAP"},
                 ["replica_count must be at least 1",
                  "accelerator_count 1 needs an accelerator_type", "got 'CHEAP'"],
                 id="three-machine-settings"),
    pytest.param(
        {"replica_count": 0, "accelerator_type": "", "scheduling_strategy": "CHEAP",
         "epochs": "x"},
        ["replica_count must be at least 1", "accelerator_count 1 needs an accelerator_type",
         "got 'CHEAP'", "--epochs: invalid int value: 'x'"],
        id="machine-settings-and-train-option",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("values", "problems"), BAD_SETTINGS)
def test_bad_training_settings_stop_the_step_at_once(spec, tmp_path, values, problems):
    """Settings Vertex or the train stage would refuse fail the light step in seconds, in one
    line naming every problem, before any GPU is paid for; the step writes no output, so no
    job is created."""
    started = time.monotonic()
    result = run_training_job(spec, tmp_path, {**MACHINES, **values})
    assert time.monotonic() - started < 5
    assert result.returncode == 2
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: ")
    assert [problem for problem in problems if problem not in line] == []
    assert list(tmp_path.iterdir()) == []  # no executor output, no output parameter


def test_evaluate_and_convert_take_their_resources_from_parameters(spec):
    assert executor(spec, "evaluate")["resources"] == {
        "resourceCpuLimit": "{{$.inputs.parameters['pipelinechannel--evaluate_cpu']}}",
        "resourceMemoryLimit": "{{$.inputs.parameters['pipelinechannel--evaluate_memory']}}",
    }
    # convert sits in the quality gate, inside a small pipeline whose inputs set its resources
    assert executor(spec, "convert")["resources"] == {
        "resourceCpuLimit": "{{$.inputs.parameters['pipelinechannel--cpu']}}",
        "resourceMemoryLimit": "{{$.inputs.parameters['pipelinechannel--memory']}}",
    }
    wrapper = all_tasks(spec)["convert-with-resources"]["inputs"]["parameters"]
    assert wrapper["cpu"] == {"componentInputParameter": "pipelinechannel--convert_cpu"}
    assert wrapper["memory"] == {"componentInputParameter": "pipelinechannel--convert_memory"}


def test_every_step_gets_the_parameters_it_refers_to(spec):
    """A parameter a task takes from its DAG must be one of that DAG's inputs; the compiler
    does not check this (it misses parameters that only set resources inside a condition)."""
    dags = {"root": spec["root"]} | {
        name: component for name, component in spec["components"].items() if "dag" in component
    }
    missing = [
        (name, task_name, source["componentInputParameter"])
        for name, dag in dags.items()
        for task_name, task in dag["dag"]["tasks"].items()
        for source in task.get("inputs", {}).get("parameters", {}).values()
        if "componentInputParameter" in source
        and source["componentInputParameter"]
        not in dag.get("inputDefinitions", {}).get("parameters", {})
    ]
    assert missing == []


def test_parameters_default_to_the_legacy_living_room_example(spec):
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    defaults = {name: p.get("defaultValue") for name, p in parameters.items()}
    assert defaults["image_size"] == 768
    assert defaults["alpha"] == 0.25
    assert defaults["whitelist"] == labels.LIVING_ROOM_WHITELIST
    assert defaults["threshold"] == 0.6
    assert defaults["batch_size"] == 8
    assert defaults["learning_rate"] == 0.003  # for its ImageNet start, below the stage's
    assert defaults["source_url"] == ade20k.OFFICIAL_URL
    assert defaults["source_sha1"] == ade20k.OFFICIAL_SHA1
    assert "defaultValue" not in parameters["destination"]  # required in the console form
    assert not parameters["destination"].get("isOptional")
    assert defaults["model_version"] == ""  # empty: the run's job name
    assert defaults["steps_per_epoch"] == 200  # the legacy 1,600 images per epoch at batch 8
    assert defaults["min_miou"] == 0.0  # the quality gate lets every model through
    assert defaults["machine_type"] == "g2-standard-8"  # carries exactly one L4
    assert defaults["accelerator_type"] == "NVIDIA_L4"
    assert defaults["accelerator_count"] == 1
    assert defaults["replica_count"] == 1
    assert defaults["scheduling_strategy"] == "STANDARD"  # on demand
    assert defaults["train_timeout"] == "172800s"
    assert defaults["tensorboard"] == ""
    assert len(parameters) >= 20


def test_every_parameter_has_a_description_for_the_console(spec):
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    missing = [name for name, p in parameters.items() if len(p.get("description", "")) < 10]
    assert missing == []
    assert "gs://BUCKET/PREFIX" in parameters["destination"]["description"]
    assert spec["pipelineInfo"]["name"] == "image-segmentation"
    assert spec["pipelineInfo"]["description"].startswith("Train ICNet")


def _resolve(arg: str, parameter_types: dict[str, str]) -> str:
    """A command-line item with sample values for its placeholders."""
    samples = {"STRING": "text", "NUMBER_INTEGER": "3", "NUMBER_DOUBLE": "0.5",
               "BOOLEAN": "false"}  # fmt: skip
    choices = {"resize": "crop"}  # strings the stage accepts only from a list
    arg = PARAM.sub(lambda m: choices.get(m.group(1), samples[parameter_types[m.group(1)]]), arg)
    arg = OUTPUT_PARAM.sub(lambda m: f"/parameters/{m.group(1)}", arg)
    root = {"path": "/artifacts", "uri": "gs://artifacts"}
    return ARTIFACT.sub(lambda m: f"{root[m.group(3)]}/{m.group(2)}", arg)


@pytest.mark.parametrize("step", STEPS)
def test_step_command_is_the_stage_cli(spec, step):
    """Each step runs `python -m image_segmentation --executor-input {{$}} ... STAGE`, its
    arguments parse with the stage's own argparse options, and the stage declares exactly the
    step's output parameters, the ones its executor output must carry."""
    container = executor(spec, step)
    command = container["command"]
    assert command[:5] == ["python", "-m", "image_segmentation", "--executor-input", "{{$}}"]
    given = ["{}" if part == "{{$}}" else part for part in command[3:]]  # as Kubeflow fills it
    executor_options, rest = kfp_executor.split_options(given)
    assert executor_options is not None and len(rest) == 1
    stage = rest[0]
    assert stage in cli.STAGES
    parser = argparse.ArgumentParser()
    module = importlib.import_module(cli.STAGES[stage][0])
    module.add_arguments(parser)
    inputs = spec["components"][f"comp-{step}"]["inputDefinitions"].get("parameters", {})
    types = {name: p["parameterType"] for name, p in inputs.items()}
    args = [_resolve(arg, types) for arg in container["args"]]
    parsed = parser.parse_args(args)  # exits (fails the test) on an unknown or bad option
    assert any(Path(str(value)).parts[:2] == ("/", "artifacts") for value in vars(parsed).values())
    outputs = spec["components"][f"comp-{step}"].get("outputDefinitions", {}).get("parameters", {})
    declared = getattr(module, "OUTPUT_PARAMETERS", {})
    assert {name: KFP_TYPES[kind] for name, kind in declared.items()} == {
        name: output["parameterType"] for name, output in outputs.items()
    }


def test_compile_needs_the_registry(capsys):
    with pytest.raises(SystemExit) as exit_info:
        pipelines_main(["compile", "--tag", TAG, "--output", "unused.yaml"])
    assert exit_info.value.code == 2
    assert "--image-registry" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("registry", "tag", "words"),
    [
        ("localhost", "v1:latest", ["bad image tag 'v1:latest'"]),
        ("localhost", ".hidden", ["bad image tag '.hidden'"]),
        ("europe-west4-docker.pkg.dev/My-Project/repo", "v1", ["bad image registry"]),
        ("gcr.io/p/", "v 1", ["bad image registry 'gcr.io/p/'", "bad image tag 'v 1'"]),
        ("https://gcr.io/p", "v1", ["bad image registry 'https://gcr.io/p'"]),
    ],
)
def test_image_names_that_no_registry_accepts_are_refused(registry, tag, words, capsys, tmp_path):
    """Before compiling: a template naming images that cannot exist fails only on Vertex."""
    with pytest.raises(ValueError) as refused:
        Images(registry, tag)
    for word in words:
        assert word in str(refused.value)
    output = tmp_path / "build" / "p.yaml"
    assert pipelines_main(["compile", "--image-registry", registry, "--tag", tag,
                           "--output", str(output)]) == 2  # fmt: skip
    assert words[0] in capsys.readouterr().err
    assert not output.parent.exists()


def test_image_names_are_built_from_registry_and_tag():
    assert Images("localhost", "t").for_stage("train") == "localhost/image-segmentation-train:t"
    assert Images("localhost:5000/a/b-c", "v1.2_x").image("light") == (
        "localhost:5000/a/b-c/image-segmentation-light:v1.2_x"
    )


# --- the executor protocol a stage speaks when it runs as a container step ------------------


def executor_input(root: Path, outputs: dict[str, str], parameters: tuple[str, ...] = ()) -> dict:
    """An executor input as Kubeflow gives it: output artifacts with URIs and types, and the
    files for output parameters."""
    artifacts = {
        name: {"artifacts": [{"name": name, "uri": str(root / name), "metadata": {},
                              "type": {"schemaTitle": schema}}]}
        for name, schema in outputs.items()
    }  # fmt: skip
    request = {"artifacts": artifacts, "outputFile": str(root / "executor_output.json")}
    if parameters:
        request["parameters"] = {
            name: {"outputFile": str(root / "parameters" / name)} for name in parameters
        }
    return {"inputs": {}, "outputs": request}


def test_stage_writes_executor_output_with_its_artifacts_and_metrics(ade_dataset, tmp_path):
    request = executor_input(tmp_path, {"prepared": "system.Dataset", "stats": "system.Metrics"})
    status = cli.main([
        "--executor-input", json.dumps(request), "--metrics-from", "prepared/stats.json",
        "prepare", "--dataset-dir", str(ade_dataset), "--output-dir", str(tmp_path / "prepared"),
        "--whitelist", labels.LIVING_ROOM_WHITELIST, "--threshold", "0.2", "--workers", "1",
    ])  # fmt: skip
    assert status == 0
    written = json.loads((tmp_path / "executor_output.json").read_text())
    prepared = written["artifacts"]["prepared"]["artifacts"][0]
    assert prepared["uri"] == str(tmp_path / "prepared")
    assert (tmp_path / "prepared" / "labels.txt").is_file()
    stats = written["artifacts"]["stats"]["artifacts"][0]["metadata"]
    assert stats["num_classes"] == 11.0 and stats["threshold"] == 0.2
    assert "labels" not in stats and "splits" not in stats  # numbers only
    assert json.loads((tmp_path / "stats").read_text()) == stats  # also at the Metrics path


def test_failed_stage_writes_no_executor_output(ade_dataset, tmp_path, capsys):
    request = executor_input(tmp_path, {"prepared": "system.Dataset"})
    status = cli.main([
        "--executor-input", json.dumps(request), "prepare", "--dataset-dir", str(ade_dataset),
        "--output-dir", str(tmp_path / "prepared"), "--whitelist", "no such class",
    ])  # fmt: skip
    assert status == 2
    assert "unknown class 'no such class'" in capsys.readouterr().err
    assert not (tmp_path / "executor_output.json").exists()


def test_metrics_written_by_the_stage_at_the_metrics_path(tmp_path):
    (tmp_path / "metrics").write_text('{"val_miou": 0.5, "epochs": 3, "ok": true, "x": [1]}')
    options = kfp_executor.ExecutorOptions(
        executor_input(tmp_path, {"metrics": "system.Metrics", "model": "system.Model"})
    )
    output = kfp_executor.executor_output(options, {})
    assert output["artifacts"]["metrics"]["artifacts"][0]["metadata"] == {
        "val_miou": 0.5,
        "epochs": 3.0,
    }
    assert output["artifacts"]["model"]["artifacts"][0]["metadata"] == {}


def read_back(spec: dict, component: str, executor_output: Path, request: dict) -> dict:
    """The outputs kfp's own reader takes from a step's executor output, as Kubeflow does."""
    return executor_output_utils.get_outputs_from_executor_output(
        executor_output_utils.load_executor_output(str(executor_output)),
        json_format.ParseDict(request, pipeline_spec_pb2.ExecutorInput()),
        json_format.ParseDict(spec["components"][component], pipeline_spec_pb2.ComponentSpec()),
    )


def test_evaluate_outputs_reach_kubeflow_through_the_executor_output(spec, tmp_path):
    """The files the evaluate stage writes at its outputs' paths, as kfp.local reads them back
    from executor_output.json alone (the parameter file is gone by then)."""
    outputs = spec["components"]["comp-evaluate"]["outputDefinitions"]["artifacts"]
    schemas = {name: output["artifactType"]["schemaTitle"] for name, output in outputs.items()}
    request = executor_input(tmp_path, schemas, parameters=("miou",))
    matrix = {
        "confusionMatrix": {
            "annotationSpecs": [{"displayName": "none"}, {"displayName": "sofa"}],
            "rows": [{"row": [5, 1]}, {"row": [2, 7]}],
        }
    }
    (tmp_path / "confusion_matrix").write_text(json.dumps(matrix))
    (tmp_path / "metrics").write_text('{"miou": 0.4321, "pixel_accuracy": 0.8}')
    (tmp_path / "report").write_text("<html></html>")
    (tmp_path / "parameters").mkdir()
    (tmp_path / "parameters" / "miou").write_text(repr(0.4321))  # as evaluate --miou-output
    options = kfp_executor.ExecutorOptions(request)
    path = kfp_executor.write_executor_output(options, evaluate.OUTPUT_PARAMETERS)

    written = json.loads(path.read_text())
    assert written["parameterValues"] == {"miou": 0.4321}
    artifacts = {name: entry["artifacts"][0] for name, entry in written["artifacts"].items()}
    assert artifacts["confusion_matrix"]["metadata"] == matrix
    assert artifacts["metrics"]["metadata"] == {"miou": 0.4321, "pixel_accuracy": 0.8}
    assert artifacts["report"]["metadata"] == {}

    (tmp_path / "parameters" / "miou").unlink()
    read = read_back(spec, "comp-evaluate", path, request)
    assert read["miou"] == 0.4321  # the value the quality gate compares with min_miou
    assert read["confusion_matrix"].metadata == matrix
    assert read["metrics"].metadata["pixel_accuracy"] == 0.8


@pytest.mark.parametrize(
    ("name", "text"),
    [("miou", "nan"), ("miou", '"high"'), ("miou", "true"), ("miou", "0.5 0.6"),
     ("miou", "[0.5]"), ("worker_pool_specs", '{"replica_count": 1}'),
     ("worker_pool_specs", "[1, 2")],
)  # fmt: skip
def test_a_declared_parameter_output_must_be_of_its_kind(tmp_path, name, text):
    """The quality gate compares `miou` as a number: a finite JSON number or nothing at all;
    the CustomJob takes `worker_pool_specs` as a JSON list."""
    declared = evaluate.OUTPUT_PARAMETERS | training_job.OUTPUT_PARAMETERS
    request = executor_input(tmp_path, {}, parameters=(name,))
    (tmp_path / "parameters").mkdir()
    (tmp_path / "parameters" / name).write_text(text)
    with pytest.raises(ValueError, match=f"output parameter '{name}'"):
        kfp_executor.executor_output(kfp_executor.ExecutorOptions(request), declared)


def test_list_and_text_parameter_outputs_reach_kubeflow(spec, tmp_path):
    """The training-job step's outputs, read back by kfp from executor_output.json alone, as
    the CustomJob task gets them."""
    request = executor_input(tmp_path, {"model": "system.Model"},
                             parameters=("worker_pool_specs", "base_output_directory"))  # fmt: skip
    pools = [
        {
            "machine_spec": {"machine_type": "n1-standard-4"},
            "replica_count": 1,
            "container_spec": {"image_uri": TRAIN_IMAGE, "command": ["python", "-m", "x"]},
        }
    ]
    (tmp_path / "parameters").mkdir()
    (tmp_path / "parameters" / "worker_pool_specs").write_text(json.dumps(pools))
    (tmp_path / "parameters" / "base_output_directory").write_text(MODEL_URI)
    options = kfp_executor.ExecutorOptions(request)
    path = kfp_executor.write_executor_output(options, training_job.OUTPUT_PARAMETERS)
    written = json.loads(path.read_text())
    assert written["parameterValues"] == {"worker_pool_specs": pools,
                                          "base_output_directory": MODEL_URI}  # fmt: skip

    for name in ("worker_pool_specs", "base_output_directory"):
        (tmp_path / "parameters" / name).unlink()
    read = read_back(spec, "comp-training-job", path, request)
    assert read["worker_pool_specs"] == pools
    assert read["base_output_directory"] == MODEL_URI
    assert read["model"].uri == str(tmp_path / "model")


# What Google's CustomJob launcher writes in its `gcp_resources` output file: the job it made.
GCP_RESOURCES = json.dumps({"resources": [{
    "resourceType": "CustomJob",
    "resourceUri": "https://x/v1/projects/p/locations/l/customJobs/1",
}]})  # fmt: skip


def test_a_parameter_output_the_stage_does_not_declare_is_left_alone(spec, tmp_path):
    """The launcher's executor input lists `gcp_resources`, in a file the training machines
    see; a stage that gets such an executor input neither refuses that JSON object as a bad
    output of its own nor touches the file, which names the job a retry polls."""
    resources = tmp_path / "gcp_resources"
    resources.write_text(GCP_RESOURCES)
    before = resources.read_bytes()
    result = run_training_job(spec, tmp_path, {**MACHINES, "replica_count": 1},
                              more_outputs={"gcp_resources": resources})  # fmt: skip
    assert result.returncode == 0, result.stderr
    written = json.loads((tmp_path / "executor_output.json").read_text())
    assert set(written["parameterValues"]) == {"worker_pool_specs", "base_output_directory"}
    assert resources.read_bytes() == before

    # a stage that declares none, and evaluate, which declares a number
    for declared in ({}, evaluate.OUTPUT_PARAMETERS):
        request = executor_input(tmp_path / "step", {"model": "system.Model"},
                                 parameters=("miou",))  # fmt: skip
        request["outputs"]["parameters"]["gcp_resources"] = {"outputFile": str(resources)}
        (tmp_path / "step" / "parameters").mkdir(parents=True, exist_ok=True)
        (tmp_path / "step" / "parameters" / "miou").write_text("0.25")
        options = kfp_executor.ExecutorOptions(request)
        kfp_executor.check_executor_input(options)
        path = kfp_executor.write_executor_output(options, declared)
        written = json.loads(path.read_text())
        assert written.get("parameterValues", {}) == ({"miou": 0.25} if declared else {})
        assert written["artifacts"]["model"]["artifacts"][0]["uri"] == str(tmp_path / "step/model")
        assert resources.read_bytes() == before


def test_gcs_artifacts_are_read_through_the_gcsfuse_mount():
    assert kfp_executor.local_path("gs://bucket/run/model") == Path("/gcs/bucket/run/model")
    assert kfp_executor.local_path("/tmp/root/model") == Path("/tmp/root/model")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--executor-input"], "needs a value"),
        (["--executor-input", "{not json", "prepare"], "not JSON"),
        (["--metrics-from", "model/metrics.json", "prepare"], "needs --executor-input"),
    ],
)
def test_bad_executor_options_are_one_line_errors(argv, message, capsys):
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_metrics_from_must_name_an_output(tmp_path):
    options = kfp_executor.ExecutorOptions(
        executor_input(tmp_path, {"model": "system.Model"}), metrics_from="nope/metrics.json"
    )
    with pytest.raises(ValueError, match="OUTPUT one of \\['model'\\]"):
        kfp_executor.executor_output(options, {})


def test_cloud_build_builds_and_pushes_every_image():
    config = yaml.safe_load((REPO / "cloudbuild.yaml").read_text())
    # Cloud Build's substitutions stand where a real registry and tag will be.
    real = Images("registry.invalid/project", "tag")

    def image(name: str) -> str:
        return (
            real.image(name)
            .replace(real.registry, "${_IMAGE_REGISTRY}")
            .replace(":tag", ":${_TAG}")
        )

    names = sorted(
        path.name.removesuffix(".Dockerfile") for path in REPO.glob("docker/*.Dockerfile")
    )
    builds = {
        step["args"][step["args"].index("-f") + 1]: step["args"][step["args"].index("-t") + 1]
        for step in config["steps"]
        if step["args"][0] == "build"
    }
    assert builds == {f"docker/{name}.Dockerfile": image(name) for name in names}
    assert sorted(config["images"]) == sorted(image(name) for name in names)
    (wheels,) = [step for step in config["steps"] if step["id"] == "wheels"]
    assert (
        f"for image in {' '.join(sorted(names, key=['light', 'train', 'export'].index))};"
        in (wheels["args"][1])
    )


def test_runs_start_from_imagenet_weights(spec):
    """The train image carries the ImageNet ResNet-50 file, so a run downloads nothing;
    `make pipeline-local` trains in the export image, which does not, and passes init=random."""
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert parameters["init"]["defaultValue"] == "imagenet"
    assert parameters["resize"]["defaultValue"] == "stretch"
    make = subprocess.run(["make", "--no-print-directory", "-n", "pipeline-local"], cwd=REPO,
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert "--param init=random" in make.stdout
