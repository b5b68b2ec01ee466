"""Run the whole pipeline on this machine, each step in its container (kfp.local.DockerRunner).

Works with Docker or with podman's Docker API (`podman system service`, DOCKER_HOST). Two
things make container steps behave here as on Vertex:
- each stage writes its own executor_output.json (see image_segmentation/kfp_executor.py), so
  the next step finds its input artifacts;
- kfp 2.17's DockerRunner starts containers with auto-remove and takes a container that is
  already gone for exit status 0 (kubeflow/pipelines#13332), so a failed step could pass as a
  success; while the run lasts, its container starter is replaced by one that keeps the
  container until its exit status is read.
Steps are cached as on Vertex (keyed by command and inputs): a second run with the same data
and training settings, e.g. with another `min_miou`, reuses the trained model and its
evaluation. The cache lives under PIPELINE_ROOT/.kfp_cache/, one folder per set of image
builds, so a rebuilt image (new code under the same tag) starts afresh.
"""

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import kfp
from kfp import local
from kfp.local import docker_task_handler

from components import STAGE_IMAGES, Images
from pipelines import pipeline, vertex

# The kfp release whose private container starter `exit_status_kept` replaces; another release
# may have changed it, so the patch refuses to run there rather than guess.
PATCHED_KFP_VERSION = "2.17.0"
LOCAL_REGISTRY = "localhost"  # images built here: no pull is attempted for these names
CPU_TRAINING = {"train": "export"}  # no GPU here: the export image (TensorFlow CPU) trains
_PASSED_ENV = ("STORAGE_EMULATOR_HOST",)
_CREDENTIALS_IN_CONTAINER = "/var/secrets/google/credentials.json"


def run_container(client, image: str, command: list[str], volumes: dict, **run_args) -> int:
    """Run one step's container to the end and return its real exit status."""
    import docker  # the docker SDK (a repo folder is named docker/: import it where used)

    try:
        client.images.get(image)
    except docker.errors.ImageNotFound as error:
        raise ValueError(f"image {image} not found: build it first (make images)") from error
    container = client.containers.run(
        image=image, command=command, volumes=volumes, detach=True, **run_args
    )
    try:
        for line in container.logs(stream=True, follow=True):
            print(line.decode(errors="replace"), end="")
        return container.wait()["StatusCode"]
    finally:
        container.remove(force=True)


@contextlib.contextmanager
def exit_status_kept() -> Iterator[None]:
    """Let kfp's DockerRunner see each step's real exit status (see the module docstring)."""
    if kfp.__version__ != PATCHED_KFP_VERSION:
        raise ValueError(
            f"pipelines/local.py patches kfp {PATCHED_KFP_VERSION}'s DockerRunner, but kfp "
            f"{kfp.__version__} is installed: install the locked version (make setup), or "
            "check that the patch still fits and update PATCHED_KFP_VERSION"
        )
    original = docker_task_handler.run_docker_container
    docker_task_handler.run_docker_container = run_container
    try:
        yield
    finally:
        docker_task_handler.run_docker_container = original


def docker_runner() -> local.DockerRunner:
    """Steps run as the calling user (outputs stay theirs), on the host network (so they reach
    loopback servers), with the emulator setting and the caller's credentials file, if any."""
    import docker

    environment = {"HOME": "/tmp"}
    environment.update({name: os.environ[name] for name in _PASSED_ENV if name in os.environ})
    mounts = []
    credentials = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if credentials:
        mounts.append(
            docker.types.Mount(
                _CREDENTIALS_IN_CONTAINER, str(Path(credentials).resolve()), "bind", read_only=True
            )
        )
        environment["GOOGLE_APPLICATION_CREDENTIALS"] = _CREDENTIALS_IN_CONTAINER
    return local.DockerRunner(
        network_mode="host",
        user=f"{os.getuid()}:{os.getgid()}",
        environment=environment,
        mounts=mounts,
    )


def cache_root(images: Images, pipeline_root: Path) -> Path:
    """The step cache for the images as built now: their IDs name the folder."""
    import docker

    client = docker.from_env()
    ids = []
    for name in sorted({images.image(image) for image in STAGE_IMAGES.values()}):
        try:
            ids.append(client.images.get(name).id)
        except docker.errors.ImageNotFound:
            ids.append(name)  # not built: a step that needs it fails with a clear message
    return pipeline_root / ".kfp_cache" / hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def run_locally(images: Images, pipeline_root: Path, assignments: list[str]) -> None:
    """Run the pipeline with `NAME=VALUE` parameters; artifacts go under `pipeline_root`."""
    pipeline_root = Path(pipeline_root).resolve()
    pipeline_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        template = Path(
            pipeline.compile_pipeline(images, f"{scratch}/pipeline.yaml", on_vertex=False)
        )
        parameters = vertex.parse_parameters(template, assignments)
    local.init(
        runner=docker_runner(),
        pipeline_root=str(pipeline_root),
        raise_on_error=True,
        enable_caching=True,
        cache_root=str(cache_root(images, pipeline_root)),
    )
    with exit_status_kept():
        pipeline.build_pipeline(images, on_vertex=False)(**parameters)
