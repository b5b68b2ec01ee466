"""Submit a compiled pipeline to Vertex AI, schedule it, and publish it as a template in
Artifact Registry.

A template in a Kubeflow Artifact Registry repository shows up in the Vertex console's
"Create run" form with its parameters, defaults and descriptions, so a run needs no local setup.
A run submitted into an experiment lines up there with the experiment's other runs, their
parameters and the evaluate step's metrics (Vertex AI -> Experiments).
"""

import re
import zoneinfo
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from image_segmentation.cloud import storage
from image_segmentation.errors import StageError
from pipelines import checks

if TYPE_CHECKING:  # importing the Vertex SDK takes seconds: only `submit` does it
    from google.auth.credentials import Credentials
    from google.cloud import aiplatform

# Vertex's rules, checked before anything is sent: an experiment is a metadata context, whose ID
# is 4-128 of a-z, 0-9 and '-' (CreateContextRequest.context_id); a schedule's cron is five
# fields, optionally after "TZ=Area/City " or "CRON_TZ=Area/City " (Schedule.cron).
EXPERIMENT_NAME = re.compile(r"[a-z0-9-]{4,128}")
_CRON_TZ = re.compile(r"(?:CRON_)?TZ=(\S+)")
# field: (lowest, highest, names); a field is a comma list of *, N, N-M, each with an optional /STEP
_CRON_FIELDS = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT",
                      "NOV", "DEC")),
    ("day of week", 0, 7, ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")),
)  # fmt: skip
_CRON_PART = re.compile(r"(\*|(\w+)(?:-(\w+))?)(?:/(\d+))?")

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


def check_experiment(name: str) -> str:
    """`name` if Vertex takes it as an experiment name: the SDK would only fail after the
    run's template was checked, with a traceback that hides the reason."""
    if not EXPERIMENT_NAME.fullmatch(name):
        raise ValueError(
            f"bad experiment name {name!r}: 4 to 128 lowercase letters, digits and '-' "
            "(Vertex's rule), e.g. init-comparison"
        )
    return name


def _cron_value(text: str, lowest: int, names: tuple[str, ...]) -> int:
    if text.isdigit():
        return int(text)
    if text.upper() in names:
        return names.index(text.upper()) + lowest
    raise ValueError(text)


def check_cron(cron: str) -> str:
    """`cron` if it is five cron fields (with an optional TZ=Area/City prefix); Vertex refuses
    the schedule otherwise, and a field out of range would only show as runs that never come."""
    words = cron.split()
    timezone = ""
    if words and (match := _CRON_TZ.fullmatch(words[0])):
        timezone = match.group(1)
        words = words[1:]
        try:
            zoneinfo.ZoneInfo(timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"bad cron {cron!r}: unknown time zone {timezone!r}") from None
    if len(words) != 5:
        raise ValueError(
            f"bad cron {cron!r}: want 5 fields (minute hour day-of-month month day-of-week), "
            f'optionally after TZ=Area/City, e.g. "0 3 * * 1", got {len(words)}'
        )
    for word, (field_name, lowest, highest, names) in zip(words, _CRON_FIELDS, strict=True):
        for part in word.split(","):
            match = _CRON_PART.fullmatch(part)
            try:
                if not match or match.group(4) == "0":
                    raise ValueError(part)
                values = [_cron_value(v, lowest, names) for v in match.group(2, 3) if v]
            except ValueError:
                values = [-1]
            if any(not lowest <= value <= highest for value in values):
                raise ValueError(
                    f"bad cron {cron!r}: {field_name} {part!r} is not *, a number from "
                    f"{lowest} to {highest}{' or a name' if names else ''}, a range or a list"
                )
    return " ".join(([f"TZ={timezone}"] if timezone else []) + words)


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


def _init(
    project: str, region: str, api_endpoint: str | None, credentials: "Credentials | None"
) -> None:
    """Point the Vertex SDK at one project and region, over REST (what the tests' fake serves)."""
    from google.cloud import aiplatform

    aiplatform.init(
        project=project,
        location=region,
        credentials=credentials,
        api_endpoint=api_endpoint,
        api_transport="rest",
    )


