"""A loopback Vertex AI CustomJob service whose jobs really run.

It speaks the part of the Vertex AI v1 REST API that Google's CustomJob launcher uses, as
`google.cloud.aiplatform_v1.JobServiceClient(transport="rest")` sends it:

- `POST /v1/projects/P/locations/L/customJobs` parses the body strictly into
  `aiplatform_v1.types.CustomJob` (an unknown field or a wrong type is a 400), checks the rules
  Vertex documents for a CustomJobSpec (`validate`), and answers the job, PENDING, named
  `projects/P/locations/L/customJobs/N`.
- `GET /v1/NAME` answers the job as it is now; `POST /v1/NAME:cancel` cancels it.
- Anything refused, and any other route, gets Google's error body
  `{"error": {"code": HTTP_STATUS, "message": ..., "status": "INVALID_ARGUMENT"}}`.

Each job runs in a thread of its own: every replica of every worker pool is started through
the `start_replica` callable the service is given (a host process or a container) with the
pool's container_spec command followed by its args, and the environment Vertex gives a
replica (`replica_env`). The job is RUNNING once they are all
started and ends when they have all exited: SUCCEEDED when all exit 0, FAILED (code 13
INTERNAL) as soon as one exits non-zero, FAILED (code 4 DEADLINE_EXCEEDED) at the job's
`scheduling.timeout`, CANCELLED on cancel. Whatever ends it, the replicas still running get
SIGTERM, then SIGKILL after `grace_seconds`, as a machine being shut down.

`preempt_when` injects the one fault a test cannot cause from inside a replica: the machines
being taken away (a Spot preemption, host maintenance), which fails the job with code 14
UNAVAILABLE.
"""

import itertools
import json
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

from google.cloud.aiplatform_v1.types import CustomJob, CustomJobSpec, JobState, Scheduling
from google.protobuf import json_format
from google.rpc import code_pb2, status_pb2

StartReplica = Callable[[str, list[str], dict[str, str], str], subprocess.Popen]

TERMINAL_STATES = (
    JobState.JOB_STATE_SUCCEEDED,
    JobState.JOB_STATE_FAILED,
    JobState.JOB_STATE_CANCELLED,
)
# TF_CONFIG's task type of each worker pool, by index; Vertex has at most four pools.
TF_TASK_TYPES = ("chief", "worker", "ps", "evaluator")
DEFAULT_TIMEOUT = timedelta(days=7)  # Scheduling.timeout's documented default

_CREATE = re.compile(r"^/v1/projects/([^/]+)/locations/([^/]+)/customJobs$")
_JOB = re.compile(r"^/v1/(projects/[^/]+/locations/[^/]+/customJobs/[^/:]+)(:cancel)?$")


class ApiError(Exception):
    """A request the service refuses, answered as a Google error body."""

    def __init__(self, http_status: int, status: str, message: str):
        super().__init__(message)
        self.http_status = http_status
        self.status = status

    def body(self) -> dict:
        return {"error": {"code": self.http_status, "message": str(self), "status": self.status}}


def invalid(message: str) -> ApiError:
    return ApiError(HTTPStatus.BAD_REQUEST, "INVALID_ARGUMENT", message)


@dataclass(frozen=True)
class CreateRequest:
    """One create call as it arrived: the raw JSON body, what it parsed to (None when it did
    not parse), and the HTTP status it was answered with."""

    body: str
    job: CustomJob | None
    status: int


@dataclass(frozen=True)
class Replica:
    """One started replica: worker pool index, replica index, the name it was started under,
    and its process."""

    pool: int
    index: int
    name: str
    process: subprocess.Popen


def parse(body: str) -> CustomJob:
    """The request body as a CustomJob, strictly: unknown fields and wrong types are refused."""
    try:
        data = json.loads(body)
    except ValueError as error:
        raise invalid(f"The request body is not JSON: {error}") from None
    if not isinstance(data, dict):
        raise invalid("The request body is not a JSON object.")
    try:
        return CustomJob.from_json(body, ignore_unknown_fields=False)
    except json_format.ParseError as error:
        raise invalid(f"Invalid CustomJob: {error}") from None


