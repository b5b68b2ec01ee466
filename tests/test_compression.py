"""Core ML weight compression: what a compressed file holds, read back, and the quality the
export records, computed from those weights.

Core ML cannot run here, so a file's weights are read out of the saved .mlpackage and
decompressed by coremltools (`coreml_weights.py`). The hand-made tensors below are ones
whose compressed form is known exactly: 16 distinct values fit a 4-bit palette, integers times
a per-channel scale fit int8, and pruning zeroes the smallest half.
"""

import json
from pathlib import Path

import coremltools as ct
import keras
import numpy as np
import pytest
from test_evaluate import make_masks, write_data_dir
from test_export import LABELS, LEGACY_NORMALIZATION, write_model_dir

from image_segmentation import cli
from image_segmentation.errors import StageError
from image_segmentation.evaluation import evaluator
from image_segmentation.export import coreml, coreml_spec, coreml_weights, exporter
from image_segmentation.export import options as export
from image_segmentation.model import weights

OUT_CHANNELS, IN_CHANNELS = 64, 32  # 18,432 weights: compressed (COMPRESS_MIN_WEIGHTS)


def two_conv_model(kernel: np.ndarray) -> keras.Model:
    """A small convolution (below the compression threshold) then one with `kernel`
    (height, width, in, out), no bias: the tensor under test."""
    inputs = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Conv2D(IN_CHANNELS, 3, padding="same", use_bias=False, name="small")(inputs)
    x = keras.layers.Conv2D(OUT_CHANNELS, 3, padding="same", use_bias=False, name="large")(x)
    model = keras.Model(inputs, x)
    model.get_layer("large").kernel.assign(kernel)
    return model


def read_back(kernel: np.ndarray, compression: str, tmp_path: Path) -> np.ndarray:
    """The large kernel as the saved Core ML file holds it, decompressed, in Keras layout."""
    model = two_conv_model(kernel)
    target = export.COMPRESSIONS[compression].target
    mlmodel = coreml.convert(model, {"scale": 1.0, "offset": 0.0}, "mlprogram", "float16", target)
    path = tmp_path / f"{compression}.mlpackage"
    coreml.compress(mlmodel, compression).save(str(path))
    (large,) = [k for k in coreml_weights.coreml_kernels(path) if k.shape[0] == OUT_CHANNELS]
    return np.transpose(large, (2, 3, 1, 0))


def test_a_palettized_tensor_reads_back_as_its_palette(tmp_path):
    palette = np.linspace(-0.5, 0.7, 16).astype(np.float16).astype(np.float32)
    rng = np.random.default_rng(0)
    kernel = palette[rng.integers(0, 16, size=(3, 3, IN_CHANNELS, OUT_CHANNELS))]
    np.testing.assert_array_equal(read_back(kernel, "palettize-4", tmp_path), kernel)
    # two bits: four values remain, each weight one of them
    two_bits = read_back(kernel, "palettize-2", tmp_path)
    assert len(np.unique(two_bits)) == 4
    assert np.abs(two_bits - kernel).max() <= (palette.max() - palette.min()) / 4


def test_an_int8_tensor_reads_back_as_integers_times_its_channel_scale(tmp_path):
    rng = np.random.default_rng(1)
    integers = rng.integers(-127, 128, size=(3, 3, IN_CHANNELS, OUT_CHANNELS))
    integers[0, 0, 0, :] = 127  # each output channel spans the int8 range
    scales = np.geomspace(1e-3, 1e-1, OUT_CHANNELS).astype(np.float16).astype(np.float32)
    kernel = (integers * scales).astype(np.float16).astype(np.float32)
    np.testing.assert_allclose(read_back(kernel, "int8", tmp_path), kernel, rtol=2e-3, atol=1e-6)


def test_pruning_zeroes_the_smallest_half_and_keeps_the_rest(tmp_path):
    rng = np.random.default_rng(2)
    kernel = rng.normal(size=(3, 3, IN_CHANNELS, OUT_CHANNELS)).astype(np.float16)
    kernel = kernel.astype(np.float32)
    pruned = read_back(kernel, "prune-50", tmp_path)
    kept = np.abs(kernel) > np.median(np.abs(kernel))
    np.testing.assert_array_equal(pruned[kept], kernel[kept])
    assert not pruned[~kept].any()


def test_kernels_go_back_with_the_batchnorm_fold_undone(tmp_path):
    """ICNet's BatchNorm is folded into the kernel by the converter and divided out again."""
    model, _ = weights.load_inference_model(write_model_dir(tmp_path / "m", LEGACY_NORMALIZATION))
    norm = model.get_layer("conv1_sub1_bn")
    gamma, beta, mean, variance = norm.get_weights()
    norm.set_weights([gamma * np.linspace(0.5, 2, gamma.size), beta, mean + 0.1, variance * 3])
    mlmodel = coreml.convert(model, LEGACY_NORMALIZATION, "mlprogram", "float16", "iOS16")
    mlmodel.save(str(tmp_path / "fp16.mlpackage"))
    held = coreml_weights.with_coreml_weights(model, tmp_path / "fp16.mlpackage")
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            original = layer.kernel.numpy()
            back = held.get_layer(layer.name).kernel.numpy()
            np.testing.assert_allclose(
                back, original, rtol=2e-3, atol=1e-3 * np.abs(original).max()
            )
    assert held.get_layer("conv1_sub1").kernel is not model.get_layer("conv1_sub1").kernel
    other = keras.models.clone_model(model)  # other weights: nothing in the file matches
    with pytest.raises(StageError, match="holds no kernel that matches"):
        coreml_weights.with_coreml_weights(other, tmp_path / "fp16.mlpackage")


