"""Run a compiled pipeline template the way Vertex AI Pipelines runs it.

The template is walked as Vertex walks it: the root DAG's tasks in dependency order, each
task's inputs taken from the run's parameters, from upstream outputs or from constants; a
task whose trigger condition is false is skipped with everything inside it; a nested DAG (a
condition branch, a sub-pipeline) runs with its own inputs, and its outputs come from the
subtasks that ran (`dsl.OneOf`). A container task gets its executor input (`{{$}}`) and its
command line with every placeholder filled; its artifacts are `gs://BUCKET/...` URIs that the
step sees as `/gcs/BUCKET/...`; it is retried as its retry policy says and cached as Vertex
caches (same image, command and inputs: the earlier outputs, nothing run).

How Vertex fills a placeholder that is a whole string inside a constant (a list or a struct
given to a task) is not documented: `substitution` picks "typed" (the value keeps its type) or
"text"; a template that is right must run either way. Numbers are written as protobuf's JSON
writes them: 1 for an integral number, never 1.0.
"""

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from image_segmentation.cloud.kfp_executor import local_path

PLACEHOLDER = re.compile(r"\{\{\$(?P<path>[^{}]*)\}\}")
_INPUT = re.compile(r"^\.inputs\.parameters\['(?P<name>[^']+)'\]$")
_ARTIFACT = re.compile(
    r"^\.(?P<side>inputs|outputs)\.artifacts\['(?P<name>[^']+)'\]\.(?P<what>path|uri)$"
)
_JSON_ESCAPE = re.compile(r"^\.json_escape\[(?P<times>\d+)\]$")
_OUTPUT_FILE = re.compile(r"^\.outputs\.parameters\['(?P<name>[^']+)'\]\.output_file$")
_CONDITION_VALUE = re.compile(r"inputs\.parameter_values\['(?P<name>[^']+)'\]")
SUBSTITUTIONS = ("typed", "text")
_EMPTY = {"LIST": [], "STRUCT": {}, "STRING": ""}


class StepFailed(RuntimeError):
    """A task failed after its retries; the run stops, as Vertex stops a failed run."""


@dataclass
class TaskResult:
    """What a task produced: output parameters, output artifacts (name -> artifact), and how
    it ended: succeeded, skipped (condition false), or cached."""

    state: str
    parameters: dict = field(default_factory=dict)
    artifacts: dict = field(default_factory=dict)
    attempts: int = 0


@dataclass(frozen=True)
class RunContext:
    """The run-wide values Vertex gives every task (`{{$.pipeline_...}}`)."""

    job_id: str
    pipeline_root: str  # gs://BUCKET/PATH
    project: str
    location: str
    service_account: str

    def placeholders(self, task_name: str, task_id: str) -> dict[str, str]:
        return {
            ".pipeline_job_name": self.job_id,
            ".pipeline_job_id": self.job_id,
            ".pipeline_job_uuid": hashlib.sha256(self.job_id.encode()).hexdigest()[:32],
            ".pipeline_task_name": task_name,
            ".pipeline_task_id": task_id,
            ".pipeline_task_uuid": task_id,
            ".pipeline_root": self.pipeline_root,
            ".pipeline_service_account": self.service_account,
            ".pipeline_google_cloud_project_id": self.project,
            ".pipeline_google_cloud_location": self.location,
            ".pipeline_persistent_resource_id": "",
        }


def json_text(value: object) -> str:
    """A value as protobuf's JSON writer prints it: integral numbers without a fraction."""
    return json.dumps(_integral(value), separators=(",", ":"))


def _integral(value: object) -> object:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_integral(item) for item in value]
    if isinstance(value, dict):
        return {key: _integral(item) for key, item in value.items()}
    return value


def text(value: object) -> str:
    """A parameter as it appears inside a command line: strings as they are, the rest JSON."""
    return value if isinstance(value, str) else json_text(value)


