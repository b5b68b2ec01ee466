"""ICNet initialized from ResNet-50 weights (pretrained.py): a random ResNet-50 with perturbed
biases and BatchNorm statistics stands in for the ImageNet one, and the expected kept channels
are recomputed here from its weights with numpy."""

import json
import re

import h5py
import keras
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format

from image_segmentation.errors import StageError
from image_segmentation.model import icnet, pretrained

BLOCKS = {2: 3, 3: 4, 4: 6, 5: 3}
SIZE = (64, 64)


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    """A ResNet-50 (no top) with random biases and BatchNorm parameters, and its weights file."""
    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(*SIZE, 3))
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.normal(0, 0.5, bias.shape).astype("float32")])
        elif isinstance(layer, keras.layers.BatchNormalization):
            shape = layer.gamma.shape
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, shape).astype("float32"),
                    rng.normal(0, 0.5, shape).astype("float32"),
                    rng.normal(0, 0.5, shape).astype("float32"),
                    rng.uniform(0.5, 2.0, shape).astype("float32"),
                ]
            )
    path = tmp_path_factory.mktemp("resnet") / "resnet50.weights.h5"
    model.save_weights(path)
    return model, path


def weights(model: keras.Model) -> dict[str, list[np.ndarray]]:
    return {layer.name: layer.get_weights() for layer in model.layers if layer.weights}


def l1_order(*kernels: np.ndarray) -> np.ndarray:
    norms = np.zeros(kernels[0].shape[-1])
    for kernel in kernels:
        norms += np.abs(kernel.astype(np.float64)).sum(axis=(0, 1, 2))
    return np.argsort(-norms, kind="stable")


def stream_writers(stage: int) -> list[str]:
    """The ResNet convs whose outputs add up in a stage's residual stream."""
    blocks = range(1, BLOCKS[stage] + 1)
    return [f"conv{stage}_block1_0_conv", *(f"conv{stage}_block{b}_3_conv" for b in blocks)]


def expected_channels(source: dict, model: keras.Model) -> dict[str, tuple]:
    """ICNet conv -> (ResNet conv, kept input channels, kept output filters), built stage by
    stage from the rule in pretrained's docstring."""
    stem = model.get_layer("conv1_3_3x3").kernel.shape[-1]
    stream = l1_order(source["conv1_conv"][0])[: min(stem, 64)]
    expected = {}
    for stage, blocks in BLOCKS.items():
        writers = stream_writers(stage)
        width = model.get_layer(f"conv{stage}_1_1x1_proj").kernel.shape[-1]
        stage_stream = l1_order(*(source[name][0] for name in writers))[:width]
        expected[f"conv{stage}_1_1x1_proj"] = (writers[0], stream, stage_stream)
        for block in range(1, blocks + 1):
            prefix, resnet_prefix = f"conv{stage}_{block}", f"conv{stage}_block{block}"
            inner = model.get_layer(f"{prefix}_3x3").kernel.shape[-1]
            reduce = l1_order(source[f"{resnet_prefix}_1_conv"][0])[:inner]
            middle = l1_order(source[f"{resnet_prefix}_2_conv"][0])[:inner]
            expected[f"{prefix}_1x1_reduce"] = (
                f"{resnet_prefix}_1_conv",
                stream if block == 1 else stage_stream,
                reduce,
            )
            expected[f"{prefix}_3x3"] = (f"{resnet_prefix}_2_conv", reduce, middle)
            expected[f"{prefix}_1x1_increase"] = (f"{resnet_prefix}_3_conv", middle, stage_stream)
        stream = stage_stream
    return expected


@pytest.fixture(scope="module", params=[1.0, 0.25], ids=["alpha1", "alpha0.25"])
def initialized(request, resnet):
    """An ICNet at `alpha`, its weights before, and the report of initializing it."""
    keras.utils.set_random_seed(1)
    model = icnet.build_icnet(num_classes=4, image_size=SIZE, alpha=request.param)
    before = weights(model)
    report = pretrained.initialize(model, str(resnet[1]))
    return model, before, report


