"""Training on several machines: the cluster description Vertex AI gives each machine, and a
chief and a worker as real processes on 127.0.0.1, stopped (SIGTERM) after the first epoch and
restarted, as Vertex restarts a job whose machine was preempted; a machine that never starts."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tensorflow as tf
from conftest import free_port
from test_dataset import write_prepared

from image_segmentation import disk
from image_segmentation.cloud import cluster
from image_segmentation.contracts import data_folder, model_folder
from image_segmentation.errors import StageError
from image_segmentation.stages import train
from image_segmentation.training import checkpoints, trainer
from image_segmentation.training import settings as train_settings

TASKS = ("chief", "worker")
RUN_TIMEOUT = 300  # seconds for one start of both processes
STOP_TIMEOUT = 30  # seconds a machine may take to end on SIGTERM
ARGS = [
    "--image-size", "64", "--alpha", "0.25", "--epochs", "2", "--steps-per-epoch", "2",
    "--batch-size", "2", "--learning-rate", "0.002", "--seed", "1",
]  # fmt: skip

# Runs the train stage as `python -m image_segmentation` does, printing every file system
# change Python makes under the output dir (argv[1]): the worker must print none.
AUDITED_TRAIN = """
import os, runpy, sys
output = os.path.realpath(sys.argv[1])
WRITES = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND

def report_writes(event, args):
    if event not in ("open", "os.rename", "os.mkdir", "os.remove", "os.rmdir"):
        return
    if event == "open" and not (isinstance(args[2], int) and args[2] & WRITES):
        return
    for path in args[:2] if event == "os.rename" else args[:1]:
        if isinstance(path, (str, bytes, os.PathLike)):
            path = os.path.realpath(os.fsdecode(path))
            if path == output or path.startswith(output + os.sep):
                print("file system change:", event, path, file=sys.stderr, flush=True)

