"""Export stage: Core ML specs read back, TFLite numerics on real images, bad input.

Models are small (128x128, alpha 0.25, 4 classes) with untrained weights; the classifier is
rescaled so the probabilities are peaked, as a trained model's are, and argmax agreement
means something.
"""

import functools
import json
import os
import re
import stat
from dataclasses import replace
from pathlib import Path

import coremltools as ct
import keras
import numpy as np
import pytest
from conftest import ADE_SAMPLE
from PIL import Image

from image_segmentation import cli, files
from image_segmentation.cloud import upload
from image_segmentation.contracts import evaluation_folder as evaluate
from image_segmentation.contracts import export_folder, model_folder
from image_segmentation.data import dataset, records
from image_segmentation.errors import StageError
from image_segmentation.export import coreml_spec, exporter, tflite
from image_segmentation.export import options as export
from image_segmentation.model import icnet
from image_segmentation.model import weights as inference

SIZE = (128, 128)
LABELS = ["none", "wall", "floor, flooring", "chair"]
LEGACY_NORMALIZATION = {"scale": 1 / 255, "offset": -0.5}
OTHER_NORMALIZATION = {"scale": 2 / 255, "offset": -1.0}
METRICS = {"val_pixel_accuracy": 0.5, "val_miou": 0.25}


def write_model_dir(directory: Path, normalization: dict, alpha: float = 0.25) -> Path:
    """A model directory as the train stage writes it, with random weights whose classifier
    is rescaled and centred so that, as in a trained model, the probabilities are peaked and
    every class wins some pixels."""
    keras.utils.set_random_seed(0)
    model = icnet.build_icnet(len(LABELS), SIZE, alpha)
    classifier = model.get_layer("conv6_cls_logits")
    images, _ = tflite.load_check_images(None, SIZE, normalization, "stretch")
    logits = keras.Model(model.input, classifier.output)(images).numpy()
    classifier.kernel.assign(classifier.kernel.numpy() * 10 / logits.std())
    logits = keras.Model(model.input, classifier.output)(images).numpy()
    classifier.bias.assign(-logits.mean(axis=(0, 1, 2)))
    config = {
        "labels": LABELS,
        "num_classes": len(LABELS),
        "image_size": list(SIZE),
        "alpha": alpha,
        "normalization": normalization,
        "training": {"epochs": 1},
    }
    model_folder.write_model_dir(
        directory,
        write_weights=model.save_weights,
        config=config,
        history=[{"epoch": 1, "loss": 1.0}],
        training_metrics=METRICS,
    )
    return directory


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return write_model_dir(tmp_path_factory.mktemp("model"), LEGACY_NORMALIZATION)


def write_evaluation(directory: Path, model_dir: Path) -> Path:
    """An evaluate-stage output of `model_dir`, as the stage writes its metrics.json."""
    files.write_json(
        directory / evaluate.METRICS_FILE,
        {
            "miou": 0.41, "pixel_accuracy": 0.83, "classes_scored": 4, "pixels_scored": 1000,
            "class_iou": dict(zip(LABELS, [0.9, 0.3, 0.2, 0.24], strict=True)), "images": 3,
            "evaluation": {"resize": "stretch",
                           "model_weights_sha256": model_folder.weights_digest(model_dir)},
        },
    )  # fmt: skip
    return directory


@pytest.fixture(scope="module")
def default_export(model_dir, tmp_path_factory) -> tuple[Path, dict]:
    """The default export (FP16 ML Program, S/4 probabilities, TFLite) checked on the real
    ADE20K images, with the evaluate stage's metrics of the model."""
    output = tmp_path_factory.mktemp("export")
    evaluation = write_evaluation(tmp_path_factory.mktemp("evaluation"), model_dir)
    options = export.ExportOptions(check_images=ADE_SAMPLE / "images", version="2.1")
    metrics = evaluate.published_metrics(evaluation, model_dir)
    return output, exporter.export_model(model_dir, output, options, metrics)


