"""The evaluate stage end to end on a tiny model dir and prepared-style validation shards."""

import io
import json
import math
import re
import shutil
import subprocess

import keras
import numpy as np
import pytest
from PIL import Image
from test_data_folder import write_folder

from image_segmentation import cli
from image_segmentation.contracts import data_folder, evaluation_folder, model_folder
from image_segmentation.data import dataset, records
from image_segmentation.errors import StageError
from image_segmentation.evaluation import evaluator, metrics, report, scoring
from image_segmentation.model import icnet
from image_segmentation.stages import evaluate

LABELS = ["none", "red thing", "green thing"]
COLORS = np.full((256, 3), 128, dtype=np.uint8)  # unlabelled pixels grey
COLORS[:3] = [(25, 25, 25), (225, 30, 30), (30, 225, 30)]
SIZES = [(40, 60), (50, 50), (33, 47), (64, 96), (45, 30)]  # first shard: 3, second: 2
MODEL_SIZE = (64, 64)
HISTORY = [
    {"epoch": 1, "loss": 2.0, "val_miou": 0.1, "val_pixel_accuracy": 0.4},
    {"epoch": 2, "loss": 1.2, "val_miou": 0.3, "val_pixel_accuracy": 0.6},
    {"epoch": 3, "loss": 0.9, "val_miou": 0.35, "val_pixel_accuracy": 0.7},
]


def encode(pixels: np.ndarray, format: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=format, quality=95)
    return buffer.getvalue()


