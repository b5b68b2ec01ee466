"""A loopback stand-in for the two Google endpoints the pipeline CLI talks to.

- Vertex AI's REST API (v1), the calls google-cloud-aiplatform makes for the CLI:
  - `POST .../pipelineJobs?pipelineJobId=ID` answers a plausible PipelineJob (state PENDING,
    name and times filled in) and keeps it; a later `GET` of that name returns it with the
    run's `system.PipelineRun` context in `jobDetail`, as Vertex adds it once the run starts.
  - Experiments (`PipelineJob.submit(experiment=...)`): `GET/POST .../metadataStores[/default]`
    (the create is a long-running operation, answered done), `GET/POST .../contexts[/ID]`
    (the experiment, schemaTitle `system.Experiment`) and `POST .../contexts/ID:addContextChildren`
    (the run's context added to the experiment's).
  - Schedules: `POST/GET .../schedules`, `GET/DELETE .../schedules/ID`,
    `POST .../schedules/ID:pause|:resume`, with Vertex's checks of the request (cron,
    maxConcurrentRunCount, createPipelineJobRequest) and of the state a pause or resume needs.
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

_LOCATION = r"projects/[^/]+/locations/[^/]+"
_JOBS = re.compile(rf"^/v1/({_LOCATION})/pipelineJobs$")
_JOB = re.compile(rf"^/v1/({_LOCATION}/pipelineJobs/[^/:]+)$")
_STORES = re.compile(rf"^/v1/({_LOCATION})/metadataStores$")
_STORE = re.compile(rf"^/v1/({_LOCATION}/metadataStores/[^/:]+)$")
_CONTEXTS = re.compile(rf"^/v1/({_LOCATION}/metadataStores/[^/:]+)/contexts$")
_CONTEXT = re.compile(rf"^/v1/({_LOCATION}/metadataStores/[^/:]+/contexts/[^/:]+)$")
_ADD_CHILDREN = re.compile(
    rf"^/v1/({_LOCATION}/metadataStores/[^/:]+/contexts/[^/:]+):addContextChildren$"
)
_SCHEDULES = re.compile(rf"^/v1/({_LOCATION})/schedules$")
_SCHEDULE = re.compile(rf"^/v1/({_LOCATION}/schedules/[^/:]+)$")
_SCHEDULE_ACTION = re.compile(rf"^/v1/({_LOCATION}/schedules/[^/:]+):(pause|resume)$")
# Vertex's rules: a context ID (so an experiment name) is 4-128 of a-z, 0-9 and '-'
# (CreateContextRequest.context_id); a cron is 5 fields, optionally after "TZ=Zone " or
# "CRON_TZ=Zone " (Schedule.cron).
CONTEXT_ID = re.compile(r"[a-z0-9-]{4,128}")
CRON = re.compile(r"((CRON_)?TZ=[A-Za-z0-9_+/-]+ +)?\S+( +\S+){4}")
_STATUS = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 409: "ALREADY_EXISTS"}


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
    metadata_stores: dict[str, dict] = field(default_factory=dict)
    contexts: dict[str, dict] = field(default_factory=dict)
    children: dict[str, list[str]] = field(default_factory=dict)  # context -> child contexts
    schedules: dict[str, dict] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, request: Request) -> tuple[int, str, bytes]:
        with self.lock:
            self.requests.append(request)
            return self._route(request)

    def _route(self, request: Request) -> tuple[int, str, bytes]:
        method, path = request.method, request.path
        routes = [
            ("POST", _JOBS, self._create_job),
            ("GET", _JOB, lambda name, _: _get(self.jobs, name)),
            ("POST", _STORES, self._create_store),
            ("GET", _STORE, lambda name, _: _get(self.metadata_stores, name)),
            ("POST", _CONTEXTS, self._create_context),
            ("GET", _CONTEXT, lambda name, _: _get(self.contexts, name)),
            ("POST", _ADD_CHILDREN, self._add_children),
            ("POST", _SCHEDULES, self._create_schedule),
            ("GET", _SCHEDULES, self._list_schedules),
            ("GET", _SCHEDULE, lambda name, _: _get(self.schedules, name)),
            ("DELETE", _SCHEDULE, self._delete_schedule),
        ]
        for route_method, pattern, answer in routes:
            if method == route_method and (match := pattern.match(path)):
                return answer(match.group(1), request)
        if method == "POST" and (match := _SCHEDULE_ACTION.match(path)):
            return self._pause_or_resume(match.group(1), match.group(2))
        if method == "POST" and path.count("/") == 2:
            return self._upload_template(request)
        return _error(404, f"no route for {method} {path}")

    def _create_job(self, parent: str, request: Request) -> tuple[int, str, bytes]:
        job = request.json()
        job_id = request.query.get("pipelineJobId", ["generated-id"])[0]
        now = _now()
        job.update(name=f"{parent}/pipelineJobs/{job_id}", state="PIPELINE_STATE_PENDING")
        job.update(createTime=now, updateTime=now)
        self.jobs[job["name"]] = job
        # Vertex makes the default metadata store if needed and the run's own context (named
        # after the job) as the run starts: the client sees it in a later GET, not in this answer.
        store = f"{parent}/metadataStores/default"
        self.metadata_stores.setdefault(store, {"name": store, "createTime": now})
        run_context = f"{store}/contexts/{job_id}"
        self.contexts[run_context] = {
            "name": run_context, "displayName": job_id, "schemaTitle": "system.PipelineRun",
            "schemaVersion": "0.0.1", "createTime": now, "updateTime": now,
        }  # fmt: skip
        answer = json.dumps(job).encode()
        job["jobDetail"] = {"pipelineRunContext": self.contexts[run_context]}
        return 200, "application/json", answer

    def _create_store(self, parent: str, request: Request) -> tuple[int, str, bytes]:
        store_id = request.query.get("metadataStoreId", [""])[0]
        name = f"{parent}/metadataStores/{store_id}"
        if not store_id:
            return _error(400, "metadata_store_id is required here")
        if name in self.metadata_stores:
            return _error(409, f"{name} already exists")
        self.metadata_stores[name] = {**request.json(), "name": name, "createTime": _now()}
        return _done_operation(name, "MetadataStore", self.metadata_stores[name])

    def _create_context(self, store: str, request: Request) -> tuple[int, str, bytes]:
        if store not in self.metadata_stores:
            return _error(404, f"{store} not found")
        context = request.json()
        context_id = request.query.get("contextId", [""])[0]
        if not CONTEXT_ID.fullmatch(context_id):
            return _error(400, f"context_id {context_id!r}: 4-128 characters of [a-z0-9-]")
        if not context.get("schemaTitle"):
            return _error(400, "context.schema_title is required")
        name = f"{store}/contexts/{context_id}"
        if name in self.contexts:
            return _error(409, f"{name} already exists")
        now = _now()
        self.contexts[name] = {**context, "name": name, "createTime": now, "updateTime": now}
        return 200, "application/json", json.dumps(self.contexts[name]).encode()

    def _add_children(self, name: str, request: Request) -> tuple[int, str, bytes]:
        if name not in self.contexts:
            return _error(404, f"{name} not found")
        children = request.json().get("childContexts", [])
        for child in children:
            if child not in self.contexts:
                return _error(404, f"child context {child} not found")
        known = self.children.setdefault(name, [])
        known.extend(child for child in children if child not in known)
        return 200, "application/json", b"{}"

    def _create_schedule(self, parent: str, request: Request) -> tuple[int, str, bytes]:
        schedule = request.json()
        problem = _schedule_problem(parent, schedule)
        if problem:
            return _error(400, problem)
        now = _now()
        name = f"{parent}/schedules/{1000 + len(self.schedules)}"
        schedule.update(name=name, state="ACTIVE", createTime=now, updateTime=now)
        schedule.update(startTime=now, nextRunTime=now)
        self.schedules[name] = schedule
        return 200, "application/json", json.dumps(schedule).encode()

    def _list_schedules(self, parent: str, request: Request) -> tuple[int, str, bytes]:
        found = [s for name, s in self.schedules.items() if name.startswith(f"{parent}/")]
        return 200, "application/json", json.dumps({"schedules": found}).encode()

    def _pause_or_resume(self, name: str, action: str) -> tuple[int, str, bytes]:
        schedule = self.schedules.get(name)
        if schedule is None:
            return _error(404, f"{name} not found")
        before, after = ("ACTIVE", "PAUSED") if action == "pause" else ("PAUSED", "ACTIVE")
        if schedule["state"] != before:
            message = f"cannot {action} a schedule in state {schedule['state']}"
            return _error(400, message, "FAILED_PRECONDITION")
        schedule.update(state=after, updateTime=_now())
        return 200, "application/json", b"{}"

    def _delete_schedule(self, name: str, _: Request) -> tuple[int, str, bytes]:
        if self.schedules.pop(name, None) is None:
            return _error(404, f"{name} not found")
        return _done_operation(name, "google.protobuf.Empty", {})

    def _upload_template(self, request: Request) -> tuple[int, str, bytes]:
        content = request.form().get("content", (None, b""))[1]
        try:
            name = yaml.safe_load(content)["pipelineInfo"]["name"]
        except (yaml.YAMLError, KeyError, TypeError):
            return _error(400, "content is not a pipeline template")
        digest = hashlib.sha256(content).hexdigest()
        return 200, "text/plain", f"{name}/sha256:{digest}".encode()


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _get(resources: dict[str, dict], name: str) -> tuple[int, str, bytes]:
    if name not in resources:
        return _error(404, f"{name} not found")
    return 200, "application/json", json.dumps(resources[name]).encode()


def _done_operation(resource: str, type_name: str, response: dict) -> tuple[int, str, bytes]:
    """A long-running operation that is already done, so the client does not poll it."""
    if "." not in type_name:
        type_name = f"google.cloud.aiplatform.v1.{type_name}"
    operation = {
        "name": f"{resource}/operations/1",
        "done": True,
        "response": {"@type": f"type.googleapis.com/{type_name}", **response},
    }
    return 200, "application/json", json.dumps(operation).encode()


def _schedule_problem(parent: str, schedule: dict) -> str | None:
    """What Vertex would refuse in a CreateSchedule body (a pipeline schedule), or None."""
    if not schedule.get("displayName"):
        return "schedule.display_name is required"
    if not CRON.fullmatch(schedule.get("cron", "")):
        return f"schedule.cron {schedule.get('cron')!r} is not a 5-field cron expression"
    if int(schedule.get("maxConcurrentRunCount", 0)) < 1:
        return "schedule.max_concurrent_run_count is required and must be positive"
    request = schedule.get("createPipelineJobRequest")
    if not request:
        return "schedule.create_pipeline_job_request is required"
    if request.get("parent") != parent:
        return f"create_pipeline_job_request.parent must be {parent}, got {request.get('parent')}"
    job = request.get("pipelineJob") or {}
    if not job.get("pipelineSpec", {}).get("root"):
        return "create_pipeline_job_request.pipeline_job.pipeline_spec is required"
    if not job.get("runtimeConfig", {}).get("gcsOutputDirectory"):
        return "create_pipeline_job_request.pipeline_job.runtime_config.gcs_output_directory"
    return None


def _error(status: int, message: str, reason: str = "") -> tuple[int, str, bytes]:
    body = {"error": {"code": status, "message": message, "status": reason or _STATUS[status]}}
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
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
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
