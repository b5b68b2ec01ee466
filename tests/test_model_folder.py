"""The model folder: written in place with config.json last, refused when incomplete or bad."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from image_segmentation.contracts import model_folder
from image_segmentation.errors import StageError

CONFIG = {
    "labels": ["none", "wall", "floor, flooring"],
    "num_classes": 3,
    "image_size": [64, 96],
    "alpha": 0.25,
    "normalization": {"scale": 1 / 255, "offset": -0.5},
    "training": {"epochs": 2},
}
HISTORY = [{"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": 1.5}]
SCORES = {"val_pixel_accuracy": 0.5, "val_miou": 0.25}


def write_weights(path: Path) -> None:
    path.write_bytes(b"weights")


def write(directory: Path, config: dict = CONFIG, weights=write_weights) -> Path:
    model_folder.write_model_dir(
        directory, write_weights=weights, config=config, history=HISTORY, training_metrics=SCORES
    )
    return directory


def test_a_written_folder_reads_back(tmp_path):
    directory = write(tmp_path / "model")
    assert model_folder.require_complete(directory) == {"format_version": 1, **CONFIG}
    assert model_folder.is_complete(directory)
    assert model_folder.read_history(directory) == HISTORY
    assert json.loads((directory / "training_metrics.json").read_text()) == SCORES
    assert model_folder.weights_path(directory).read_bytes() == b"weights"
    assert sorted(p.name for p in directory.iterdir()) == [
        "config.json",
        "history.json",
        "model.weights.h5",
        "training_metrics.json",
    ]


def test_config_is_written_last_and_a_rewrite_removes_it_first(tmp_path):
    directory = write(tmp_path / "model")
    seen = []

    def weights_watching_the_marker(path: Path) -> None:
        seen.append(model_folder.is_complete(directory))
        write_weights(path)

    write(directory, {**CONFIG, "alpha": 0.5}, weights_watching_the_marker)
    assert seen == [False]  # while the weights were written, the folder read as incomplete
    assert model_folder.require_complete(directory)["alpha"] == 0.5


def test_a_failed_write_leaves_an_incomplete_folder(tmp_path):
    def failing(path: Path) -> None:
        path.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write(tmp_path / "model", weights=failing)
    with pytest.raises(StageError, match=r"has no config\.json: the train stage did not finish"):
        model_folder.require_complete(tmp_path / "model")


def test_a_bad_config_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(StageError, match="lacks alpha"):
        write(tmp_path / "model", {k: v for k, v in CONFIG.items() if k != "alpha"})
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format_version": 2}, "unsupported format_version 2 (this code reads 1)"),
        ({"labels": ["none", "wall"]}, "num_classes is 3 but labels lists 2 names"),
        ({"labels": "none"}, "num_classes is 3 but labels lists no list of names"),
        ({"image_size": [64]}, "image_size needs [height, width], got [64]"),
        ({"alpha": "wide"}, "alpha needs a number > 0, got 'wide'"),
        ({"normalization": {"scale": 0.1}}, "normalization needs numbers 'scale' and 'offset'"),
    ],
)
def test_a_bad_config_json_is_a_one_line_error(tmp_path, change, message):
    directory = write(tmp_path / "model")
    (directory / "config.json").write_text(json.dumps({"format_version": 1, **CONFIG, **change}))
    with pytest.raises(StageError, match=re.escape(message)) as error:
        model_folder.require_complete(directory)
    assert "\n" not in str(error.value)
    assert not model_folder.is_complete(directory)


def test_missing_or_broken_parts_are_refused(tmp_path):
    with pytest.raises(StageError, match=r"model dir \S+ does not exist"):
        model_folder.require_complete(tmp_path / "nowhere")
    directory = write(tmp_path / "model")
    (directory / "config.json").write_text("{not json")
    with pytest.raises(StageError, match=r"config\.json is not valid JSON: Expecting"):
        model_folder.require_complete(directory)
    without_size = {k: v for k, v in CONFIG.items() if k not in ("image_size", "alpha")}
    (directory / "config.json").write_text(json.dumps({"format_version": 1, **without_size}))
    with pytest.raises(StageError, match=r"config\.json lacks image_size, alpha"):
        model_folder.require_complete(directory)
    (directory / "config.json").write_text("[1, 2]")
    with pytest.raises(StageError, match="does not hold a JSON object"):
        model_folder.require_complete(directory)
    write(directory)
    model_folder.weights_path(directory).write_bytes(b"")
    with pytest.raises(StageError, match=r"model\.weights\.h5 is empty"):
        model_folder.require_complete(directory)
    model_folder.weights_path(directory).unlink()
    with pytest.raises(StageError, match=r"has no model\.weights\.h5"):
        model_folder.require_complete(directory)


def test_history_is_optional_but_must_be_json(tmp_path):
    directory = write(tmp_path / "model")
    (directory / "history.json").write_text(json.dumps([*HISTORY, "junk"]))
    assert model_folder.read_history(directory) == HISTORY
    (directory / "history.json").write_text(json.dumps({"loss": 1}))
    with pytest.raises(StageError, match="expected a list of per-epoch entries"):
        model_folder.read_history(directory)
    (directory / "history.json").write_text("nan nan")
    with pytest.raises(StageError, match="is not valid JSON"):
        model_folder.read_history(directory)
    (directory / "history.json").unlink()
    assert model_folder.read_history(directory) == []


def test_reading_a_model_folder_needs_no_tensorflow():
    code = (
        "import sys; from image_segmentation.contracts import model_folder, export_folder; "
        "from image_segmentation.cloud import upload; "
        "print(sorted({'tensorflow', 'keras', 'coremltools'} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
