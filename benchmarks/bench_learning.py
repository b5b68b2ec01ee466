"""Does training learn every whitelisted class? Generated living rooms, a few CPU minutes.

Generated rooms (`synthetic.render_room`) are as unbalanced as the real living-room subset:
wall, floor and ceiling cover most pixels, lamp, pillow and coffee table well under 1% each.
The train stage trains on one generated dataset (seed 0) with its defaults (class balancing on)
and the evaluate stage scores the model on another (seed 1) that training never saw, in the
quality gate's convention. Target: every whitelisted class reaches IoU >= 0.5 and the mean IoU
is >= 0.75. The same run without class balancing is the comparison (`--class-balance none`).

Those rooms are flat boxes in one colour per class, easy to learn. `--generator rooms` trains and
scores on `generate.generate_rooms` instead: photo-like living rooms among kitchens, offices and
streets, as unbalanced as ADE20K (run as a module: `python -m benchmarks.bench_learning --help`;
`make bench` runs the default recipe on them in `bench_learning_rooms`). `--recipes` compares
training recipes (each a string of more train options, e.g. "--lovasz-weight 1"); `--work-dir`
keeps the generated data there for the next invocation, so recipes can be measured one run at a
time on the same data.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from image_segmentation import cli
from image_segmentation.data import labels, synthetic
from image_segmentation.data.rooms import generate

TRAIN_IMAGES, VAL_IMAGES, TEST_IMAGES = 200, 20, 100
TRAIN_ARGS = ["--image-size", "384", "--alpha", "0.25", "--epochs", "60", "--batch-size", "8"]
GENERATORS = ("shapes", "rooms")  # synthetic.render_room's boxes, or generate.render_photo's photos
TARGET_CLASS_IOU, TARGET_MIOU = 0.5, 0.75


def _stage(*argv: str) -> None:
    if cli.main(list(argv)) != 0:
        raise RuntimeError(f"{argv[0]} failed")


def prepare_rooms(
    root: Path, seed: int, num_train: int, num_val: int, generator: str = "shapes"
) -> Path:
    """Generated rooms in the ADE20K layout, prepared with the living-room whitelist (kept:
    a complete earlier one in `root` is reused)."""
    if (root / "data" / "stats.json").is_file():
        return root / "data"
    if generator == "rooms":
        dataset = generate.generate_rooms(root / "ade", num_train, num_val, seed=seed)
    else:
        dataset = synthetic.generate_ade20k(root / "ade", num_train, num_val, seed=seed, rooms=True)
    data = root / "data"
    _stage(
        "prepare", "--dataset-dir", str(dataset), "--output-dir", str(data),
        "--whitelist", labels.LIVING_ROOM_WHITELIST, "--threshold", "0",
        "--train-shards", "4", "--val-shards", "2",
    )  # fmt: skip
    return data


def train_and_score(
    work: Path,
    data: Path,
    unseen: Path,
    balance: str,
    train_args: list[str] = TRAIN_ARGS,
    recipe: str = "",
) -> dict:
    run_dir = tempfile.mkdtemp(prefix=f"{balance}-", dir=work)
    model, evaluation = Path(run_dir) / "model", Path(run_dir) / "evaluation"
    started = time.monotonic()
    _stage(
        "train", "--data-dir", str(data), "--output-dir", str(model), *train_args,
        "--class-balance", balance, *recipe.split(),
    )  # fmt: skip
    seconds = time.monotonic() - started
    _stage(
        "evaluate", "--model-dir", str(model), "--data-dir", str(unseen),
        "--output-dir", str(evaluation), "--report-images", "0",
    )  # fmt: skip
    metrics = json.loads((evaluation / "metrics.json").read_text())
    config = json.loads((model / "config.json").read_text())
    class_iou = metrics["class_iou"]
    # rows are the true class, columns the predicted one
    confusion = np.array(metrics["confusion_matrix"], dtype=np.float64)
    hits = np.diag(confusion)
    precision = hits / np.maximum(confusion.sum(axis=0), 1)
    recall = hits / np.maximum(confusion.sum(axis=1), 1)
    whitelisted = [iou for label, iou in class_iou.items() if label != labels.NONE_LABEL]
    return {
        "class_balance": balance,
        "recipe": recipe,
        "train_seconds": round(seconds),
        "miou": round(metrics["miou"], 4),
        "pixel_accuracy": round(metrics["pixel_accuracy"], 4),
        "class_iou": {label: round(iou, 4) for label, iou in class_iou.items()},
        "class_precision": dict(zip(metrics["labels"], precision.round(4).tolist(), strict=True)),
        "class_recall": dict(zip(metrics["labels"], recall.round(4).tolist(), strict=True)),
        "class_weights": config["training"]["class_weights"],
        "meets_target": min(whitelisted) >= TARGET_CLASS_IOU and metrics["miou"] >= TARGET_MIOU,
    }


def run(
    balancing: tuple[str, ...] = ("sqrt-frequency", "none"),
    generator: str = "shapes",
    train_args: list[str] = TRAIN_ARGS,
    train_images: int = TRAIN_IMAGES,
    test_images: int = TEST_IMAGES,
    recipes: tuple[str, ...] = ("",),
    work_dir: Path | None = None,
) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-learning-") as tmp:
        work = Path(work_dir or tmp)
        data = prepare_rooms(work / "seen", 0, train_images, VAL_IMAGES, generator)
        unseen = prepare_rooms(work / "unseen", 1, 0, test_images, generator)
        stats = json.loads((data / "stats.json").read_text())["splits"]["train"]
        total = sum(stats["pixel_counts"].values())
        runs = []
        for balance in balancing:
            for recipe in recipes:
                runs.append(train_and_score(work, data, unseen, balance, train_args, recipe))
                print(json.dumps(runs[-1]), file=sys.stderr, flush=True)  # one line per run
    kind = "generated living rooms" if generator == "shapes" else "generated photos (rooms)"
    return {
        "benchmark": "learning",
        "data": f"{kind}: {train_images} training images (seed 0), scored on "
        f"{test_images} others (seed 1)",
        "train_args": " ".join(train_args),
        "target": f"every whitelisted class IoU >= {TARGET_CLASS_IOU}, mean IoU >= {TARGET_MIOU}",
        "pixel_share": {k: round(v / total, 4) for k, v in stats["pixel_counts"].items()},
        "runs": runs,
    }


def main(argv: list[str]) -> int:
    """Run with other data or settings than `make bench`'s; print the figures, write no file."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_learning")
    parser.add_argument("--generator", choices=GENERATORS, default="shapes")
    parser.add_argument("--balancing", nargs="+", default=["sqrt-frequency", "none"])
    parser.add_argument("--train-images", type=int, default=TRAIN_IMAGES)
    parser.add_argument("--test-images", type=int, default=TEST_IMAGES)
    parser.add_argument(
        "--train-args",
        default=" ".join(TRAIN_ARGS),
        help="the train stage's options (default: %(default)s)",
    )
    parser.add_argument(
        "--recipes",
        nargs="+",
        default=[""],
        help="more train options per run, one string each, every one with every --balancing",
    )
    parser.add_argument(
        "--work-dir", type=Path, help="keep the generated data (and runs) here, and reuse it"
    )
    args = parser.parse_args(argv)
    result = run(
        tuple(args.balancing),
        args.generator,
        args.train_args.split(),
        args.train_images,
        args.test_images,
        tuple(args.recipes),
        args.work_dir,
    )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
