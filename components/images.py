"""Which container image runs each stage, named from one registry and one tag.

`make images` builds one image per Dockerfile in docker/ (`docker/NAME.Dockerfile` becomes
`REGISTRY/image-segmentation-NAME:TAG`); the components take their image names from here, so
`make pipeline-compile IMAGE_REGISTRY=... TAG=...` bakes the same names into the pipeline.

The download step is the exception. Vertex caches a step by its image name, command and
inputs, and TAG changes with every commit, which would throw away a 1 GB download each time.
So the light image also gets a content tag, `download-HASH`, a hash of exactly the files the
download step runs (`DOWNLOAD_SOURCES`), and the download step uses that tag: its cache
survives every commit that does not change the download itself.

This file uses only the standard library, so `python3 components/images.py` prints the
download tag for make and Cloud Build without the project's virtual environment.
"""

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGE_PREFIX = "image-segmentation-"
# Light stages share a slim image without TensorFlow; training gets GPU TensorFlow; export
# gets TensorFlow (CPU) with coremltools, and evaluates too (on CPU).
STAGE_IMAGES = {
    "download": "light",
    "prepare": "light",
    "training-job": "light",
    "train": "train",
    "evaluate": "export",
    "challenge": "export",  # scores the champion's TFLite model when the data differ
    "convert": "export",
    "upload": "light",
}
# Everything that decides what the download step does: the light image's recipe and the
# package modules `python -m image_segmentation download` imports (a test keeps this list
# equal to the modules it really imports).
DOWNLOAD_SOURCES = (
    "docker/light.Dockerfile",
    "docker/light.lock",
    "image_segmentation/__init__.py",
    "image_segmentation/__main__.py",
    "image_segmentation/cli.py",
    "image_segmentation/cloud/__init__.py",
    "image_segmentation/cloud/cluster.py",
    "image_segmentation/cloud/kfp_executor.py",
    "image_segmentation/cloud/storage.py",
    "image_segmentation/contracts/__init__.py",
    "image_segmentation/contracts/download_folder.py",
    "image_segmentation/data/__init__.py",
    "image_segmentation/data/ade20k.py",
    "image_segmentation/data/archive.py",
    "image_segmentation/data/download.py",
    "image_segmentation/data/fetch.py",
    "image_segmentation/disk.py",
    "image_segmentation/errors.py",
    "image_segmentation/files.py",
    "image_segmentation/stages/__init__.py",
    "image_segmentation/stages/download.py",
)


def download_tag(root: Path = REPO) -> str:
    """`download-` and 12 hex digits of the SHA-256 over DOWNLOAD_SOURCES' names and bytes."""
    digest = hashlib.sha256()
    for name in DOWNLOAD_SOURCES:
        digest.update(name.encode() + b"\0" + (root / name).read_bytes() + b"\0")
    return f"download-{digest.hexdigest()[:12]}"


# Container image references as registries accept them: a host, then lower-case path parts.
REGISTRY = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::[0-9]+)?"
    r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
)
TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True)
class Images:
    """Image names under `registry` (e.g. europe-west4-docker.pkg.dev/PROJECT/REPO) at `tag`."""

    registry: str
    tag: str
    # Images that stand in for others, e.g. {"train": "export"}: on a machine without a GPU
    # the export image (TensorFlow CPU) can train.
    substitutes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []
        if not REGISTRY.fullmatch(self.registry):
            problems.append(
                f"bad image registry {self.registry!r}: want HOST[:PORT]/PATH with lower-case "
                "path parts, e.g. europe-west4-docker.pkg.dev/my-project/image-segmentation"
            )
        if not TAG.fullmatch(self.tag):
            problems.append(
                f"bad image tag {self.tag!r}: want letters, digits, '_', '.' and '-', "
                "at most 128, not starting with '.' or '-'"
            )
        if problems:
            raise ValueError("; ".join(problems))

    def image(self, name: str, tag: str | None = None) -> str:
        """The full name of image `name` (light, train, export), at `tag` or the set's tag."""
        name = self.substitutes.get(name, name)
        return f"{self.registry}/{IMAGE_PREFIX}{name}:{tag or self.tag}"

    def for_stage(self, stage: str) -> str:
        """The full name of the image that runs `stage`."""
        tag = download_tag() if stage == "download" else None
        return self.image(STAGE_IMAGES[stage], tag)


if __name__ == "__main__":
    print(download_tag())
