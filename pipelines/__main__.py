"""`python -m pipelines compile|run|schedule|upload|local`: the pipeline's command line (make's).

compile   write the template with the images of one registry and tag baked in
run       submit a compiled template to Vertex AI Pipelines (--experiment NAME to join an
          experiment); prints the console link
schedule  create|list|pause|resume|delete Vertex AI schedules of a compiled template
upload    publish a compiled template to a Kubeflow Artifact Registry repository
local     run a compiled template here as Vertex runs it (pipelines/emulator/)
"""

import argparse
import json
import re
import sys
from pathlib import Path

from components import Images

_LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")


def _labels(assignments: list[str]) -> dict[str, str]:
    """`key=value` labels; values are lowered and other characters become '-' (Vertex rules)."""
    labels = {}
    for assignment in assignments:
        key, equals, value = assignment.partition("=")
        if not equals or not _LABEL_KEY.fullmatch(key):
            raise ValueError(f"bad label {assignment!r}: want key=value, key like 'image-tag'")
        labels[key] = re.sub(r"[^a-z0-9_-]", "-", value.lower())[:63]
    return labels


def _add_image_options(parser: argparse.ArgumentParser, registry_required: bool) -> None:
    parser.add_argument(
        "--image-registry", required=registry_required,
        help="where the images are, e.g. europe-west4-docker.pkg.dev/PROJECT/REPO",
    )  # fmt: skip
    parser.add_argument("--tag", required=True, help="the images' tag")


def _add_parameter_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE",
        help="a pipeline parameter (repeatable); unset ones keep their defaults",
    )  # fmt: skip
    parser.add_argument(
        "--params-file", type=Path,
        help="a JSON object of pipeline parameters (for values with spaces); --param wins",
    )  # fmt: skip


def _parameter_assignments(args: argparse.Namespace) -> list[str]:
    """--params-file entries then --param ones, as NAME=VALUE texts."""
    if not args.params_file:
        return args.param
    values = json.loads(args.params_file.read_text())
    if not isinstance(values, dict):
        raise ValueError(f"{args.params_file}: expected a JSON object of parameters")
    return [f"{name}={value}" for name, value in values.items()] + args.param


def _add_location_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--project", required=True, help="Google Cloud project ID")
    parser.add_argument("--region", required=True, help="Vertex AI region, e.g. europe-west4")
    parser.add_argument("--api-endpoint", help="Vertex AI API endpoint (default: the region's own)")


