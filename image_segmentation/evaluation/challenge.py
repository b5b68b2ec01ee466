"""The challenge stage's work (its command line is stages/challenge.py): may this run's model be
published and become the champion of DESTINATION/MODEL_NAME/?

The rules, in order:
1. `min_miou`, the absolute floor: a model below it is never published.
2. No champion yet: the model becomes the first.
3. Labels that differ from the champion's: no comparison is possible, so the model is
   published only with `replace_champion`.
4. The model must beat the champion's mean IoU by at least `min_improvement`, both measured on
   the same validation data: when the champion's manifest records the digest of the data this
   run scored on, its recorded mIoU is compared; otherwise its published FP32 TFLite model is
   scored here on this run's validation split, by the evaluate stage's own scorer.

TensorFlow is imported only to score a champion, so the decision itself stays light.
"""

import logging
import math
import tempfile
from collections.abc import Callable
from pathlib import Path

from google.api_core.retry import Retry
from google.cloud import storage as gcs

from image_segmentation.cloud import champion as champions
from image_segmentation.cloud import storage
from image_segmentation.contracts.evaluation_folder import DATA_DIGEST, GATE_METRIC
from image_segmentation.errors import StageError

log = logging.getLogger(__name__)


def check_thresholds(min_miou: float, min_improvement: float) -> None:
    """Refuse thresholds no mIoU can be compared with, before anything is read."""
    if not (math.isfinite(min_miou) and 0 <= min_miou <= 1):
        raise StageError(f"--min-miou must be a number from 0 to 1, got {min_miou}")
    if not (math.isfinite(min_improvement) and -1 <= min_improvement <= 1):
        raise StageError(f"--min-improvement must be a number from -1 to 1, got {min_improvement}")


def score_champion(bucket: gcs.Bucket, found: champions.Champion, data_dir: Path) -> float:
    """The champion's mIoU on this run's validation split, through its published FP32 TFLite
    model and the evaluate stage's scorer (same convention, same resize contract)."""
    from image_segmentation.evaluation import evaluator

    with tempfile.TemporaryDirectory(prefix="champion-") as scratch:
        path, record = champions.download_tflite(bucket, found, Path(scratch))
        miou = evaluator.score_tflite(path, record, data_dir)[GATE_METRIC]
    if miou is None:
        raise StageError("no validation pixel has a label: the champion cannot be scored")
    return miou


def decide(
    result: dict,
    found: champions.Champion | None,
    *,
    min_miou: float,
    min_improvement: float,
    replace_champion: bool,
    score: Callable[[], float],
) -> dict:
    """The decision for the evaluate stage's `result` against the champion `found` (None:
    none yet); `score()` gives the champion's mIoU on this run's data when it must be measured.
    Returns {publish, rule, reason, miou, champion_*, improvement, compared_by}."""
    miou = result[GATE_METRIC]
    decision = {
        "publish": False,
        "miou": miou,
        "labels": result["labels"],
        DATA_DIGEST: result.get(DATA_DIGEST),
        "min_miou": min_miou,
        "min_improvement": min_improvement,
        "replace_champion": replace_champion,
        "champion_generation": found.generation if found else 0,
        "champion_version": found.pointer["version"] if found else None,
        "champion_miou": None,
        "compared_by": None,
        "improvement": None,
    }

    def done(publish: bool, rule: str, reason: str) -> dict:
        return {**decision, "publish": publish, "rule": rule, "reason": reason}

    if miou < min_miou:
        short = f"mIoU {miou:.4f} is below min_miou {min_miou:.4f} by {min_miou - miou:.4f}"
        return done(False, "min_miou", f"min_miou: {short}; not published")
    if found is None:
        first = f"mIoU {miou:.4f} reaches min_miou {min_miou:.4f} and there is no champion yet"
        return done(True, "first champion", f"{first}: published as the first")
    version = found.pointer["version"]
    theirs = found.manifest.get("labels")
    if theirs != result["labels"]:
        differ = f"labels differ from champion {version}'s ({_label_difference(result, theirs)})"
        if replace_champion:
            reason = f"{differ}: no comparison is possible; published as replace_champion asks"
            return done(True, "replace_champion", reason)
        reason = (
            f"{differ}, so no comparison is possible; not published (set "
            "replace_champion=true to publish it and make it the champion)"
        )
        return done(False, "labels differ", reason)
    metrics = found.manifest.get("metrics") or {}
    recorded = metrics.get(GATE_METRIC)
    digest = result.get(DATA_DIGEST)
    if digest is not None and digest == metrics.get(DATA_DIGEST) and _number(recorded):
        theirs_miou, compared_by = float(recorded), "recorded mIoU, same validation data"
    else:
        log.info("champion %s was measured on other validation data: scoring it here", version)
        theirs_miou, compared_by = score(), "champion's FP32 TFLite scored on this run's data"
    improvement = miou - theirs_miou
    decision |= {
        "champion_miou": theirs_miou,
        "compared_by": compared_by,
        "improvement": improvement,
    }
    versus = (
        f"mIoU {miou:.4f} vs champion {version}'s {theirs_miou:.4f} ({compared_by}): "
        f"{improvement:+.4f}"
    )
    if improvement >= min_improvement:
        reason = f"{versus}, at least min_improvement {min_improvement:.4f}: the new champion"
        return done(True, "min_improvement", reason)
    reason = (
        f"min_improvement: {versus}, short of min_improvement {min_improvement:.4f} by "
        f"{min_improvement - improvement:.4f}; not published"
    )
    return done(False, "min_improvement", reason)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _label_difference(result: dict, theirs: object) -> str:
    ours = result["labels"]
    if not isinstance(theirs, list):
        return "the champion records no labels"
    if len(ours) != len(theirs):
        return f"{len(ours)} classes, not {len(theirs)}"
    index = next(i for i in range(len(ours)) if ours[i] != theirs[i])
    return f"class {index} is {ours[index]!r}, not {theirs[index]!r}"


def challenge(
    result: dict,
    data_dir: Path,
    destination: str,
    model_name: str,
    *,
    min_miou: float,
    min_improvement: float,
    replace_champion: bool = False,
    client: gcs.Client | None = None,
    retry: Retry = storage.RETRY,
) -> dict:
    """Read the champion of DESTINATION/MODEL_NAME/ (not when min_miou already stops the run)
    and decide; the decision names the model folder and the champion generation read."""
    check_thresholds(min_miou, min_improvement)
    bucket_name, prefix = champions.model_prefix(destination, model_name)
    found, bucket = None, None
    if result[GATE_METRIC] >= min_miou:
        bucket = (client or storage.gcs_client()).bucket(bucket_name)
        found = champions.read_champion(bucket, prefix, retry)
    decision = decide(
        result,
        found,
        min_miou=min_miou,
        min_improvement=min_improvement,
        replace_champion=replace_champion,
        score=lambda: score_champion(bucket, found, data_dir),
    )
    return {"model_folder": f"gs://{bucket_name}/{prefix}", **decision}
