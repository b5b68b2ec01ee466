"""The model folder: what the train stage writes and the evaluate, export and upload stages read.

It holds the weights, the training history, the final validation scores of training and
`config.json` (labels, input size, alpha, normalization, how it was trained). On Vertex AI the
folder is a Cloud Storage FUSE mount, where folders cannot be renamed, so it is written in
place and `config.json` is written last: a folder without it is incomplete, and every reader
refuses it with a one-line StageError. No TensorFlow here, so light stages can read a folder.
"""

import hashlib
from collections.abc import Callable
from pathlib import Path

from image_segmentation import files
from image_segmentation.data.photo_input import DEFAULT_RESIZE, RESIZE_MODES
from image_segmentation.errors import StageError

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"  # written last: the folder's completion marker
WEIGHTS_FILE = "model.weights.h5"  # Keras insists on the .weights.h5 ending
HISTORY_FILE = "history.json"
TRAINING_METRICS_FILE = "training_metrics.json"  # not the evaluate stage's metrics.json
REQUIRED_KEYS = ("labels", "num_classes", "image_size", "alpha", "normalization")


def weights_path(model_dir: Path) -> Path:
    return Path(model_dir) / WEIGHTS_FILE


def weights_digest(model_dir: Path) -> str:
    """sha256 of the weights: what ties the evaluate stage's metrics to the model exported."""
    digest = hashlib.sha256()
    with open(weights_path(model_dir), "rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def check_config(config: object, source: str) -> None:
    """Refuse a config that the model cannot be rebuilt from; `source` names it in the error."""
    files.check_format(config, source, FORMAT_VERSION)
    missing = [key for key in REQUIRED_KEYS if key not in config]
    if missing:
        raise StageError(f"{source} lacks {', '.join(missing)}")
    names = config["labels"]
    if not isinstance(names, list) or len(names) != config["num_classes"]:
        raise StageError(
            f"{source}: num_classes is {config['num_classes']} but labels lists "
            f"{len(names) if isinstance(names, list) else 'no list of'} names"
        )
    size = config["image_size"]
    if not (
        isinstance(size, list | tuple) and len(size) == 2 and all(_positive_int(s) for s in size)
    ):
        raise StageError(f"{source}: image_size needs [height, width], got {size!r}")
    if not (_number(config["alpha"]) and config["alpha"] > 0):
        raise StageError(f"{source}: alpha needs a number > 0, got {config['alpha']!r}")
    normalization = config["normalization"]
    if not isinstance(normalization, dict) or not all(
        _number(normalization.get(key)) for key in ("scale", "offset")
    ):
        raise StageError(f"{source}: normalization needs numbers 'scale' and 'offset'")
    preprocessing = config.get("preprocessing", {})
    if not isinstance(preprocessing, dict) or resize_mode(config) not in RESIZE_MODES:
        raise StageError(
            f"{source}: preprocessing.resize needs one of {', '.join(RESIZE_MODES)}, "
            f"got {preprocessing!r}"
        )


def resize_mode(config: dict) -> str:
    """How photos are fed to the model. Folders written before the setting was recorded were
    evaluated and exported stretched."""
    return config.get("preprocessing", {}).get("resize", DEFAULT_RESIZE)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def require_complete(model_dir: Path) -> dict:
    """The checked config of a complete model folder: config.json valid, weights present."""
    config_path = Path(model_dir) / CONFIG_FILE
    config = files.read_completion_marker(model_dir, CONFIG_FILE, "model dir", "train")
    check_config(config, str(config_path))
    weights = weights_path(model_dir)
    if not weights.is_file():
        raise StageError(f"{model_dir} has no {WEIGHTS_FILE}: training did not finish")
    if not weights.stat().st_size:
        raise StageError(f"{weights} is empty: training did not finish")
    return config


def is_complete(model_dir: Path) -> bool:
    """Whether `require_complete` accepts the folder."""
    try:
        require_complete(model_dir)
    except StageError:
        return False
    return True


def read_history(model_dir: Path) -> list[dict]:
    """The per-epoch entries of the training history; none when the folder has none."""
    path = Path(model_dir) / HISTORY_FILE
    if not path.is_file():
        return []
    history = files.read_json(path)
    if not isinstance(history, list):
        raise StageError(f"{path}: expected a list of per-epoch entries")
    return [entry for entry in history if isinstance(entry, dict)]


def write_model_dir(
    model_dir: Path,
    *,
    write_weights: Callable[[Path], object],
    config: dict,
    history: list[dict],
    training_metrics: dict,
) -> None:
    """Write a complete model folder in place, config.json last.

    `write_weights(path)` saves the weights at `path` (e.g. `model.save_weights`); `config`
    gets format_version added and is checked before anything is written. An earlier run's
    config.json goes first, so a folder being rewritten reads as incomplete.
    """
    config = {"format_version": FORMAT_VERSION, **config}
    check_config(config, f"the config for {model_dir}")
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / CONFIG_FILE).unlink(missing_ok=True)
    write_weights(weights_path(model_dir))
    files.write_json(model_dir / HISTORY_FILE, history)
    files.write_json(model_dir / TRAINING_METRICS_FILE, training_metrics)
    files.write_json(model_dir / CONFIG_FILE, config)
