"""The train stage on generated data: it learns, survives a kill, refuses bad input early."""

import argparse
import contextlib
import io
import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_dataset import write_prepared

from image_segmentation import cli
from image_segmentation.contracts import data_folder, model_folder
from image_segmentation.data import dataset
from image_segmentation.errors import StageError
from image_segmentation.evaluation import metrics, scoring
from image_segmentation.model import icnet
from image_segmentation.model import weights as inference
from image_segmentation.stages import train
from image_segmentation.training import callbacks, checkpoints, losses, trainer
from image_segmentation.training import settings as train_settings

EPOCHS, STEPS = 2, 25
SETTINGS = train.TrainSettings(image_size=(64, 64), alpha=0.25, batch_size=8, optimizer="adam")


def train_args(data: Path, output: Path) -> list[str]:
    return [
        "train", "--data-dir", str(data), "--output-dir", str(output), "--image-size", "64",
        "--alpha", "0.25", "--epochs", str(EPOCHS), "--steps-per-epoch", str(STEPS),
        "--batch-size", "8", "--learning-rate", "0.002", "--seed", "1",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> SimpleNamespace:
    """A real run killed (SIGKILL, like a preempted VM) once epoch 1 is checkpointed, then the
    same command again, which must resume and finish."""
    root = tmp_path_factory.mktemp("train")
    data = write_prepared(root / "data", num_train=64, num_val=16)
    output = root / "model"
    args = train_args(data, output)
    first_checkpoint = output / checkpoints.DIRECTORY / "epoch-0001.npz"
    with open(root / "killed.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "image_segmentation", *args], stdout=log, stderr=log
        )
        while process.poll() is None and not first_checkpoint.exists():
            time.sleep(0.05)
        process.kill()
        process.wait()
    assert process.returncode == -9, (root / "killed.log").read_text()[-3000:]
    assert not (output / checkpoints.DIRECTORY / "epoch-0002.npz").exists()
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert cli.main(args) == 0
    return SimpleNamespace(
        data=data, output=output, first=first_checkpoint, stdout=stdout.getvalue()
    )


def saved(path: Path, group: str) -> dict[str, np.ndarray]:
    """A checkpoint's arrays of one group ("model" or "optimizer"), by variable path."""
    with np.load(path) as data:
        return {
            name.removeprefix(f"{group}/"): data[name]
            for name in data.files
            if name.startswith(f"{group}/")
        }


def values(variables) -> dict[str, np.ndarray]:
    return {variable.path: variable.numpy() for variable in variables}


def same(first: dict[str, np.ndarray], second: dict[str, np.ndarray]) -> bool:
    return first.keys() == second.keys() and all(
        np.array_equal(first[name], second[name]) for name in first
    )


@pytest.mark.slow
def test_killed_run_resumes_at_the_next_epoch(run):
    assert "Epoch 1/2" not in run.stdout and "Epoch 2/2" in run.stdout
    history = json.loads((run.output / model_folder.HISTORY_FILE).read_text())
    assert [entry["epoch"] for entry in history] == [1, 2]
    assert history[0] == checkpoints.read_state(run.first)["history"][0]  # the killed run's
    found = checkpoints.list_checkpoints(run.output / checkpoints.DIRECTORY)
    assert [path.name for path in found] == ["epoch-0001.npz", "epoch-0002.npz"]
    assert not list((run.output / checkpoints.DIRECTORY).glob(".*partial"))
    # Optimizer state came back too: its step counter went on from epoch 1's steps.
    assert saved(run.first, "optimizer")["adam/iteration"] == STEPS
    assert saved(found[-1], "optimizer")["adam/iteration"] == EPOCHS * STEPS


@pytest.mark.slow
def test_a_rerun_of_a_finished_run_trains_nothing(run, tmp_path):
    output = tmp_path / "model"
    shutil.copytree(run.output, output)
    history = (output / model_folder.HISTORY_FILE).read_text()
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert cli.main(train_args(run.data, output)) == 0
    assert "Epoch" not in stdout.getvalue()
    assert (output / model_folder.HISTORY_FILE).read_text() == history
    found = checkpoints.list_checkpoints(output / checkpoints.DIRECTORY)
    assert [path.name for path in found] == ["epoch-0001.npz", "epoch-0002.npz"]
    assert model_folder.is_complete(output)


def test_best_epoch_is_the_first_with_the_highest_validation_mean_iou():
    history = [{"epoch": 1, "val_miou": 0.2}, {"epoch": 2, "val_miou": 0.4},
               {"epoch": 3, "val_miou": 0.4}, {"epoch": 4, "loss": 1.0}]  # fmt: skip
    assert checkpoints.best_epoch(history) == 2
    assert checkpoints.best_epoch([{"epoch": 1}, {"epoch": 2}]) == 2  # nothing scored: the last


@pytest.mark.slow
def test_the_best_epoch_is_published_not_the_last(run, tmp_path):
    """The finished run, its history changed to make epoch 1 the better one, run again: it
    trains nothing, publishes epoch 1's weights and says so; history.json keeps both epochs."""
    output = tmp_path / "model"
    shutil.copytree(run.output, output)
    last = output / checkpoints.DIRECTORY / "epoch-0002.npz"
    with np.load(last) as data:
        arrays = {name: data[name] for name in data.files}
    state = json.loads(str(arrays[checkpoints.STATE]))
    state["history"][0]["val_miou"] = state["history"][1]["val_miou"] + 0.1
    arrays[checkpoints.STATE] = np.array(json.dumps(state))
    with open(last, "wb") as file:
        np.savez(file, **arrays)
    assert cli.main(train_args(run.data, output)) == 0
    model, config = inference.load_model(output)
    assert same(values(model.weights), saved(run.first, "model"))  # epoch 1's
    assert not same(values(model.weights), saved(last, "model"))
    assert config["training"]["best_epoch"] == 1
    scores = json.loads((output / model_folder.TRAINING_METRICS_FILE).read_text())
    assert scores["best_epoch"] == 1 and scores["epochs"] == 2
    history = json.loads((output / model_folder.HISTORY_FILE).read_text())
    assert [entry["epoch"] for entry in history] == [1, 2]


@pytest.mark.slow
def test_checkpoint_restores_weights_and_optimizer_state(run):
    model = trainer.build_model([1.0] * 4, SETTINGS, EPOCHS * STEPS, mixed_precision=False)
    fresh = values(model.weights)
    state = checkpoints.restore(run.first, model)
    assert state["epoch"] == 1
    assert same(values(model.weights), saved(run.first, "model"))
    assert not same(fresh, saved(run.first, "model"))
    assert same(values(model.optimizer.variables), saved(run.first, "optimizer"))
    assert int(model.optimizer.iterations.numpy()) == STEPS


@pytest.mark.slow
def test_short_cpu_run_learns_and_writes_the_model_dir(run):
    scores = json.loads((run.output / model_folder.TRAINING_METRICS_FILE).read_text())
    # 4 classes: always answering one class scores a mean IoU <= 0.25, guessing ~0.14.
    assert scores["val_miou"] >= 0.6, scores
    assert scores["val_pixel_accuracy"] >= 0.8, scores
    assert set(scores["val_class_iou"]) == {"none", "wall", "floor, flooring", "bed"}
    assert set(scores["val_class_precision"]) == set(scores["val_class_recall"]) == {
        "none", "wall", "floor, flooring", "bed"
    }  # fmt: skip
    config = json.loads((run.output / model_folder.CONFIG_FILE).read_text())
    assert config["format_version"] == 1
    assert config["labels"] == ["none", "wall", "floor, flooring", "bed"]
    assert config["num_classes"] == 4 and config["image_size"] == [64, 64]
    assert config["alpha"] == 0.25
    assert config["normalization"] == {"scale": 1 / 255, "offset": -0.5}
    assert config["preprocessing"] == {"resize": "stretch"}
    # median-frequency class weights from the pixels prepare counted, recorded
    weights = config["training"]["class_weights"]
    stats = json.loads((run.data / data_folder.STATS_FILE).read_text())
    counts = stats["splits"]["train"]["pixel_counts"]
    assert list(weights) == config["labels"]
    assert min(counts, key=counts.get) == max(weights, key=weights.get)
    assert config["training"]["epochs"] == EPOCHS and config["training"]["optimizer"] == "adam"
    # the weights published are the best epoch's, recorded
    history = json.loads((run.output / model_folder.HISTORY_FILE).read_text())
    best = checkpoints.best_epoch(history)
    assert config["training"]["best_epoch"] == scores["best_epoch"] == best
    model, _ = inference.load_model(run.output)
    best_checkpoint = run.output / checkpoints.DIRECTORY / f"epoch-{best:04d}.npz"
    assert same(values(model.weights), saved(best_checkpoint, "model"))
    assert config["training"]["init"] == "random" and config["training"]["init_report"] is None
    # One machine without GPUs: one replica, so the batch and learning rate are the given ones.
    assert config["training"]["replicas"] == 1 and config["training"]["global_batch_size"] == 8
    assert config["training"]["effective_learning_rate"] == 0.002
    history = json.loads((run.output / model_folder.HISTORY_FILE).read_text())
    assert history[best - 1]["val_miou"] == pytest.approx(scores["val_miou"], abs=1e-6)
    assert history[-1]["learning_rate"] < history[0]["learning_rate"]  # poly decay
    events = list((run.output / "logs").glob("events.out.tfevents.*"))
    logged = {
        (event.step, value.tag)
        for path in events
        for event in tf.compat.v1.train.summary_iterator(str(path))
        for value in event.summary.value
    }
    assert {(2, "val_miou"), (2, "loss"), (1, "learning_rate")} <= logged


@pytest.mark.slow
def test_load_model_gives_the_trained_model(run):
    model, config = inference.load_model(run.output)
    history = json.loads((run.output / model_folder.HISTORY_FILE).read_text())
    best = run.output / checkpoints.DIRECTORY / f"epoch-{checkpoints.best_epoch(history):04d}.npz"
    assert same(values(model.weights), saved(best, "model"))
    assert config["labels"][0] == "none"
    val = dataset.make_dataset(
        data_folder.list_shards(run.data, "val"), (64, 64), 8, training=False
    )
    predict = scoring.predictor(icnet.inference_model(model))
    confusion = scoring.confusion_matrix(predict, val, 4)
    assert confusion.sum() == 16 * 64 * 64  # every pixel of the whole split, once
    scores = json.loads((run.output / model_folder.TRAINING_METRICS_FILE).read_text())
    recomputed = callbacks.validation_metrics(confusion, config["labels"])
    assert recomputed["miou"] == pytest.approx(scores["val_miou"], abs=1e-6)


def tiny_model(num_classes: int = 4, width: int = 4, name: str = "features") -> keras.Model:
    """A small real Keras model with ICNet's input and main output (S/4 logits), for fast tests
    of the metric and checkpoint code, which do not depend on ICNet's insides."""
    image = keras.Input((64, 64, 3), name="image")
    x = keras.layers.AveragePooling2D(4)(image)
    x = keras.layers.Conv2D(width, 1, activation="relu", name=name)(x)
    return keras.Model(
        image, {"conv6_cls": keras.layers.Conv2D(num_classes, 1, name="conv6_cls")(x)}
    )


def numpy_confusion(model, images, masks) -> np.ndarray:
    """The same confusion matrix, computed plainly: softmax, upsample, argmax, count."""
    probabilities = keras.ops.softmax(model(images, training=False)["conv6_cls"])
    predicted = np.argmax(tf.image.resize(probabilities, masks.shape[1:3]).numpy(), axis=-1)
    valid = masks < 4
    pairs = masks[valid].astype(int) * 4 + predicted[valid]
    return np.bincount(pairs, minlength=16).reshape(4, 4)


def test_confusion_matrix_equals_numpy():
    keras.utils.set_random_seed(3)
    model = tiny_model()
    rng = np.random.default_rng(0)
    images = rng.uniform(-0.5, 0.5, size=(6, 64, 64, 3)).astype(np.float32)
    masks = rng.integers(0, 4, size=(6, 64, 64)).astype(np.uint8)
    masks[:, :5] = dataset.IGNORE  # padding rows
    data = tf.data.Dataset.from_tensor_slices((images, masks)).batch(4)  # batches of 4 and 2
    predict = scoring.predictor(icnet.inference_model(model))
    confusion = scoring.confusion_matrix(predict, data, 4)
    expected = numpy_confusion(model, images[:4], masks[:4])
    expected += numpy_confusion(model, images[4:], masks[4:])
    assert np.array_equal(confusion, expected)
    assert confusion.sum() == np.sum(masks != dataset.IGNORE)
    assert np.count_nonzero(confusion.sum(axis=0)) > 1  # several classes predicted: a real test


def test_validation_metrics_are_the_gates_convention():
    confusion = np.array([[50, 10, 0], [5, 30, 5], [0, 0, 0]])  # class 2 predicted, never true
    class_labels = ["none", "wall", "bed"]
    scores = callbacks.validation_metrics(confusion, class_labels)
    assert scores["pixel_accuracy"] == pytest.approx(80 / 100)
    assert scores["miou"] == pytest.approx((50 / 65 + 30 / 50 + 0) / 3)
    assert scores["class_iou"] == pytest.approx({"none": 50 / 65, "wall": 30 / 50, "bed": 0.0})
    assert scores["miou"] == metrics.summary(confusion, class_labels)["miou"]


def compiled(model: keras.Model) -> keras.Model:
    model.compile(
        optimizer="adam",
        loss={"conv6_cls": keras.losses.SparseCategoricalCrossentropy(from_logits=True)},
    )
    model.optimizer.build(model.trainable_variables)
    return model


def test_checkpoints_are_atomic_pruned_and_restore_everything_by_name(tmp_path):
    keras.utils.set_random_seed(4)
    model = compiled(tiny_model())
    images = np.random.default_rng(0).uniform(size=(4, 64, 64, 3)).astype(np.float32)
    labels = {"conv6_cls": np.ones((4, 16, 16), dtype=np.int32)}
    history = []
    # what a write SIGKILLed halfway leaves: the next save removes it
    (tmp_path / ".epoch-0001.npz.0badf00d.partial").write_bytes(b"\0" * 1000)
    for epoch, score in zip((1, 2, 3, 4), (0.3, 0.5, 0.4, 0.45), strict=True):
        model.fit(images, labels, epochs=1, verbose=0)
        history.append({"epoch": epoch, "val_miou": score})
        checkpoints.save(tmp_path, model, epoch, history, {"run": "key"})
    # the last two, and the best epoch's (its weights are the ones published)
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "epoch-0002.npz",
        "epoch-0003.npz",
        "epoch-0004.npz",
    ]
    assert checkpoints.best_epoch(history) == 2
    weights, optimizer = values(model.weights), values(model.optimizer.variables)
    model.fit(images, labels, epochs=1, verbose=0)  # move on past the checkpoint
    state = checkpoints.restore(tmp_path / "epoch-0004.npz", model)
    assert state == {"epoch": 4, "history": history, "run": {"run": "key"}}
    assert same(values(model.weights), weights)
    assert same(values(model.optimizer.variables), optimizer)
    assert int(model.optimizer.iterations.numpy()) == 4
    # Written before the validation score took the quality gate's name: read under the new one.
    (tmp_path / "old").mkdir()
    checkpoints.save(tmp_path / "old", model, 1, [{"epoch": 1, "val_mean_iou": 0.3}], {})
    old = checkpoints.read_state(tmp_path / "old" / "epoch-0001.npz")
    assert old["history"] == [{"epoch": 1, "val_miou": 0.3}]
    # Same shapes in the same order, other names: refused, never loaded by position.
    renamed = compiled(tiny_model(name="renamed"))
    with pytest.raises(StageError, match="does not fit this model: missing model/renamed/kernel"):
        checkpoints.restore(tmp_path / "epoch-0004.npz", renamed)
    wider = compiled(tiny_model(width=8))
    with pytest.raises(StageError, match="of another shape model/features/kernel"):
        checkpoints.restore(tmp_path / "epoch-0004.npz", wider)


