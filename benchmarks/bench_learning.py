"""Does training learn every whitelisted class, and which training option helps it most?

Two generators, each training on one dataset (seed 0) and scored by the evaluate stage on
another (seed 1) that training never saw, in the quality gate's convention:

- Generated living rooms (`synthetic.render_room`): flat boxes of one colour per class, as
  unbalanced as the real living-room subset, easy to learn. The train stage's defaults (class
  balancing on) against `--class-balance none`, and both seeds at the earlier default rate
  (`SHAPE_RECIPES`), 384x384, 60 epochs. Target: every whitelisted class IoU >= 0.5 and
  precision >= 0.6, mean IoU >= 0.75.
- Photo-like rooms (`generate.generate_rooms`): living rooms and bedrooms among kitchens,
  offices and streets, as unbalanced as ADE20K. The defaults and each training option tried,
  one run each on the same data (`ROOM_RECIPES`), 256x256, 60 epochs: what each option does, per
  class (IoU, precision, recall). `bench_learning_rooms` measures the defaults there at the
  target's size and length.

Every run is also scored on the photos it trained on (`fit_miou`, `fit_class_iou`): a class low
there too is not learnt at all, one high there and low on unseen photos is learnt by heart.

Run as a module (`python -m benchmarks.bench_learning --help`) to measure other recipes or
settings; `--work-dir` keeps the generated data for the next invocation.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from image_segmentation import cli
from image_segmentation.contracts import model_folder
from image_segmentation.data import labels, synthetic
from image_segmentation.data.rooms import generate
from image_segmentation.evaluation import evaluator
from image_segmentation.model.weights import load_inference_model

TRAIN_IMAGES, VAL_IMAGES, TEST_IMAGES = 200, 20, 100
TRAIN_ARGS = ["--image-size", "384", "--alpha", "0.25", "--epochs", "60", "--batch-size", "8"]
SHAPE_RECIPES = (
    ("sqrt-frequency", ""),
    ("none", ""),
    ("sqrt-frequency", "--seed 1"),
    ("sqrt-frequency", "--learning-rate 0.003"),  # the defaults before the rate was raised
    ("sqrt-frequency", "--learning-rate 0.003 --seed 1"),
)
ROOM_TRAIN_ARGS = ["--image-size", "256", "--alpha", "0.25", "--epochs", "60", "--batch-size", "8"]
# (class balancing, more train options): the defaults first, then one change each. The options
# were first measured against the earlier default rate, 0.003, which their rows name.
ROOM_RECIPES = (
    ("sqrt-frequency", ""),
    ("sqrt-frequency", "--seed 1"),  # another initialization and order of batches
    ("sqrt-frequency", "--learning-rate 0.006"),
    ("sqrt-frequency", "--learning-rate 0.02"),
    ("sqrt-frequency", "--batch-size 4"),
    ("sqrt-frequency", "--max-class-weight 2"),  # weights within 0.5..2
    ("sqrt-frequency", "--lovasz-weight 1"),
    ("sqrt-frequency", "--schedule cosine"),
    ("sqrt-frequency", "--optimizer sgd"),  # momentum 0.9, as ICNet was trained
    ("sqrt-frequency", "--learning-rate 0.003"),  # the defaults before the rate was raised
    ("sqrt-frequency", "--learning-rate 0.003 --seed 1"),
    ("median-frequency", "--ohem-threshold 1 --learning-rate 0.001"),  # the first defaults
    ("median-frequency", "--learning-rate 0.003"),
    ("none", "--learning-rate 0.003"),
    ("sqrt-frequency", "--learning-rate 0.003 --max-class-weight 2"),
    ("sqrt-frequency", "--learning-rate 0.003 --ohem-threshold 1"),
    ("sqrt-frequency", "--learning-rate 0.001"),
    ("sqrt-frequency", "--learning-rate 0.003 --batch-size 4"),
    ("sqrt-frequency", "--learning-rate 0.003 --focal-gamma 2"),
    ("sqrt-frequency", "--learning-rate 0.003 --lovasz-weight 1"),
    ("sqrt-frequency", "--learning-rate 0.003 --loss-resolution label"),
    ("sqrt-frequency", "--learning-rate 0.003 --repeat-threshold 0.01"),
)
GENERATORS = ("shapes", "rooms")  # synthetic.render_room's boxes, or generate.render_photo's photos
TARGET_CLASS_IOU, TARGET_PRECISION, TARGET_MIOU = 0.5, 0.6, 0.75


def run_stage(*argv: str) -> None:
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
    run_stage(
        "prepare", "--dataset-dir", str(dataset), "--output-dir", str(data),
        "--whitelist", labels.LIVING_ROOM_WHITELIST, "--threshold", "0",
        "--train-shards", "4", "--val-shards", "2",
    )  # fmt: skip
    return data


def rounded(scores: dict) -> dict:
    """Per-class scores to 4 places; null stays null (a class never predicted, or absent)."""
    return {label: None if value is None else round(value, 4) for label, value in scores.items()}


def fit_scores(model_dir: Path, data: Path) -> dict:
    """The trained model scored on the photos it trained on, as `evaluate` scores unseen ones:
    a class low here too is not learnt (the model underfits it), one high here and low on the
    unseen photos is learnt by heart (it overfits)."""
    model, config = load_inference_model(model_dir)
    return evaluator.score(
        model, config["labels"], tuple(config["image_size"]), config["normalization"],
        model_folder.resize_mode(config), data, "the training photos", split="train",
    )  # fmt: skip


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
    run_stage(
        "train", "--data-dir", str(data), "--output-dir", str(model), *train_args,
        "--class-balance", balance, *recipe.split(),
    )  # fmt: skip
    seconds = time.monotonic() - started
    run_stage(
        "evaluate", "--model-dir", str(model), "--data-dir", str(unseen),
        "--output-dir", str(evaluation), "--report-images", "0",
    )  # fmt: skip
    metrics = json.loads((evaluation / "metrics.json").read_text())
    config = json.loads((model / "config.json").read_text())
    whitelisted = [label for label in metrics["labels"] if label != labels.NONE_LABEL]
    iou, precision, recall = (  # null: a class never predicted has no precision
        rounded(metrics[key]) for key in ("class_iou", "class_precision", "class_recall")
    )
    fit = fit_scores(model, data)
    return {
        "class_balance": balance,
        "recipe": recipe,
        "train_seconds": round(seconds),
        "miou": round(metrics["miou"], 4),
        "pixel_accuracy": round(metrics["pixel_accuracy"], 4),
        "class_iou": iou,
        "class_precision": precision,
        "class_recall": recall,
        "fit_miou": round(fit["miou"], 4),
        "fit_class_iou": rounded(fit["class_iou"]),
        "class_weights": config["training"]["class_weights"],
        "meets_target": metrics["miou"] >= TARGET_MIOU
        and all((iou[label] or 0) >= TARGET_CLASS_IOU for label in whitelisted)
        and all((precision[label] or 0) >= TARGET_PRECISION for label in whitelisted),
    }


def measure(
    generator: str,
    recipes: tuple[tuple[str, str], ...],
    train_args: list[str],
    work: Path,
    train_images: int = TRAIN_IMAGES,
    test_images: int = TEST_IMAGES,
) -> dict:
    """Train each (class balancing, more train options) recipe on `generator`'s data (seed 0,
    made once in `work` and reused) and score it on unseen data (seed 1)."""
    data = prepare_rooms(work / "seen", 0, train_images, VAL_IMAGES, generator)
    unseen = prepare_rooms(work / "unseen", 1, 0, test_images, generator)
    stats = json.loads((data / "stats.json").read_text())["splits"]["train"]
    total = sum(stats["pixel_counts"].values())
    runs = []
    for balance, recipe in recipes:
        runs.append(train_and_score(work, data, unseen, balance, train_args, recipe))
        print(json.dumps(runs[-1]), file=sys.stderr, flush=True)  # one line per run
    kind = "generated living rooms" if generator == "shapes" else "generated photos (rooms)"
    return {
        "data": f"{kind}: {train_images} training images (seed 0), scored on "
        f"{test_images} others (seed 1)",
        "train_args": " ".join(train_args),
        "target": f"every whitelisted class IoU >= {TARGET_CLASS_IOU} and precision >= "
        f"{TARGET_PRECISION}, mean IoU >= {TARGET_MIOU}",
        "pixel_share": {k: round(v / total, 4) for k, v in stats["pixel_counts"].items()},
        "runs": runs,
    }


def run() -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-learning-") as work:
        shapes = measure("shapes", SHAPE_RECIPES, TRAIN_ARGS, Path(work, "shapes"))
        rooms = measure("rooms", ROOM_RECIPES, ROOM_TRAIN_ARGS, Path(work, "rooms"))
    return {"benchmark": "learning", "shapes": shapes, "rooms_recipes": rooms}


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
    recipes = tuple((balance, recipe) for balance in args.balancing for recipe in args.recipes)
    with tempfile.TemporaryDirectory(prefix="bench-learning-") as tmp:
        result = measure(
            args.generator,
            recipes,
            args.train_args.split(),
            args.work_dir or Path(tmp),
            args.train_images,
            args.test_images,
        )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