@pytest.fixture(scope="module")
def scored_export(tmp_path_factory):
    """A full-size export with --max-miou-drop 1 scored on validation data: the smallest
    compression (a 2-bit palette, the crudest) is within 1, so its own scores differ from
    FP32's; the upsampling head adds no kernel to match."""
    root = tmp_path_factory.mktemp("compressed")
    model_dir = write_model_dir(root / "model", LEGACY_NORMALIZATION)
    data_dir = write_data_dir(root / "data", make_masks(), LABELS)
    options = export.ExportOptions(
        output="full", tflite=False, data_dir=data_dir, max_miou_drop=1.0
    )
    result = exporter.export_model(model_dir, root / "out", options)
    return model_dir, data_dir, root / "out", result


def test_a_compressed_export_records_the_quality_of_its_own_weights(scored_export, tmp_path):
    model_dir, data_dir, out, result = scored_export
    quality = result["coreml"]["quality"]
    model, config = weights.load_inference_model(model_dir)

    def miou(scored: keras.Model) -> float:
        return evaluator.score(
            scored, LABELS, (128, 128), config["normalization"], "stretch", data_dir, "test"
        )["miou"]

    from_file = miou(coreml_weights.with_coreml_weights(model, out / "icnet.mlpackage"))
    assert quality["miou"] == pytest.approx(from_file, abs=1e-9)
    assert quality["fp32_miou"] == pytest.approx(miou(model), abs=1e-9)
    assert quality["miou"] != pytest.approx(quality["fp32_miou"], abs=1e-4)
    assert quality["miou_change"] == pytest.approx(quality["miou"] - quality["fp32_miou"])
    assert quality["weights"] == "decompressed from the file" and quality["images"] == 5
    assert set(quality["class_iou"]) == set(quality["class_iou_change"]) == set(LABELS)
    record = json.loads((out / "export.json").read_text())
    assert record["compression"] == "palettize-2" and record["coreml"]["quality"] == quality
    assert record["coreml"]["minimum_deployment_target"] == "iOS16"
    spec = ct.utils.load_spec(str(out / "icnet.mlpackage"))
    assert list(spec.description.output[0].type.multiArrayType.shape) == [1, 128, 128, 4]
    assert coreml_spec.weight_types(spec)["palettized"] > 0
    assert spec.description.metadata.userDefined["compression"] == "palettize-2"
    fp16 = exporter.export_model(
        model_dir, tmp_path, export.ExportOptions(output="full", tflite=False)
    )
    assert fp16["compression"] == "none"
    assert result["coreml"]["bytes"] < 0.85 * fp16["coreml"]["bytes"]


def test_max_miou_drop_exports_the_first_compression_within_it(scored_export):
    _, _, out, result = scored_export
    (tried,) = result["coreml"]["compression_search"]  # the smallest is within 1
    assert tried["compression"] == result["compression"] == next(iter(export.COMPRESSIONS))
    assert tried["within"] and tried["bytes"] == result["coreml"]["bytes"]
    assert tried["miou"] == result["coreml"]["quality"]["miou"]
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "icnet.mlpackage", "labels.txt"]


@pytest.mark.parametrize(
    ("changes", "kept"),
    [
        ([-0.05, -0.02, -0.004, 0.001], 2),  # the first within 0.01, the later ones not tried
        ([-0.05, -0.02], 1),  # none within: the last one, float16
        ([0.0], 0),
    ],
)
def test_the_search_keeps_the_first_within_the_drop_and_deletes_the_others(tmp_path, changes, kept):
    def candidates():
        for index, change in enumerate(changes):
            path = tmp_path / str(index) / "icnet.mlpackage"
            path.parent.mkdir()
            yield {"compression": f"c{index}", "bytes": index, "path": path,
                   "quality": {"miou": 0.5 + change, "miou_change": change}}  # fmt: skip

    chosen, tried = exporter.smallest_within(candidates(), 0.01)
    assert chosen["compression"] == f"c{kept}"
    assert [entry["within"] for entry in tried] == [c >= -0.01 for c in changes[: kept + 1]]
    assert sorted(p.name for p in tmp_path.iterdir()) == [str(kept)]


def test_the_command_line_refuses_data_of_other_classes(scored_export, tmp_path, capsys):
    model_dir, _, _, _ = scored_export
    other = write_data_dir(tmp_path / "other", make_masks(), ["none", "a", "b"])
    argv = ["export", "--model-dir", str(model_dir), "--output-dir", str(tmp_path / "o")]
    assert cli.main([*argv, "--data-dir", str(other), "--max-miou-drop", "0.01"]) == 2
    assert "has other classes than the model" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
