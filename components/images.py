"""Which container image runs each stage, named from one registry and one tag.

`make images` builds one image per Dockerfile in docker/ (`docker/NAME.Dockerfile` becomes
`REGISTRY/image-segmentation-NAME:TAG`); the components take their image names from here, so
`make pipeline-compile IMAGE_REGISTRY=... TAG=...` bakes the same names into the pipeline.
"""

from dataclasses import dataclass, field

IMAGE_PREFIX = "image-segmentation-"
# Light stages share a slim image without TensorFlow; training gets GPU TensorFlow; export
# gets TensorFlow (CPU) with coremltools, and evaluates too (on CPU).
STAGE_IMAGES = {
    "download": "light",
    "prepare": "light",
    "train": "train",
    "evaluate": "export",
    "convert": "export",
    "upload": "light",
}


@dataclass(frozen=True)
class Images:
    """Image names under `registry` (e.g. europe-west4-docker.pkg.dev/PROJECT/REPO) at `tag`."""

    registry: str
    tag: str
    # Images that stand in for others, e.g. {"train": "export"}: on a machine without a GPU
    # the export image (TensorFlow CPU) can train.
    substitutes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.registry or self.registry.endswith("/"):
            raise ValueError(f"image registry must be a non-empty prefix, got {self.registry!r}")
        if not self.tag or ":" in self.tag or "/" in self.tag:
            raise ValueError(f"bad image tag {self.tag!r}")

    def image(self, name: str) -> str:
        """The full name of image `name` (light, train, export)."""
        name = self.substitutes.get(name, name)
        return f"{self.registry}/{IMAGE_PREFIX}{name}:{self.tag}"

    def for_stage(self, stage: str) -> str:
        """The full name of the image that runs `stage`."""
        return self.image(STAGE_IMAGES[stage])
