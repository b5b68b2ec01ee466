"""The evaluate stage's output folder: metrics.json (its completion marker, written last) and
report.html; what of it export.json and the upload manifest carry, checked to score the
weights they publish. No TensorFlow here.

The quality gate is `miou`, the mean IoU in the ADE20K benchmark's convention: "none" (every
class not on the whitelist) is a class like the others, and only the pixels ADE20K leaves
unlabelled are not scored.
"""

import hashlib
from pathlib import Path

from image_segmentation import files
from image_segmentation.contracts import model_folder
from image_segmentation.errors import StageError

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.html"
GATE_METRIC = "miou"
CONVENTION = "every labelled pixel scored, 'none' a class; unlabelled pixels not scored"
PUBLISHED_KEYS = ("miou", "pixel_accuracy", "class_iou", "classes_scored", "pixels_scored")
# What the scores were measured on: two runs' numbers compare only when this is the same.
DATA_DIGEST = "validation_data_sha256"


def validation_digest(shards: list[Path], labels_file: Path, max_images: int | None) -> str:
    """sha256 over the val shards' bytes (in order), labels.txt and the image limit: the same
    digest means the same images, masks and classes were scored, whatever the files are named
    (prepare is deterministic, so a rerun over the same data gives the same digest)."""
    digest = hashlib.sha256()
    for path in [*shards, labels_file]:
        part = hashlib.sha256()
        with open(path, "rb") as file:
            while chunk := file.read(1 << 20):
                part.update(chunk)
        digest.update(part.digest())
    if max_images is not None:
        digest.update(f"first {max_images} images".encode())
    return digest.hexdigest()


def read_result(evaluation_dir: Path) -> dict:
    """metrics.json of a complete evaluate output folder, checked to hold what a challenge
    compares: the gated mIoU, the labels and (from this version on) the data digest."""
    path = Path(evaluation_dir) / METRICS_FILE
    result = files.read_completion_marker(evaluation_dir, METRICS_FILE, "evaluation", "evaluate")
    if not isinstance(result, dict) or not isinstance(result.get("labels"), list):
        raise StageError(f"{path} is not the evaluate stage's metrics")
    miou = result.get(GATE_METRIC)
    if not (isinstance(miou, int | float) and not isinstance(miou, bool) and 0 <= miou <= 1):
        raise StageError(f"{path}: {GATE_METRIC} is {miou!r}, not a number from 0 to 1")
    return result


def published_metrics(evaluation_dir: Path, model_dir: Path) -> dict:
    """The metrics of an evaluate output folder that export.json and the upload manifest carry,
    after checking that they score this model folder's weights (by their sha256)."""
    path = Path(evaluation_dir) / METRICS_FILE
    result = files.read_completion_marker(evaluation_dir, METRICS_FILE, "evaluation", "evaluate")
    evaluation = result.get("evaluation") if isinstance(result, dict) else None
    if not isinstance(evaluation, dict) or any(key not in result for key in PUBLISHED_KEYS):
        raise StageError(f"{path} is not the evaluate stage's metrics")
    if evaluation.get("model_weights_sha256") != model_folder.weights_digest(model_dir):
        raise StageError(
            f"{path} scores other weights than {model_dir}'s: pass the evaluation of the "
            "model you export"
        )
    return {
        **{key: result[key] for key in PUBLISHED_KEYS},
        "convention": CONVENTION,
        "images": result.get("images"),
        "resize": evaluation.get("resize"),
        DATA_DIGEST: result.get(DATA_DIGEST),
        "source": "evaluate stage, validation split",
    }
