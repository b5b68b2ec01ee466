"""Submit a compiled pipeline to Vertex AI and publish it as a template in Artifact Registry.

A template in a Kubeflow Artifact Registry repository shows up in the Vertex console's
"Create run" form with its parameters, defaults and descriptions, so a run needs no local setup.
"""

from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from image_segmentation.cloud import storage
from image_segmentation.errors import StageError
from pipelines import checks

if TYPE_CHECKING:  # importing the Vertex SDK takes seconds: only `submit` does it
    from google.auth.credentials import Credentials
    from google.cloud import aiplatform

_CASTS = {
    "STRING": str,
    "NUMBER_INTEGER": int,
    "NUMBER_DOUBLE": float,
    "BOOLEAN": lambda text: {"true": True, "false": False}[text.lower()],
}


def parameter_types(template: Path) -> dict[str, str]:
    """The pipeline's parameters and their types (STRING, NUMBER_INTEGER, ...)."""
    spec = yaml.safe_load(Path(template).read_text())
    parameters = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    return {name: definition["parameterType"] for name, definition in parameters.items()}


def parse_parameters(template: Path, assignments: list[str]) -> dict[str, object]:
    """`NAME=VALUE` texts to typed values, checked against the template's parameters and,
    with the template's defaults, by the stages' own checks (pipelines/checks.py): a run that
    could only fail later is refused here, with every problem named."""
    types = parameter_types(template)
    values: dict[str, object] = {}
    for assignment in assignments:
        name, equals, text = assignment.partition("=")
        if not equals:
            raise ValueError(f"expected NAME=VALUE, got {assignment!r}")
        if name not in types:
            raise ValueError(f"unknown pipeline parameter {name!r}; known: {', '.join(types)}")
        cast = _CASTS.get(types[name])
        if cast is None:
            raise ValueError(f"parameter {name!r} has type {types[name]}: not settable here")
        try:
            values[name] = cast(text)
        except (ValueError, KeyError) as error:
            raise ValueError(f"parameter {name!r} wants {types[name]}, got {text!r}") from error
    found = checks.problems(checks.run_values(Path(template).read_text(), values))
    if found:
        raise ValueError("bad pipeline parameters:\n  " + "\n  ".join(found))
    return values


def storage_uri_bucket(uri: str) -> str:
    """The bucket of a gs://BUCKET/PATH pipeline root, checked."""
    try:
        return storage.split_gcs_uri(uri)[0]
    except StageError as error:
        raise ValueError(f"--pipeline-root: {error}") from error


def console_url(job_name: str) -> str:
    """The Vertex console page of a pipeline job (projects/P/locations/L/pipelineJobs/ID)."""
    _, project, _, location, _, job_id = job_name.split("/")
    return (
        f"https://console.cloud.google.com/vertex-ai/locations/{location}/pipelines/runs/"
        f"{job_id}?project={project}"
    )


def submit(
    template: Path,
    *,
    project: str,
    region: str,
    pipeline_root: str,
    service_account: str,
    parameters: dict[str, object],
    labels: dict[str, str] | None = None,
    display_name: str | None = None,
    enable_caching: bool | None = None,
    api_endpoint: str | None = None,
    credentials: "Credentials | None" = None,
) -> "aiplatform.PipelineJob":
    """Start a run of `template` on Vertex AI Pipelines and return the (submitted) job.

    The run's steps act as `service_account`; its artifacts go under `pipeline_root` (gs://).
    `enable_caching` None keeps each step's own setting. Credentials default to the
    Application Default Credentials. The pipeline root's bucket must exist: the SDK would
    create a mistyped one silently, and the run would write there.
    """
    from google.cloud import aiplatform
    from google.cloud import storage as gcs

    bucket = storage_uri_bucket(pipeline_root)
    client = gcs.Client(project=project, credentials=credentials)
    if not client.bucket(bucket).exists():
        raise ValueError(
            f"the pipeline root's bucket gs://{bucket} does not exist: check the name, or "
            f"create it (docs/vertex.md, One-time setup)"
        )

    aiplatform.init(
        project=project,
        location=region,
        credentials=credentials,
        api_endpoint=api_endpoint,
        api_transport="rest",
    )
    job = aiplatform.PipelineJob(
        display_name=display_name or Path(template).stem,
        template_path=str(template),
        pipeline_root=pipeline_root,
        parameter_values=parameters,
        labels=labels or {},
        enable_caching=enable_caching,
    )
    job.submit(service_account=service_account)
    return job


def upload_template(
    template: Path, host: str, tags: list[str], auth: object | None = None
) -> tuple[str, str]:
    """Upload a compiled template to a Kubeflow Artifact Registry repository.

    `host` is https://REGION-kfp.pkg.dev/PROJECT/REPO; returns (package name, version).
    """
    from kfp.registry import RegistryClient

    client = RegistryClient(host=host, auth=auth)
    return client.upload_pipeline(file_name=str(template), tags=tags)
