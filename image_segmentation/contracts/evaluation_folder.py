"""The evaluate stage's output folder: metrics.json (its completion marker, written last) and
report.html; what of it export.json and the upload manifest carry, checked to score the
weights they publish. No TensorFlow here.

The quality gate is `miou`, the mean IoU in the ADE20K benchmark's convention: "none" (every
class not on the whitelist) is a class like the others, and only the pixels ADE20K leaves
unlabelled are not scored.
"""

from pathlib import Path

from image_segmentation import files
from image_segmentation.contracts import model_folder
from image_segmentation.errors import StageError

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.html"
GATE_METRIC = "miou"
CONVENTION = "every labelled pixel scored, 'none' a class; unlabelled pixels not scored"
PUBLISHED_KEYS = ("miou", "pixel_accuracy", "class_iou", "classes_scored", "pixels_scored")


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
        "source": "evaluate stage, validation split",
    }