def typed(value: object, parameter_type: str) -> object:
    """A parameter value in its declared type (a JSON number is a float in protobuf)."""
    if parameter_type == "NUMBER_INTEGER" and isinstance(value, float) and value.is_integer():
        return int(value)
    if parameter_type == "NUMBER_DOUBLE" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


class PipelineRun:
    """One run of a compiled template.

    `execute(task_id, image, command, env)` runs one container step to the end and returns
    its exit status; `host_path` says where a /gcs path a step wrote is on this machine;
    `cache` (a dict kept by the caller, e.g. in a JSON file) holds the outputs of earlier
    successful steps; `retry_in_new_folder` says whether a retried task gets new output paths
    (True) or the failed attempt's (False), which Vertex does not document: the retry story
    must hold both ways.
    """

    def __init__(
        self,
        spec: dict,
        parameters: dict,
        context: RunContext,
        execute: Callable[[str, str, list[str], dict], int],
        host_path: Callable[[str], Path],
        *,
        substitution: str = "typed",
        cache: dict | None = None,
        retry_in_new_folder: bool = True,
        log: Callable[[str], None] = print,
    ):
        if substitution not in SUBSTITUTIONS:
            raise ValueError(f"substitution must be one of {SUBSTITUTIONS}, got {substitution!r}")
        self.spec = spec
        self.parameters = parameters
        self.context = context
        self.execute = execute
        self.host_path = host_path
        self.substitution = substitution
        self.cache = cache
        self.retry_in_new_folder = retry_in_new_folder
        self.log = log
        self.results: dict[str, TaskResult] = {}  # by task path, e.g. root.evaluate
        self.executor_inputs: dict[str, dict] = {}  # each attempt's, by task id

    def run(self) -> dict[str, TaskResult]:
        """Run the whole template; raise StepFailed when a task fails."""
        root = self.spec["root"]
        definitions = root.get("inputDefinitions", {}).get("parameters", {})
        unknown = sorted(set(self.parameters) - set(definitions))
        if unknown:
            raise ValueError(f"unknown pipeline parameters: {', '.join(unknown)}")
        values = {}
        for name, definition in definitions.items():
            if name in self.parameters:
                values[name] = typed(self.parameters[name], definition["parameterType"])
            elif "defaultValue" in definition:
                values[name] = typed(definition["defaultValue"], definition["parameterType"])
            elif not definition.get("isOptional"):
                raise ValueError(f"pipeline parameter {name!r} has no default: give a value")
        self._dag(root, values, {}, "root")
        return self.results

    # --- DAGs -------------------------------------------------------------------------------

    def _dag(self, component: dict, parameters: dict, artifacts: dict, path: str):
        tasks = component["dag"]["tasks"]
        done: dict[str, TaskResult] = {}
        for name in _dependency_order(tasks):
            task = tasks[name]
            task_path = f"{path}.{task['taskInfo']['name']}"  # as the console names it
            inputs = self._task_inputs(task, parameters, artifacts, done)
            condition = task.get("triggerPolicy", {}).get("condition")
            if inputs is None or (condition and not _holds(condition, inputs[0])):
                done[name] = self.results[task_path] = TaskResult("skipped")
                continue
            child = self.spec["components"][task["componentRef"]["name"]]
            if "dag" in child:
                child_parameters = self._with_defaults(child, inputs[0], task_path)
                outputs = self._dag(child, child_parameters, inputs[1], task_path)
                done[name] = self.results[task_path] = TaskResult("succeeded", *outputs)
            else:
                done[name] = self.results[task_path] = self._container(
                    task, child, inputs, task_path
                )
        return _dag_outputs(component["dag"].get("outputs", {}), done)

    def _task_inputs(self, task: dict, parameters: dict, artifacts: dict, done: dict):
        """The task's (parameters, artifacts), or None when an input comes from a skipped
        task. Constants are filled last: they may name the task's other inputs."""
        inputs = task.get("inputs", {})
        values, constants = {}, {}
        for name, source in inputs.get("parameters", {}).items():
            if "componentInputParameter" in source:
                if source["componentInputParameter"] in parameters:
                    values[name] = parameters[source["componentInputParameter"]]
            elif "taskOutputParameter" in source:
                producer = done[source["taskOutputParameter"]["producerTask"]]
                if producer.state == "skipped":
                    return None
                values[name] = producer.parameters[
                    source["taskOutputParameter"]["outputParameterKey"]
                ]
            elif "runtimeValue" in source:
                constants[name] = source["runtimeValue"]["constant"]
            else:
                raise ValueError(f"the emulator cannot resolve input {name!r}: {source}")
        found = {}
        for name, source in inputs.get("artifacts", {}).items():
            if "componentInputArtifact" in source:
                found[name] = artifacts[source["componentInputArtifact"]]
            else:
                producer = done[source["taskOutputArtifact"]["producerTask"]]
                if producer.state == "skipped":
                    return None
                found[name] = producer.artifacts[source["taskOutputArtifact"]["outputArtifactKey"]]
        run_values = self.context.placeholders(task["taskInfo"]["name"], "")
        for name, constant in constants.items():
            values[name] = self._fill_constant(constant, values, run_values)
        return values, found

    def _with_defaults(self, component: dict, values: dict, task_path: str) -> dict:
        """The component's declared inputs, typed, with its defaults for the missing ones; an
        optional one without a default is its type's empty value (kfp drops `[]` defaults
        from templates, and Google's launcher payloads need valid JSON there)."""
        run_values = self.context.placeholders(task_path.rsplit(".", 1)[-1], "")
        result = {}
        definitions = component.get("inputDefinitions", {}).get("parameters", {})
        for name, definition in definitions.items():
            if name in values:
                result[name] = typed(values[name], definition["parameterType"])
            elif "defaultValue" in definition:
                default = self._fill_constant(definition["defaultValue"], values, run_values)
                result[name] = typed(default, definition["parameterType"])
            elif definition["parameterType"] in _EMPTY:
                result[name] = _EMPTY[definition["parameterType"]]
        return result

    def _fill_constant(self, value: object, inputs: dict, run_values: dict) -> object:
        """Placeholders inside a constant: a whole-string one typed or as text (see module
        docstring), one inside a longer string always as text. One that names no input of
        the task (an artifact path, the executor input) is left for the command line."""
        if isinstance(value, list):
            return [self._fill_constant(item, inputs, run_values) for item in value]
        if isinstance(value, dict):
            return {
                key: self._fill_constant(item, inputs, run_values) for key, item in value.items()
            }
        if not isinstance(value, str):
            return value

        def lookup(match: re.Match) -> object:
            if match["path"] in run_values:
                return run_values[match["path"]]
            found = _INPUT.match(match["path"])
            return inputs[found["name"]] if found and found["name"] in inputs else match[0]

        whole = PLACEHOLDER.fullmatch(value)
        if whole and self.substitution == "typed":
            return lookup(whole)
        return PLACEHOLDER.sub(lambda match: text(lookup(match)), value)

    # --- container tasks --------------------------------------------------------------------

    def _container(self, task: dict, component: dict, inputs: tuple, task_path: str):
        parameters = self._with_defaults(component, inputs[0], task_path)
        container = self.spec["deploymentSpec"]["executors"][component["executorLabel"]][
            "container"
        ]
        outputs = component.get("outputDefinitions", {})
        key = _cache_key(container, parameters, inputs[1], outputs)
        cached = task.get("cachingOptions", {}).get("enableCache") and self.cache is not None
        if cached and key in self.cache:
            self.log(f"[{task_path}] cached: the outputs of an earlier run")
            return TaskResult("cached", **self.cache[key])
        retries = task.get("retryPolicy", {}).get("maxRetryCount", 0)
        task_name = task["taskInfo"]["name"]
        for attempt in range(retries + 1):
            folder = (
                task_path
                if attempt == 0 or not self.retry_in_new_folder
                else f"{task_path}-{attempt}"
            )
            task_id = hashlib.sha256(f"{self.context.job_id}/{folder}".encode()).hexdigest()[:16]
            executor_input = self._executor_input(parameters, inputs[1], outputs, folder)
            self.executor_inputs[task_id] = executor_input
            run_values = self.context.placeholders(task_name, task_id)
            command = [
                _fill_arg(arg, executor_input, parameters, run_values)
                for arg in [*container.get("command", []), *container.get("args", [])]
            ]
            self.log(f"[{task_path}] attempt {attempt + 1}: {container['image']}")
            status = self.execute(task_id, container["image"], command, {})
            if status == 0:
                result = _read_outputs(executor_input, outputs, task_path, self.host_path)
                result.attempts = attempt + 1
                if self.cache is not None:
                    self.cache[key] = {
                        "parameters": result.parameters,
                        "artifacts": result.artifacts,
                    }
                return result
            self.log(f"[{task_path}] attempt {attempt + 1} failed with exit status {status}")
        raise StepFailed(f"task {task_path} failed after {retries + 1} attempt(s)")

    def _executor_input(self, parameters: dict, artifacts: dict, outputs: dict, folder: str):
        """The ExecutorInput message Vertex gives the step, with gs:// output URIs under the
        run's folder; parameter output files and the executor output live there too."""
        base = f"{self.context.pipeline_root}/{self.context.job_id}/{folder.replace('.', '/')}"
        output_artifacts = {
            name: {
                "artifacts": [
                    {
                        "name": f"{folder}/{name}",
                        "type": definition["artifactType"],
                        "uri": f"{base}/{name}",
                        "metadata": {},
                    }
                ]
            }
            for name, definition in outputs.get("artifacts", {}).items()
        }
        output_parameters = {
            name: {"outputFile": str(local_path(f"{base}/{name}"))}
            for name in outputs.get("parameters", {})
        }
        return {
            "inputs": {
                "parameterValues": parameters,
                "artifacts": {
                    name: {"artifacts": [artifact]} for name, artifact in artifacts.items()
                },
            },
            "outputs": {
                "artifacts": output_artifacts,
                "parameters": output_parameters,
                "outputFile": str(local_path(f"{base}/executor_output.json")),
            },
        }


