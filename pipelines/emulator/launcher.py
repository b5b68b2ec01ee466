"""Google's CustomJob launcher, pointed at the loopback CustomJob service (custom_jobs.py).

    python -m pipelines.emulator.launcher --endpoint http://127.0.0.1:PORT [--poll-seconds 1] \\
        -- --type CustomJob --payload ... --project ... --location ... --gcp_resources FILE

The arguments after `--` are exactly those the compiled template gives the launcher. It runs
`google_cloud_pipeline_components.container.v1.custom_job.launcher.main` from the locked
package with two substitutions, both in its `gcp_launcher.job_remote_runner` module:

- `aiplatform.gapic.JobServiceClient`, as that module sees it, builds the real
  JobServiceClient (`google.cloud.aiplatform_v1`'s) with the REST transport, the endpoint
  given here (plain http on loopback) and anonymous credentials, keeping the client_info the
  launcher passes. That is the module's only use of the aiplatform SDK, so its
  `from google.cloud import aiplatform` gets a stand-in holding just that: the SDK itself
  would add some 5 s of imports to every run.
- `_POLLING_INTERVAL_IN_SECONDS` (20 in the package) becomes `--poll-seconds`.

Everything else is the package's own code: parsing the payload, building the proto-plus
request from it (a wrong type fails there, before anything is sent), writing gcp_resources as
soon as the job exists, reusing the job an existing gcp_resources file names (a retried task
only polls it), polling, and failing when the job fails.

Not redirected: on SIGTERM the launcher cancels its job with a request of its own (google-auth's
default credentials, straight to LOCATION-aiplatform.googleapis.com), not through the client.
So a SIGTERM never cancels the emulated job (without credentials the launcher dies of the
missing credentials, and with them the cancel goes to Google); end a launcher with SIGKILL
and cancel its job through the service (`POST /v1/NAME:cancel`).
"""

import argparse
import logging
import sys
from types import ModuleType, SimpleNamespace

from google.auth.credentials import AnonymousCredentials
from google.cloud.aiplatform_v1 import JobServiceClient


def connect(endpoint: str, poll_seconds: float) -> None:
    """Make job_remote_runner's clients talk to `endpoint` and poll every `poll_seconds`."""

    def job_service_client(*, client_options, client_info):
        """Keyword-only, as the real constructor is; `client_options` is replaced."""
        return JobServiceClient(
            transport="rest",
            client_options={"api_endpoint": endpoint},
            credentials=AnonymousCredentials(),
            client_info=client_info,
        )

    aiplatform = ModuleType("google.cloud.aiplatform", "job_remote_runner's view of the SDK")
    aiplatform.gapic = SimpleNamespace(JobServiceClient=job_service_client)
    # Where the SDK is loaded already (not in a fresh `-m` run), others keep it.
    sys.modules.setdefault("google.cloud.aiplatform", aiplatform)
    from google_cloud_pipeline_components.container.v1.gcp_launcher import job_remote_runner

    job_remote_runner.aiplatform = aiplatform
    job_remote_runner._POLLING_INTERVAL_IN_SECONDS = poll_seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipelines.emulator.launcher")
    parser.add_argument("--endpoint", required=True, help="the service's URL, http://HOST:PORT")
    parser.add_argument("--poll-seconds", type=float, default=1.0)
    parser.add_argument("launcher_args", nargs="*", help="the launcher's own arguments")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)  # the launcher logs its progress at INFO
    connect(args.endpoint, args.poll_seconds)
    from google_cloud_pipeline_components.container.v1.custom_job import launcher

    launcher.main(args.launcher_args)


if __name__ == "__main__":
    main()
