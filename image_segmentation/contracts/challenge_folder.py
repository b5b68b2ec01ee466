"""The challenge stage's output folder: `decision.json`, whether this run's model may be
published and become the champion of its model folder, why, and which champion (the
generation of its `champion.json`) the decision was made against; the upload stage reads it to
name that generation in its precondition. No TensorFlow here.
"""

from pathlib import Path

from image_segmentation import files
from image_segmentation.errors import StageError

FORMAT_VERSION = 1
DECISION_FILE = "decision.json"


def write_decision(output_dir: Path, decision: dict) -> dict:
    """Write decision.json (the folder's completion marker); return what was written."""
    decision = {"format_version": FORMAT_VERSION, **decision}
    files.write_json(Path(output_dir) / DECISION_FILE, decision)
    return decision


def read_decision(challenge_dir: Path) -> dict:
    """decision.json of a complete challenge folder, checked to say publish or not, and to name
    the champion generation (0: there was none) the upload must find unchanged."""
    path = Path(challenge_dir) / DECISION_FILE
    decision = files.read_completion_marker(challenge_dir, DECISION_FILE, "challenge", "challenge")
    files.check_format(decision, str(path), FORMAT_VERSION)
    generation = decision.get("champion_generation")
    if not isinstance(decision.get("publish"), bool) or not (
        isinstance(generation, int) and not isinstance(generation, bool) and generation >= 0
    ):
        raise StageError(f"{path} is not the challenge stage's decision")
    return decision
