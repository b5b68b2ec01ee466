"""Which machines a training job runs on, and which one is the chief; no TensorFlow here.

A Vertex AI CustomJob with several replicas runs one process per machine, in worker pools:
workerpool0 holds the chief, workerpool1 the other workers. Vertex describes the cluster in
TF_CONFIG (task types "chief" and "worker") and in CLUSTER_SPEC (pool names); TF_CONFIG is
used when set, CLUSTER_SPEC is translated when it is the only one. A cluster of one task is
one machine and trains like a plain step. Only the chief writes outputs, including the
Kubeflow executor output (cli.py).

Machines start in any order, minutes apart, and TensorFlow waits for a missing one silently,
forever, deaf to SIGTERM (`wait_for_peers` runs first, in Python, for that reason).
"""

import contextlib
import json
import logging
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping

from image_segmentation.errors import StageError

CHIEF, WORKER = "chief", "worker"
_HOST_PORT = re.compile(r"[A-Za-z0-9._-]+:[0-9]{1,5}|\[[0-9A-Fa-f:]+\]:[0-9]{1,5}")
VERTEX_POOLS = {"workerpool0": CHIEF, "workerpool1": WORKER}
PEER_TIMEOUT = 900  # seconds: GPU machines of one job can start several minutes apart
log = logging.getLogger(__name__)


def _parse(name: str, text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise StageError(f"{name} is not JSON ({error}): {text[:200]}") from error
    if not isinstance(value, dict):
        raise StageError(f"{name} is not a JSON object: {text[:200]}")
    return value


def tf_config_from_cluster_spec(spec: dict) -> dict:
    """Vertex's CLUSTER_SPEC as a TF_CONFIG: workerpool0 -> chief, workerpool1 -> worker."""
    cluster, task = spec.get("cluster"), spec.get("task")
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise StageError(f"CLUSTER_SPEC has no cluster and task: {json.dumps(spec)[:200]}")
    other = sorted(set(cluster) - set(VERTEX_POOLS))
    if other:
        raise StageError(
            f"CLUSTER_SPEC has worker pools {', '.join(other)}: only workerpool0 (chief) and "
            "workerpool1 (workers) are supported"
        )
    return {
        "cluster": {VERTEX_POOLS[pool]: addresses for pool, addresses in cluster.items()},
        "task": {"type": VERTEX_POOLS.get(task.get("type")), "index": task.get("index", 0)},
    }


def check_tf_config(config: dict, name: str = "TF_CONFIG") -> dict:
    """Refuse a cluster this stage cannot train on: other task types (parameter servers,
    evaluators), or a task that is not in the cluster."""
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise StageError(f"{name} has no cluster and task: {json.dumps(config)[:200]}")
    other = sorted(set(cluster) - {CHIEF, WORKER})
    if other:
        raise StageError(
            f"{name} has task types {', '.join(other)}: only chief and worker are supported "
            "(all-reduce training, no parameter servers)"
        )
    addresses, index = cluster.get(task.get("type")), task.get("index")
    if not (isinstance(addresses, list) and isinstance(index, int) and 0 <= index < len(addresses)):
        raise StageError(f"{name}: task {json.dumps(task)} is not in its cluster")
    bad = [
        address
        for pool in cluster.values()
        for address in (pool if isinstance(pool, list) else [pool])
        if not _HOST_PORT.fullmatch(str(address))
    ]
    if bad:
        raise StageError(f"{name}: {json.dumps(bad[0])} is not an address like host:port")
    return config


def cluster_config(environ: Mapping[str, str]) -> dict | None:
    """The TF_CONFIG of a job on several machines, or None for one machine."""
    if environ.get("TF_CONFIG"):
        config = check_tf_config(_parse("TF_CONFIG", environ["TF_CONFIG"]))
    elif environ.get("CLUSTER_SPEC"):
        spec = tf_config_from_cluster_spec(_parse("CLUSTER_SPEC", environ["CLUSTER_SPEC"]))
        config = check_tf_config(spec, "CLUSTER_SPEC")
    else:
        return None
    tasks = sum(len(addresses) for addresses in config["cluster"].values())
    return config if tasks > 1 else None


def is_chief(config: dict | None) -> bool:
    """The task that writes checkpoints and the model dir: the chief, or worker 0 of a cluster
    without one (TensorFlow's rule); a single machine is its own chief."""
    if config is None:
        return True
    task_type, index = config["task"]["type"], config["task"]["index"]
    return task_type == CHIEF or (
        task_type == WORKER and index == 0 and CHIEF not in config["cluster"]
    )


def task_name(config: dict | None) -> str:
    """This process in the logs: "chief 0", "worker 1", or "one machine"."""
    if config is None:
        return "one machine"
    return f"{config['task']['type']} {config['task']['index']}"


def _split_address(address: str) -> tuple[str, int]:
    host, port = address.rsplit(":", 1)
    return host.strip("[]"), int(port)


def _listening(address: str) -> bool:
    try:
        with socket.create_connection(_split_address(address), timeout=2):
            return True
    except OSError:
        return False


def wait_for_peers(config: dict, timeout: float, poll: float = 1.0, report: float = 30.0) -> None:
    """Return once every other machine of the cluster is up, or refuse after `timeout` seconds,
    naming the ones that never came.

    TensorFlow itself waits for its peers inside a C++ call that neither logs (its messages
    are hidden) nor ends on SIGTERM, so the wait happens here first, in Python: this machine
    listens on its own port (so the others see it) and probes theirs until all answer, then
    frees its port for TensorFlow's server.
    """
    me = config["cluster"][config["task"]["type"]][config["task"]["index"]]
    peers = {
        f"{task_type} {index}": address
        for task_type, addresses in config["cluster"].items()
        for index, address in enumerate(addresses)
        if address != me
    }
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("", _split_address(me)[1]))
    except OSError as error:
        listener.close()
        raise StageError(f"{task_name(config)} cannot listen on {me}: {error}") from error
    with listener:
        listener.listen(16)
        start, reported, missing = time.monotonic(), None, peers
        while True:
            missing = {
                name: address for name, address in missing.items() if not _listening(address)
            }
            waited = time.monotonic() - start
            if not missing:
                log.info("%s: the other %d machine(s) are up", task_name(config), len(peers))
                return
            names = ", ".join(f"{name} at {address}" for name, address in missing.items())
            if waited >= timeout:
                raise StageError(
                    f"{task_name(config)} gave up after {timeout:g} s (--peer-timeout): "
                    f"{names} never started"
                )
            if reported is None or time.monotonic() - reported >= report:
                log.info(
                    "%s: waiting for %s (%.0f of %g s)", task_name(config), names, waited, timeout
                )
                reported = time.monotonic()
            time.sleep(poll)


@contextlib.contextmanager
def stop_on_sigterm(release: Callable[[], None]):
    """Within it SIGTERM ends the run at once: `release()` (the model folder's lease, so that
    a retry elsewhere need not wait for it to expire), one error line, exit status 143.

    Not an exception: raised wherever the signal lands (inside TensorFlow's thread pools, a
    logging call, a collective whose peer just ended), one would be swallowed or buried. The
    last completed epoch is already checkpointed. On several machines TensorFlow takes the
    signal for itself once the cluster is up (see `distribute.make_strategy`)."""

    def stop(signum, frame):
        release()
        sys.stdout.flush()
        print(
            "error: stopped by SIGTERM (Vertex AI cancels and preempts with it); a rerun into "
            "the same --output-dir resumes after the last completed epoch",
            file=sys.stderr,
            flush=True,
        )
        os._exit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
