"""Shared fixtures: generated ADE20K data and a real GCS emulator server on 127.0.0.1."""

import functools
import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from image_segmentation.data import synthetic

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ADE_SAMPLE = SHARED_DATA / "ade20k-sample"


# `make test` runs the modules in two processes, each taking the next module when it is done.
# The longest modules go first (by their --durations), so they run beside the many short ones
# instead of after them, alone.
LONGEST_MODULES = ("test_emulator.py", "test_containers.py", "test_multiworker.py", "test_train.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_MODULES.index(name) if name in LONGEST_MODULES else len(LONGEST_MODULES)

    items.sort(key=rank)  # stable: each module keeps its order


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@pytest.fixture(scope="session")
def ade_dataset(tmp_path_factory) -> Path:
    """A small generated ADEChallengeData2016 tree (24 training, 8 validation images)."""
    return synthetic.generate_ade20k(tmp_path_factory.mktemp("ade"), num_train=24, num_val=8)


@pytest.fixture(scope="session")
def served_zip(tmp_path_factory):
    """A generated ADE20K zip on a loopback HTTP server: (URL, SHA-1, images per split)."""
    root = tmp_path_factory.mktemp("served")
    dataset = synthetic.generate_ade20k(root / "src", num_train=8, num_val=4)
    sha1 = synthetic.make_zip(dataset, root / "ADEChallengeData2016.zip")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/ADEChallengeData2016.zip"
    yield url, sha1, {"train": 8, "val": 4}
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
    """A real gcp-storage-emulator server; yields its URL and sets STORAGE_EMULATOR_HOST."""
    port = free_port()
    log = tmp_path_factory.mktemp("gcs") / "emulator.log"
    with open(log, "wb") as log_file:
        server = subprocess.Popen(
            [sys.executable, "-m", "gcp_storage_emulator", "start", "--host=127.0.0.1",
             f"--port={port}", "--in-memory", "--quiet"],
            stdout=log_file, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for_port(port)
        url = f"http://127.0.0.1:{port}"
        previous = os.environ.get("STORAGE_EMULATOR_HOST")
        os.environ["STORAGE_EMULATOR_HOST"] = url
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)
        if previous is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = previous


@pytest.fixture
def gcs_client(gcs_emulator):
    """The real google-cloud-storage client, talking to the emulator; every bucket a test made
    is deleted afterwards, so tests may reuse bucket names."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project="test-project", credentials=AnonymousCredentials())
    yield client
    for bucket in client.list_buckets():
        bucket.delete(force=True)


@pytest.fixture
def small_disk(tmp_path):
    """Mounts a tmpfs of a given size (and options such as "ro") under tmp_path; unmounted after
    the test. Skips the test where mounting is not permitted."""
    points = []

    def mount(size: str, *options: str) -> Path:
        point = tmp_path / f"disk{len(points)}"
        point.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs", point],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        points.append(point)
        return point

    yield mount
    for point in points:
        subprocess.run(["umount", point], check=True)
