"""The compiled pipeline's structure, its steps' command lines, and the KFP executor protocol."""

import argparse
import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format
from kfp.local import executor_output_utils
from kfp.pipeline_spec import pipeline_spec_pb2
from vertex_fake import CUSTOM_JOB_LAUNCHER, render_custom_jobs

from components import STAGE_IMAGES, Images
from components.images import DOWNLOAD_SOURCES, download_tag
from image_segmentation import ade20k, cli, kfp_executor, labels
from pipelines.__main__ import main as pipelines_main
from pipelines.pipeline import compile_pipeline

REPO = Path(__file__).resolve().parents[1]
REGISTRY, TAG = "europe-west4-docker.pkg.dev/my-project/images", "v7"
STEPS = ("download", "prepare", "train", "train-2", "evaluate", "convert", "upload", "upload-2")
PARAM = re.compile(r"\{\{\$\.inputs\.parameters\['([^']+)'\]\}\}")
ARTIFACT = re.compile(r"\{\{\$\.(inputs|outputs)\.artifacts\['([^']+)'\]\.path\}\}")
OUTPUT_PARAM = re.compile(r"\{\{\$\.outputs\.parameters\['([^']+)'\]\.output_file\}\}")
GATE = (
    "inputs.parameter_values['pipelinechannel--evaluate-miou'] >= "
    "inputs.parameter_values['pipelinechannel--min_miou']"
)


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> dict:
    """The template as `make pipeline-compile IMAGE_REGISTRY=... TAG=...` writes it."""
    path = tmp_path_factory.mktemp("compiled") / "pipeline.yaml"
    assert pipelines_main(["compile", "--image-registry", REGISTRY, "--tag", TAG,
                           "--output", str(path)]) == 0  # fmt: skip
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def local_spec(tmp_path_factory) -> dict:
    """The variant `make pipeline-local` runs: the train step is a plain container step."""
    path = tmp_path_factory.mktemp("compiled-local") / "pipeline.yaml"
    compile_pipeline(Images(REGISTRY, TAG), str(path), on_vertex=False)
    return yaml.safe_load(path.read_text())


@pytest.fixture(params=["vertex", "local"])
def either_spec(request, spec, local_spec) -> dict:
    return spec if request.param == "vertex" else local_spec


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


def stage_container(spec: dict, step: str) -> dict:
    """The command and args a step's stage container runs: the step's own container, or for
    a CustomJob step the container of its first worker pool (as Kubeflow fills it in)."""
    container = executor(spec, step)
    if CUSTOM_JOB_LAUNCHER not in container["command"]:
        return container
    task = next(t for t in all_tasks(spec).values() if t["componentRef"]["name"] == f"comp-{step}")
    pool = task["inputs"]["parameters"]["worker_pool_specs"]["runtimeValue"]["constant"][0]
    command = ["{{$}}" if part == "{{$.json_escape[1]}}" else part
               for part in pool["container_spec"]["command"]]  # fmt: skip
    return {"image": pool["container_spec"]["image_uri"], "command": command,
            "args": pool["container_spec"]["args"]}  # fmt: skip


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


def test_steps_run_in_order_with_artifacts_passed(local_spec):
    spec = local_spec
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {"download", "prepare", "train", "evaluate", "condition-branches-1"}
    assert "dependentTasks" not in tasks["download"]
    assert tasks["prepare"]["dependentTasks"] == ["download"]
    assert tasks["train"]["dependentTasks"] == ["prepare"]
    assert sorted(tasks["evaluate"]["dependentTasks"]) == ["prepare", "train"]
    assert artifact_sources(tasks["prepare"]) == {"dataset": ("download", "dataset")}
    assert artifact_sources(tasks["train"]) == {"data": ("prepare", "prepared")}
    assert artifact_sources(tasks["evaluate"]) == {
        "data": ("prepare", "prepared"),
        "model": ("train", "model"),
    }
    gate = tasks["condition-branches-1"]
    assert sorted(gate["dependentTasks"]) == ["evaluate", "train"]
    assert artifact_sources(gate) == {
        "pipelinechannel--train-model": ("train", "model"),
        "pipelinechannel--evaluate-evaluation": ("evaluate", "evaluation"),
    }
    (convert,) = [t for t in dag_tasks(spec, branches(spec, gate)["quality-gate"]).values()
                  if t["componentRef"]["name"] == "comp-convert-with-resources"]  # fmt: skip
    # the export is made from the trained model and carries its evaluation's metrics
    assert artifact_sources(convert) == {
        "model": ("input", "pipelinechannel--train-model"),
        "evaluation": ("input", "pipelinechannel--evaluate-evaluation"),
    }
    assert artifact_sources(dag_tasks(spec, convert)["convert"]) == {
        "model": ("input", "model"),
        "evaluation": ("input", "evaluation"),
    }
    assert tasks["train"]["cachingOptions"] == {"enableCache": True}
    assert tasks["evaluate"]["cachingOptions"] == {"enableCache": True}