def _add_job_options(parser: argparse.ArgumentParser) -> None:
    """What a run needs, whether started now (run) or by a schedule (schedule create)."""
    parser.add_argument("--template", type=Path, required=True, help="compiled pipeline YAML")
    _add_location_options(parser)
    parser.add_argument(
        "--pipeline-root", required=True, help="gs://BUCKET/PATH for the run's artifacts"
    )
    parser.add_argument(
        "--service-account", required=True, help="service account e-mail the steps run as"
    )
    _add_parameter_options(parser)
    parser.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--display-name", help="name in the console (default: the template's)")
    parser.add_argument(
        "--no-cache", action="store_true", help="run every step, even with unchanged inputs"
    )


def _job_settings(args: argparse.Namespace, credentials) -> dict:
    """The keyword arguments of vertex.submit and vertex.create_schedule from the options."""
    from pipelines import vertex

    return dict(
        project=args.project,
        region=args.region,
        pipeline_root=args.pipeline_root,
        service_account=args.service_account,
        parameters=vertex.parse_parameters(args.template, _parameter_assignments(args)),
        labels=_labels(args.label),
        display_name=args.display_name,
        enable_caching=False if args.no_cache else None,
        api_endpoint=args.api_endpoint,
        credentials=credentials,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipelines", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    compile_ = commands.add_parser("compile", help="write the pipeline template (YAML)")
    _add_image_options(compile_, registry_required=True)
    compile_.add_argument("--output", type=Path, required=True, help="template file to write")

    run = commands.add_parser("run", help="submit a compiled template to Vertex AI")
    _add_job_options(run)
    run.add_argument(
        "--experiment",
        help="Vertex AI Experiment the run joins (made if new), e.g. init-comparison",
    )

    schedule = commands.add_parser("schedule", help="Vertex AI schedules of a compiled template")
    actions = schedule.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="run a compiled template on a cron schedule")
    _add_job_options(create)
    create.add_argument(
        "--cron", required=True,
        help='when: 5 cron fields, optionally after TZ=Area/City, e.g. "TZ=Europe/Paris 0 3 * * 1"',
    )  # fmt: skip
    list_ = actions.add_parser("list", help="the region's pipeline schedules")
    _add_location_options(list_)
    for action, words in (("pause", "stop starting runs"), ("resume", "start runs again"),
                          ("delete", "delete (its runs are kept)")):  # fmt: skip
        change = actions.add_parser(action, help=f"{words}: one schedule")
        change.add_argument("schedule", help="the schedule's ID (from list) or full name")
        _add_location_options(change)

    upload = commands.add_parser("upload", help="publish a template to Artifact Registry")
    upload.add_argument("--template", type=Path, required=True, help="compiled pipeline YAML")
    upload.add_argument(
        "--host", required=True, help="https://REGION-kfp.pkg.dev/PROJECT/REPOSITORY"
    )
    upload.add_argument(
        "--tag", action="append", default=[], dest="tags",
        help="a tag for this version (repeatable), e.g. latest",
    )  # fmt: skip

    local = commands.add_parser("local", help="run a compiled template here, as Vertex would")
    local.add_argument("--template", type=Path, required=True, help="compiled pipeline YAML")
    local.add_argument(
        "--gcs-dir", type=Path, required=True,
        help="local folder that stands in for Cloud Storage (the steps see it at /gcs)",
    )  # fmt: skip
    local.add_argument(
        "--engine", default="docker",
        help="docker or podman: each step in its image; process: on this machine's Python",
    )  # fmt: skip
    local.add_argument(
        "--substitute", action="append", default=[], metavar="IMAGE=STAND_IN",
        help="run images named IMAGE with STAND_IN instead (repeatable)",
    )  # fmt: skip
    local.add_argument(
        "--substitution", choices=("typed", "text"), default="typed",
        help="how a whole-string placeholder in a constant is filled (Vertex does not say)",
    )  # fmt: skip
    _add_parameter_options(local)
    return parser


def main(argv: list[str] | None = None, credentials=None) -> int:
    """Run one command; `credentials` (google.auth) defaults to Application Default Credentials."""
    args = _parser().parse_args(argv)
    try:
        return _run(args, credentials)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:
        api = sys.modules.get("google.api_core.exceptions")  # loaded by the clients, if called
        if api is None or not isinstance(error, api.GoogleAPICallError):
            raise
        # Vertex refused (an unknown schedule, a pause of a paused one): its words, no traceback
        print(f"error: Vertex AI: {error.code} {error.message}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, credentials) -> int:
    from pipelines import vertex  # Vertex and registry clients: imported only when needed

    if args.command == "compile":
        from pipelines.pipeline import compile_pipeline

        images = Images(args.image_registry, args.tag)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        compile_pipeline(images, str(args.output))
        print(args.output)
    elif args.command == "run":
        if args.experiment is not None:
            vertex.check_experiment(args.experiment)
        job = vertex.submit(
            args.template, experiment=args.experiment, **_job_settings(args, credentials)
        )
        print(f"submitted {job.resource_name}")
        if args.experiment:
            print(f"experiment: {args.experiment} (Vertex AI -> Experiments)")
        print(f"console: {vertex.console_url(job.resource_name)}")
    elif args.command == "schedule":
        return _schedule(args, credentials)
    elif args.command == "upload":
        package, version = vertex.upload_template(args.template, args.host, args.tags)
        print(f"uploaded {package} {version} (tags: {', '.join(args.tags) or 'none'})")
    elif args.command == "local":
        return _run_locally(args)
    return 0


def _schedule(args: argparse.Namespace, credentials) -> int:
    from pipelines import vertex

    location = dict(
        project=args.project,
        region=args.region,
        api_endpoint=args.api_endpoint,
        credentials=credentials,
    )
    if args.action == "create":
        vertex.check_cron(args.cron)
        schedule = vertex.create_schedule(
            args.template, cron=args.cron, **_job_settings(args, credentials)
        )
        print(f"scheduled {schedule.resource_name}")
        print(vertex.schedule_line(schedule))
    elif args.action == "list":
        schedules = vertex.list_schedules(**location)
        for schedule in schedules:
            print(vertex.schedule_line(schedule))
        if not schedules:
            print(f"no pipeline schedules in {args.project} {args.region}")
    else:
        name = vertex.change_schedule(args.schedule, args.action, **location)
        done = {"pause": "paused", "resume": "resumed", "delete": "deleted"}[args.action]
        print(f"{done} {name}")
    return 0


def _run_locally(args: argparse.Namespace) -> int:
    from pipelines import vertex
    from pipelines.emulator import run, steps

    substitutes = dict(assignment.partition("=")[::2] for assignment in args.substitute)
    gcs_dir = args.gcs_dir.resolve()
    gcs_dir.mkdir(parents=True, exist_ok=True)
    if args.engine == "process":
        runner = steps.ProcessSteps(gcs_dir)
    else:
        runner = steps.ContainerSteps(gcs_dir, args.engine, substitutes)
    parameters = vertex.parse_parameters(args.template, _parameter_assignments(args))
    try:
        finished = run.emulate(
            args.template,
            parameters,
            runner,
            substitution=args.substitution,
            cache_file=gcs_dir / ".emulator-cache.json",
        )
    except RuntimeError as error:  # a step failed (template.StepFailed), or no way to run one
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(run.summary(finished.results))
    print(f"done: artifacts under {gcs_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
