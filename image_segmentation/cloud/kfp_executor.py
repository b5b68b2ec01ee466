"""The Kubeflow executor protocol for a stage that runs as a container step.

A container step gets its artifacts' paths on its command line, but Kubeflow learns what the
step produced, and Vertex shows a Metrics artifact's values, only from the `executor_output.json`
the step writes at the path given in its executor input. kfp writes that file for Python
components only, so a stage started with `--executor-input '{{$}}'` writes it here once it has
succeeded; after a failure nothing is written, so no half-made artifact is passed on.
Parameter outputs (e.g. the evaluate step's `miou`, which the quality gate tests) go in it
too, as `parameterValues`, so every runner reads them from the same place: only the ones the
stage declares (its module's OUTPUT_PARAMETERS), never a file another program put there. The
executor input is checked before the stage starts, so a malformed one costs no work.
"""

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from image_segmentation import disk
from image_segmentation.errors import StageError, short_json

# Where a remote artifact URI is mounted in the container (as kfp's Artifact.path maps it).
_MOUNTS = {"gs://": "/gcs/", "minio://": "/minio/", "s3://": "/s3/"}
_METRICS_TYPE = "system.Metrics"
_CLASSIFICATION_TYPE = "system.ClassificationMetrics"
_KINDS = {dict: "JSON object", list: "JSON list", str: "non-empty string"}
_MISSING = object()  # a field absent from the executor input


@dataclass(frozen=True)
class ExecutorOptions:
    """The global options `--executor-input JSON [--metrics-from OUTPUT/FILE]`."""

    executor_input: dict
    metrics_from: str | None = None  # e.g. "model/training_metrics.json": a file in an output


def split_options(argv: list[str]) -> tuple[ExecutorOptions | None, list[str]]:
    """Take the executor options from the front of the command line; return them and the rest."""
    values: dict[str, str] = {}
    while argv and argv[0] in ("--executor-input", "--metrics-from"):
        if len(argv) < 2:
            raise StageError(f"{argv[0]} needs a value")
        values[argv[0]], argv = argv[1], argv[2:]
    if not values:
        return None, argv
    if "--executor-input" not in values:
        raise StageError("--metrics-from needs --executor-input")
    try:
        executor_input = json.loads(values["--executor-input"])
    except json.JSONDecodeError as error:
        raise StageError(f"--executor-input is not JSON: {error}") from error
    except RecursionError as error:
        raise StageError("--executor-input is nested too deeply to be an executor input") from error
    return ExecutorOptions(executor_input, values.get("--metrics-from")), argv


def check_executor_input(options: ExecutorOptions) -> None:
    """Refuse, naming what is missing, an executor input this module could not answer with an
    executor output, before the stage does any work (a lost download or training run)."""
    executor_input = options.executor_input
    if not isinstance(executor_input, dict):
        got = short_json(executor_input)
        raise StageError(f"--executor-input must be a JSON object, got {got}")
    outputs = _field(executor_input, "outputs", dict, "outputs")
    _field(outputs, "outputFile", str, "outputs.outputFile")
    for name, entry in _field(outputs, "artifacts", dict, "outputs.artifacts", {}).items():
        where = f"outputs.artifacts.{name}.artifacts"
        artifacts = _field(entry, "artifacts", list, where)
        if not artifacts:
            raise StageError(f"--executor-input: {where} is empty")
        _field(artifacts[0], "uri", str, f"{where}[0].uri")
        _field(artifacts[0], "metadata", dict, f"{where}[0].metadata", {})
        _field(artifacts[0], "type", dict, f"{where}[0].type", {})
    for name, entry in _field(outputs, "parameters", dict, "outputs.parameters", {}).items():
        _field(entry, "outputFile", str, f"outputs.parameters.{name}.outputFile")
    metrics_source(options, output_artifacts(executor_input))


def check_outputs_writable(options: ExecutorOptions) -> None:
    """Refuse, before the stage's work, the files this module writes after it: the executor
    output and the Metrics artifacts (a download or a whole training would be lost)."""
    outputs = options.executor_input["outputs"]
    disk.check_writable_file(Path(outputs["outputFile"]), "the executor output")
    for name, artifact in output_artifacts(options.executor_input).items():
        if artifact.get("type", {}).get("schemaTitle") in (_METRICS_TYPE, _CLASSIFICATION_TYPE):
            disk.check_writable_file(local_path(artifact["uri"]), f"output {name!r}")


def _field(parent: object, key: str, kind: type, where: str, default: object = _MISSING):
    """`parent[key]`, which must be a `kind` (a non-empty one, for a string); `default` when
    absent, if one is given. `where` is its path in the executor input, for the error."""
    value = parent.get(key, default) if isinstance(parent, dict) else _MISSING
    if value is _MISSING:
        raise StageError(f"--executor-input has no {where}")
    if not isinstance(value, kind) or (kind is str and not value):
        got = short_json(value)
        raise StageError(f"--executor-input: {where} must be a {_KINDS[kind]}, got {got}")
    return value


