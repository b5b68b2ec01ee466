"""A run's parameters checked with the stages' own checks, before anything is sent to Vertex.

Each stage refuses bad input in its first second, but on Vertex the upload stage runs after
the whole GPU training: a bad destination found there costs hours. `problems` runs the same
checks on the parameters of a run (the template's defaults filled in) and names every problem
at once, one line each.
"""

import math

import yaml

from image_segmentation.cloud import storage, upload
from image_segmentation.data import download, labels
from image_segmentation.errors import StageError
from image_segmentation.stages import training_job

# The pipeline parameters that become train options: `image_size` is `--image-size`, and so on.
TRAIN_OPTIONS = (
    "image_size",
    "alpha",
    "epochs",
    "steps_per_epoch",
    "batch_size",
    "learning_rate",
    "init",
    "resize",
)
FRACTIONS = ("threshold", "min_miou")  # numbers from 0 to 1
COUNTS = ("train_shards", "val_shards")  # numbers from 1 up
INIT_CHOICES = ("imagenet", "random")  # or a gs:// ResNet-50 weights file


def run_values(template_text: str, given: dict) -> dict:
    """Every parameter of the run: the given ones, the template's defaults for the rest."""
    spec = yaml.safe_load(template_text)
    definitions = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    values = {name: d["defaultValue"] for name, d in definitions.items() if "defaultValue" in d}
    values |= given
    for name, definition in definitions.items():  # a template holds every number as a float
        if definition["parameterType"] == "NUMBER_INTEGER" and name in values:
            values[name] = int(values[name])
    return values


def problems(values: dict) -> list[str]:
    """What the stages would refuse in the run's parameter `values`, one line per problem."""
    found = []

    def check(name: str, call) -> None:
        try:
            call()
        except StageError as error:
            found.append(f"{name}: {error}")

    if "destination" not in values:
        found.append("destination: required, e.g. gs://BUCKET/models")
    else:
        check("destination", lambda: upload.version_prefix(values["destination"], "m", "v"))
    version = values["model_version"] or "the-job-name"
    check(
        "model_name/model_version",
        lambda: upload.version_prefix("gs://bucket", values["model_name"], version),
    )
    check("source_sha1", lambda: download.normalize_sha1(values["source_sha1"]))
    check("whitelist", lambda: labels.parse_whitelist(values["whitelist"] or None))
    for name in FRACTIONS:
        if not (math.isfinite(values[name]) and 0 <= values[name] <= 1):
            found.append(f"{name} must be a number from 0 to 1, got {values[name]}")
    for name in COUNTS:
        if values[name] < 1:
            found.append(f"{name} must be at least 1, got {values[name]}")
    init = values["init"]
    if init not in INIT_CHOICES and not storage.is_gcs_uri(init):
        found.append(f"init must be imagenet, random or a gs:// weights file, got {init!r}")
    options = [
        part
        for name in TRAIN_OPTIONS
        for part in (f"--{name.replace('_', '-')}", str(values[name]))
    ]
    found += training_job.train_option_problems(options)
    found += training_job.machine_problems(
        values["machine_type"],
        values["accelerator_type"],
        values["accelerator_count"],
        values["replica_count"],
        values["scheduling_strategy"],
    )
    return found
