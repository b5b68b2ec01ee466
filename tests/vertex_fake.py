"""A loopback stand-in for the two Google endpoints the pipeline CLI talks to.

- Vertex AI's REST API: `POST /v1/projects/P/locations/L/pipelineJobs?pipelineJobId=ID` answers
  a plausible PipelineJob (state PENDING, name and times filled in) and keeps it, so a later
  `GET` of that name returns it.
- Artifact Registry's Kubeflow repositories: `POST /PROJECT/REPO` with a multipart template
  answers `PACKAGE/sha256:DIGEST` as the real one does.

Every request is recorded (method, path, query, headers, body) for the tests to check.

The fake does not run a submitted job: the train step's worker pools are written by a step of
the run itself (tests/test_pipeline.py runs it; pipelines/emulator/ runs a whole template).
`custom_job_tasks` finds the tasks of a template that Vertex would run as CustomJobs.
"""

import hashlib
import json
import re
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


def custom_job_tasks(spec: dict) -> dict[str, dict]:
    """The tasks of a pipeline template (in nested DAGs too) that Google's CustomJob launcher
    runs, by task name: what Vertex turns into a CustomJob when the run gets there."""
    found = {}
    dags = [spec["root"]["dag"]["tasks"]]
    while dags:
        for name, task in dags.pop().items():
            component = spec["components"][task["componentRef"]["name"]]
            if "dag" in component:
                dags.append(component["dag"]["tasks"])
                continue
            container = spec["deploymentSpec"]["executors"][component["executorLabel"]]
            if CUSTOM_JOB_LAUNCHER in container["container"]["command"]:
                found[name] = task
    return found