@pytest.mark.slow
def test_fine_tune_from_a_model_dir_local_or_in_gcs(run, gcs_client):
    history = json.loads((run.output / model_folder.HISTORY_FILE).read_text())
    best = run.output / checkpoints.DIRECTORY / f"epoch-{checkpoints.best_epoch(history):04d}.npz"
    expected = saved(best, "model")  # the weights the model folder publishes
    bucket = gcs_client.create_bucket("models")
    for name in (model_folder.CONFIG_FILE, model_folder.WEIGHTS_FILE):
        bucket.blob(f"runs/1/{name}").upload_from_filename(run.output / name)
    model = trainer.build_model([1.0] * 4, SETTINGS, 10, mixed_precision=False)
    fresh = [v.numpy() for v in model.weights]
    for source in (
        str(run.output),
        str(run.output / model_folder.WEIGHTS_FILE),
        "gs://models/runs/1",
        "gs://models/runs/1/model.weights.h5",
    ):
        for variable, value in zip(model.weights, fresh, strict=True):
            variable.assign(value)
        trainer.load_fine_tune_weights(model, source, SETTINGS)
        assert same(values(model.weights), expected), source
        assert int(model.optimizer.iterations.numpy()) == 0  # its own schedule starts afresh
    wider = train.TrainSettings(image_size=(64, 64), alpha=0.5)
    with pytest.raises(StageError, match=r"alpha 0\.25, this run 0\.5"):
        trainer.load_fine_tune_weights(model, "gs://models/runs/1", wider)
    with pytest.raises(StageError, match="does not exist"):
        trainer.load_fine_tune_weights(model, "gs://models/nothing", SETTINGS)


