"""The Kubeflow executor protocol for a stage that runs as a container step.

A container step gets its artifacts' paths on its command line, but Kubeflow learns what the
step produced, and Vertex shows a Metrics artifact's values, only from the `executor_output.json`
the step writes at the path given in its executor input. kfp writes that file for Python
components only, so a stage started with `--executor-input '{{$}}'` writes it here once it has
succeeded; after a failure nothing is written, so no half-made artifact is passed on. Numeric
parameter outputs (e.g. the evaluate step's `miou`, which the quality gate tests) go in it
too, as `parameterValues`, so every runner reads them from the same place.
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path

from image_segmentation.errors import StageError

# Where a remote artifact URI is mounted in the container (as kfp's Artifact.path maps it).
_MOUNTS = {"gs://": "/gcs/", "minio://": "/minio/", "s3://": "/s3/"}
_METRICS_TYPE = "system.Metrics"
_CLASSIFICATION_TYPE = "system.ClassificationMetrics"


@dataclass(frozen=True)
class ExecutorOptions:
    """The global options `--executor-input JSON [--metrics-from OUTPUT/FILE]`."""

    executor_input: dict
    metrics_from: str | None = None  # e.g. "model/metrics.json": a file inside an output


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
    return ExecutorOptions(executor_input, values.get("--metrics-from")), argv


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


def parameter_values(executor_input: dict) -> dict[str, float]:
    """The parameter outputs the stage wrote at their output files, as numbers.

    The stages of this package have numeric parameter outputs only (JSON numbers, e.g. `0.42`).
    """
    values = {}
    for name, output in executor_input.get("outputs", {}).get("parameters", {}).items():
        path = Path(output["outputFile"])
        if not path.is_file():
            continue
        try:
            value = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise StageError(f"output parameter {name!r}: {path} is not JSON: {error}") from error
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise StageError(f"output parameter {name!r}: {path} holds {value!r}, not a number")
        values[name] = float(value)
    return values


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


def executor_output(options: ExecutorOptions) -> dict:
    """The ExecutorOutput message: every output artifact, Metrics ones with their values, and
    the numeric parameter outputs.

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
    parameters = parameter_values(options.executor_input)
    if parameters:
        output["parameterValues"] = parameters
    return output


def write_executor_output(options: ExecutorOptions) -> Path:
    """Write executor_output.json where the executor input says Kubeflow will read it."""
    path = Path(options.executor_input["outputs"]["outputFile"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(executor_output(options)))
    return path