sys.addaudithook(report_writes)
sys.argv = ["image_segmentation", "train", *sys.argv[2:]]
runpy.run_module("image_segmentation", run_name="__main__", alter_sys=True)
"""


def vertex_cluster_spec(task_pool: str, index: int) -> str:
    cluster = {"workerpool0": ["chief:2222"], "workerpool1": ["w1:2222", "w2:2222"]}
    return json.dumps({"cluster": cluster, "task": {"type": task_pool, "index": index}})


def test_vertex_cluster_spec_becomes_tf_config():
    config = cluster.cluster_config({"CLUSTER_SPEC": vertex_cluster_spec("workerpool1", 1)})
    assert config == {
        "cluster": {"chief": ["chief:2222"], "worker": ["w1:2222", "w2:2222"]},
        "task": {"type": "worker", "index": 1},
    }
    assert not cluster.is_chief(config)
    chief = cluster.cluster_config({"CLUSTER_SPEC": vertex_cluster_spec("workerpool0", 0)})
    assert chief["task"] == {"type": "chief", "index": 0} and cluster.is_chief(chief)


def test_tf_config_wins_and_a_single_task_is_one_machine():
    tf_config = {"cluster": {"chief": ["a:1"], "worker": ["b:1"]}}
    tf_config["task"] = {"type": "worker", "index": 0}
    environ = {"TF_CONFIG": json.dumps(tf_config), "CLUSTER_SPEC": vertex_cluster_spec("w", 0)}
    assert cluster.cluster_config(environ) == tf_config
    # One replica: Vertex still describes a cluster, of one chief; it trains like a plain step.
    alone = {"cluster": {"chief": ["a:1"]}, "task": {"type": "chief", "index": 0}}
    assert cluster.cluster_config({"TF_CONFIG": json.dumps(alone)}) is None
    alone_spec = {"cluster": {"workerpool0": ["a:1"]}, "task": {"type": "workerpool0"}}
    assert cluster.cluster_config({"CLUSTER_SPEC": json.dumps(alone_spec)}) is None
    assert cluster.cluster_config({}) is None
    assert cluster.is_chief(None)


@pytest.mark.parametrize(
    ("machines", "task", "chief"),
    [
        ({"worker": ["a:1", "b:1"]}, {"type": "worker", "index": 0}, True),
        ({"worker": ["a:1", "b:1"]}, {"type": "worker", "index": 1}, False),
        ({"chief": ["a:1"], "worker": ["b:1"]}, {"type": "worker", "index": 0}, False),
        ({"chief": ["a:1"], "worker": ["b:1"]}, {"type": "chief", "index": 0}, True),
    ],
)
def test_the_chief_is_the_chief_task_or_else_worker_0(machines, task, chief):
    config = cluster.cluster_config({"TF_CONFIG": json.dumps({"cluster": machines, "task": task})})
    assert cluster.is_chief(config) is chief


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"TF_CONFIG": "{cluster"}, "TF_CONFIG is not JSON"),
        ({"TF_CONFIG": "[]"}, "TF_CONFIG is not a JSON object"),
        ({"TF_CONFIG": '{"cluster": {"worker": ["a:1"]}}'}, "TF_CONFIG has no cluster and task"),
        (
            {"TF_CONFIG": '{"cluster": {"ps": ["a:1"], "worker": ["b:1"]}, "task": {}}'},
            "TF_CONFIG has task types ps: only chief and worker",
        ),
        (
            {"TF_CONFIG": '{"cluster": {"worker": ["a:1"]}, "task": {"type": "w", "index": 0}}'},
            "is not in its cluster",
        ),
        (
            {"TF_CONFIG": '{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker"}}'},
            "is not in its cluster",
        ),
        (
            {"CLUSTER_SPEC": '{"cluster": {"workerpool2": ["a:1"]}, "task": {}}'},
            "CLUSTER_SPEC has worker pools workerpool2: only workerpool0",
        ),
        (
            {
                "TF_CONFIG": '{"cluster": {"worker": ["a:1", "b"]}, "task": {"type": "worker", '
                '"index": 0}}'
            },
            'TF_CONFIG: "b" is not an address like host:port',
        ),
        (
            {
                "TF_CONFIG": '{"cluster": {"worker": ["a:1", 7]}, "task": {"type": "worker", '
                '"index": 0}}'
            },
            "TF_CONFIG: 7 is not an address like host:port",
        ),
    ],
)
def test_bad_cluster_descriptions_are_refused(environ, message):
    with pytest.raises(StageError, match=message) as error:
        cluster.cluster_config(environ)
    assert "\n" not in str(error.value)


def test_each_machine_keeps_its_own_part_of_every_global_batch(tmp_path):
    """With one train shard and two machines, sharding by file would hand both the same
    batches (TensorFlow's default falls back to that silently); sharding by data does not."""
    data = data_folder.read_prepared(write_prepared(tmp_path, num_train=8, num_val=2, shards=1))
    settings = train.TrainSettings(image_size=(64, 64), batch_size=2)
    scale = train_settings.scaling(settings, replicas=2, train_records=data.records["train"])
    batches = trainer.training_data(data, settings, scale, {"conv6_cls": (16, 16)})
    images, targets = next(iter(batches))
    assert images.shape[0] == targets["conv6_cls"].shape[0] == 4  # Keras splits it
    policy = batches.options().experimental_distribute.auto_shard_policy
    assert policy == tf.data.experimental.AutoShardPolicy.DATA


def test_what_the_chief_saves_is_read_without_the_other_machines():
    """Only the chief saves. Reading a variable synchronized on read would be a collective
    operation that the other machines never join; Keras makes only metrics so, and the
    checkpoint and the weights file hold none."""
    settings = train.TrainSettings(image_size=(64, 64))
    model = trainer.build_model([1.0] * 4, settings, 10, mixed_precision=True)  # the GPU optimizer
    saved = [*model.weights, *model.optimizer.variables]
    assert all(variable.synchronization != "on_read" for variable in saved)
    assert {variable.synchronization for variable in model.metrics_variables} == {"on_read"}


def start(task: str, ports: tuple[int, int], output: Path, args: list[str], log: Path):
    cluster = {name: [f"127.0.0.1:{port}"] for name, port in zip(TASKS, ports, strict=True)}
    env = os.environ | {
        "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": task, "index": 0}}),
        "CUDA_VISIBLE_DEVICES": "",
        # Two TensorFlow processes share the cores: one thread each, not one per core.
        "TF_NUM_INTEROP_THREADS": "1",
        "TF_NUM_INTRAOP_THREADS": "1",
    }
    with open(log, "wb") as file:
        return subprocess.Popen(
            [sys.executable, "-c", AUDITED_TRAIN, str(output), *args],
            stdout=file,
            stderr=subprocess.STDOUT,
            env=env,
        )


