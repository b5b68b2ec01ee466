"""A loopback stand-in for the two Google endpoints the pipeline CLI talks to.

- Vertex AI's REST API: `POST /v1/projects/P/locations/L/pipelineJobs?pipelineJobId=ID` answers
  a plausible PipelineJob (state PENDING, name and times filled in) and keeps it, so a later
  `GET` of that name returns it.
- Artifact Registry's Kubeflow repositories: `POST /PROJECT/REPO` with a multipart template
  answers `PACKAGE/sha256:DIGEST` as the real one does.

Every request is recorded (method, path, query, headers, body) for the tests to check.

`render_custom_jobs` shows what Vertex would make of a submitted job's CustomJob steps: it
resolves each one's launcher payload from the run's parameter values, as the service does
before it creates the CustomJob.
"""

import hashlib
import json
import re
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import yaml

_JOBS = re.compile(r"^/v1/(projects/[^/]+/locations/[^/]+)/pipelineJobs$")
_JOB = re.compile(r"^/v1/(projects/[^/]+/locations/[^/]+/pipelineJobs/[^/]+)$")


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)

    def form(self) -> dict[str, tuple[str | None, bytes]]:
        """A multipart/form-data body as {field: (filename, content)}."""
        head = f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode()
        message = BytesParser(policy=HTTP).parsebytes(head + self.body)
        return {
            part.get_param("name", header="content-disposition"): (
                part.get_filename(),
                part.get_payload(decode=True),
            )
            for part in message.iter_parts()
        }


@dataclass
class FakeGoogleApis:
    """The server's state: what it received and the pipeline jobs it holds."""

    requests: list[Request] = field(default_factory=list)
    jobs: dict[str, dict] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, request: Request) -> tuple[int, str, bytes]:
        with self.lock:
            self.requests.append(request)
        if request.method == "POST" and (match := _JOBS.match(request.path)):
            return self._create_job(match.group(1), request)
        if request.method == "GET" and (match := _JOB.match(request.path)):
            job = self.jobs.get(match.group(1))
            if job is None:
                return _error(404, f"{match.group(1)} not found")
            return 200, "application/json", json.dumps(job).encode()
        if request.method == "POST" and request.path.count("/") == 2:
            return self._upload_template(request)
        return _error(404, f"no route for {request.method} {request.path}")

    def _create_job(self, parent: str, request: Request) -> tuple[int, str, bytes]:
        job = request.json()
        job_id = request.query.get("pipelineJobId", ["generated-id"])[0]
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        job.update(name=f"{parent}/pipelineJobs/{job_id}", state="PIPELINE_STATE_PENDING")
        job.update(createTime=now, updateTime=now)
        with self.lock:
            self.jobs[job["name"]] = job
        return 200, "application/json", json.dumps(job).encode()

    def _upload_template(self, request: Request) -> tuple[int, str, bytes]:
        content = request.form().get("content", (None, b""))[1]
        try:
            name = yaml.safe_load(content)["pipelineInfo"]["name"]
        except (yaml.YAMLError, KeyError, TypeError):
            return _error(400, "content is not a pipeline template")
        digest = hashlib.sha256(content).hexdigest()
        return 200, "text/plain", f"{name}/sha256:{digest}".encode()


def _error(status: int, message: str) -> tuple[int, str, bytes]:
    body = {"error": {"code": status, "message": message, "status": "NOT_FOUND"}}
    return status, "application/json", json.dumps(body).encode()


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def _serve(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        request = Request(
            method=self.command,
            path=url.path,
            query=parse_qs(url.query),
            headers=dict(self.headers.items()),
            body=self.rfile.read(length),
        )
        status, content_type, body = self.server.state.handle(request)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_DELETE = do_PATCH = _serve

    def log_message(self, format: str, *args) -> None:  # keep test output quiet
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: FakeGoogleApis):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state


def start() -> tuple[FakeGoogleApis, str, _Server]:
    """Serve a fresh fake on a free loopback port; returns (state, base URL, server)."""
    state = FakeGoogleApis()
    server = _Server(state)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return state, f"http://127.0.0.1:{server.server_address[1]}", server


CUSTOM_JOB_LAUNCHER = "google_cloud_pipeline_components.container.v1.custom_job.launcher"
_INPUT = re.compile(r"\{\{\$\.inputs\.parameters\['([^']+)'\]\}\}")