def _fill_arg(arg: str, executor_input: dict, parameters: dict, run_values: dict) -> str:
    """One command-line argument with its placeholders filled in, as text. An input parameter
    may hold placeholders of the same task in turn (Google's wrapped training components put
    the component's own placeholders into their worker pools), so those are filled first, a
    few times over; then the rest once, so the executor input is never filled into again.
    `{{$.json_escape[N]}}` is the executor input escaped N times, to sit inside JSON strings."""

    def parameter(match: re.Match) -> str:
        found = _INPUT.match(match["path"])
        return text(parameters.get(found["name"], "")) if found else match[0]

    def value(match: re.Match) -> str:
        path = match["path"]
        if path == "":
            return json.dumps(executor_input)
        if found := _JSON_ESCAPE.match(path):
            escaped = json.dumps(executor_input)
            for _ in range(int(found["times"])):
                escaped = json.dumps(escaped)[1:-1]
            return escaped
        if path in run_values:
            return run_values[path]
        if found := _ARTIFACT.match(path):
            side = executor_input[found["side"]]["artifacts"]
            uri = side[found["name"]]["artifacts"][0]["uri"]
            return uri if found["what"] == "uri" else str(local_path(uri))
        if found := _OUTPUT_FILE.match(path):
            return executor_input["outputs"]["parameters"][found["name"]]["outputFile"]
        raise ValueError(f"the emulator does not know the placeholder {match[0]}")

    for _ in range(3):
        arg, before = PLACEHOLDER.sub(parameter, arg), arg
        if arg == before:
            break
    return PLACEHOLDER.sub(value, arg)


