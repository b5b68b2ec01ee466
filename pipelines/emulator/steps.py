"""How the emulator starts a container: as a host process, or as a podman/docker container.

Either way the step sees what it would see on Vertex: its exact command line, its environment,
and Cloud Storage at /gcs/BUCKET/... (a local folder stands in for the buckets).

- `ProcessSteps` runs the command on this machine's Python (the project's virtual environment
  stands in for the images) inside a private mount namespace where the local folder is bound
  at /gcs, so nothing else on the machine sees it. That needs root (or `unshare`'s user
  namespaces) and an empty /gcs folder, which it creates. Fast: what the tests use.
- `ContainerSteps` runs the step's image with the local folder mounted at /gcs, on the host
  network (multi-machine training finds its peers on 127.0.0.1), as the calling user. Images
  can stand in for others (no GPU here: the export image trains).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

MOUNT_POINT = Path("/gcs")
PASSED_ENV = ("STORAGE_EMULATOR_HOST",)  # a loopback GCS for the upload step
CREDENTIALS_IN_CONTAINER = "/var/secrets/google/credentials.json"
_BIND_AND_RUN = 'mount --bind "$0" /gcs && exec "$@"'


class ProcessSteps:
    """Run steps as host processes that see `gcs_dir` at /gcs."""

    def __init__(self, gcs_dir: Path):
        self.gcs_dir = Path(gcs_dir).resolve()
        self.gcs_dir.mkdir(parents=True, exist_ok=True)
        if shutil.which("unshare") is None:
            raise RuntimeError("process steps need unshare (util-linux); use containers instead")
        if not MOUNT_POINT.is_dir():
            try:
                MOUNT_POINT.mkdir()
            except OSError as error:
                raise RuntimeError(
                    f"process steps need an empty {MOUNT_POINT} folder to mount on: {error}"
                ) from error

    def start(self, image: str, command: list[str], env: dict[str, str], name: str):
        """Start `command` (python: this interpreter) with `env` added; return the process."""
        if command and command[0] in ("python", "python3"):
            command = [sys.executable, *command[1:]]
        namespace = ["unshare", "--mount", "--propagation", "private"]
        if os.geteuid() != 0:
            namespace.insert(1, "--map-root-user")
        return subprocess.Popen(
            [*namespace, "sh", "-c", _BIND_AND_RUN, str(self.gcs_dir), *command],
            env={**os.environ, **env},
            start_new_session=True,
        )


class ContainerSteps:
    """Run steps in their images with `engine` (podman or docker), `gcs_dir` at /gcs."""

    def __init__(self, gcs_dir: Path, engine: str = "docker", substitutes: dict | None = None):
        self.gcs_dir = Path(gcs_dir).resolve()
        self.gcs_dir.mkdir(parents=True, exist_ok=True)
        self.engine = engine
        self.substitutes = substitutes or {}  # image name -> the image that stands in for it

    def image(self, image: str) -> str:
        for name, stand_in in self.substitutes.items():
            image = image.replace(name, stand_in)
        return image

    def start(self, image: str, command: list[str], env: dict[str, str], name: str):
        """Start a container of `image` whose entrypoint is `command`; return the engine's
        process (a signal to it reaches the container). The caller's
        GOOGLE_APPLICATION_CREDENTIALS file, if any, is mounted read-only."""
        passed = {key: os.environ[key] for key in PASSED_ENV if key in os.environ}
        env = {"HOME": "/tmp", **passed, **env}
        options = ["--rm", "--network=host", f"--user={os.getuid()}:{os.getgid()}"]
        options += ["-v", f"{self.gcs_dir}:{MOUNT_POINT}", f"--name={name}"]
        credentials = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
        if credentials:
            source = Path(credentials).resolve()
            options += ["-v", f"{source}:{CREDENTIALS_IN_CONTAINER}:ro"]
            env["GOOGLE_APPLICATION_CREDENTIALS"] = CREDENTIALS_IN_CONTAINER
        for key, value in env.items():
            options += ["-e", f"{key}={value}"]
        entrypoint, *args = command
        stand_in = self.image(image)
        print(f"[{name}] {image}" + (f" (in {stand_in})" if stand_in != image else ""), flush=True)
        return subprocess.Popen(
            [self.engine, "run", *options, f"--entrypoint={entrypoint}", stand_in, *args],
            start_new_session=True,
        )