def _pipeline_job(
    template: Path,
    *,
    project: str,
    region: str,
    pipeline_root: str,
    parameters: dict[str, object],
    labels: dict[str, str] | None,
    display_name: str | None,
    enable_caching: bool | None,
    api_endpoint: str | None,
    credentials: "Credentials | None",
) -> "aiplatform.PipelineJob":
    """The (unsent) job of one run of `template`, for a run now or for a schedule's runs.

    The pipeline root's bucket must exist: the SDK would create a mistyped one silently, and
    the run would write there (a schedule's runs would fail, each of them).
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
    _init(project, region, api_endpoint, credentials)
    return aiplatform.PipelineJob(
        display_name=display_name or Path(template).stem,
        template_path=str(template),
        pipeline_root=pipeline_root,
        parameter_values=parameters,
        labels=labels or {},
        enable_caching=enable_caching,
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
    experiment: str | None = None,
    api_endpoint: str | None = None,
    credentials: "Credentials | None" = None,
) -> "aiplatform.PipelineJob":
    """Start a run of `template` on Vertex AI Pipelines and return the (submitted) job.

    The run's steps act as `service_account`; its artifacts go under `pipeline_root` (gs://).
    `enable_caching` None keeps each step's own setting. With `experiment`, the run joins that
    Vertex AI Experiment (made if new), so its parameters and metrics line up with the
    experiment's other runs. Credentials default to the Application Default Credentials.
    """
    if experiment is not None:
        check_experiment(experiment)
    job = _pipeline_job(
        template,
        project=project,
        region=region,
        pipeline_root=pipeline_root,
        parameters=parameters,
        labels=labels,
        display_name=display_name,
        enable_caching=enable_caching,
        api_endpoint=api_endpoint,
        credentials=credentials,
    )
    job.submit(service_account=service_account, experiment=experiment)
    return job


def create_schedule(
    template: Path,
    *,
    cron: str,
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
) -> "aiplatform.PipelineJobSchedule":
    """Schedule runs of `template` at `cron`, each as `submit` would start it, one at a time:
    a run still going when the next is due makes Vertex skip that one (no queueing), so a slow
    training never piles up runs that pay for GPUs side by side.

    A schedule's runs join no experiment: the SDK adds a run to one after submitting it itself.
    """
    from google.cloud import aiplatform

    cron = check_cron(cron)
    name = display_name or f"{pipeline_name(template)} {cron}"
    job = _pipeline_job(
        template,
        project=project,
        region=region,
        pipeline_root=pipeline_root,
        parameters=parameters,
        labels=labels,
        display_name=name,
        enable_caching=enable_caching,
        api_endpoint=api_endpoint,
        credentials=credentials,
    )
    schedule = aiplatform.PipelineJobSchedule(pipeline_job=job, display_name=name)
    schedule.create(cron=cron, max_concurrent_run_count=1, service_account=service_account)
    return schedule


def pipeline_name(template: Path) -> str:
    """The pipeline's own name in a compiled template (image-segmentation)."""
    return yaml.safe_load(Path(template).read_text())["pipelineInfo"]["name"]


def list_schedules(
    *,
    project: str,
    region: str,
    api_endpoint: str | None = None,
    credentials: "Credentials | None" = None,
) -> list["aiplatform.PipelineJobSchedule"]:
    """The region's pipeline schedules, oldest first."""
    from google.cloud import aiplatform

    _init(project, region, api_endpoint, credentials)
    return aiplatform.PipelineJobSchedule.list(order_by="create_time")


def change_schedule(
    schedule: str,
    action: str,
    *,
    project: str,
    region: str,
    api_endpoint: str | None = None,
    credentials: "Credentials | None" = None,
) -> str:
    """Pause, resume or delete a schedule (its ID or full name); returns its full name."""
    from google.cloud import aiplatform

    if action not in ("pause", "resume", "delete"):
        raise ValueError(f"unknown schedule action {action!r}")
    _init(project, region, api_endpoint, credentials)
    found = aiplatform.PipelineJobSchedule.get(schedule_id=schedule)
    getattr(found, action)()
    return found.resource_name


def schedule_line(schedule: "aiplatform.PipelineJobSchedule") -> str:
    """One schedule as a line of `schedule list`: ID, state, cron, next run, name."""
    resource = schedule.gca_resource
    next_run = (
        resource.next_run_time.isoformat(timespec="minutes") if resource.next_run_time else "-"
    )
    return (
        f"{schedule.resource_name.rsplit('/', 1)[-1]}  {resource.state.name:<9} "
        f"{resource.cron!r}  next {next_run}  {resource.display_name}"
    )


def upload_template(
    template: Path, host: str, tags: list[str], auth: object | None = None
) -> tuple[str, str]:
    """Upload a compiled template to a Kubeflow Artifact Registry repository.

    `host` is https://REGION-kfp.pkg.dev/PROJECT/REPO; returns (package name, version).
    """
    from kfp.registry import RegistryClient

    client = RegistryClient(host=host, auth=auth)
    return client.upload_pipeline(file_name=str(template), tags=tags)