def run_cluster(
    root: Path, name: str, ports: tuple[int, int], args: list[str], stop_at: Path | None
):
    """Start the chief and the worker; wait until both exit (one failing ends the run), or
    SIGTERM both as soon as `stop_at` exists, as Vertex stops a job's machines; SIGKILL what
    is left after STOP_TIMEOUT."""
    output = Path(args[args.index("--output-dir") + 1])
    logs = {task: root / f"{name}-{task}.log" for task in TASKS}
    processes = {task: start(task, ports, output, args, logs[task]) for task in TASKS}
    deadline = time.monotonic() + RUN_TIMEOUT
    try:
        while not (stop_at and stop_at.exists()) and time.monotonic() < deadline:
            codes = [process.poll() for process in processes.values()]
            if None not in codes or any(code not in (None, 0) for code in codes):
                break
            time.sleep(0.05)
        if stop_at and stop_at.exists():
            for process in processes.values():
                process.send_signal(signal.SIGTERM)
            for process in processes.values():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(STOP_TIMEOUT)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
            process.wait()
    return {
        task: SimpleNamespace(
            pid=process.pid, returncode=process.returncode, log=logs[task].read_text()
        )
        for task, process in processes.items()
    }


@pytest.fixture(scope="module")
def two_machines(tmp_path_factory) -> SimpleNamespace:
    """Two machines training on one train shard (fewer files than workers), stopped (SIGTERM)
    once the chief has checkpointed epoch 1, then the same commands again."""
    root = tmp_path_factory.mktemp("cluster")
    data = write_prepared(root / "data", num_train=16, num_val=4, shards=1)
    output = root / "model"
    args = ["--data-dir", str(data), "--output-dir", str(output), *ARGS]
    first_checkpoint = output / checkpoints.DIRECTORY / "epoch-0001.npz"
    ports = (free_port(), free_port())  # the restarted machines keep their addresses
    stopped = run_cluster(root, "stopped", ports, args, stop_at=first_checkpoint)
    for task, run in stopped.items():  # TensorFlow's own SIGTERM handler would ignore it
        assert first_checkpoint.exists(), f"{task}:\n{run.log[-3000:]}"
        assert run.returncode == 128 + signal.SIGTERM, f"{task}:\n{run.log[-3000:]}"
        assert run.log.rstrip().splitlines()[-1].startswith("error: stopped by SIGTERM"), task
    resumed = run_cluster(root, "resumed", ports, args, stop_at=None)
    for task, run in resumed.items():
        assert run.returncode == 0, f"{task}:\n{run.log[-3000:]}"
    return SimpleNamespace(output=output, first=first_checkpoint, stopped=stopped, resumed=resumed)


EVENTS = re.compile(r"^events\.out\.tfevents\.\d+\..+\.(\d+)\.\d+\.v2$")  # time.host.pid
SCALE = re.compile(
    r"(chief|worker) 0: (\d+) replica\(s\) x batch (\d+) = global batch (\d+), "
    r"learning rate (\S+) \((\S+) per replica\)"
)


@pytest.mark.slow
def test_both_machines_train_with_the_same_global_batch(two_machines):
    for runs in (two_machines.stopped, two_machines.resumed):
        logged = {task: SCALE.search(run.log).groups() for task, run in runs.items()}
        assert logged == {
            "chief": ("chief", "2", "2", "4", "0.004", "0.002"),
            "worker": ("worker", "2", "2", "4", "0.004", "0.002"),
        }
    training = json.loads((two_machines.output / model_folder.CONFIG_FILE).read_text())["training"]
    assert training["replicas"] == 2 and training["global_batch_size"] == 4
    assert training["batch_size"] == 2 and training["learning_rate"] == 0.002
    assert training["effective_learning_rate"] == 0.004


