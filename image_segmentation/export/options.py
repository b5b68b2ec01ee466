"""What an export can be asked for, and its checks; no TensorFlow or coremltools here, so bad
options are refused before they load (the export stage's command line is built from these)."""

import argparse
from dataclasses import dataclass, fields
from pathlib import Path

from image_segmentation.contracts import export_folder
from image_segmentation.errors import StageError
from image_segmentation.model import shapes

FORMATS = tuple(export_folder.COREML_SUFFIXES)
PRECISIONS = ("float16", "float32")
DEFAULT_AUTHOR = "image-segmentation"
DEFAULT_LICENSE = "Trained on ADE20K: see its terms of use (https://ade20k.csail.mit.edu)"


@dataclass(frozen=True)
class OutputKind:
    """What an exported model returns, as the exporter, Core ML, TFLite and predict read it."""

    feature: str  # the Core ML output feature's name
    full_size: bool  # at the input size (else at 1/4 of it, ICNet's main output)
    label_map: bool  # the class index of every pixel (else class probabilities)
    description: str  # the Core ML output description: str.format with height, width, classes


# The --output choices.
OUTPUT_KINDS = {
    "probabilities": OutputKind(
        "probabilities", full_size=False, label_map=False,
        description="Class probabilities (softmax) at 1/4 of the input size, [1, {height4}, "
        "{width4}, {classes}]; channel k is class k of 'labels'",
    ),
    "full": OutputKind(
        "probabilities", full_size=True, label_map=False,
        description="Class probabilities (softmax) at the input size, [1, {height}, {width}, "
        "{classes}]; channel k is class k of 'labels'",
    ),
    "labels": OutputKind(
        "labels", full_size=True, label_map=True,
        description="Class index of every pixel, [1, {height}, {width}]; index k is class k of "
        "'labels'",
    ),
}  # fmt: skip


@dataclass(frozen=True)
class ExportOptions:
    format: str = "mlprogram"
    precision: str = "float16"
    palettize: bool = False
    output: str = "probabilities"
    tflite: bool = True
    image_size: tuple[int, int] | None = None  # None: the size the model was trained at
    model_name: str = "icnet"
    version: str = "1.0"
    author: str = DEFAULT_AUTHOR
    license: str = DEFAULT_LICENSE
    check_images: Path | None = None  # None: a few generated images


def options_from_args(args: argparse.Namespace) -> ExportOptions:
    """The options the parsed command line asks for (each field is the option of its name)."""
    return ExportOptions(
        **{field.name: getattr(args, field.name) for field in fields(ExportOptions)}
    )


def check_options(options: ExportOptions) -> None:
    """Refuse combinations that cannot be exported, before any slow work."""
    problems = []
    if options.format not in FORMATS:
        problems.append(f"unknown format {options.format!r} (choose from {', '.join(FORMATS)})")
    if options.precision not in PRECISIONS:
        problems.append(
            f"unknown precision {options.precision!r} (choose from {', '.join(PRECISIONS)})"
        )
    if options.output not in OUTPUT_KINDS:
        problems.append(
            f"unknown output {options.output!r} (choose from {', '.join(OUTPUT_KINDS)})"
        )
    if options.palettize and options.format != "mlprogram":
        problems.append("--palettize works on ML Programs: use --format mlprogram")
    if options.palettize and options.precision != "float16":
        problems.append("--palettize clusters float16 weights: use --precision float16")
    if not options.model_name or "/" in options.model_name or options.model_name.startswith("."):
        problems.append(f"bad model name {options.model_name!r}: it names the exported files")
    if options.image_size is not None:
        problems += shapes.problems(2, options.image_size, 1.0)
    if problems:
        raise StageError("; ".join(problems))