def validate(job: CustomJob) -> None:
    """Raise ApiError where `job` breaks a rule Vertex documents for a CustomJob: a display
    name, at least one and at most four worker pools, exactly one replica in pool 0 (the
    chief), a machine type and an image in every pool that is not skipped (left empty), an
    accelerator type wherever accelerators are asked for, and `max_wait_duration` only with
    the FLEX_START strategy."""
    if not job.display_name:
        raise invalid("display_name is required")
    pools = job.job_spec.worker_pool_specs
    if not 1 <= len(pools) <= len(TF_TASK_TYPES):
        raise invalid(f"job_spec.worker_pool_specs needs 1 to 4 pools, got {len(pools)}")
    if pools[0].replica_count != 1:
        raise invalid(
            f"job_spec.worker_pool_specs[0].replica_count must be 1, got {pools[0].replica_count}"
        )
    for i, pool in enumerate(pools):
        where = f"job_spec.worker_pool_specs[{i}]"
        if pool == type(pool)():
            continue  # a skipped pool
        if "python_package_spec" in pool:
            raise ApiError(
                HTTPStatus.NOT_IMPLEMENTED,
                "UNIMPLEMENTED",
                f"{where}.python_package_spec: this emulator runs container_spec pools only",
            )
        if pool.replica_count < 0:
            raise invalid(f"{where}.replica_count must not be negative")
        if not pool.machine_spec.machine_type:
            raise invalid(f"{where}.machine_spec.machine_type is required")
        if not pool.container_spec.image_uri:
            raise invalid(f"{where}.container_spec.image_uri is required")
        machine = pool.machine_spec
        if machine.accelerator_count > 0 and not machine.accelerator_type:
            raise invalid(f"{where}.machine_spec.accelerator_type is required with accelerators")
    scheduling = job.job_spec.scheduling
    if "max_wait_duration" in scheduling and scheduling.strategy != Scheduling.Strategy.FLEX_START:
        raise invalid("job_spec.scheduling.max_wait_duration is only allowed with FLEX_START")


def replica_env(
    job_id: str, spec: CustomJobSpec, addresses: list[list[str]], pool: int, index: int
) -> dict[str, str]:
    """The environment Vertex gives replica `index` of worker pool `pool`; `addresses` holds
    each pool's replica addresses (none for a pool without replicas).

    CLUSTER_SPEC and CLOUD_ML_JOB_ID are set for any Vertex training run (the aiplatform SDK's
    training_utils reads them); TF_CONFIG is CLUSTER_SPEC in TensorFlow's terms; the AIP_*_DIR
    folders are those the `CustomJobSpec.base_output_directory` docstring lists; the pool's
    container_spec.env comes last.
    """
    job = CustomJobSpec.to_json(
        spec,
        use_integers_for_enums=False,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=False,
    )
    cluster_spec = {
        "cluster": {
            f"workerpool{i}": pool_addresses
            for i, pool_addresses in enumerate(addresses)
            if pool_addresses
        },
        "environment": "cloud",
        "task": {"type": f"workerpool{pool}", "index": index},
        "job": json.loads(job),
    }
    tf_config = {
        "cluster": {
            TF_TASK_TYPES[i]: pool_addresses
            for i, pool_addresses in enumerate(addresses)
            if pool_addresses
        },
        "task": {"type": TF_TASK_TYPES[pool], "index": index},
        "environment": "cloud",
    }
    env = {
        "CLUSTER_SPEC": json.dumps(cluster_spec),
        "TF_CONFIG": json.dumps(tf_config),
        "CLOUD_ML_JOB_ID": job_id,
    }
    prefix = spec.base_output_directory.output_uri_prefix.rstrip("/")
    if prefix:
        env["AIP_MODEL_DIR"] = f"{prefix}/model/"
        env["AIP_CHECKPOINT_DIR"] = f"{prefix}/checkpoints/"
        env["AIP_TENSORBOARD_LOG_DIR"] = f"{prefix}/logs/"
    env.update({var.name: var.value for var in spec.worker_pool_specs[pool].container_spec.env})
    return env


def stop(processes: list[subprocess.Popen], grace_seconds: float) -> None:
    """SIGTERM the processes still running, SIGKILL those still running `grace_seconds`
    later: how a machine that is shut down treats its containers."""
    running = [process for process in processes if process.poll() is None]
    for process in running:
        process.terminate()
    deadline = time.monotonic() + grace_seconds
    for process in running:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports (all held open until all are found)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _exit_text(returncode: int) -> str:
    if returncode < 0:
        return f"was killed by signal {signal.Signals(-returncode).name}"
    return f"exited with a non-zero status of {returncode}"


def _now() -> datetime:
    return datetime.now(UTC)