@pytest.mark.slow
def test_mapped_layers_hold_the_kept_resnet_channels(resnet, initialized):
    model, _, report = initialized
    source = weights(resnet[0])
    expected = expected_channels(source, model)
    assert [row["layer"] for row in report["layers"]] == list(expected)
    assert len(expected) == 52
    for conv, (resnet_conv, inputs, outputs) in expected.items():
        kernel, bias = source[resnet_conv]
        (icnet_kernel,) = model.get_layer(conv).get_weights()
        np.testing.assert_array_equal(icnet_kernel, kernel[:, :, inputs, :][:, :, :, outputs])

        gamma, beta, mean, variance = source[resnet_conv.replace("_conv", "_bn")]
        icnet_bn = model.get_layer(f"{conv}_bn").get_weights()
        np.testing.assert_array_equal(icnet_bn[0], gamma[outputs])
        np.testing.assert_array_equal(icnet_bn[1], beta[outputs])
        np.testing.assert_array_equal(icnet_bn[2], mean[outputs] - bias[outputs])
        np.testing.assert_array_equal(
            icnet_bn[3], variance[outputs] + np.float32(1.001e-5 - icnet.BN_EPSILON)
        )


@pytest.mark.slow
def test_unmapped_layers_keep_their_weights(initialized):
    model, before, report = initialized
    mapped = {row["layer"] for row in report["layers"]}
    mapped |= {f"{name}_bn" for name in mapped}
    untouched = [name for name in before if name not in mapped]
    for name in ("conv1_1_3x3_s2", "conv1_3_3x3_bn", "conv1_sub1", "conv3_sub1_bn",
                 "conv5_4_k1", "conv_sub4", "conv3_1_sub2_proj", "conv6_cls_logits"):  # fmt: skip
        assert name in untouched
    for name in untouched:
        for old, new in zip(before[name], model.get_layer(name).get_weights(), strict=True):
            np.testing.assert_array_equal(new, old, err_msg=name)


@pytest.mark.slow
def test_report_counts_the_parameters_set(initialized):
    model, _, report = initialized
    mapped = sum(
        model.get_layer(row["layer"]).count_params()
        + model.get_layer(f"{row['layer']}_bn").count_params()
        for row in report["layers"]
    )
    assert report["parameters"] == mapped  # alpha <= 1: no zero-filled channels
    assert report["total_parameters"] == model.count_params()
    assert all(row["zero_channels"] == 0 for row in report["layers"])
    row = report["layers"][0]
    assert row["layer"] == "conv2_1_1x1_proj" and row["from"] == "conv2_block1_0_conv"
    assert row["filters"][1] == 256 and row["channels"][1] == 64
    assert json.loads(json.dumps(report)) == report  # goes into config.json as it is


@pytest.mark.slow
def test_alpha_2_blocks_compute_resnets_blocks(resnet):
    """Nothing is pruned at alpha = 2: the undilated bottlenecks compute ResNet's, on channels
    in L1 order, and conv2_1 ignores the stem channels beyond ResNet's 64."""
    source_model, path = resnet
    model = icnet.build_icnet(num_classes=4, image_size=(128, 128), alpha=2.0)
    report = pretrained.initialize(model, str(path))
    assert report["layers"][0]["zero_channels"] == 64
    assert all(row["filters"][0] == row["filters"][1] for row in report["layers"])

    source = weights(source_model)
    stem = l1_order(source["conv1_conv"][0])
    stream2, stream3 = (l1_order(*(source[name][0] for name in stream_writers(s))) for s in (2, 3))
    blocks = [  # ICNet block (input, output layer), ResNet's, ResNet input channels, output
        (("pool1_3x3_s2", "conv2_1_relu"), ("pool1_pool", "conv2_block1_out"), stem, stream2),
        (("conv2_1_relu", "conv2_2_relu"), ("conv2_block1_out", "conv2_block2_out"),
         stream2, stream2),
        (("conv2_3_relu", "conv3_1_relu"), ("conv2_block3_out", "conv3_block1_out"),
         stream2, stream3),
    ]  # fmt: skip
    rng = np.random.default_rng(2)
    for icnet_ends, resnet_ends, inputs, outputs in blocks:
        icnet_block = keras.Model(*(model.get_layer(name).output for name in icnet_ends))
        resnet_block = keras.Model(*(source_model.get_layer(name).output for name in resnet_ends))
        x = rng.normal(size=(1, *resnet_block.input.shape[1:])).astype("float32")
        icnet_x = x[..., inputs]
        extra = icnet_block.input.shape[-1] - icnet_x.shape[-1]  # conv2_1: stem beyond 64
        icnet_x = np.concatenate([icnet_x, rng.normal(size=(*x.shape[:3], extra))], axis=-1)
        icnet_x = icnet_x.astype("float32")
        assert icnet_x.shape[1:] == icnet_block.input.shape[1:]
        expected = keras.ops.convert_to_numpy(resnet_block(x, training=False))[..., outputs]
        actual = keras.ops.convert_to_numpy(icnet_block(icnet_x, training=False))
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)


