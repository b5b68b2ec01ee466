"""Does training learn every whitelisted class? Generated living rooms, a few CPU minutes.

Generated rooms (`synthetic.render_room`) are as unbalanced as the real living-room subset:
wall, floor and ceiling cover most pixels, lamp, pillow and coffee table well under 1% each.
The train stage trains on one generated dataset (seed 0) with its defaults (class balancing on)
and the evaluate stage scores the model on another (seed 1) that training never saw, in the
quality gate's convention. Target: every whitelisted class reaches IoU >= 0.5 and the mean IoU
is >= 0.75. The same run without class balancing is the comparison (`--class-balance none`).
"""

import json
import tempfile
import time
from pathlib import Path

from image_segmentation import cli, labels, synthetic

TRAIN_IMAGES, VAL_IMAGES, TEST_IMAGES = 200, 20, 100
TRAIN_ARGS = ["--image-size", "384", "--alpha", "0.25", "--epochs", "60", "--batch-size", "8"]
TARGET_CLASS_IOU, TARGET_MIOU = 0.5, 0.75


def _stage(*argv: str) -> None:
    if cli.main(list(argv)) != 0:
        raise RuntimeError(f"{argv[0]} failed")


def prepare_rooms(root: Path, seed: int, num_train: int, num_val: int) -> Path:
    """Generated rooms in the ADE20K layout, prepared with the living-room whitelist."""
    dataset = synthetic.generate_ade20k(root / "ade", num_train, num_val, seed=seed, rooms=True)
    data = root / "data"
    _stage(
        "prepare", "--dataset-dir", str(dataset), "--output-dir", str(data),
        "--whitelist", labels.LIVING_ROOM_WHITELIST, "--threshold", "0",
        "--train-shards", "4", "--val-shards", "2",
    )  # fmt: skip
    return data


def train_and_score(work: Path, data: Path, unseen: Path, balance: str) -> dict:
    model, evaluation = work / f"model-{balance}", work / f"evaluation-{balance}"
    started = time.monotonic()
    _stage(
        "train", "--data-dir", str(data), "--output-dir", str(model), *TRAIN_ARGS,
        "--class-balance", balance,
    )  # fmt: skip
    seconds = time.monotonic() - started
    _stage(
        "evaluate", "--model-dir", str(model), "--data-dir", str(unseen),
        "--output-dir", str(evaluation), "--report-images", "0",
    )  # fmt: skip
    metrics = json.loads((evaluation / "metrics.json").read_text())
    config = json.loads((model / "config.json").read_text())
    class_iou = metrics["class_iou"]
    whitelisted = [iou for label, iou in class_iou.items() if label != labels.NONE_LABEL]
    return {
        "class_balance": balance,
        "train_seconds": round(seconds),
        "miou": round(metrics["miou"], 4),
        "pixel_accuracy": round(metrics["pixel_accuracy"], 4),
        "class_iou": {label: round(iou, 4) for label, iou in class_iou.items()},
        "class_weights": config["training"]["class_weights"],
        "meets_target": min(whitelisted) >= TARGET_CLASS_IOU and metrics["miou"] >= TARGET_MIOU,
    }


def run(balancing: tuple[str, ...] = ("median-frequency", "none")) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-learning-") as tmp:
        work = Path(tmp)
        data = prepare_rooms(work / "seen", 0, TRAIN_IMAGES, VAL_IMAGES)
        unseen = prepare_rooms(work / "unseen", 1, 0, TEST_IMAGES)
        stats = json.loads((data / "stats.json").read_text())["splits"]["train"]
        total = sum(stats["pixel_counts"].values())
        runs = [train_and_score(work, data, unseen, balance) for balance in balancing]
    return {
        "benchmark": "learning",
        "data": f"generated living rooms: {TRAIN_IMAGES} training images (seed 0), scored on "
        f"{TEST_IMAGES} others (seed 1)",
        "train_args": " ".join(TRAIN_ARGS),
        "target": f"every whitelisted class IoU >= {TARGET_CLASS_IOU}, mean IoU >= {TARGET_MIOU}",
        "pixel_share": {k: round(v / total, 4) for k, v in stats["pixel_counts"].items()},
        "runs": runs,
    }