def render_custom_jobs(body: dict) -> dict[str, dict]:
    """The CustomJob body each CustomJob step of a submitted PipelineJob would create, by the
    name of the condition branch it sits in.

    Parameters come from the run's values, then the template's defaults; a step output that a
    job needs (the worker pool size) comes from running that step's own command here.
    Artifact placeholders are left as they are: Vertex fills them when the job starts.
    """
    spec = body["pipelineSpec"]
    root = spec["root"]["inputDefinitions"]["parameters"]
    run_values = {name: p.get("defaultValue") for name, p in root.items()}
    run_values |= body["runtimeConfig"].get("parameterValues", {})
    for name, value in run_values.items():  # JSON holds every number as a float
        if root[name]["parameterType"] == "NUMBER_INTEGER" and value is not None:
            run_values[name] = int(value)
    pipeline_values = {
        "{{$.pipeline_service_account}}": body.get("serviceAccount", ""),
        "{{$.pipeline_root}}": body["runtimeConfig"]["gcsOutputDirectory"],
    }
    jobs = {}
    for branch, tasks in _dags(spec, spec["root"]["dag"]["tasks"], "root", run_values):
        for task in tasks.values():
            container = _container(spec, task)
            if CUSTOM_JOB_LAUNCHER not in container["command"]:
                continue
            inputs = _task_inputs(spec, task, tasks, run_values)
            payload = _fill(container["args"][container["args"].index("--payload") + 1], inputs)
            for placeholder, value in pipeline_values.items():
                payload = payload.replace(placeholder, value)
            jobs[branch] = json.loads(payload)
    return jobs


def _dags(spec: dict, tasks: dict, name: str, run_values: dict):
    """(branch name, tasks) of a DAG and of every DAG nested in it whose condition holds."""
    yield name, tasks
    for task in tasks.values():
        component = spec["components"][task["componentRef"]["name"]]
        condition = task.get("triggerPolicy", {}).get("condition")
        if "dag" in component and (condition is None or _holds(condition, run_values)):
            yield from _dags(spec, component["dag"]["tasks"], task["taskInfo"]["name"], run_values)


def _holds(condition: str, run_values: dict) -> bool:
    """A branch condition on run parameters, e.g. `int(inputs.parameter_values['...']) == 1`
    or its negation `!(...)`; one on a step's output (the quality gate) is taken as true."""
    parameter = re.compile(r"inputs\.parameter_values\['pipelinechannel--([\w-]+)'\]")
    if any(name not in run_values for name in parameter.findall(condition)):
        return True
    python = parameter.sub(lambda m: repr(run_values[m.group(1)]), condition)
    return bool(eval(python.replace("!(", "not ("), {"int": int}))


def _container(spec: dict, task: dict) -> dict:
    component = spec["components"][task["componentRef"]["name"]]
    if "executorLabel" not in component:
        return {"command": [], "args": []}
    return spec["deploymentSpec"]["executors"][component["executorLabel"]]["container"]


def _task_inputs(spec: dict, task: dict, siblings: dict, run_values: dict) -> dict:
    """The task's parameter values: wired ones first, the component's defaults for the rest."""
    definitions = spec["components"][task["componentRef"]["name"]]["inputDefinitions"]
    types = {name: p["parameterType"] for name, p in definitions["parameters"].items()}
    values = {name: p.get("defaultValue") for name, p in definitions["parameters"].items()}
    wired = task.get("inputs", {}).get("parameters", {})
    for name, source in wired.items():
        if "componentInputParameter" in source:
            values[name] = run_values[source["componentInputParameter"].split("--")[-1]]
        elif "taskOutputParameter" in source:
            producer = siblings[source["taskOutputParameter"]["producerTask"]]
            values[name] = _run_step(spec, producer, siblings, run_values)
    for name, value in values.items():  # JSON holds every number as a float
        if types.get(name) == "NUMBER_INTEGER" and value is not None:
            values[name] = int(value)
    for name, source in wired.items():  # constants may refer to the values above
        if "runtimeValue" in source:
            values[name] = _substitute(source["runtimeValue"]["constant"], values)
    return values


def _run_step(spec: dict, task: dict, siblings: dict, run_values: dict) -> object:
    """Run a small container step's command here and read its one output parameter."""
    container = _container(spec, task)
    inputs = _task_inputs(spec, task, siblings, run_values)
    with tempfile.TemporaryDirectory() as scratch:
        output = f"{scratch}/output"
        args = [
            re.sub(r"\{\{\$\.outputs\.parameters\['[^']+'\]\.output_file\}\}", output, arg)
            for arg in container["args"]
        ]
        command = [sys.executable, *container["command"][1:], *_substitute(args, inputs)]
        subprocess.run(command, check=True, capture_output=True)
        with open(output) as file:
            return json.loads(file.read())


def _substitute(value: object, inputs: dict) -> object:
    """`{{$.inputs.parameters['x']}}` inside strings of a JSON value, as text."""
    if isinstance(value, str):
        return _INPUT.sub(lambda m: str(inputs[m.group(1)]), value)
    if isinstance(value, list):
        return [_substitute(item, inputs) for item in value]
    if isinstance(value, dict):
        return {key: _substitute(item, inputs) for key, item in value.items()}
    return value


def _fill(payload: str, inputs: dict) -> str:
    """The launcher's payload with its parameters in: as JSON, or as text inside quotes."""

    def value(match: re.Match) -> str:
        item = inputs.get(match.group(1))
        if match.string[match.start() - 1] == '"':
            return json.dumps("" if item is None else str(item))[1:-1]
        return json.dumps(item)

    return _INPUT.sub(value, payload)