WARM_EPOCHS, WARM_RATE = 3, 0.002


def warm_start_args(data: Path, output: Path) -> list[str]:
    return [
        "train", "--data-dir", str(data), "--output-dir", str(output), "--image-size", "64",
        "--warm-start-size", "32", "--warm-start-epochs", str(WARM_EPOCHS), "--epochs", "1",
        "--steps-per-epoch", "2", "--batch-size", "4", "--learning-rate", str(WARM_RATE),
        "--schedule", "constant", "--seed", "3",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def warm_run(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("warm")
    data = write_prepared(root / "data", num_train=16, num_val=4)
    output = root / "model"
    assert cli.main(warm_start_args(data, output)) == 0
    return SimpleNamespace(data=data, output=output)


def trainable(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The weights the optimizer moves (not batch normalization's moving statistics)."""
    return {name: value for name, value in arrays.items() if "moving_" not in name}


def assert_trained_from(started: dict[str, np.ndarray], checkpoint: Path) -> None:
    """The run's 2 Adam steps at WARM_RATE moved each weight by at most 2 rates from these."""
    trained = trainable(saved(checkpoint, "model"))
    assert started.keys() == trained.keys()
    moved = max(np.abs(trained[name] - started[name]).max() for name in started)
    assert 0 < moved <= 2 * WARM_RATE * 1.01


@pytest.mark.slow
def test_a_warm_start_hands_its_last_weights_to_the_run(warm_run):
    """Adam moves a weight by at most the rate a step, so after the run's own 2 steps every
    weight is within 2 rates of where it started: the warm start's last weights. A start from
    fresh weights would be further off: the warm start's 6 steps moved them further."""
    directory = warm_run.output / checkpoints.DIRECTORY
    warm = checkpoints.list_checkpoints(directory / trainer.WARM_START)
    assert [path.name for path in warm][-1] == f"epoch-{WARM_EPOCHS:04d}.npz"
    state = checkpoints.read_state(warm[-1])
    assert [entry["epoch"] for entry in state["history"]] == [1, 2, 3]
    assert state["run"]["image_size"] == [32, 32] and "warm_start_size" not in state["run"]
    (own,) = checkpoints.list_checkpoints(directory)
    assert saved(own, "optimizer")["adam/iteration"] == 2  # its own optimizer, not the warm one's
    started = trainable(saved(warm[-1], "model"))
    assert_trained_from(started, own)
    keras.utils.set_random_seed(3)  # the fresh weights both stages were built with
    settings = train.TrainSettings(image_size=(32, 32), alpha=0.25)
    fresh = trainable(values(trainer.build_model([1.0] * 4, settings, 10, False).weights))
    assert max(np.abs(started[name] - fresh[name]).max() for name in started) > 3 * WARM_RATE
    config = json.loads((warm_run.output / model_folder.CONFIG_FILE).read_text())
    assert config["image_size"] == [64, 64]
    assert (config["training"]["warm_start_size"], config["training"]["warm_start_epochs"]) == (
        [32, 32], WARM_EPOCHS
    )  # fmt: skip
    history = json.loads((warm_run.output / model_folder.HISTORY_FILE).read_text())
    assert [entry["epoch"] for entry in history] == [1]  # the run's own epochs
    assert list((warm_run.output / "logs" / trainer.WARM_START).glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_a_warm_start_resumes_where_it_stopped(warm_run, tmp_path):
    """A copy of the finished run as a kill during the warm start's last epoch leaves it: the
    rerun trains that epoch, then the run from its weights; a rerun of the finished run trains
    nothing."""
    output = tmp_path / "model"
    shutil.copytree(warm_run.output, output)
    directory = output / checkpoints.DIRECTORY
    model_files = [output / model_folder.CONFIG_FILE, output / model_folder.WEIGHTS_FILE]
    for path in [*checkpoints.list_checkpoints(directory), *model_files]:
        path.unlink()
    checkpoints.path_of(directory / trainer.WARM_START, WARM_EPOCHS).unlink()
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert cli.main(warm_start_args(warm_run.data, output)) == 0
    # Keras prints "Epoch i/n" when n > 1, and a line "2/2 - ..." (the steps) at each epoch's end.
    assert re.findall(r"^Epoch \d+/\d+", stdout.getvalue(), re.MULTILINE) == [
        f"Epoch {WARM_EPOCHS}/{WARM_EPOCHS}"
    ]
    assert len(re.findall(r"^2/2 - ", stdout.getvalue(), re.MULTILINE)) == 2  # and the run's
    assert model_folder.is_complete(output)
    warm = checkpoints.list_checkpoints(directory / trainer.WARM_START)
    assert checkpoints.read_state(warm[-1])["epoch"] == WARM_EPOCHS
    (own,) = checkpoints.list_checkpoints(directory)
    assert own.name == "epoch-0001.npz"
    assert_trained_from(trainable(saved(warm[-1], "model")), own)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert cli.main(warm_start_args(warm_run.data, output)) == 0
    assert not re.findall(r"^(Epoch \d|2/2 - )", stdout.getvalue(), re.MULTILINE)


def test_batch_and_learning_rate_are_per_replica():
    settings = train.TrainSettings(batch_size=8, learning_rate=1e-3)
    assert train_settings.scaling(
        settings, replicas=1, train_records=100
    ) == train_settings.Scaling(1, 8, 1e-3, 12)
    assert train_settings.scaling(
        settings, replicas=4, train_records=100
    ) == train_settings.Scaling(4, 32, 4e-3, 3)
    assert train_settings.scaling(settings, replicas=16, train_records=100).steps_per_epoch == 1
    fixed = train.TrainSettings(batch_size=8, steps_per_epoch=50)
    assert train_settings.scaling(fixed, replicas=4, train_records=100).steps_per_epoch == 50
    model = trainer.build_model([1.0] * 4, SETTINGS, 10, mixed_precision=False, replicas=2)
    rate = train_settings.scaling(SETTINGS, replicas=2, train_records=64).learning_rate
    assert float(model.optimizer.learning_rate) == pytest.approx(rate) == 2 * SETTINGS.learning_rate


def test_mixed_precision_model_trains_on_float32_logits_and_keeps_the_global_policy():
    model = trainer.build_model([1.0] * 4, SETTINGS, 10, mixed_precision=True)
    assert model.get_layer("conv1_sub1").compute_dtype == "float16"
    assert model.get_layer("conv1_sub1").kernel.dtype == "float32"
    assert model.get_layer("conv6_cls_logits").compute_dtype == "float16"
    assert all(model.get_layer(name).output.dtype == "float32" for name in icnet.OUTPUTS)
    assert all(isinstance(loss, losses.WeightedCrossEntropy) for loss in model.loss.values())
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert keras.config.dtype_policy().name == "float32"


def bad_input(case: str, tmp_path: Path) -> tuple[Path, list[str]]:
    """A data dir with one problem, and extra CLI arguments."""
    data = tmp_path / "data"
    if case == "missing dir":
        return data, []
    write_prepared(data, num_train=4, num_val=0 if case == "no val records" else 2, size=(40, 48))
    if case == "no labels":
        (data / "labels.txt").unlink()
    elif case == "missing shard":
        (data / "train-00001-of-00002.tfrecord").unlink()
    elif case == "labels do not match":
        (data / "labels.txt").write_text("idx\tlabel\n0\tnone\n1\twall\n")
    elif case == "size":
        return data, ["--image-size", "100"]
    elif case == "alpha":
        return data, ["--alpha", "0"]
    return data, []


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing dir", "does not exist"),
        ("no labels", "no labels.txt"),
        ("no val records", "no val records"),
        ("missing shard", r"train-00001-of-00002.tfrecord, listed in stats.json, is missing"),
        ("labels do not match", r"does not match stats.json \(2 classes, not 4\)"),
        ("size", "image size 100x100 is not supported.*multiples of 32"),
        ("alpha", "alpha .* must be > 0"),
    ],
)
def test_bad_input_is_refused_before_training(case, message, tmp_path, capsys):
    data, extra = bad_input(case, tmp_path)
    output = tmp_path / "model"
    assert cli.main(["train", "--data-dir", str(data), "--output-dir", str(output), *extra]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and len(error.strip().splitlines()) == 1
    assert re.search(message, error), error
    assert not (output / checkpoints.DIRECTORY).exists()


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    return write_prepared(tmp_path_factory.mktemp("small"), num_train=4, num_val=2, size=(40, 48))


@pytest.mark.parametrize(
    ("changed", "differs"),
    [
        (["--alpha", "0.5"], "alpha 0.25, now 0.5"),
        (["--epochs", "3"], "epochs 2, now 3"),
        (["--steps-per-epoch", "5"], "steps_per_epoch 25, now 5"),
        (["--learning-rate", "0.01"], "learning_rate 0.002, now 0.01"),
        (["--schedule", "cosine"], 'schedule "poly", now "cosine"'),
        (["--loss-weights", "1,0,0"], "loss_weights [1.0, 0.4, 0.16], now [1.0, 0.0, 0.0]"),
        (["--optimizer", "sgd"], 'optimizer "adam", now "sgd"'),
        (["--class-balance", "none"], "class_weights ["),
        (["--resize", "crop"], 'resize "stretch", now "crop"'),
        (["--init", "x.h5"], 'init "random", now "x.h5"'),
    ],
)
def test_checkpoints_of_a_run_with_other_settings_are_not_resumed(
    changed, differs, small_data, tmp_path, capsys
):
    """A checkpoint of the arguments below, then a run with one of them changed."""
    args = train_args(small_data, tmp_path / "model")
    settings = train.TrainSettings(
        image_size=(64, 64), alpha=0.25, epochs=EPOCHS, steps_per_epoch=STEPS, learning_rate=0.002
    )
    data = data_folder.read_prepared(small_data)
    scale = train_settings.scaling(settings, 1, data.records["train"])
    key = train_settings.resume_key(
        settings, scale, data.labels, False, trainer.class_weights(data, settings)
    )
    state = json.dumps({"epoch": 1, "history": [], "run": key})
    directory = tmp_path / "model" / checkpoints.DIRECTORY
    directory.mkdir(parents=True)
    np.savez(directory / "epoch-0001.npz", **{checkpoints.STATE: np.array(state)})
    assert cli.main([*args, *changed]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1, error
    assert f"holds checkpoints of a run with other settings ({differs}" in error
    assert error.endswith("): use a new --output-dir, or delete the checkpoints to start over\n")


def test_size_and_loss_weight_arguments():
    assert train.parse_image_size("768") == (768, 768)
    assert train.parse_image_size("512x1024") == (512, 1024)
    assert train.parse_loss_weights("1,0.4,0.16") == (1.0, 0.4, 0.16)
    for parse, text in [
        (train.parse_image_size, "big"),
        (train.parse_image_size, "1x2x3"),
        (train.parse_loss_weights, "1,2"),
        (train.parse_loss_weights, "1,-1,0"),
    ]:
        with pytest.raises(argparse.ArgumentTypeError, match="expected"):
            parse(text)


def test_the_validation_log_names_each_class_iou_precision_and_recall():
    confusion = np.array([[2, 2, 0], [0, 3, 0], [0, 3, 0]])
    scores = callbacks.validation_metrics(confusion, ["none", "chair", "lamp"])
    assert callbacks.per_class_line(scores) == "none 50/100/50, chair 38/38/100, lamp 0/-/0"


@pytest.mark.parametrize(
    ("changed", "message"),
    [
        ({"ohem_threshold": 0.0}, r"--ohem-threshold must be a probability in \(0, 1\], got 0.0"),
        ({"ohem_threshold": float("nan")}, "--ohem-threshold must be a probability"),
        ({"ohem_threshold": 0.7, "ohem_min_kept": 1.5}, r"--ohem-min-kept must be a share"),
        (
            {"ohem_threshold": None, "ohem_min_kept": 0.3},
            "--ohem-min-kept does nothing without --ohem-threshold",
        ),
        ({"focal_gamma": -1.0}, "--focal-gamma must be a finite number >= 0, got -1.0"),
        ({"focal_gamma": float("inf")}, "--focal-gamma must be a finite number >= 0"),
        ({"lovasz_weight": -0.5}, "--lovasz-weight must be a finite number >= 0, got -0.5"),
        ({"repeat_threshold": 1.5}, r"--repeat-threshold must be a pixel share in \[0, 1\]"),
        ({"loss_resolution": "input"}, "--loss-resolution must be one of output, label"),
        ({"class_balance": "inverse"}, "--class-balance must be one of median-frequency, sqrt"),
        ({"warm_start_epochs": -1}, "--warm-start-epochs must be >= 0, got -1"),
        ({"warm_start_epochs": 5}, "--warm-start-size and --warm-start-epochs go together"),
        ({"warm_start_size": (256, 256)}, "--warm-start-size and --warm-start-epochs go"),
        (
            {"warm_start_size": (250, 256), "warm_start_epochs": 5},
            "--warm-start-size: image size 250x256 is not supported",
        ),
    ],
)
def test_bad_recipes_are_refused(changed, message):
    problems = train_settings.settings_problems(train.TrainSettings(**changed))
    assert len(problems) == 1 and re.match(message, problems[0]), problems


def test_loss_recipe_options_and_their_defaults():
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    required = ["--data-dir", "d", "--output-dir", "o"]
    defaults = train.settings_from_args(parser.parse_args(required))
    assert defaults == train.TrainSettings()
    # The best recipe measured on photo-like rooms (benchmarks/results/learning.json).
    assert (defaults.class_balance, defaults.ohem_threshold, defaults.learning_rate) == (
        "sqrt-frequency", 0.7, 0.01
    )  # fmt: skip
    assert (defaults.loss_resolution, defaults.focal_gamma, defaults.lovasz_weight) == (
        "output", 0.0, 0.0
    )  # fmt: skip
    recipes = [
        "--class-balance", "median-frequency", "--loss-resolution", "label",
        "--ohem-threshold", "0.5", "--ohem-min-kept", "0.2", "--focal-gamma", "2",
        "--lovasz-weight", "0.5", "--repeat-threshold", "0.01",
        "--warm-start-size", "256x320", "--warm-start-epochs", "20",
    ]  # fmt: skip
    chosen = train.settings_from_args(parser.parse_args([*required, *recipes]))
    assert (chosen.warm_start_size, chosen.warm_start_epochs) == ((256, 320), 20)
    warm = train_settings.warm_start_settings(chosen)
    assert (warm.image_size, warm.epochs, warm.warm_start_epochs) == ((256, 320), 20, 0)
    assert chosen.class_balance == "median-frequency" and chosen.loss_resolution == "label"
    assert (chosen.ohem_threshold, chosen.ohem_min_kept, chosen.focal_gamma) == (0.5, 0.2, 2.0)
    assert chosen.repeat_threshold == 0.01
    assert not train_settings.settings_problems(chosen)
    assert trainer.loss_options(chosen) == {
        "upsample": True, "ohem_threshold": 0.5, "ohem_min_kept": 0.2, "focal_gamma": 2.0,
        "lovasz_weight": 0.5,
    }  # fmt: skip
    scale = train_settings.scaling(defaults, 1, 64)
    # At the values that train as before they existed, the recipes stay out of the resume key:
    # checkpoints written before these options still resume; otherwise, they are in it.
    legacy = replace(defaults, **train_settings.OMITTED_WHEN)
    plain = train_settings.resume_key(legacy, scale, ["none"], False, [1.0])
    assert not {*train_settings.OMITTED_WHEN} & set(plain)
    default_key = train_settings.resume_key(defaults, scale, ["none"], False, [1.0])
    assert default_key["ohem_threshold"] == 0.7
    key = train_settings.resume_key(chosen, scale, ["none"], False, [1.0])
    assert (key["loss_resolution"], key["ohem_threshold"], key["focal_gamma"]) == ("label", 0.5, 2)
    assert key["repeat_threshold"] == 0.01
    assert (key["warm_start_size"], key["warm_start_epochs"]) == ([256, 320], 20)


def test_a_run_with_every_loss_recipe_trains_and_records_them(small_data, tmp_path):
    output = tmp_path / "model"
    args = [
        "train", "--data-dir", str(small_data), "--output-dir", str(output), "--image-size", "64",
        "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2",
        "--class-balance", "sqrt-frequency", "--loss-resolution", "label",
        "--ohem-threshold", "0.7", "--ohem-min-kept", "0.2", "--focal-gamma", "1",
        "--lovasz-weight", "1", "--repeat-threshold", "0.05",
    ]  # fmt: skip
    assert cli.main(args) == 0
    config = json.loads((output / model_folder.CONFIG_FILE).read_text())
    training = config["training"]
    assert training["class_balance"] == "sqrt-frequency" and training["loss_resolution"] == "label"
    assert (training["ohem_threshold"], training["ohem_min_kept"]) == (0.7, 0.2)
    assert training["focal_gamma"] == training["lovasz_weight"] == 1.0
    assert training["repeat_threshold"] == 0.05
    counts = data_folder.read_prepared(small_data).pixel_counts["train"]
    expected = losses.median_frequency_weights(counts, 10.0, power=0.5)
    assert list(training["class_weights"].values()) == expected
    history = json.loads((output / model_folder.HISTORY_FILE).read_text())
    assert np.isfinite(history[-1]["loss"])
    settings = train.TrainSettings(image_size=(64, 64), loss_resolution="label")
    model = trainer.build_model([1.0] * 4, settings, 10, mixed_precision=False)
    assert set(trainer.output_sizes(model, settings).values()) == {(64, 64)}
    assert trainer.output_sizes(model)[icnet.INFERENCE_OUTPUT] == (16, 16)
