"""The train stage on generated data: it learns, survives a kill, refuses bad input early."""

import argparse
import contextlib
import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_dataset import write_prepared

from image_segmentation import cli, dataset, inference, model_folder, train
from image_segmentation.errors import StageError

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
    first_checkpoint = output / train.CHECKPOINT_DIR / "epoch-0001.npz"
    with open(root / "killed.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "image_segmentation", *args], stdout=log, stderr=log
        )
        while process.poll() is None and not first_checkpoint.exists():
            time.sleep(0.05)
        process.kill()
        process.wait()
    assert process.returncode == -9, (root / "killed.log").read_text()[-3000:]
    assert not (output / train.CHECKPOINT_DIR / "epoch-0002.npz").exists()
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert cli.main(args) == 0
    return SimpleNamespace(
        data=data, output=output, first=first_checkpoint, stdout=stdout.getvalue()
    )


def checkpoint_arrays(path: Path, prefix: str) -> list[np.ndarray]:
    with np.load(path) as data:
        return [data[key] for key in sorted(data.files) if key.startswith(prefix)]


@pytest.mark.slow
def test_killed_run_resumes_at_the_next_epoch(run):
    assert "Epoch 1/2" not in run.stdout and "Epoch 2/2" in run.stdout
    history = json.loads((run.output / model_folder.HISTORY_FILE).read_text())
    assert [entry["epoch"] for entry in history] == [1, 2]
    assert history[0] == train.read_checkpoint_state(run.first)["history"][0]  # the killed run's
    checkpoints = train.list_checkpoints(run.output / train.CHECKPOINT_DIR)
    assert [path.name for path in checkpoints] == ["epoch-0001.npz", "epoch-0002.npz"]
    assert not list((run.output / train.CHECKPOINT_DIR).glob(".*partial"))
    # Optimizer state came back too: its step counter went on from epoch 1's steps.
    assert checkpoint_arrays(run.first, "optimizer_")[0] == STEPS
    assert checkpoint_arrays(checkpoints[-1], "optimizer_")[0] == EPOCHS * STEPS