def local_path(uri: str) -> Path:
    """The path at which an artifact URI is visible inside the step's container."""
    for prefix, mount in _MOUNTS.items():
        if uri.startswith(prefix):
            return Path(mount + uri[len(prefix) :])
    return Path(uri)


def output_artifacts(executor_input: dict) -> dict[str, dict]:
    """Each output artifact of the step by output name (a step has one artifact per output)."""
    outputs = executor_input.get("outputs", {}).get("artifacts", {})
    return {name: entry["artifacts"][0] for name, entry in outputs.items()}


def read_json_object(path: Path) -> dict:
    """A JSON object a stage wrote at an artifact's path (e.g. {"confusionMatrix": ...})."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise StageError(f"cannot read {path}: {error}") from error
    if not isinstance(data, dict):
        raise StageError(f"{path}: expected a JSON object")
    return data


def read_metrics(path: Path) -> dict[str, float]:
    """The finite top-level numbers of a JSON object, as Vertex shows Metrics values."""
    return {
        key: float(value)
        for key, value in read_json_object(path).items()
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    }


def parameter_values(executor_input: dict, declared: Mapping[str, type]) -> dict[str, object]:
    """The parameter outputs the stage declares (name -> float, str or list), read from their
    output files.

    Only declared names are read: the executor input may list outputs that belong to someone
    else. A Vertex CustomJob launcher adds `gcp_resources` and writes its own JSON object there,
    in a file the training machines see; that file is the launcher's and is left alone. A number
    is a finite JSON number (e.g. `0.42`), a list a JSON list, a string the file's text.
    """
    outputs = executor_input.get("outputs", {}).get("parameters", {})
    values = {}
    for name, kind in declared.items():
        if name not in outputs:
            continue
        path = Path(outputs[name]["outputFile"])
        if not path.is_file():
            continue
        values[name] = _read_parameter(name, path, kind)
    return values


def _read_parameter(name: str, path: Path, kind: type) -> object:
    text = path.read_text()
    if kind is str:
        return text
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise StageError(f"output parameter {name!r}: {path} is not JSON: {error}") from error
    if kind is list and isinstance(value, list):
        return value
    if (
        kind is float
        and isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    ):
        return float(value)
    wanted = "a list" if kind is list else "a number"
    raise StageError(f"output parameter {name!r}: {path} holds {short_json(value)}, not {wanted}")


def metrics_source(options: ExecutorOptions, artifacts: dict[str, dict]) -> Path | None:
    """The file named by --metrics-from ("OUTPUT/relative/path"), inside that output's path."""
    if not options.metrics_from:
        return None
    output, _, relative = options.metrics_from.partition("/")
    if output not in artifacts or not relative:
        raise StageError(
            f"--metrics-from {options.metrics_from!r}: expected OUTPUT/FILE with OUTPUT one of "
            f"{sorted(artifacts)}"
        )
    return local_path(artifacts[output]["uri"]) / relative


def executor_output(options: ExecutorOptions, declared: Mapping[str, type]) -> dict:
    """The ExecutorOutput message: every output artifact, Metrics ones with their values, and
    the parameter outputs the stage declares (`parameter_values`).

    A Metrics output takes its values from the --metrics-from file (and gets them written to
    its own path too), or else from the JSON the stage wrote at its path, if any. A
    ClassificationMetrics output takes the JSON object the stage wrote at its path as is.
    """
    artifacts = output_artifacts(options.executor_input)
    source = metrics_source(options, artifacts)
    result = {}
    for name, artifact in artifacts.items():
        metadata = dict(artifact.get("metadata", {}))
        schema = artifact.get("type", {}).get("schemaTitle")
        path = local_path(artifact["uri"])
        if schema == _METRICS_TYPE:
            if source:
                metrics = read_metrics(source)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(metrics, indent=2) + "\n")
            else:
                metrics = read_metrics(path) if path.is_file() else {}
            metadata.update(metrics)
        elif schema == _CLASSIFICATION_TYPE and path.is_file():
            metadata.update(read_json_object(path))
        entry = {"name": artifact.get("name", ""), "uri": artifact["uri"], "metadata": metadata}
        result[name] = {"artifacts": [entry]}
    output = {"artifacts": result} if result else {}
    parameters = parameter_values(options.executor_input, declared)
    if parameters:
        output["parameterValues"] = parameters
    return output


def write_executor_output(options: ExecutorOptions, declared: Mapping[str, type]) -> Path:
    """Write executor_output.json where the executor input says Kubeflow will read it."""
    path = Path(options.executor_input["outputs"]["outputFile"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(executor_output(options, declared)))
    return path