def test_on_vertex_the_model_comes_from_the_training_job_that_ran(spec):
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {"download", "prepare", "condition-branches-1", "evaluate",
                          "condition-branches-4"}  # fmt: skip
    training = tasks["condition-branches-1"]
    assert artifact_sources(training) == {
        "pipelinechannel--prepare-prepared": ("prepare", "prepared")
    }
    paths = branches(spec, training)
    replicas = "int(inputs.parameter_values['pipelinechannel--replica_count']) == 1"
    assert {name: branch["triggerPolicy"]["condition"] for name, branch in paths.items()} == {
        "one-machine": replicas, "several-machines": f"!({replicas})",
    }  # fmt: skip
    assert {name: set(dag_tasks(spec, branch)) for name, branch in paths.items()} == {
        "one-machine": {"train"}, "several-machines": {"worker-replicas", "train-2"},
    }  # fmt: skip
    oneof = "pipelinechannel--condition-branches-1-oneof-1"
    selectors = spec["components"][training["componentRef"]["name"]]["dag"]["outputs"]
    assert selectors["artifacts"][oneof]["artifactSelectors"] == [
        {"outputArtifactKey": "pipelinechannel--train-model", "producerSubtask": "condition-2"},
        {"outputArtifactKey": "pipelinechannel--train-2-model", "producerSubtask": "condition-3"},
    ]
    assert artifact_sources(tasks["evaluate"]) == {
        "data": ("prepare", "prepared"),
        "model": ("condition-branches-1", oneof),
    }
    assert artifact_sources(gate_task(spec))[f"pipelinechannel--condition-branches-1-{oneof}"] == (
        "condition-branches-1", oneof,
    )  # fmt: skip
    for task in ("train", "train-2"):
        assert all_tasks(spec)[task]["retryPolicy"]["maxRetryCount"] == 2
        assert all_tasks(spec)[task]["taskInfo"]["name"] == "train"


def test_convert_and_upload_run_only_when_the_evaluated_miou_reaches_min_miou(either_spec):
    spec = either_spec
    tasks = spec["root"]["dag"]["tasks"]
    gate = gate_task(spec)
    before_gate = {k: task for k, task in tasks.items() if task is not gate}
    assert {"comp-download", "comp-prepare", "comp-evaluate"} < steps_under(spec, before_gate)
    assert steps_under(spec, before_gate) - {"comp-download", "comp-prepare", "comp-evaluate"} in (
        {"comp-train"}, {"comp-train", "comp-train-2", "comp-worker-replicas"}
    )  # fmt: skip
    wiring = gate["inputs"]["parameters"]
    assert wiring["pipelinechannel--evaluate-miou"] == {
        "taskOutputParameter": {"producerTask": "evaluate", "outputParameterKey": "miou"}
    }
    assert wiring["pipelinechannel--min_miou"] == {"componentInputParameter": "min_miou"}
    paths = branches(spec, gate)
    conditions = {name: branch["triggerPolicy"]["condition"] for name, branch in paths.items()}
    assert conditions == {"quality-gate": GATE, "below-min-miou": f"!({GATE})"}
    assert steps_under(spec, dag_tasks(spec, paths["quality-gate"])) == {
        "comp-convert", "comp-upload", "comp-upload-2",
    }  # fmt: skip
    (message,) = dag_tasks(spec, paths["below-min-miou"]).values()
    assert message["componentRef"]["name"] == "comp-not-published"
    assert message["inputs"]["parameters"] == {
        "miou": {"componentInputParameter": "pipelinechannel--evaluate-miou"},
        "min_miou": {"componentInputParameter": "pipelinechannel--min_miou"},
    }
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