def test_only_an_evaluation_of_the_exported_weights_is_published(model_dir, tmp_path):
    evaluation = write_evaluation(tmp_path / "evaluation", model_dir)
    published = evaluate.published_metrics(evaluation, model_dir)
    assert published["miou"] == 0.41 and published["class_iou"]["wall"] == 0.3
    assert published["source"] == "evaluate stage, validation split"
    other = write_model_dir(tmp_path / "other", LEGACY_NORMALIZATION, alpha=0.5)
    with pytest.raises(StageError, match=r"scores other weights than .*other's"):
        evaluate.published_metrics(evaluation, other)
    with pytest.raises(StageError, match=r"has no metrics\.json: the evaluate stage did not"):
        evaluate.published_metrics(tmp_path, model_dir)


def metadata(spec) -> dict:
    return dict(spec.description.metadata.userDefined)


@pytest.mark.slow
def test_default_export_is_an_fp16_ml_program_with_the_training_normalization(default_export):
    output, result = default_export
    spec = ct.utils.load_spec(str(output / "icnet.mlpackage"))
    assert spec.WhichOneof("Type") == "mlProgram"
    assert spec.specificationVersion >= ct.target.iOS16.value
    (source,) = spec.description.input
    assert source.name == "image"
    assert (source.type.imageType.height, source.type.imageType.width) == SIZE
    assert (
        ct.proto.FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(source.type.imageType.colorSpace)
        == "RGB"
    )
    preprocessing = coreml_spec.image_preprocessing(spec)
    assert preprocessing["scale"] == pytest.approx(LEGACY_NORMALIZATION["scale"], rel=1e-6)
    assert preprocessing["bias"] == pytest.approx([LEGACY_NORMALIZATION["offset"]] * 3)
    (target,) = spec.description.output
    assert target.name == "probabilities"
    assert list(target.type.multiArrayType.shape) == [1, SIZE[0] // 4, SIZE[1] // 4, len(LABELS)]
    weights = coreml_spec.weight_types(spec)
    assert weights.get("FLOAT16", 0) > 60 and "FLOAT32" not in weights  # one per conv at least
    assert result["coreml"]["weights"] == weights
    assert result["coreml"]["input"]["scale"] == pytest.approx(1 / 255, rel=1e-6)


@pytest.mark.slow
def test_default_export_carries_labels_preview_and_descriptions(default_export):
    output, result = default_export
    spec = ct.utils.load_spec(str(output / "icnet.mlpackage"))
    stored = metadata(spec)
    assert json.loads(stored["labels"]) == LABELS
    assert stored["com.apple.coreml.model.preview.type"] == "imageSegmenter"
    assert json.loads(stored["com.apple.coreml.model.preview.params"]) == {"labels": LABELS}
    assert stored["output"] == "probabilities"
    assert json.loads(stored["normalization"]) == LEGACY_NORMALIZATION
    assert stored["vision_image_crop_and_scale_option"] == "scaleFill"
    description = spec.description.metadata
    assert description.versionString == "2.1"
    assert description.author == export.DEFAULT_AUTHOR and "ADE20K" in description.license
    assert "4 classes" in description.shortDescription
    assert "pixel * 0.00392157 - 0.5" in spec.description.input[0].shortDescription
    assert "imageCropAndScaleOption to .scaleFill" in spec.description.input[0].shortDescription
    assert "1/4 of the input size" in spec.description.output[0].shortDescription
    # The TFLite figures travel inside the Core ML model too.
    assert (
        json.loads(stored["tflite_checks"])["float32"]["argmax_agreement"]
        == (result["tflite"]["float32"]["argmax_agreement"])
    )


@pytest.mark.slow
def test_tflite_matches_keras_on_the_real_images(default_export, model_dir):
    output, result = default_export
    assert result["check_images"] == sorted(p.name for p in (ADE_SAMPLE / "images").iterdir())
    fp32, fp16 = result["tflite"]["float32"], result["tflite"]["float16"]
    assert fp32["max_abs_diff"] <= 1e-4 and fp32["argmax_agreement"] >= 0.999
    assert fp16["max_abs_diff"] <= fp16["bounds"]["max_abs_diff"]
    assert fp16["argmax_agreement"] >= fp16["bounds"]["min_argmax_agreement"]
    assert fp16["bytes"] < 0.6 * fp32["bytes"]
    # Independently: the files on disk reproduce Keras on the same images.
    model, config = inference.load_inference_model(model_dir)
    images, _ = tflite.load_check_images(
        ADE_SAMPLE / "images", SIZE, config["normalization"], "stretch"
    )
    reference = model.predict(images, verbose=0)
    assert reference.max(axis=-1).mean() > 0.8  # peaked, and every class wins pixels:
    assert np.bincount(reference.argmax(-1).ravel(), minlength=len(LABELS)).min() > 0
    on_disk = tflite.run_tflite((output / "icnet.tflite").read_bytes(), images)
    assert np.abs(on_disk - reference).max() <= 1e-4
    assert (on_disk.argmax(-1) == reference.argmax(-1)).mean() >= 0.999


@pytest.mark.slow
def test_export_json_lists_files_and_feeds_the_upload_stage(default_export, model_dir):
    output, result = default_export
    assert json.loads((output / "export.json").read_text()) == result
    assert set(result["files"]) == {
        "icnet.mlpackage",
        "labels.txt",
        "icnet.tflite",
        "icnet_fp16.tflite",
    }
    assert result["files"]["icnet.tflite"] == (output / "icnet.tflite").stat().st_size
    assert result["files"]["icnet.mlpackage"] == export_folder.path_bytes(
        output / "icnet.mlpackage"
    )
    assert (output / "labels.txt").read_text().splitlines()[1:] == [
        f"{i}\t{label}" for i, label in enumerate(LABELS)
    ]
    assert export_folder.require_complete(output) == result
    info = upload.model_info(result, None, None)
    assert info["labels"] == LABELS
    assert info["metrics"]["miou"] == 0.41 == result["metrics"]["miou"]
    assert result["preprocessing"] == {
        "resize": "stretch",
        "vision_image_crop_and_scale_option": "scaleFill",
    }
    assert "labels" not in info["config"] and info["config"]["alpha"] == 0.25
    assert upload.model_info(result, model_dir, None) == info  # the model it was made from
    assert result["output"] == {"kind": "probabilities", "name": "probabilities",
                                "shape": [1, 32, 32, 4]}  # fmt: skip


@pytest.mark.slow
def test_exported_files_have_the_permissions_the_umask_gives(default_export):
    """coremltools saves an .mlpackage with private parts (0700 folders, 0600 files): export
    copies them anew, so the whole export is as readable as any other output."""
    output, _ = default_export
    umask = os.umask(0)
    os.umask(umask)
    modes = {
        path.relative_to(output).as_posix(): stat.S_IMODE(path.stat().st_mode)
        for path in output.rglob("*")
    }
    assert {"export.json", "icnet.mlpackage/Data/com.apple.CoreML/weights"} <= modes.keys()
    assert modes == {
        name: (0o777 if (output / name).is_dir() else 0o666) & ~umask for name in modes
    }


@pytest.mark.slow
def test_verify_rejects_a_spec_that_differs(default_export):
    output, result = default_export
    expected = {
        "image_size": SIZE,
        "normalization": LEGACY_NORMALIZATION,
        "output_name": "probabilities",
        "output_shape": result["output"]["shape"],
        "labels": LABELS,
        "precision": "float16",
        "storage": (),
    }
    assert coreml_spec.verify_coreml(output / "icnet.mlpackage", expected)["classes"] == len(LABELS)
    wrong = [
        {"labels": [*LABELS, "sofa"]},
        {"output_shape": [1, 32, 32, 5]},
        {"normalization": OTHER_NORMALIZATION},
        {"image_size": (256, 256)},
        {"precision": "float32"},
        {"output_name": "labels"},
        {"storage": ("palettized",)},
    ]
    for change in wrong:
        with pytest.raises(StageError, match="is not what was exported"):
            coreml_spec.verify_coreml(output / "icnet.mlpackage", {**expected, **change})


@pytest.mark.slow
def test_neural_network_label_map_uses_the_config_normalization(tmp_path):
    model_dir = write_model_dir(tmp_path / "model", OTHER_NORMALIZATION)
    options = export.ExportOptions(format="neuralnetwork", output="labels", tflite=False)
    result = exporter.export_model(model_dir, tmp_path / "out", options)
    spec = ct.utils.load_spec(str(tmp_path / "out" / "icnet.mlmodel"))
    assert spec.WhichOneof("Type") == "neuralNetwork"
    assert spec.specificationVersion <= ct.target.iOS14.value
    scaler = spec.neuralNetwork.preprocessing[0].scaler
    assert scaler.channelScale == pytest.approx(2 / 255, rel=1e-6)
    assert [scaler.redBias, scaler.greenBias, scaler.blueBias] == [-1.0, -1.0, -1.0]
    assert spec.description.output[0].name == "labels"
    assert coreml_spec.weight_types(spec) == {"FLOAT16": result["coreml"]["weights"]["FLOAT16"]}
    assert result["output"]["shape"] == [1, *SIZE]
    assert json.loads(metadata(spec)["labels"]) == LABELS
    assert result["tflite"] is None and set(result["files"]) == {"icnet.mlmodel", "labels.txt"}


def test_label_and_full_outputs_agree_with_the_probabilities(model_dir):
    inference_model, _ = inference.load_inference_model(model_dir)
    images = np.random.default_rng(0).uniform(-0.5, 0.5, size=(2, *SIZE, 3)).astype("float32")
    full = exporter.with_output(inference_model, "full")(images, training=False).numpy()
    label_map = exporter.with_output(inference_model, "labels")(images, training=False).numpy()
    assert full.shape == (2, *SIZE, len(LABELS))
    assert label_map.shape == (2, *SIZE) and label_map.dtype == np.int32
    np.testing.assert_array_equal(label_map, full.argmax(-1))
    assert exporter.with_output(inference_model, "probabilities") is inference_model
    with pytest.raises(StageError, match="unknown output 'logits'"):
        exporter.with_output(inference_model, "logits")


def test_export_at_another_size_keeps_the_weights(model_dir):
    trained, _ = inference.load_inference_model(model_dir)
    resized, config = inference.load_inference_model(model_dir, (192, 160))
    assert tuple(resized.input.shape[1:3]) == (192, 160)
    assert tuple(resized.output.shape[1:3]) == (48, 40)
    assert config["image_size"] == list(SIZE)
    for ours, theirs in zip(resized.get_weights(), trained.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("resize", ["stretch", "crop"])
def test_check_images_are_what_validation_feeds_the_model(tmp_path, resize):
    """The real images, through export's preprocessing and through the training input
    pipeline (validation view of a TFRecord shard), give the same tensors: one contract."""
    normalization = {"scale": 2 / 255, "offset": -1.0}
    images, names = tflite.load_check_images(ADE_SAMPLE / "images", SIZE, normalization, resize)
    assert names == ["ADE_val_00000001.jpg", "ADE_val_00000002.jpg", "ADE_val_00000003.jpg"]
    shard = tmp_path / "val-00000-of-00001.tfrecord"
    with records.TFRecordWriter(shard) as writer:
        for name in names:
            jpeg = (ADE_SAMPLE / "images" / name).read_bytes()
            mask = (ADE_SAMPLE / "annotations" / name.replace(".jpg", ".png")).read_bytes()
            with Image.open(ADE_SAMPLE / "images" / name) as image:
                width, height = image.size
            writer.write(records.segmentation_example(jpeg, name, height, width, mask))
    batches = dataset.make_dataset(
        [shard],
        SIZE,
        8,
        training=False,
        normalization=dataset.Normalization(**normalization),
        resize=resize,
    )
    (validation, _), *_ = list(batches)
    np.testing.assert_allclose(images, validation.numpy(), atol=1e-5)
    assert images.std() > 0.2  # real pixels in [-1, 1]


def test_generated_check_images_are_deterministic(tmp_path):
    check = functools.partial(
        tflite.load_check_images, size=SIZE, normalization=LEGACY_NORMALIZATION, resize="crop"
    )
    generated, names = check(None)
    assert generated.shape == (tflite.SYNTHETIC_CHECK_IMAGES, *SIZE, 3) and len(names) == 3
    np.testing.assert_array_equal(generated, check(None)[0])
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(StageError, match="holds no"):
        check(tmp_path)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(StageError, match="cannot be read"):
        check(tmp_path)


def test_numeric_bounds_are_enforced():
    bounds = tflite.TFLITE_BOUNDS["float32"]
    tflite.check_against_keras({"max_abs_diff": 1e-5, "argmax_agreement": 1.0}, bounds, "x")
    with pytest.raises(StageError, match=re.escape("max abs diff 0.001 > 0.0001")):
        tflite.check_against_keras({"max_abs_diff": 1e-3, "argmax_agreement": 1.0}, bounds, "x")
    with pytest.raises(StageError, match=re.escape("argmax agreement 0.99000 < 0.999")):
        tflite.check_against_keras({"max_abs_diff": 0.0, "argmax_agreement": 0.99}, bounds, "x")
    reference = np.array([[[0.9, 0.1], [0.2, 0.8]]])
    figures = tflite.compare(reference, np.array([[[0.6, 0.4], [0.6, 0.4]]]), "full")
    assert figures == {"max_abs_diff": pytest.approx(0.4), "argmax_agreement": 0.5}
    labels = tflite.compare(np.array([[0, 1, 1, 1]]), np.array([[0, 1, 1, 0]]), "labels")
    assert labels == {"max_abs_diff": None, "argmax_agreement": 0.75}


@pytest.mark.filterwarnings("ignore:Skipping nested container")  # weights of alpha 0.5
def test_bad_model_directories_are_refused(model_dir, tmp_path):
    """Refused before anything is written (model_dir's own tests cover each check)."""
    out = tmp_path / "out"
    with pytest.raises(StageError, match=r"model dir \S+/missing does not exist"):
        exporter.export_model(tmp_path / "missing", out, export.ExportOptions())
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    with pytest.raises(StageError, match=r"has no config\.json: the train stage did not finish"):
        exporter.export_model(incomplete, out, export.ExportOptions())
    config = model_folder.require_complete(model_dir)
    model_folder.weights_path(incomplete).write_bytes(
        model_folder.weights_path(model_dir).read_bytes()
    )
    (incomplete / model_folder.CONFIG_FILE).write_text(json.dumps({**config, "labels": LABELS[:3]}))
    with pytest.raises(StageError, match="num_classes is 4 but labels lists 3"):
        exporter.export_model(incomplete, out, export.ExportOptions())
    other_alpha = write_model_dir(tmp_path / "alpha", LEGACY_NORMALIZATION, alpha=0.5)
    (other_alpha / model_folder.CONFIG_FILE).write_text(json.dumps(config))  # claims alpha 0.25
    with pytest.raises(StageError, match=r"cannot be loaded into the model config\.json describes"):
        exporter.export_model(other_alpha, out, export.ExportOptions())
    assert not out.exists()


def test_bad_options_are_refused(model_dir, tmp_path):
    defaults = export.ExportOptions()
    cases = {
        "unknown output 'logits'": replace(defaults, output="logits"),
        "unknown format": replace(defaults, format="onnx"),
        "weight compression works on ML Programs": replace(
            defaults, format="neuralnetwork", compression="palettize-8"
        ),
        "compression starts from float16": replace(
            defaults, compression="int8", precision="float32"
        ),
        "unknown compression 'zip'": replace(defaults, compression="zip"),
        "--data-dir scores the weights read back from an ML Program": replace(
            defaults, format="neuralnetwork", data_dir=Path("data")
        ),
        "--max-miou-drop scores each compression: give --data-dir": replace(
            defaults, max_miou_drop=0.01
        ),
        r"--max-miou-drop is a mean IoU difference \(0-1\), got 2": replace(
            defaults, max_miou_drop=2, data_dir=Path("data")
        ),
        "image size 100x128 is not supported": replace(defaults, image_size=(100, 128)),
        "bad model name": replace(defaults, model_name="../up"),
    }
    for message, options in cases.items():
        with pytest.raises(StageError, match=message):
            exporter.export_model(model_dir, tmp_path / "out", options)
    assert not (tmp_path / "out").exists()


def test_cli_reports_bad_input_as_one_line(tmp_path, capsys):
    status = cli.main(
        ["export", "--model-dir", str(tmp_path / "none"), "--output-dir", str(tmp_path / "o")]
    )
    assert status == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "does not exist" in error and "\n" not in error
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["export", "--model-dir", "m", "--output-dir", "o", "--output", "logits"])
    assert exit_info.value.code == 2


def test_every_output_choice_has_a_core_ml_output_name():
    assert all(kind.feature for kind in export.OUTPUT_KINDS.values())