def _read_outputs(executor_input: dict, outputs: dict, task_path: str, host_path) -> TaskResult:
    """The step's outputs: its executor_output.json if it wrote one, else its parameter output
    files; every declared output parameter must be there, as Vertex requires."""
    written = host_path(executor_input["outputs"]["outputFile"])
    report = json.loads(written.read_text()) if written.is_file() else {}
    artifacts = {}
    for name, entry in executor_input["outputs"]["artifacts"].items():
        artifact = dict(entry["artifacts"][0])
        reported = report.get("artifacts", {}).get(name, {}).get("artifacts", [{}])[0]
        artifact["metadata"] = reported.get("metadata", {})
        artifacts[name] = artifact
    parameters = {}
    for name, definition in outputs.get("parameters", {}).items():
        if name in report.get("parameterValues", {}):
            value = report["parameterValues"][name]
        else:
            path = host_path(executor_input["outputs"]["parameters"][name]["outputFile"])
            if not path.is_file():
                raise StepFailed(f"task {task_path} wrote no output parameter {name!r}")
            content = path.read_text()
            value = content if definition["parameterType"] == "STRING" else json.loads(content)
        parameters[name] = typed(value, definition["parameterType"])
    return TaskResult("succeeded", parameters, artifacts)


def _cache_key(container: dict, parameters: dict, artifacts: dict, outputs: dict) -> str:
    """What Vertex's step cache keys on: the container, the inputs, the declared outputs."""
    identity = {
        "container": container,
        "parameters": parameters,
        "artifacts": {name: artifact["uri"] for name, artifact in artifacts.items()},
        "outputs": outputs,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _dependency_order(tasks: dict) -> list[str]:
    """The tasks, each after the ones it depends on (by name order among equals)."""
    order, placed = [], set()

    def upstream(task: dict) -> set[str]:
        names = set(task.get("dependentTasks", []))
        for kind, key in (
            ("parameters", "taskOutputParameter"),
            ("artifacts", "taskOutputArtifact"),
        ):
            for source in task.get("inputs", {}).get(kind, {}).values():
                if key in source:
                    names.add(source[key]["producerTask"])
        return names

    while len(order) < len(tasks):
        ready = [n for n in sorted(tasks) if n not in placed and upstream(tasks[n]) <= placed]
        if not ready:
            raise ValueError(f"the DAG has a cycle among {sorted(set(tasks) - placed)}")
        order.append(ready[0])
        placed.add(ready[0])
    return order


def _holds(condition: str, values: dict) -> bool:
    """A trigger condition as kfp compiles it (a small CEL expression over the task's
    parameter inputs), evaluated in Python."""
    expression = _CONDITION_VALUE.sub(lambda match: repr(values[match["name"]]), condition)
    expression = expression.replace("!(", "not (").replace("&&", " and ").replace("||", " or ")
    expression = re.sub(r"\bdouble\(", "float(", expression)
    allowed = {"int": int, "float": float, "str": str, "__builtins__": {}}
    return bool(eval(expression, allowed))  # the template's own condition


def _dag_outputs(outputs: dict, done: dict) -> tuple[dict, dict]:
    """A DAG's outputs from the subtasks that ran: the first selector whose producer did."""
    parameters, artifacts = {}, {}
    for name, output in outputs.get("artifacts", {}).items():
        for selector in output.get("artifactSelectors", []):
            producer = done.get(selector["producerSubtask"])
            if producer and producer.state != "skipped":
                artifacts[name] = producer.artifacts[selector["outputArtifactKey"]]
                break
    for name, output in outputs.get("parameters", {}).items():
        selectors = output.get("valueFromOneof", {}).get("parameterSelectors", [])
        if "valueFromParameter" in output:
            selectors = [output["valueFromParameter"]]
        for selector in selectors:
            producer = done.get(selector["producerSubtask"])
            if producer and producer.state != "skipped":
                parameters[name] = producer.parameters[selector["outputParameterKey"]]
                break
    return parameters, artifacts