@pytest.mark.slow
def test_a_stopped_cluster_resumes_at_epoch_2_on_every_machine(two_machines):
    for task, run in two_machines.resumed.items():
        assert "Epoch 1/2" not in run.log and "Epoch 2/2" in run.log, task
        assert "resuming from epoch-0001.npz (epoch 1 done)" in run.log, task
    history = json.loads((two_machines.output / model_folder.HISTORY_FILE).read_text())
    assert [entry["epoch"] for entry in history] == [1, 2]
    assert history[0] == checkpoints.read_state(two_machines.first)["history"][0]
    found = checkpoints.list_checkpoints(two_machines.output / checkpoints.DIRECTORY)
    assert [path.name for path in found] == ["epoch-0001.npz", "epoch-0002.npz"]
    # Optimizer state came back too: its step counter went on from epoch 1's two steps.
    with np.load(found[-1]) as last:
        assert last["optimizer/adam/iteration"] == 4


@pytest.mark.slow
def test_only_the_chief_writes_the_output_dir(two_machines):
    output = two_machines.output
    assert sorted(path.name for path in output.iterdir()) == sorted([
        checkpoints.DIRECTORY, model_folder.CONFIG_FILE, model_folder.HISTORY_FILE, "logs",
        model_folder.TRAINING_METRICS_FILE, model_folder.WEIGHTS_FILE,
    ])  # fmt: skip
    for runs in (two_machines.stopped, two_machines.resumed):
        assert "file system change" not in runs["worker"].log
    changes = two_machines.stopped["chief"].log + two_machines.resumed["chief"].log
    for written in (two_machines.first, output / model_folder.CONFIG_FILE):  # atomic writes
        assert f"os.rename {written.resolve()}" in changes
    # TensorBoard event files are written by TensorFlow itself; their names hold the pid.
    chief_pids = {str(runs["chief"].pid) for runs in (two_machines.stopped, two_machines.resumed)}
    writers = {EVENTS.match(path.name).group(1) for path in (output / "logs").iterdir()}
    assert writers and writers <= chief_pids


def waiting_chief(tmp_path: Path, peer_timeout: str) -> tuple[subprocess.Popen, int]:
    """The chief of a two-machine cluster whose worker never starts."""
    port, missing = free_port(), free_port()
    cluster = {"chief": [f"127.0.0.1:{port}"], "worker": [f"127.0.0.1:{missing}"]}
    env = os.environ | {
        "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "chief", "index": 0}})
    }
    data = write_prepared(tmp_path / "data", num_train=2, num_val=2)
    args = ["--data-dir", str(data), "--output-dir", str(tmp_path / "model"), *ARGS]
    command = [sys.executable, "-m", "image_segmentation", "train", *args]
    process = subprocess.Popen(
        [*command, "--peer-timeout", peer_timeout], stderr=subprocess.PIPE, text=True, env=env
    )
    return process, missing


def test_a_machine_that_never_starts_is_named_and_the_chief_gives_up(tmp_path):
    process, missing = waiting_chief(tmp_path, "2")
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2, stderr
    assert f"chief 0: waiting for worker 0 at 127.0.0.1:{missing} (0 of 2 s)" in stderr
    assert stderr.splitlines()[-1] == (
        f"error: chief 0 gave up after 2 s (--peer-timeout): worker 0 at 127.0.0.1:{missing} "
        "never started"
    )
    assert not (tmp_path / "model" / disk.LEASE_FILE).exists()  # the next run is not refused


def test_sigterm_ends_a_machine_that_waits_for_the_others(tmp_path):
    process, _ = waiting_chief(tmp_path, "600")
    for line in process.stderr:  # sent once the chief listens for the others
        if "waiting for worker 0" in line:
            break
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    stderr = process.communicate(timeout=STOP_TIMEOUT)[1]
    assert process.returncode == 128 + signal.SIGTERM and time.monotonic() - started < 10
    assert stderr.splitlines()[-1].startswith("error: stopped by SIGTERM"), stderr
    assert not (tmp_path / "model" / disk.LEASE_FILE).exists()