def test_the_gated_run_logs_why_nothing_was_published(spec):
    """The not-published step's own command line, run with the values Kubeflow fills in."""
    container = executor(spec, "not-published")
    assert container["image"] == f"{REGISTRY}/image-segmentation-light:{TAG}"
    assert container["command"][0] == "python"
    types = {"miou": "NUMBER_DOUBLE", "min_miou": "NUMBER_DOUBLE"}
    assert container["args"] == ["{{$.inputs.parameters['miou']}}",
                                 "{{$.inputs.parameters['min_miou']}}"]  # fmt: skip
    assert [_resolve(arg, types) for arg in container["args"]] == ["0.5", "0.5"]
    args = ["0.123456", "1.01"]  # as kfp.local and Vertex render the two floats
    result = subprocess.run([sys.executable, *container["command"][1:], *args],
                            capture_output=True, text=True, check=True)  # fmt: skip
    assert result.stdout == (
        "mIoU 0.1235 is below min_miou 1.0100: the model was not converted or uploaded\n"
    )


def test_one_upload_runs_with_the_given_version_or_the_job_name(either_spec):
    spec = either_spec
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
        }
        versions[name] = upload["inputs"]["parameters"]["version"]
    assert versions == {
        "version-is-job-name": {"runtimeValue": {"constant": "{{$.pipeline_job_name}}"}},
        "version-given": {"componentInputParameter": "pipelinechannel--model_version"},
    }


def test_images_come_from_the_registry_and_tag(spec):
    images = {step: stage_container(spec, step)["image"] for step in STEPS}
    assert images == {
        "download": f"{REGISTRY}/image-segmentation-light:{download_tag()}",
        "prepare": f"{REGISTRY}/image-segmentation-light:{TAG}",
        "train": f"{REGISTRY}/image-segmentation-train:{TAG}",
        "train-2": f"{REGISTRY}/image-segmentation-train:{TAG}",
        "evaluate": f"{REGISTRY}/image-segmentation-export:{TAG}",
        "convert": f"{REGISTRY}/image-segmentation-export:{TAG}",
        "upload": f"{REGISTRY}/image-segmentation-light:{TAG}",
        "upload-2": f"{REGISTRY}/image-segmentation-light:{TAG}",
    }
    assert executor(spec, "train")["image"].startswith(
        "gcr.io/ml-pipeline/google-cloud-pipeline-components:"
    )  # the CustomJob launcher


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
    (copy / "image_segmentation" / "download.py").write_text("# changed\n", "utf-8")
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
    assert "image_segmentation/download.py" in loaded
    entry_point = {"image_segmentation/__main__.py"}  # `python -m` runs it first
    assert loaded | entry_point == {
        name for name in DOWNLOAD_SOURCES if name.startswith("image_segmentation/")
    }


def test_on_vertex_training_is_a_custom_job_sized_by_the_run_parameters(spec):
    """What Vertex would create from a run's parameters: one machine, or a chief and workers."""
    values = {"destination": "gs://b/models", "machine_type": "a2-highgpu-2g",
              "accelerator_type": "NVIDIA_TESLA_A100", "accelerator_count": 2,
              "tensorboard": "projects/p/locations/l/tensorboards/7", "train_timeout": "3600s",
              "epochs": 4}  # fmt: skip
    body = {"pipelineSpec": spec, "serviceAccount": "runner@p.iam.gserviceaccount.com",
            "runtimeConfig": {"gcsOutputDirectory": "gs://b/root"}}  # fmt: skip
    for replicas in (1, 3):
        body["runtimeConfig"]["parameterValues"] = {**values, "replica_count": replicas}
        jobs = render_custom_jobs(body)
        job = jobs["one-machine" if replicas == 1 else "several-machines"]["job_spec"]
        pools = job["worker_pool_specs"]
        assert [int(pool["replica_count"]) for pool in pools] == [1, 2][: min(replicas, 2)]
        for pool in pools:
            assert pool["machine_spec"] == {"machine_type": "a2-highgpu-2g",
                                            "accelerator_type": "NVIDIA_TESLA_A100",
                                            "accelerator_count": "2"}  # fmt: skip
            container = pool["container_spec"]
            assert container["image_uri"] == f"{REGISTRY}/image-segmentation-train:{TAG}"
            assert container["command"][-1] == "train"
            assert container["args"][container["args"].index("--epochs") + 1] == "4"
        assert job["tensorboard"] == values["tensorboard"]
        assert job["scheduling"]["timeout"] == "3600s"
        assert job["scheduling"]["restart_job_on_worker_restart"] is True
        assert job["service_account"] == body["serviceAccount"]
        assert job["base_output_directory"]["output_uri_prefix"].startswith("gs://b/root/")


