"""Predict stage: a model folder and its TFLite export label real photos alike, at each photo's
own size; inputs of every kind; bad input as one-line errors.

The model is small (128x128, alpha 0.25, 4 classes) with random weights whose classifier is
rescaled so that the probabilities are peaked and several classes win pixels, as in a trained
model: agreement between the two model kinds then means something.
"""

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import ADE_SAMPLE
from PIL import Image

from image_segmentation import cli, files
from image_segmentation.contracts import model_folder
from image_segmentation.data import preprocessing
from image_segmentation.errors import StageError
from image_segmentation.evaluation import predictor
from image_segmentation.export import exporter
from image_segmentation.model import icnet
from image_segmentation.model import weights as inference
from image_segmentation.stages import export

SIZE = (128, 128)
LABELS = ["none", "wall", "floor, flooring", "chair"]
NORMALIZATION = {"scale": 1 / 255, "offset": -0.5}
PHOTOS = sorted((ADE_SAMPLE / "images").glob("*.jpg"))


def write_model_dir(directory: Path, resize: str = "stretch") -> Path:
    """A model folder as the train stage writes it, with random weights rescaled so that on
    the photos the probabilities are peaked and every class wins pixels."""
    keras.utils.set_random_seed(0)
    model = icnet.build_icnet(len(LABELS), SIZE, 0.25)
    classifier = model.get_layer("conv6_cls_logits")
    images = np.stack(
        [
            preprocessing.model_input(np.asarray(Image.open(photo)), SIZE, resize, NORMALIZATION)[0]
            for photo in PHOTOS
        ]
    )
    logits = keras.Model(model.input, classifier.output)(images).numpy()
    classifier.kernel.assign(classifier.kernel.numpy() * 10 / logits.std())
    logits = keras.Model(model.input, classifier.output)(images).numpy()
    classifier.bias.assign(-logits.mean(axis=(0, 1, 2)))
    config = {
        "labels": LABELS,
        "num_classes": len(LABELS),
        "image_size": list(SIZE),
        "alpha": 0.25,
        "normalization": NORMALIZATION,
        "preprocessing": {"resize": resize},
    }
    model_folder.write_model_dir(
        directory,
        write_weights=model.save_weights,
        config=config,
        history=[],
        training_metrics={},
    )
    return directory


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return write_model_dir(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def exported(model_dir, tmp_path_factory) -> tuple[Path, dict]:
    """The model's FP32 export (S/4 probabilities): its TFLite file and export.json."""
    output = tmp_path_factory.mktemp("export")
    options = export.ExportOptions(precision="float32", check_images=ADE_SAMPLE / "images")
    record = exporter.export_model(model_dir, output, options)
    return output / record["tflite"]["float32"]["file"], record


def predict(*arguments: object) -> int:
    return cli.main(["predict", *(str(argument) for argument in arguments)])


def outputs(folder: Path, photo: Path) -> tuple[np.ndarray, Image.Image, dict]:
    """A photo's label map, overlay and coverage record."""
    labels = np.asarray(Image.open(folder / f"{photo.stem}.labels.png"))
    overlay = Image.open(folder / f"{photo.stem}.overlay.png")
    return labels, overlay, json.loads((folder / f"{photo.stem}.json").read_text())


@pytest.mark.slow
def test_model_folder_and_tflite_label_the_real_photos_alike(model_dir, exported, tmp_path, capsys):
    tflite_path, _ = exported
    keras_out, tflite_out = tmp_path / "keras", tmp_path / "tflite"
    assert predict(ADE_SAMPLE / "images", "--model-dir", model_dir, "--output-dir", keras_out) == 0
    assert predict(*PHOTOS, "--tflite", tflite_path, "--output-dir", tflite_out) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["[1/3]", "[2/3]", "[3/3]"] * 2
    agreements = {}
    for photo in PHOTOS:
        width, height = Image.open(photo).size
        keras_labels, overlay, record = outputs(keras_out, photo)
        tflite_labels, _, tflite_record = outputs(tflite_out, photo)
        assert keras_labels.shape == tflite_labels.shape == (height, width)
        assert overlay.size == (width, height) and overlay.mode == "RGB"
        assert len(np.unique(keras_labels)) >= 2  # else agreement would prove nothing
        assert set(np.unique(keras_labels)) <= set(range(len(LABELS)))
        assert record["pixels"] == record["pixels_predicted"] == width * height
        assert sum(entry["fraction"] for entry in record["classes"]) == pytest.approx(1)
        assert record["model"]["kind"] == "model dir" and record["resize"] == "stretch"
        assert tflite_record["model"] == {
            "kind": "tflite",
            "path": str(tflite_path),
            "output": "probabilities",
        }
        agreements[photo.name] = float(np.mean(keras_labels == tflite_labels))
    print("model folder / TFLite agreement:", agreements)
    assert min(agreements.values()) >= 0.999, agreements


def test_full_size_and_label_map_outputs_are_brought_back_to_the_photo(model_dir):
    """The export's other outputs (the same graphs its TFLite files hold), run through the
    same code as the model folder's S/4 probabilities."""
    model = predictor.load_keras_model(model_dir)
    inference_model, _ = inference.load_inference_model(model_dir)
    image = predictor.read_photo(PHOTOS[0])
    reference, _ = predictor.segment(model, image)
    for kind in ("full", "labels"):
        graph = exporter.with_output(inference_model, kind)
        other = replace(
            model, output=kind, run=lambda batch, graph=graph: graph(batch[None])[0].numpy()
        )
        labels, _ = predictor.segment(other, image)
        assert labels.shape == image.shape[:2]
        # Resized from the input size rather than from S/4: only class boundaries move.
        assert np.mean(labels == reference) > 0.95, kind


def test_crop_mode_leaves_the_photo_outside_the_window_unlabelled(model_dir, tmp_path, capsys):
    cropped = tmp_path / "cropped"
    shutil.copytree(model_dir, cropped)
    config = files.read_json(cropped / model_folder.CONFIG_FILE)
    files.write_json(
        cropped / model_folder.CONFIG_FILE, {**config, "preprocessing": {"resize": "crop"}}
    )
    photo = PHOTOS[0]  # 683 x 512: the square window is 512 wide, 85 columns in
    assert predict(photo, "--model-dir", cropped, "--output-dir", tmp_path / "out") == 0
    labels, _, record = outputs(tmp_path / "out", photo)
    assert record["window"] == {"top": 0, "left": 85, "height": 512, "width": 512}
    assert (labels[:, :85] == 255).all() and (labels[:, 85 + 512 :] == 255).all()
    assert (labels[:, 85 : 85 + 512] < len(LABELS)).all()
    assert record["resize"] == "crop" and record["pixels_predicted"] == 512 * 512
    covered = sum(entry["pixels"] for entry in record["classes"])
    assert covered == record["pixels_predicted"]
    assert sum(entry["fraction"] for entry in record["classes"]) == pytest.approx(512 / 683)
    assert "(75% of it predicted)" in capsys.readouterr().out


def test_photos_of_any_mode_are_read_upright_in_rgb(model_dir, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    rgb = np.asarray(Image.open(PHOTOS[2]).resize((60, 40)))
    Image.fromarray(rgb).convert("L").save(photos / "grey.png")
    Image.fromarray(rgb).convert("RGBA").save(photos / "rgba.png")
    Image.fromarray(rgb).convert("CMYK").save(photos / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: shown turned 90 degrees clockwise
    Image.fromarray(rgb).save(photos / "turned.jpeg", exif=exif)
    (photos / "notes.txt").write_text("not a photo, and not a photo suffix")
    assert predict(photos, "--model-dir", model_dir, "--output-dir", tmp_path / "out") == 0
    written = sorted(path.name for path in (tmp_path / "out").iterdir())
    assert written == sorted(
        f"{name}{suffix}"
        for name in ("cmyk", "grey", "rgba", "turned")
        for suffix in (".json", ".labels.png", ".overlay.png")
    )
    for name, shape in [("grey", (40, 60)), ("cmyk", (40, 60)), ("turned", (60, 40))]:
        labels, overlay, record = outputs(tmp_path / "out", Path(name))
        assert labels.shape == shape and overlay.size == shape[::-1]
        assert (record["height"], record["width"]) == shape


def test_every_photo_mode_becomes_the_rgb_a_viewer_shows(tmp_path):
    """16-bit grey is scaled, not clipped to white; transparency is laid on white; palette,
    grey with alpha and CMYK convert; a floating-point image is refused."""
    ramp = np.linspace(0, 65535, 6 * 8).round().astype(np.uint16).reshape(6, 8)
    Image.fromarray(ramp).save(tmp_path / "wide.png")  # a 16-bit grey PNG
    with Image.open(tmp_path / "wide.png") as wide:
        assert wide.mode in predictor.WIDE_GREY_MODES
    wide = predictor.read_photo(tmp_path / "wide.png")
    expected = np.round(ramp / 257).astype(np.uint8)
    assert np.array_equal(wide[..., 0], expected) and np.array_equal(wide[..., 2], expected)
    assert len(np.unique(wide)) > 40  # a ramp, not a white page

    clear = Image.new("RGBA", (4, 4), (200, 10, 10, 0))
    clear.putpixel((0, 0), (200, 10, 10, 255))
    clear.save(tmp_path / "clear.png")
    seen = predictor.read_photo(tmp_path / "clear.png")
    assert tuple(seen[0, 0]) == (200, 10, 10) and tuple(seen[1, 1]) == (255, 255, 255)

    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 0, 128, 255] + [0] * 762)
    palette.info["transparency"] = 0
    palette.putpixel((0, 0), 0)
    palette.save(tmp_path / "palette.png")
    seen = predictor.read_photo(tmp_path / "palette.png")
    assert tuple(seen[0, 0]) == (255, 255, 255) and tuple(seen[3, 3]) == (0, 128, 255)

    Image.new("LA", (4, 4), (90, 255)).save(tmp_path / "grey-alpha.png")
    assert tuple(predictor.read_photo(tmp_path / "grey-alpha.png")[2, 2]) == (90, 90, 90)
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    red = predictor.read_photo(tmp_path / "cmyk.jpg")[1, 1]
    assert red[0] > 200 and red[1] < 60 and red[2] < 60

    Image.new("F", (4, 4), 0.5).save(tmp_path / "float.tiff")
    with pytest.raises(StageError, match="not a photo"):
        predictor.read_photo(tmp_path / "float.tiff")


def test_unreadable_files_are_skipped_and_named_and_outputs_never_read_back(
    model_dir, tmp_path, capsys, caplog
):
    """Files that are not photos, or cut short, are skipped (the others are predicted) and
    named at the end; a second run into a folder inside the photo folder does not predict
    the first run's outputs."""
    photos = tmp_path / "photos"
    photos.mkdir()
    small = Image.open(PHOTOS[0]).resize((48, 32))
    small.save(photos / "good.jpg")
    (photos / "text.jpg").write_text("not a photo")
    cut = (photos / "good.jpg").read_bytes()
    (photos / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n" + cut[:40])
    out = photos / "predicted"
    for _ in range(2):
        caplog.clear()
        assert predict(photos, "--model-dir", model_dir, "--output-dir", out) == 0
        assert sorted(p.name for p in out.iterdir()) == [
            "good.json", "good.labels.png", "good.overlay.png"
        ]  # fmt: skip
        assert "skipped 2 file(s) that are not readable photos" in caplog.text
        assert "text.jpg (" in caplog.text and "cut.png (" in caplog.text
    (photos / "good.labels.png").write_bytes((out / "good.labels.png").read_bytes())
    assert predict(photos, "--model-dir", model_dir, "--output-dir", tmp_path / "o") == 0
    assert not (tmp_path / "o" / "good.labels.labels.png").exists()


def test_an_output_disk_that_fills_up_is_one_line(model_dir, small_disk, capsys):
    out = small_disk("64k") / "out"
    assert predict(PHOTOS[0], "--model-dir", model_dir, "--output-dir", out) == 2
    line = error(capsys)
    assert "No space left on device" in line and "free some space" in line, line


def test_gcs_photos_are_downloaded_and_named_by_their_uri(model_dir, gcs_client, tmp_path):
    bucket = gcs_client.create_bucket("photos")
    bucket.blob("rooms/ADE_val_00000003.jpg").upload_from_filename(PHOTOS[2])
    uri = "gs://photos/rooms/ADE_val_00000003.jpg"
    assert predict(uri, "--model-dir", model_dir, "--output-dir", tmp_path / "one") == 0
    labels, _, record = outputs(tmp_path / "one", PHOTOS[2])
    assert record["photo"] == uri and labels.shape == (300, 400)
    # a prefix stands for the photos under it
    bucket.blob("rooms/more/ADE_val_00000001.jpg").upload_from_filename(PHOTOS[0])
    bucket.blob("rooms/notes.txt").upload_from_string("not a photo")
    assert predict("gs://photos/rooms/", "--model-dir", model_dir, "--output-dir", tmp_path) == 0
    for photo in (PHOTOS[0], PHOTOS[2]):
        assert outputs(tmp_path, photo)[2]["photo"].startswith("gs://photos/rooms/")
    assert not (tmp_path / "notes.json").exists()


def error(capsys) -> str:
    message = capsys.readouterr().err
    assert message.startswith("error: ") and message.count("\n") == 1, message
    return message


def test_bad_input_is_one_line(model_dir, gcs_client, tmp_path, capsys):
    out = ["--output-dir", tmp_path / "out"]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no photos here")
    assert predict(tmp_path / "nope.jpg", "--model-dir", model_dir, *out) == 2
    assert re.search(r"nope\.jpg does not exist", error(capsys))
    assert predict(empty, "--model-dir", model_dir, *out) == 2
    assert "holds no .jpg/.jpeg/.png photos" in error(capsys)
    assert predict(empty / "notes.txt", "--model-dir", model_dir, *out) == 2
    assert "no photo can be read: " in error(capsys)
    assert not (tmp_path / "out").exists()  # refused before the output folder was made
    shutil.copy(PHOTOS[0], empty / PHOTOS[0].name)
    assert predict(PHOTOS[0], empty / PHOTOS[0].name, "--model-dir", model_dir, *out) == 2
    assert "would both write ADE_val_00000001.*" in error(capsys)
    gcs_client.create_bucket("no-photos")
    assert predict("gs://no-photos/rooms/", "--model-dir", model_dir, *out) == 2
    assert "gs://no-photos/rooms/ holds no .jpg/.jpeg/.png files" in error(capsys)
    assert predict(PHOTOS[0], "--model-dir", empty, *out) == 2
    assert "has no config.json" in error(capsys)
    (empty / "icnet.tflite").write_bytes(b"not checked")
    assert predict(PHOTOS[0], "--tflite", empty / "icnet.tflite", *out) == 2
    assert "has no export.json" in error(capsys)
    assert predict(PHOTOS[0], "--tflite", empty, *out) == 2
    assert f"--tflite {empty} is a folder, not a .tflite file of an export" in error(capsys)
    (tmp_path / "a-file").write_text("")
    for output in (tmp_path / "a-file", tmp_path / "a-file" / "below"):
        assert predict(PHOTOS[0], "--model-dir", model_dir, "--output-dir", output) == 2
        assert "--output-dir" in error(capsys)
    bucket = gcs_client.create_bucket("same-names")
    for prefix in ("kitchen", "hall"):
        bucket.blob(f"{prefix}/room.jpg").upload_from_filename(PHOTOS[0])
    assert predict("gs://same-names/kitchen/room.jpg", "gs://same-names/hall/room.jpg",
                   "--model-dir", model_dir, *out) == 2  # fmt: skip
    assert (
        "gs://same-names/kitchen/room.jpg and gs://same-names/hall/room.jpg would both write"
        in error(capsys)
    )
    with pytest.raises(SystemExit):
        predict(PHOTOS[0], *out)
    assert "one of the arguments --model-dir --tflite is required" in error(capsys)


def test_probabilities_are_resized_bilinearly_and_label_maps_nearest(monkeypatch):
    probabilities = np.random.default_rng(0).random((8, 6, 5)).astype(np.float32)
    whole = tf.argmax(tf.image.resize(probabilities, (50, 70), method="bilinear"), axis=-1)
    monkeypatch.setattr(predictor, "BAND_VALUES", 7 * 70 * 5)  # bands of 7 rows
    labels = predictor.window_labels(probabilities, "probabilities", 50, 70)
    assert labels.dtype == np.uint8 and (labels == whole.numpy()).all()
    label_map = np.array([[0, 1], [2, 3]], np.int32)
    resized = predictor.window_labels(label_map, "labels", 4, 6)
    assert resized.dtype == np.uint8
    assert resized.tolist() == [[0, 0, 0, 1, 1, 1]] * 2 + [[2, 2, 2, 3, 3, 3]] * 2
    with pytest.raises(StageError, match="cannot be read"):
        predictor.read_photo(Path(__file__))