class _Job:
    """A created job: its CustomJob record (read and written under the service's lock), a
    copy of its spec for the thread that runs it, its replicas, and the first request to end
    it early (cancel, close)."""

    def __init__(self, record: CustomJob, preempted: Callable[[], bool] | None, run):
        self.record = record
        self.spec = CustomJobSpec(record.job_spec)
        self.preempted = preempted
        self.replicas: list[Replica] = []
        self.ending = threading.Event()
        self.end_request: tuple[JobState, int, str] | None = None
        self.thread = threading.Thread(target=run, args=(self,), daemon=True)

    @property
    def id(self) -> str:
        return self.record.name.rsplit("/", 1)[1]

    def end(self, state: JobState, code: int, message: str) -> None:
        if self.end_request is None:
            self.end_request = (state, code, message)
        self.ending.set()


class CustomJobService:
    """The service on a free loopback port (`url`); a context manager that `close`s it.

    `creates` records every create request; `requests` every request's method and path.
    """

    def __init__(
        self, start_replica: StartReplica, *, grace_seconds: float = 5.0, poll_seconds: float = 0.1
    ):
        self.start_replica = start_replica
        self.grace_seconds = grace_seconds
        self.poll_seconds = poll_seconds
        self.creates: list[CreateRequest] = []
        self.requests: list[tuple[str, str]] = []
        self._jobs: dict[str, _Job] = {}
        self._preemptions: list[Callable[[], bool]] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._server = _Server(self)
        self._server_thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._server_thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def jobs(self) -> list[CustomJob]:
        """Every job created so far, as it is now, in the order they were created."""
        with self._lock:
            return [CustomJob(job.record) for job in self._jobs.values()]

    def job(self, name: str) -> CustomJob:
        """A copy of job `name` as it is now."""
        job = self._find(name)
        with self._lock:
            return CustomJob(job.record)

    def replicas(self, name: str) -> list[Replica]:
        """The replicas job `name` has started so far."""
        job = self._find(name)
        with self._lock:
            return list(job.replicas)

    def wait(self, name: str, timeout: float = 60.0) -> CustomJob:
        """Job `name` once it has ended and its replicas are gone."""
        thread = self._find(name).thread
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"{name} still runs after {timeout}s")
        return self.job(name)

    def preempt_when(self, predicate: Callable[[], bool], times: int = 1) -> None:
        """Preempt each of the next `times` jobs created once `predicate` holds while it runs
        (polled every `poll_seconds`, e.g. "the checkpoint of epoch 1 exists"): its replicas
        get SIGTERM, then SIGKILL after the grace period, and it FAILS with code 14
        UNAVAILABLE, as when Vertex loses a Spot machine or one goes into maintenance."""
        with self._lock:
            self._preemptions.extend([predicate] * times)

    def close(self) -> None:
        """Stop serving, end every job still running and wait for its replicas to go."""
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            jobs = list(self._jobs.values())
            for job in jobs:
                job.end(JobState.JOB_STATE_CANCELLED, code_pb2.CANCELLED, "The service closed.")
        for job in jobs:
            job.thread.join()

    def __enter__(self) -> "CustomJobService":
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def handle(self, method: str, path: str, query: str, body: str) -> tuple[int, str]:
        """Answer one request: (HTTP status, JSON body)."""
        with self._lock:
            self.requests.append((method, path))
        # The REST client asks for enums as numbers ($alt=json;enum-encoding=int).
        int_enums = "enum-encoding=int" in unquote(query)
        try:
            if method == "POST" and (match := _CREATE.fullmatch(path)):
                job = self._create(*match.groups(), body)
                return HTTPStatus.OK, self._json(job, int_enums)
            if (match := _JOB.fullmatch(path)) and method == ("POST" if match[2] else "GET"):
                job = self._find(match[1])
                if match[2]:
                    self._cancel(job)
                    return HTTPStatus.OK, "{}"
                with self._lock:
                    return HTTPStatus.OK, self._json(job.record, int_enums)
            raise ApiError(HTTPStatus.NOT_FOUND, "NOT_FOUND", f"no route for {method} {path}")
        except ApiError as error:
            return error.http_status, json.dumps(error.body())

    @staticmethod
    def _json(job: CustomJob, int_enums: bool) -> str:
        return CustomJob.to_json(
            job,
            use_integers_for_enums=int_enums,
            always_print_fields_with_no_presence=False,
            indent=None,
        )

    def _create(self, project: str, location: str, body: str) -> CustomJob:
        job = None
        try:
            job = parse(body)
            validate(job)
        except ApiError as error:
            with self._lock:
                self.creates.append(CreateRequest(body, job, error.http_status))
            raise
        with self._lock:
            self.creates.append(CreateRequest(body, job, HTTPStatus.OK))
            record = CustomJob(job)
            record.name = f"projects/{project}/locations/{location}/customJobs/{next(self._ids)}"
            record.state = JobState.JOB_STATE_PENDING
            record.create_time = record.update_time = _now()
            preempted = self._preemptions.pop(0) if self._preemptions else None
            created = _Job(record, preempted, self._run)
            self._jobs[record.name] = created
            created.thread.start()
            return CustomJob(record)

    def _find(self, name: str) -> _Job:
        with self._lock:
            if name not in self._jobs:
                raise ApiError(HTTPStatus.NOT_FOUND, "NOT_FOUND", f"{name} not found")
            return self._jobs[name]

    def _cancel(self, job: _Job) -> None:
        with self._lock:
            if job.record.state in TERMINAL_STATES:
                raise ApiError(
                    HTTPStatus.BAD_REQUEST,
                    "FAILED_PRECONDITION",
                    f"{job.record.name} has already ended",
                )
            job.record.state = JobState.JOB_STATE_CANCELLING
            job.record.update_time = _now()
            job.end(JobState.JOB_STATE_CANCELLED, code_pb2.CANCELLED, "The job was cancelled.")

    def _run(self, job: _Job) -> None:
        """Start the job's replicas, watch them until the job ends, stop what still runs."""
        try:
            self._start_replicas(job)
            with self._lock:
                if job.record.state == JobState.JOB_STATE_PENDING:  # not CANCELLING
                    job.record.state = JobState.JOB_STATE_RUNNING
                job.record.start_time = job.record.update_time = _now()
            state, code, message = self._watch(job)
        except Exception as error:  # a replica that would not start, a predicate that raised
            state, code, message = JobState.JOB_STATE_FAILED, code_pb2.INTERNAL, repr(error)
        stop([replica.process for replica in job.replicas], self.grace_seconds)
        with self._lock:
            job.record.state = state
            if code != code_pb2.OK:
                job.record.error = status_pb2.Status(code=code, message=message)
            job.record.end_time = job.record.update_time = _now()

    def _start_replicas(self, job: _Job) -> None:
        spec = job.spec
        counts = [pool.replica_count for pool in spec.worker_pool_specs]
        ports = iter(_free_ports(sum(counts)))
        addresses = [[f"127.0.0.1:{next(ports)}" for _ in range(count)] for count in counts]
        for i, pool in enumerate(spec.worker_pool_specs):
            container = pool.container_spec
            for index in range(pool.replica_count):
                if job.ending.is_set():
                    return
                name = f"customjob-{job.id}-workerpool{i}-{index}"
                process = self.start_replica(
                    container.image_uri,
                    [*container.command, *container.args],
                    replica_env(job.id, spec, addresses, i, index),
                    name,
                )
                with self._lock:
                    job.replicas.append(Replica(i, index, name, process))

    def _watch(self, job: _Job) -> tuple[JobState, int, str]:
        """How the job ends: (state, google.rpc code, message)."""
        scheduling = job.spec.scheduling
        timeout = scheduling.timeout if "timeout" in scheduling else DEFAULT_TIMEOUT
        deadline = time.monotonic() + timeout.total_seconds()
        while not job.ending.wait(self.poll_seconds):
            if job.preempted is not None and job.preempted():
                return (
                    JobState.JOB_STATE_FAILED,
                    code_pb2.UNAVAILABLE,
                    "The job's replicas were preempted (Spot preemption or host maintenance).",
                )
            if time.monotonic() > deadline:
                return (
                    JobState.JOB_STATE_FAILED,
                    code_pb2.DEADLINE_EXCEEDED,
                    f"The job ran past its timeout of {timeout.total_seconds():g}s.",
                )
            codes = [replica.process.poll() for replica in job.replicas]
            for replica, returncode in zip(job.replicas, codes, strict=True):
                if returncode not in (None, 0):
                    return (
                        JobState.JOB_STATE_FAILED,
                        code_pb2.INTERNAL,
                        f"The replica workerpool{replica.pool}-{replica.index} "
                        f"{_exit_text(returncode)}.",
                    )
            if all(returncode == 0 for returncode in codes):
                return JobState.JOB_STATE_SUCCEEDED, code_pb2.OK, ""
        return job.end_request


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def _serve(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode()
        status, answer = self.server.service.handle(self.command, url.path, url.query, body)
        data = answer.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = do_PATCH = _serve

    def log_message(self, format: str, *args) -> None:  # the service's callers log enough
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, service: CustomJobService):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.service = service