def test_a_replica_count_below_one_stops_the_run_with_a_message(spec):
    container = executor(spec, "worker-replicas")
    result = subprocess.run([sys.executable, *container["command"][1:], "0", "/dev/null"],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip() == "replica_count must be at least 1, got 0"


def test_locally_training_is_a_plain_step(local_spec):
    assert "resources" not in executor(local_spec, "train")
    assert stage_container(local_spec, "train")["command"][-1] == "train"
    assert "comp-worker-replicas" not in local_spec["components"]


def test_evaluate_and_convert_take_their_resources_from_parameters(either_spec):
    spec = either_spec
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


def test_every_step_gets_the_parameters_it_refers_to(either_spec):
    """A parameter a task takes from its DAG must be one of that DAG's inputs; the compiler
    does not check this (it misses parameters that only set resources inside a condition)."""
    spec = either_spec
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
    assert defaults["learning_rate"] == 0.001
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
    samples = {"STRING": "text", "NUMBER_INTEGER": "3", "NUMBER_DOUBLE": "0.5"}
    choices = {"resize": "crop"}  # strings the stage accepts only from a list
    arg = PARAM.sub(lambda m: choices.get(m.group(1), samples[parameter_types[m.group(1)]]), arg)
    arg = OUTPUT_PARAM.sub(lambda m: f"/parameters/{m.group(1)}", arg)
    return ARTIFACT.sub(lambda m: f"/artifacts/{m.group(2)}", arg)


@pytest.mark.parametrize("step", STEPS)
def test_step_command_is_the_stage_cli(spec, step):
    """Each step runs `python -m image_segmentation --executor-input {{$}} ... STAGE`, and its
    arguments parse with the stage's own argparse options."""
    container = stage_container(spec, step)
    command = container["command"]
    assert command[:5] == ["python", "-m", "image_segmentation", "--executor-input", "{{$}}"]
    given = ["{}" if part == "{{$}}" else part for part in command[3:]]  # as Kubeflow fills it
    executor_options, rest = kfp_executor.split_options(given)
    assert executor_options is not None and len(rest) == 1
    stage = rest[0]
    assert stage in cli.STAGES
    parser = argparse.ArgumentParser()
    importlib.import_module(cli.STAGES[stage][0]).add_arguments(parser)
    inputs = spec["components"][f"comp-{step}"]["inputDefinitions"].get("parameters", {})
    types = {name: p["parameterType"] for name, p in inputs.items()}
    args = [_resolve(arg, types) for arg in container["args"]]
    parsed = parser.parse_args(args)  # exits (fails the test) on an unknown or bad option
    assert any(Path(str(value)).parts[:2] == ("/", "artifacts") for value in vars(parsed).values())


def test_compile_needs_the_registry(capsys):
    with pytest.raises(SystemExit) as exit_info:
        pipelines_main(["compile", "--tag", TAG, "--output", "unused.yaml"])
    assert exit_info.value.code == 2
    assert "--image-registry" in capsys.readouterr().err


def test_image_names_are_checked():
    with pytest.raises(ValueError, match="tag"):
        Images("localhost", "v1:latest")
    assert Images("localhost", "t").for_stage("train") == "localhost/image-segmentation-train:t"


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
    (tmp_path / "metrics").write_text('{"val_mean_iou": 0.5, "epochs": 3, "ok": true, "x": [1]}')
    options = kfp_executor.ExecutorOptions(
        executor_input(tmp_path, {"metrics": "system.Metrics", "model": "system.Model"})
    )
    output = kfp_executor.executor_output(options)
    assert output["artifacts"]["metrics"]["artifacts"][0]["metadata"] == {
        "val_mean_iou": 0.5,
        "epochs": 3.0,
    }
    assert output["artifacts"]["model"]["artifacts"][0]["metadata"] == {}


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
    path = kfp_executor.write_executor_output(kfp_executor.ExecutorOptions(request))

    written = json.loads(path.read_text())
    assert written["parameterValues"] == {"miou": 0.4321}
    artifacts = {name: entry["artifacts"][0] for name, entry in written["artifacts"].items()}
    assert artifacts["confusion_matrix"]["metadata"] == matrix
    assert artifacts["metrics"]["metadata"] == {"miou": 0.4321, "pixel_accuracy": 0.8}
    assert artifacts["report"]["metadata"] == {}

    (tmp_path / "parameters" / "miou").unlink()
    component = json_format.ParseDict(
        spec["components"]["comp-evaluate"], pipeline_spec_pb2.ComponentSpec()
    )
    read = executor_output_utils.get_outputs_from_executor_output(
        executor_output_utils.load_executor_output(str(path)),
        json_format.ParseDict(request, pipeline_spec_pb2.ExecutorInput()),
        component,
    )
    assert read["miou"] == 0.4321  # the value the quality gate compares with min_miou
    assert read["confusion_matrix"].metadata == matrix
    assert read["metrics"].metadata["pixel_accuracy"] == 0.8


@pytest.mark.parametrize("text", ["nan", '"high"', "true", "0.5 0.6"])
def test_a_parameter_output_must_be_a_finite_number(tmp_path, text):
    request = executor_input(tmp_path, {}, parameters=("miou",))
    (tmp_path / "parameters").mkdir()
    (tmp_path / "parameters" / "miou").write_text(text)
    with pytest.raises(ValueError, match="output parameter 'miou'"):
        kfp_executor.executor_output(kfp_executor.ExecutorOptions(request))


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
        kfp_executor.executor_output(options)


def test_cloud_build_builds_and_pushes_every_image():
    config = yaml.safe_load((REPO / "cloudbuild.yaml").read_text())
    images = Images("${_IMAGE_REGISTRY}", "${_TAG}")
    names = sorted(
        path.name.removesuffix(".Dockerfile") for path in REPO.glob("docker/*.Dockerfile")
    )
    builds = {
        step["args"][step["args"].index("-f") + 1]: step["args"][step["args"].index("-t") + 1]
        for step in config["steps"]
        if step["args"][0] == "build"
    }
    assert builds == {f"docker/{name}.Dockerfile": images.image(name) for name in names}
    assert sorted(config["images"]) == sorted(images.image(name) for name in names)
    (wheels,) = [step for step in config["steps"] if step["id"] == "wheels"]
    assert (
        f"for image in {' '.join(sorted(names, key=['light', 'train', 'export'].index))};"
        in (wheels["args"][1])
    )


def test_the_local_runner_patch_refuses_another_kfp_release(monkeypatch):
    import kfp

    from pipelines import local

    with local.exit_status_kept():  # the locked release: patched while the run lasts
        assert local.docker_task_handler.run_docker_container is local.run_container
    assert local.docker_task_handler.run_docker_container is not local.run_container
    monkeypatch.setattr(kfp, "__version__", "2.99.0")
    with pytest.raises(ValueError, match=r"kfp 2\.99\.0 is installed"), local.exit_status_kept():
        pass
    assert local.docker_task_handler.run_docker_container is not local.run_container


def test_vertex_runs_start_from_imagenet_local_runs_from_random_weights(spec, local_spec):
    """The train image carries the ImageNet ResNet-50 file; the export image, which trains in
    local runs, does not, and a run downloads nothing."""
    for compiled, init in ((spec, "imagenet"), (local_spec, "random")):
        parameters = compiled["root"]["inputDefinitions"]["parameters"]
        assert parameters["init"]["defaultValue"] == init
        assert parameters["resize"]["defaultValue"] == "stretch"
