"""Run a compiled template end to end here: the DAG (template.py), each container step
(steps.py), and the train task through Google's launcher (launcher.py) against the loopback
CustomJob service (custom_jobs.py), which runs the job's worker pools."""

import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import yaml

from pipelines.emulator import custom_jobs
from pipelines.emulator.template import PipelineRun, RunContext, TaskResult

LAUNCHER_MODULE = "google_cloud_pipeline_components.container.v1.custom_job.launcher"
PIPELINE_ROOT = "gs://emulated-bucket/pipeline-root"
# Nothing here may reach Google: without credentials google-auth would ask the metadata server.
OFFLINE = {"GCE_METADATA_HOST": "127.0.0.1:1", "GCE_METADATA_IP": "127.0.0.1:1"}


def job_id(name: str) -> str:
    """A pipeline job ID as Vertex makes them: the pipeline's name and the time."""
    return f"{name}-{datetime.now(UTC).strftime('%Y%m%d%H%M%S%f')}"


def emulate(
    template: Path,
    parameters: dict,
    steps,
    *,
    pipeline_root: str = PIPELINE_ROOT,
    service_account: str = "pipelines@emulated-project.iam.gserviceaccount.com",
    substitution: str = "typed",
    retry_in_new_folder: bool = True,
    cache_file: Path | None = None,
    service: "custom_jobs.CustomJobService | None" = None,
    log: Callable[[str], None] = print,
) -> PipelineRun:
    """Run `template` with `parameters`; steps start through `steps` (steps.py). Returns the
    finished run (its `results` by task path); raises template.StepFailed when a task fails.

    `service` is the CustomJob service to use (a test may inject faults into it); by default
    one is started for the run. `cache_file` keeps the step cache between runs.
    """
    spec = yaml.safe_load(Path(template).read_text())
    context = RunContext(
        job_id=job_id(spec["pipelineInfo"]["name"]),
        pipeline_root=pipeline_root.rstrip("/"),
        project="emulated-project",
        location="emulated-region",
        service_account=service_account,
    )
    cache = json.loads(cache_file.read_text()) if cache_file and cache_file.is_file() else {}
    own_service = service is None
    service = service or custom_jobs.CustomJobService(steps.start)
    try:
        run = PipelineRun(
            spec,
            parameters,
            context,
            _executor(steps, service.url),
            lambda path: Path(_on_host(path, steps.gcs_dir)),
            substitution=substitution,
            cache=cache if cache_file else None,
            retry_in_new_folder=retry_in_new_folder,
            log=log,
        )
        try:
            run.run()
        finally:
            if cache_file:
                cache_file.parent.mkdir(parents=True, exist_ok=True)
                cache_file.write_text(json.dumps(cache, indent=1))
        return run
    finally:
        if own_service:
            service.close()


def _executor(steps, endpoint: str):
    """Run a container step through `steps`, except Google's CustomJob launcher, which runs
    here against the loopback service (its image is not available offline)."""

    def execute(task_id: str, image: str, command: list[str], env: dict) -> int:
        if LAUNCHER_MODULE in command:
            arguments = command[command.index(LAUNCHER_MODULE) + 1 :]
            arguments = [_on_host(argument, steps.gcs_dir) for argument in arguments]
            launcher = [sys.executable, "-m", "pipelines.emulator.launcher"]
            process = subprocess.Popen(
                [*launcher, "--endpoint", endpoint, "--", *arguments],
                env={**os.environ, **OFFLINE, **env},
            )
        else:
            process = steps.start(image, command, {**OFFLINE, **env}, f"emulated-{task_id}")
        return process.wait()

    return execute


def _on_host(argument: str, gcs_dir: Path) -> str:
    """A /gcs/... path as this machine sees it (the launcher runs here, not in a step)."""
    return str(gcs_dir / argument[len("/gcs/") :]) if argument.startswith("/gcs/") else argument


def summary(results: dict[str, TaskResult]) -> str:
    """One line per task: its path and how it ended."""
    return "\n".join(
        f"{path.removeprefix('root.')}: {result.state}"
        + (f" after {result.attempts} attempts" if result.attempts > 1 else "")
        for path, result in results.items()
    )