@pytest.mark.slow
def test_checkpoint_restores_weights_and_optimizer_state(run):
    model = train.build_model(4, SETTINGS, EPOCHS * STEPS, mixed_precision=False)
    fresh = [v.numpy().copy() for v in model.weights]
    state = train.restore_checkpoint(run.first, model)
    assert state["epoch"] == 1
    saved = checkpoint_arrays(run.first, "model_")
    assert all(np.array_equal(v.numpy(), a) for v, a in zip(model.weights, saved, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(fresh, saved, strict=True))
    optimizer = [v.numpy() for v in model.optimizer.variables]
    saved = checkpoint_arrays(run.first, "optimizer_")
    assert all(np.array_equal(a, b) for a, b in zip(optimizer, saved, strict=True))
    assert int(model.optimizer.iterations.numpy()) == STEPS


@pytest.mark.slow
def test_short_cpu_run_learns_and_writes_the_model_dir(run):
    metrics = json.loads((run.output / model_folder.TRAINING_METRICS_FILE).read_text())
    # 4 classes: always answering one class scores a mean IoU <= 0.25, guessing ~0.14.
    assert metrics["val_mean_iou"] >= 0.6, metrics
    assert metrics["val_pixel_accuracy"] >= 0.8, metrics
    assert set(metrics["val_class_iou"]) == {"none", "wall", "floor, flooring", "bed"}
    config = json.loads((run.output / model_folder.CONFIG_FILE).read_text())
    assert config["format_version"] == 1
    assert config["labels"] == ["none", "wall", "floor, flooring", "bed"]
    assert config["num_classes"] == 4 and config["image_size"] == [64, 64]
    assert config["alpha"] == 0.25
    assert config["normalization"] == {"scale": 1 / 255, "offset": -0.5}
    assert config["training"]["epochs"] == EPOCHS and config["training"]["optimizer"] == "adam"
    # One machine without GPUs: one replica, so the batch and learning rate are the given ones.
    assert config["training"]["replicas"] == 1 and config["training"]["global_batch_size"] == 8
    assert config["training"]["effective_learning_rate"] == 0.002
    history = json.loads((run.output / model_folder.HISTORY_FILE).read_text())
    assert history[-1]["val_mean_iou"] == metrics["val_mean_iou"]
    assert history[-1]["learning_rate"] < history[0]["learning_rate"]  # poly decay
    events = list((run.output / "logs").glob("events.out.tfevents.*"))
    logged = {
        (event.step, value.tag)
        for path in events
        for event in tf.compat.v1.train.summary_iterator(str(path))
        for value in event.summary.value
    }
    assert {(2, "val_mean_iou"), (2, "loss"), (1, "learning_rate")} <= logged


@pytest.mark.slow
def test_load_model_gives_the_trained_model(run):
    model, config = inference.load_model(run.output)
    final = checkpoint_arrays(train.list_checkpoints(run.output / "checkpoints")[-1], "model_")
    assert all(np.array_equal(v.numpy(), a) for v, a in zip(model.weights, final, strict=True))
    assert config["labels"][0] == "none"
    val = dataset.make_dataset(dataset.list_shards(run.data, "val"), (64, 64), 8, training=False)
    confusion = train.ConfusionMatrix(model, 4)(val)
    assert confusion.sum() == 16 * 64 * 64  # every pixel of the whole split, once
    metrics = json.loads((run.output / model_folder.TRAINING_METRICS_FILE).read_text())
    recomputed = train.validation_metrics(confusion, config["labels"], ignore_class_zero=False)
    assert recomputed["mean_iou"] == pytest.approx(metrics["val_mean_iou"], abs=1e-6)
    assert recomputed["mean_iou_ignore_none"] == pytest.approx(metrics["val_mean_iou_ignore_none"])


def tiny_model(num_classes: int = 4, width: int = 4) -> keras.Model:
    """A small real Keras model with ICNet's input and main output (S/4), for fast tests of
    the metric and checkpoint code, which do not depend on ICNet's insides."""
    image = keras.Input((64, 64, 3), name="image")
    x = keras.layers.AveragePooling2D(4)(image)
    x = keras.layers.Conv2D(width, 1, activation="relu")(x)
    x = keras.layers.Conv2D(num_classes, 1)(x)
    return keras.Model(image, {"conv6_cls": keras.layers.Softmax(name="conv6_cls")(x)})


def numpy_confusion(model, images, masks) -> np.ndarray:
    """The same confusion matrix, computed plainly: predict, upsample, argmax, count."""
    probabilities = model(images, training=False)["conv6_cls"]
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
    confusion = train.ConfusionMatrix(model, 4)(data)
    expected = numpy_confusion(model, images[:4], masks[:4])
    expected += numpy_confusion(model, images[4:], masks[4:])
    assert np.array_equal(confusion, expected)
    assert confusion.sum() == np.sum(masks != dataset.IGNORE)
    assert np.count_nonzero(confusion.sum(axis=0)) > 1  # several classes predicted: a real test


def test_validation_metrics_report_both_conventions():
    confusion = np.array([[50, 10, 0], [5, 30, 5], [0, 0, 0]])  # class 2 predicted, never true
    class_labels = ["none", "wall", "bed"]
    scores = train.validation_metrics(confusion, class_labels, ignore_class_zero=False)
    assert scores["pixel_accuracy"] == pytest.approx(80 / 100)
    assert scores["mean_iou"] == pytest.approx((50 / 65 + 30 / 50 + 0) / 3)
    assert scores["class_iou"] == pytest.approx({"none": 50 / 65, "wall": 30 / 50, "bed": 0.0})
    # ADE20K benchmark: pixels of true class 0 are not scored, class 0 has no IoU.
    assert scores["pixel_accuracy_ignore_none"] == pytest.approx(30 / 40)
    assert scores["mean_iou_ignore_none"] == pytest.approx((30 / 40 + 0) / 2)
    ignoring = train.validation_metrics(confusion, class_labels, ignore_class_zero=True)
    assert ignoring["mean_iou"] == scores["mean_iou_ignore_none"]
    assert ignoring["class_iou"]["none"] is None


def test_checkpoints_are_atomic_pruned_and_restore_everything(tmp_path):
    keras.utils.set_random_seed(4)
    model = tiny_model()
    model.compile(optimizer="adam", loss={"conv6_cls": "sparse_categorical_crossentropy"})
    images = np.random.default_rng(0).uniform(size=(4, 64, 64, 3)).astype(np.float32)
    labels = {"conv6_cls": np.ones((4, 16, 16), dtype=np.int32)}
    history = []
    for epoch in (1, 2, 3):
        model.fit(images, labels, epochs=1, verbose=0)
        history.append({"epoch": epoch})
        train.save_checkpoint(tmp_path, model, epoch, history, {"run": "key"})
    assert sorted(path.name for path in tmp_path.iterdir()) == ["epoch-0002.npz", "epoch-0003.npz"]
    weights = [v.numpy().copy() for v in model.weights]
    optimizer = [v.numpy().copy() for v in model.optimizer.variables]
    model.fit(images, labels, epochs=1, verbose=0)  # move on past the checkpoint
    state = train.restore_checkpoint(tmp_path / "epoch-0003.npz", model)
    assert state == {"epoch": 3, "history": history, "run": {"run": "key"}}
    assert all(np.array_equal(v.numpy(), a) for v, a in zip(model.weights, weights, strict=True))
    restored = [v.numpy() for v in model.optimizer.variables]
    assert all(np.array_equal(a, b) for a, b in zip(restored, optimizer, strict=True))
    assert int(model.optimizer.iterations.numpy()) == 3
    other = tiny_model(width=8)
    other.compile(optimizer="adam", loss={"conv6_cls": "sparse_categorical_crossentropy"})
    other.optimizer.build(other.trainable_variables)
    with pytest.raises(StageError, match="does not fit this model's model variables"):
        train.restore_checkpoint(tmp_path / "epoch-0003.npz", other)


@pytest.mark.slow
def test_fine_tune_from_a_model_dir_local_or_in_gcs(run, gcs_client):
    expected = checkpoint_arrays(train.list_checkpoints(run.output / "checkpoints")[-1], "model_")
    bucket = gcs_client.create_bucket("models")
    for name in (model_folder.CONFIG_FILE, model_folder.WEIGHTS_FILE):
        bucket.blob(f"runs/1/{name}").upload_from_filename(run.output / name)
    model = train.build_model(4, SETTINGS, 10, mixed_precision=False)
    fresh = [v.numpy() for v in model.weights]
    for source in (
        str(run.output),
        str(run.output / model_folder.WEIGHTS_FILE),
        "gs://models/runs/1",
        "gs://models/runs/1/model.weights.h5",
    ):
        for variable, value in zip(model.weights, fresh, strict=True):
            variable.assign(value)
        train.load_fine_tune_weights(model, source, SETTINGS)
        loaded = zip(model.weights, expected, strict=True)
        assert all(np.array_equal(v.numpy(), a) for v, a in loaded), source
    wider = train.TrainSettings(image_size=(64, 64), alpha=0.5)
    with pytest.raises(StageError, match=r"alpha 0\.25, this run 0\.5"):
        train.load_fine_tune_weights(model, "gs://models/runs/1", wider)
    with pytest.raises(StageError, match="does not exist"):
        train.load_fine_tune_weights(model, "gs://models/nothing", SETTINGS)


def test_batch_and_learning_rate_are_per_replica():
    settings = train.TrainSettings(batch_size=8, learning_rate=1e-3)
    assert train.scaling(settings, replicas=1, train_records=100) == train.Scaling(1, 8, 1e-3, 12)
    assert train.scaling(settings, replicas=4, train_records=100) == train.Scaling(4, 32, 4e-3, 3)
    assert train.scaling(settings, replicas=16, train_records=100).steps_per_epoch == 1
    fixed = train.TrainSettings(batch_size=8, steps_per_epoch=50)
    assert train.scaling(fixed, replicas=4, train_records=100).steps_per_epoch == 50
    model = train.build_model(4, SETTINGS, 10, mixed_precision=False, replicas=2)
    rate = train.scaling(SETTINGS, replicas=2, train_records=64).learning_rate
    assert float(model.optimizer.learning_rate) == pytest.approx(rate) == 2 * SETTINGS.learning_rate


def test_mixed_precision_model_keeps_float32_outputs_and_the_global_policy():
    model = train.build_model(4, SETTINGS, 10, mixed_precision=True)
    assert model.get_layer("conv1_sub1").compute_dtype == "float16"
    assert model.get_layer("conv1_sub1").kernel.dtype == "float32"
    assert all(model.get_layer(name).output.dtype == "float32" for name in train.OUTPUTS)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert keras.config.dtype_policy().name == "float32"


def bad_input(case: str, tmp_path: Path) -> tuple[Path, list[str]]:
    """A data dir with one problem, and extra CLI arguments."""
    data = tmp_path / "data"
    if case == "missing dir":
        return data, []
    write_prepared(data, num_train=4, num_val=2, size=(40, 48))
    if case == "no labels":
        (data / "labels.txt").unlink()
    elif case == "no train shards":
        for path in data.glob("train-*"):
            path.unlink()
    elif case == "no val shards":
        for path in data.glob("val-*"):
            path.unlink()
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
        ("no train shards", "no train records"),
        ("no val shards", "no val records"),
        ("missing shard", "incomplete or mixed train shards"),
        ("labels do not match", r"mask value [23], but labels.txt lists only 2 classes"),
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
    assert not (output / train.CHECKPOINT_DIR).exists()


def test_checkpoints_of_another_run_are_not_resumed(tmp_path, capsys):
    data = write_prepared(tmp_path / "data", num_train=4, num_val=2, size=(40, 48))
    checkpoints = tmp_path / "model" / train.CHECKPOINT_DIR
    checkpoints.mkdir(parents=True)
    other = {"labels": ["none", "wall", "floor, flooring", "bed"], "image_size": [64, 64]}
    other |= {"alpha": 0.5, "optimizer": "adam", "mixed_precision": False}
    state = json.dumps({"epoch": 1, "history": [], "run": other})
    np.savez(checkpoints / "epoch-0001.npz", state=np.array(state))
    args = ["train", "--data-dir", str(data), "--output-dir", str(tmp_path / "model")]
    assert cli.main([*args, "--image-size", "64"]) == 2
    assert "holds checkpoints of a different run (alpha differ)" in capsys.readouterr().err


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