def make_masks(seed: int = 0) -> list[np.ndarray]:
    """Masks of regions 10 px wide: every class in every image, sizes and aspects differ, and
    an unlabelled corner (IGNORE)."""
    rng = np.random.default_rng(seed)
    masks = []
    for height, width in SIZES:
        grid = rng.integers(0, 3, size=(height // 10 + 1, width // 10 + 1))
        grid.flat[:3] = [0, 1, 2]
        mask = np.kron(grid, np.ones((10, 10), int))[:height, :width].astype(np.uint8)
        mask[-6:, :8] = dataset.IGNORE
        masks.append(mask)
    return masks


def shards_of(split: str, *chunks) -> list[list[bytes]]:
    """Shards of JPEG images (each mask's classes in COLORS) + PNG masks, one per chunk."""
    return [
        [
            records.segmentation_example(
                encode(COLORS[mask], "JPEG"),
                f"{split}_{shard}_{number}.jpg",
                *mask.shape,
                encode(mask, "PNG"),
            )
            for number, mask in enumerate(chunk)
        ]
        for shard, chunk in enumerate(chunks)
    ]


def write_data_dir(path, masks, class_labels=LABELS, train_masks=()):
    """A prepare-stage output: two val shards of `masks`, and one train shard of
    `train_masks` if any."""
    train = shards_of("train", train_masks) if train_masks else []
    val = shards_of("val", masks[:3], masks[3:])
    return write_folder(path, {"train": train, "val": val}, class_labels)


@pytest.fixture(scope="module")
def masks():
    return make_masks()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, masks):
    return write_data_dir(tmp_path_factory.mktemp("prepared"), masks)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A train-stage model dir whose ICNet says "red thing" everywhere: its classifier's
    kernel is zero and its bias favours class 1, so every score has an exact expected value."""
    path = tmp_path_factory.mktemp("model")
    model = icnet.build_icnet(len(LABELS), MODEL_SIZE, alpha=0.125)
    classifier = model.get_layer("conv6_cls_logits")
    kernel, bias = classifier.get_weights()
    classifier.set_weights([np.zeros_like(kernel), np.array([0.0, 2.0, 0.0], bias.dtype)])
    config = {
        "labels": LABELS,
        "num_classes": len(LABELS),
        "image_size": list(MODEL_SIZE),
        "alpha": 0.125,
        "normalization": {"scale": 1 / 255, "offset": -0.5},
    }
    model_folder.write_model_dir(
        path,
        write_weights=model.save_weights,
        config=config,
        history=HISTORY,
        training_metrics={"val_miou": 0.35},
    )
    return path


def class_counts(masks) -> np.ndarray:
    """Labelled pixels per class."""
    return sum(np.bincount(mask.ravel(), minlength=256)[:3] for mask in masks)


@pytest.mark.slow
def test_stage_scores_every_annotated_pixel_and_writes_metrics_report_and_kfp_files(
    tmp_path, data_dir, model_dir, masks, capsys
):
    out = tmp_path / "eval"
    kfp_metrics, kfp_matrix, gate = tmp_path / "m.json", tmp_path / "cm.json", tmp_path / "miou"
    status = cli.main(
        ["evaluate", "--model-dir", str(model_dir), "--data-dir", str(data_dir),
         "--output-dir", str(out), "--batch-size", "2", "--report-images", "4",
         "--metrics-json", str(kfp_metrics), "--confusion-matrix-json", str(kfp_matrix),
         "--miou-output", str(gate)]
    )  # fmt: skip
    assert status == 0
    result = json.loads((out / "metrics.json").read_text())
    n0, n1, n2 = class_counts(masks)  # the model says class 1 on every pixel
    assert result["images"] == len(SIZES)
    assert result["labels"] == LABELS
    assert result["confusion_matrix"] == [[0, n0, 0], [0, n1, 0], [0, n2, 0]]
    assert result["gate_metric"] == "miou"
    # "none" is scored: red claimed on none pixels is a false positive; unlabelled pixels are
    # not scored at all
    total = n0 + n1 + n2
    assert result["class_iou"] == {
        "none": 0.0,
        "red thing": pytest.approx(n1 / total),
        "green thing": 0.0,
    }
    assert result["miou"] == pytest.approx(n1 / total / 3)
    assert result["pixel_accuracy"] == pytest.approx(n1 / total)
    assert result["pixels_scored"] == total < sum(mask.size for mask in masks)
    assert result["evaluation"]["resize"] == "stretch"
    assert result["evaluation"]["model_weights_sha256"] == model_folder.weights_digest(model_dir)
    # what it scored on: the challenge compares recorded numbers only on the same digest
    shards = data_folder.list_shards(data_dir, "val")
    digest = evaluation_folder.validation_digest(shards, data_dir / "labels.txt", None)
    assert result[evaluation_folder.DATA_DIGEST] == digest
    assert evaluation_folder.published_metrics(out, model_dir)["validation_data_sha256"] == digest

    assert capsys.readouterr().out.strip() == f"miou {result['miou']:.6f}"
    assert float(gate.read_text()) == result["miou"]
    scalars = json.loads(kfp_metrics.read_text())
    assert scalars["miou"] == result["miou"]
    assert scalars["pixel_accuracy"] == result["pixel_accuracy"]
    # the model says class 1 everywhere: class 1 is found whole but mostly wrongly claimed
    assert scalars[f"recall: {LABELS[1]}"] == 1.0
    assert scalars[f"precision: {LABELS[1]}"] == pytest.approx(n1 / total)
    assert scalars[f"recall: {LABELS[0]}"] == 0.0
    assert f"precision: {LABELS[0]}" not in scalars  # never predicted: no precision
    assert result["class_precision"][LABELS[0]] is None
    assert result["class_pixels"] == dict(zip(LABELS, (n0, n1, n2), strict=True))
    matrix = json.loads(kfp_matrix.read_text())["confusionMatrix"]
    assert matrix["annotationSpecs"] == [{"displayName": name} for name in LABELS]
    assert matrix["rows"] == [{"row": row} for row in result["confusion_matrix"]]

    page = (out / "report.html").read_text()
    assert all(name in page for name in LABELS)
    assert page.count('<section class="example">') == 4
    assert page.count('src="data:image/jpeg;base64,') == 3 * 4
    assert "val_0_0.jpg" in page and "val_1_0.jpg" in page  # the first 4, in file order
    assert "val_1_1.jpg" not in page
    assert '<svg class="bars"' in page and page.count('<svg class="curve"') == 2
    assert len(re.findall(r"<polyline ", page)) == 3  # loss; val mean IoU and pixel accuracy
    assert f"{100 * result['miou']:.1f}%" in page
    # the per-class table: class 1, claimed everywhere, found whole (recall 100%)
    row = re.search(rf"<tr><td>{LABELS[1]}</td>(.*?)</tr>", page).group(1)
    precision = f"{100 * result['class_precision'][LABELS[1]]:.1f}%"
    assert re.findall(r"<td>(.*?)</td>", row)[1:3] == [precision, "100.0%"]
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing fetched


@pytest.mark.slow
def test_max_images_scores_only_the_first_records(tmp_path, data_dir, model_dir, masks):
    result = evaluator.evaluate(model_dir, data_dir, tmp_path, max_images=2, report_images=0)
    n0, n1, n2 = class_counts(masks[:2])
    assert result["images"] == 2
    assert result["confusion_matrix"] == [[0, n0, 0], [0, n1, 0], [0, n2, 0]]
    page = (tmp_path / "report.html").read_text()
    assert '<section class="example">' not in page and "No images requested" in page


def test_labels_of_model_and_data_must_agree(tmp_path, model_dir, masks):
    other = write_data_dir(tmp_path / "data", masks, ["none", "red thing", "blue thing"])
    with pytest.raises(StageError, match="different labels: class 2: model 'green thing'"):
        evaluator.evaluate(model_dir, other, tmp_path / "out")
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_missing_inputs_are_clear_errors(tmp_path, data_dir, model_dir):
    with pytest.raises(StageError, match=r"model dir .* does not exist"):
        evaluator.evaluate(tmp_path / "nope", data_dir, tmp_path / "out")
    with pytest.raises(StageError, match=r"has no config\.json: the train stage did not finish"):
        evaluator.evaluate(data_dir, data_dir, tmp_path / "out")  # not a model folder
    with pytest.raises(StageError, match=r"data dir .* does not exist"):
        evaluator.evaluate(model_dir, tmp_path / "nope", tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StageError, match=r"no stats\.json: the prepare stage did not finish there"):
        evaluator.evaluate(model_dir, empty, tmp_path / "out")
    with pytest.raises(StageError, match="no val records"):
        evaluator.evaluate(model_dir, write_data_dir(empty, masks=[]), tmp_path / "out")
    with pytest.raises(StageError, match="--max-images"):
        evaluator.evaluate(model_dir, data_dir, tmp_path / "out", max_images=0)


def test_cli_reports_a_bad_input_as_one_line(tmp_path, data_dir, capsys):
    status = cli.main(
        ["evaluate", "--model-dir", str(tmp_path / "nope"), "--data-dir", str(data_dir),
         "--output-dir", str(tmp_path / "out")]
    )  # fmt: skip
    assert status == 2
    assert re.fullmatch(r"error: model dir \S+ does not exist\n", capsys.readouterr().err)


def colour_model() -> keras.Model:
    """A real (tiny) segmentation model: class from the pixel colour at S/4, like ICNet's
    output, so the predicted map has structure that a transposed or misaligned resize breaks."""
    image = keras.Input((*MODEL_SIZE, 3), name="image")
    pooled = keras.layers.AveragePooling2D(4)(image)
    logits = keras.layers.Conv2D(3, 1, name="colour")(pooled)
    model = keras.Model(image, keras.layers.Softmax()(logits))
    # normalized colours are about -0.4 (dark) or +0.4 (bright) per channel
    kernel = np.zeros((1, 1, 3, 3), np.float32)
    kernel[0, 0, 0, 1] = kernel[0, 0, 1, 2] = 10.0
    model.get_layer("colour").set_weights([kernel, np.zeros(3, np.float32)])
    return model


NORMALIZATION = {"scale": 1 / 255, "offset": -0.5}


def labelled(masks) -> int:
    return sum(int(np.sum(mask != dataset.IGNORE)) for mask in masks)


def test_predictions_are_upsampled_to_each_annotation_in_the_right_orientation(data_dir, masks):
    batches = evaluator.validation_batches(
        data_folder.list_shards(data_dir, "val"), MODEL_SIZE, NORMALIZATION, "stretch", 2, None
    )
    confusion, examples, seen = evaluator.evaluate_model(colour_model(), batches, 3, 5, 2)
    assert seen == 5 and confusion.sum() == labelled(masks)
    # only pixels near region borders may be wrong (4x pooling, resize to 64x64 and back)
    assert np.trace(confusion) / confusion.sum() > 0.9
    assert [e.name for e in examples] == ["val_0_0.jpg", "val_0_1.jpg"]
    assert examples[0].truth.tolist() == masks[0].tolist()  # 60 px wide: kept at full size
    assert examples[0].pixel_accuracy > 0.9


def test_a_centre_cropping_model_is_scored_on_the_window_it_sees(data_dir, masks):
    batches = evaluator.validation_batches(
        data_folder.list_shards(data_dir, "val"), MODEL_SIZE, NORMALIZATION, "crop", 2, None
    )
    confusion, examples, seen = evaluator.evaluate_model(colour_model(), batches, 3, 5, 2)
    windows = []  # the square centred window of each mask
    for mask in masks:
        side = min(mask.shape)
        top, left = (mask.shape[0] - side) // 2, (mask.shape[1] - side) // 2
        windows.append(mask[top : top + side, left : left + side])
    assert seen == 5 and confusion.sum() == labelled(windows) < labelled(masks)
    assert np.trace(confusion) / confusion.sum() > 0.9
    # 40x60: the 40x40 window is predicted, the 10 columns each side are not (IGNORE)
    prediction = examples[0].prediction
    assert (prediction[:, :10] == dataset.IGNORE).all() and (prediction[:, 50:] == 255).all()
    assert (prediction[:, 10:50] < 3).all() and examples[0].pixel_accuracy > 0.9


def test_score_can_score_the_training_split(tmp_path, masks):
    """split="train" scores the photos a model trained on (how well it fits them), every one
    and none of the val split's."""
    training = make_masks(seed=1)[:4]
    path = write_data_dir(tmp_path, masks, train_masks=training)

    def scored(split: str) -> dict:
        return evaluator.score(
            colour_model(), LABELS, MODEL_SIZE, NORMALIZATION, "stretch", path, "m", split=split
        )

    fit, unseen = scored("train"), scored("val")
    assert fit["images"] == 4 and unseen["images"] == 5
    assert sum(fit["class_pixels"].values()) == labelled(training)
    assert sum(unseen["class_pixels"].values()) == labelled(masks)
    assert fit["pixel_accuracy"] > 0.9  # the colour model is right on these photos too


def test_a_mask_value_beyond_the_labels_is_refused(data_dir):
    batches = evaluator.validation_batches(
        data_folder.list_shards(data_dir, "val"), MODEL_SIZE, NORMALIZATION, "stretch", 2, 1
    )
    with pytest.raises(StageError, match="mask value 2, but the labels list only 2 classes"):
        evaluator.evaluate_model(colour_model(), batches, 2, 1, 0)


def test_the_validation_digest_is_the_data_not_the_file_names(tmp_path, data_dir, masks):
    """Two prepare runs of the same data (a rerun names its shards .gen2) give one digest;
    other masks, other labels or a limit on the images scored give another."""

    def digest(folder, max_images=None):
        shards = data_folder.list_shards(folder, "val")
        return evaluation_folder.validation_digest(shards, folder / "labels.txt", max_images)

    copy = tmp_path / "copy"
    copy.mkdir()
    for path in sorted(data_dir.iterdir()):
        shutil.copyfile(path, copy / path.name.replace(".tfrecord", ".gen2.tfrecord"))
    stats = json.loads((copy / "stats.json").read_text())
    for split in stats["splits"].values():
        split["shards"] = [name.replace(".tfrecord", ".gen2.tfrecord") for name in split["shards"]]
    (copy / "stats.json").write_text(json.dumps(stats))
    assert digest(copy) == digest(data_dir)
    assert digest(data_dir, max_images=2) != digest(data_dir)
    other_masks = write_data_dir(tmp_path / "other", make_masks(seed=1))
    assert digest(other_masks) != digest(data_dir)
    relabelled = write_data_dir(tmp_path / "relabelled", masks, ["none", "red", "green thing"])
    assert digest(relabelled) != digest(data_dir)


def test_scoring_upsamples_bilinearly_takes_the_argmax_and_counts_annotated_pixels():
    probabilities = np.zeros((1, 2, 4, 3), np.float32)  # left half class 1, right half class 2
    probabilities[:, :, :2, 1] = probabilities[:, :, 2:, 2] = 1.0
    masks = np.full((1, 6, 12), 2, np.uint8)
    masks[:, 0] = dataset.IGNORE  # an unannotated row
    predicted, confusion = scoring.score(probabilities, masks, 3)
    assert predicted.shape == (1, 6, 12)
    assert (predicted[0, :, :6] == 1).numpy().all() and (predicted[0, :, 6:] == 2).numpy().all()
    assert confusion.numpy().tolist() == [[0, 0, 0], [0, 0, 0], [0, 30, 30]]


def test_kfp_confusion_matrix_refuses_a_mismatched_matrix():
    with pytest.raises(ValueError, match="2 labels"):
        evaluate.kfp_confusion_matrix(np.zeros((3, 3), int), ["none", "x"])
    summary = {"miou": None, "pixel_accuracy": 0.5, "class_iou": {"x": None}}
    summary |= {"class_precision": {"x": 0.25}, "class_recall": {"x": math.nan}}
    assert evaluate.kfp_metrics(summary) == {"pixel_accuracy": 0.5, "precision: x": 0.25}


def test_palette_gives_every_class_its_own_colour():
    colors = report.palette(256)
    assert len({tuple(color) for color in colors}) == 256
    assert tuple(colors[0]) == (128, 128, 128)
    assert report.palette(5).tolist() == colors[:5].tolist()  # same class, same colour


def test_overlay_tints_classes_and_leaves_none_and_unlabelled_pixels_alone():
    image = np.full((2, 3, 3), 100, np.uint8)
    mask = np.array([[0, 1, 2], [255, 1, 0]], np.uint8)
    colors = report.palette(3)
    painted = report.overlay(image, mask, colors)
    assert (painted[mask == 0] == 100).all() and (painted[mask == 255] == 100).all()
    expected = np.round(100 * (1 - report.OVERLAY_ALPHA) + colors[1] * report.OVERLAY_ALPHA)
    assert painted[0, 1].tolist() == expected.tolist()
    assert painted[0, 1].tolist() != painted[0, 2].tolist()


def test_report_without_history_says_so_and_escapes_names():
    confusion = np.array([[5, 1], [2, 8]])
    summary = metrics.summary(confusion, ["none", "<b>&co"])
    page = report.render(summary, ["none", "<b>&co"], [], [], {"model": "m"})
    assert "No training history" in page
    assert "&lt;b&gt;&amp;co" in page and "<b>&co" not in page


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs chromium (Debian package)")
def test_report_renders_in_a_headless_browser(tmp_path):
    """The page draws in Chromium: every class swatch shows in its exact palette colour."""
    class_labels = ["none", "wall", "floor", "sky"]
    confusion = np.array([[50, 5, 0, 0], [3, 80, 2, 0], [0, 4, 60, 0], [0, 0, 0, 0]])
    mask = np.kron(np.array([[0, 1], [2, 3]], np.uint8), np.ones((40, 60), np.uint8))
    example = report.make_example("a.jpg", COLORS[mask % 3], mask, mask, len(class_labels))
    page = report.render(
        metrics.summary(confusion, class_labels), class_labels, [example], HISTORY, {}
    )
    (tmp_path / "report.html").write_text(page)
    screenshot = tmp_path / "shot.png"
    subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         f"--screenshot={screenshot}", "--window-size=1280,1600",
         (tmp_path / "report.html").as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    pixels = np.asarray(Image.open(screenshot).convert("RGB")).reshape(-1, 3)
    shown = {tuple(color) for color in np.unique(pixels, axis=0).tolist()}
    assert {tuple(color) for color in report.palette(4).tolist()} <= shown