def test_keras_legacy_h5_file(resnet, tmp_path):
    """Keras' own ImageNet file is a legacy .h5: it loads to the same ResNet-50 weights."""
    source_model, _ = resnet
    legacy = tmp_path / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    with h5py.File(legacy, "w") as file:
        legacy_h5_format.save_weights_to_hdf5_group(file, source_model)
    loaded = weights(pretrained.load_resnet50(str(legacy)))
    for name, layer_weights in weights(source_model).items():
        for old, new in zip(layer_weights, loaded[name], strict=True):
            np.testing.assert_array_equal(new, old, err_msg=name)


@pytest.fixture(scope="module")
def small_model_file(tmp_path_factory):
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="conv")])
    path = tmp_path_factory.mktemp("small") / "small.weights.h5"
    model.save_weights(path)
    return path


@pytest.fixture(scope="module")
def small_icnet():
    return icnet.build_icnet(num_classes=4, image_size=SIZE, alpha=0.25)


def test_wrong_files_are_stage_errors(resnet, small_model_file, small_icnet, tmp_path):
    truncated = tmp_path / "truncated.weights.h5"
    truncated.write_bytes(resnet[1].read_bytes()[:100_000])
    before = weights(small_icnet)
    for path in (small_model_file, truncated):
        with pytest.raises(
            StageError, match=f"^{re.escape(str(path))} does not hold ResNet-50 weights"
        ):
            pretrained.initialize(small_icnet, str(path))
    with pytest.raises(StageError, match="is not a file; expected ResNet-50"):
        pretrained.initialize(small_icnet, str(tmp_path / "missing.weights.h5"))
    for name, layer_weights in before.items():
        for old, new in zip(layer_weights, small_icnet.get_layer(name).get_weights(), strict=True):
            np.testing.assert_array_equal(new, old)


def test_gcs_source_is_downloaded(gcs_client, small_model_file, small_icnet):
    gcs_client.create_bucket("weights").blob("w/small.weights.h5").upload_from_filename(
        str(small_model_file)
    )
    uri = "gs://weights/w/small.weights.h5"
    with pytest.raises(StageError, match=f"^{re.escape(uri)} does not hold ResNet-50 weights"):
        pretrained.initialize(small_icnet, uri)
    with pytest.raises(StageError, match="does not exist"):
        pretrained.initialize(small_icnet, "gs://weights/w/missing.weights.h5")


def test_imagenet_download_failure_is_a_stage_error(small_icnet, monkeypatch):
    def no_network(**kwargs):
        raise Exception("URL fetch failure: [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras.applications, "ResNet50", no_network)
    with pytest.raises(StageError, match="cannot get Keras' ImageNet ResNet-50 weights: URL"):
        pretrained.initialize(small_icnet, "imagenet")


def test_too_wide_or_not_icnet_is_a_stage_error(resnet):
    too_wide = icnet.build_icnet(num_classes=4, image_size=SIZE, alpha=2.1)
    with pytest.raises(StageError, match=r"conv2_1_1x1_proj has 268 filters.*up to alpha = 2"):
        pretrained.initialize(too_wide, str(resnet[1]))
    with pytest.raises(StageError, match="has no layer conv2_1_1x1_proj: ResNet-50 weights"):
        pretrained.initialize(resnet[0], str(resnet[1]))


@pytest.mark.slow
def test_the_train_stage_starts_from_the_file_and_records_what_it_set(resnet, tmp_path):
    """`train --init PATH` on a real (tiny) run: config.json records the layers set and the
    parameters they cover; a rerun resumes from its checkpoint and keeps that record."""
    from test_dataset import write_prepared

    from image_segmentation import cli
    from image_segmentation.contracts import model_folder

    data = write_prepared(tmp_path / "data", num_train=8, num_val=2)
    args = ["train", "--data-dir", str(data), "--output-dir", str(tmp_path / "model"),
            "--image-size", "64", "--alpha", "0.25", "--epochs", "1", "--steps-per-epoch", "2",
            "--batch-size", "2", "--init", str(resnet[1])]  # fmt: skip
    assert cli.main(args) == 0
    config = json.loads((tmp_path / "model" / model_folder.CONFIG_FILE).read_text())
    report = config["training"]["init_report"]
    assert config["training"]["init"] == str(resnet[1]) == report["source"]
    assert len(report["layers"]) == 52 and report["layers"][0]["from"] == "conv2_block1_0_conv"
    assert 0.8 < report["parameters"] / report["total_parameters"] < 0.95
    assert cli.main(args) == 0  # finished: trains nothing, the record stays
    again = json.loads((tmp_path / "model" / model_folder.CONFIG_FILE).read_text())
    assert again["training"]["init_report"] == report
