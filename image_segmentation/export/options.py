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
class Compression:
    """A coremltools weight compression of an ML Program's float16 weights, as `coreml.py`
    applies it. Only weight tensors of COMPRESS_MIN_WEIGHTS or more are compressed: they hold
    nearly all the bytes, and k-means on smaller ones needs scikit-learn."""

    kind: str  # "none", "palettize", "linear" (int8/int4), "prune" or "prune+palettize"
    bits: int | None  # bits per palette index or per quantized weight
    granularity: str | None  # "per_channel" or "per_block" (linear only)
    target: str  # the least iOS that runs it, a coremltools target name
    description: str


COMPRESS_MIN_WEIGHTS = 10_000
SPARSITY = 0.5  # the pruned share of each pruned tensor (smallest magnitudes first)
BLOCK_SIZE = 32  # input channels per scale of per-block int4

# The --compression choices, smallest file first (as bench_export measures them at alpha 1):
# --max-miou-drop tries them in this order.
COMPRESSIONS = {
    "palettize-2": Compression("palettize", 2, None, "iOS16", "2-bit palette (k-means)"),
    "palettize-3": Compression("palettize", 3, None, "iOS18", "3-bit palette (k-means)"),
    "prune-50-palettize-4": Compression(
        "prune+palettize", 4, None, "iOS18",
        "half the weights (the smallest) zeroed, the rest 4-bit palettized (k-means)",
    ),
    "palettize-4": Compression("palettize", 4, None, "iOS16", "4-bit palette (k-means)"),
    "int4-block": Compression(
        "linear", 4, "per_block", "iOS18",
        f"4-bit integers, one scale per {BLOCK_SIZE} input channels",
    ),
    "palettize-6": Compression("palettize", 6, None, "iOS16", "6-bit palette (k-means)"),
    "palettize-8": Compression("palettize", 8, None, "iOS16", "8-bit palette (k-means)"),
    "int8": Compression(
        "linear", 8, "per_channel", "iOS16", "8-bit integers, one scale per output channel"
    ),
    "prune-50": Compression(
        "prune", None, None, "iOS16", "half the weights (the smallest) zeroed"
    ),
    "none": Compression("none", None, None, "iOS16", "float16 weights as converted"),
}  # fmt: skip


@dataclass(frozen=True)
class ExportOptions:
    format: str = "mlprogram"
    precision: str = "float16"
    compression: str = "none"  # a COMPRESSIONS name
    max_miou_drop: float | None = None  # the smallest compression within this of FP32's mIoU
    data_dir: Path | None = None  # prepared data whose val split scores the Core ML weights
    quality_images: int | None = None  # score on the first N val images only (None: all)
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
    if options.compression not in COMPRESSIONS:
        problems.append(
            f"unknown compression {options.compression!r} (choose from {', '.join(COMPRESSIONS)})"
        )
    compressed = options.compression != "none" or options.max_miou_drop is not None
    if compressed and options.format != "mlprogram":
        problems.append("weight compression works on ML Programs: use --format mlprogram")
    if compressed and options.precision != "float16":
        problems.append("weight compression starts from float16 weights: use --precision float16")
    if options.data_dir is not None and options.format != "mlprogram":
        problems.append(
            "--data-dir scores the weights read back from an ML Program: use --format mlprogram"
        )
    if options.max_miou_drop is not None:
        if not 0 <= options.max_miou_drop <= 1:
            problems.append(
                f"--max-miou-drop is a mean IoU difference (0-1), got {options.max_miou_drop}"
            )
        if options.data_dir is None:
            problems.append("--max-miou-drop scores each compression: give --data-dir")
        if options.compression != "none":
            problems.append("--max-miou-drop chooses the compression: leave --compression out")
    if options.quality_images is not None and options.quality_images < 1:
        problems.append(f"--quality-images must be >= 1, got {options.quality_images}")
    if not options.model_name or "/" in options.model_name or options.model_name.startswith("."):
        problems.append(f"bad model name {options.model_name!r}: it names the exported files")
    if options.image_size is not None:
        problems += shapes.size_problems(options.image_size)
    if problems:
        raise StageError("; ".join(problems))
