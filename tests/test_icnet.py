"""ICNet: shapes, argument checks, size and FLOPs against hand counts and the paper, weight
sharing, mixed precision, saving, and TFLite / Core ML conversion in eval mode."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from image_segmentation.errors import StageError
from image_segmentation.model import icnet

PAPER_GFLOPS_1024X2048 = 28.3  # ICNet paper, Cityscapes 1024x2048 (19 classes)
LEGACY_MLMODEL_BYTES = 26.9e6  # the legacy tool's 768x768 alpha-1 Core ML file, FP32 weights


def randomize_batchnorm(model: keras.Model, rng: np.random.Generator) -> None:
    """Non-trivial gamma, beta and moving statistics, so eval mode differs from train mode."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            channels = layer.gamma.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, channels),
                    rng.normal(0.0, 0.2, channels),
                    rng.normal(0.0, 0.2, channels),
                    rng.uniform(0.5, 2.0, channels),
                ]
            )


def hand_counted_convs(alpha: float, num_classes: int) -> list[tuple[int, int, int, int, bool]]:
    """(kernel, in, out, output stride, followed by BN) of every conv of the inference model,
    written down from the ICNet architecture, independently of the Keras model."""

    def w(channels):
        return round(channels * alpha)

    def bottleneck(cin, mid, stride, project):
        convs = [(1, cin, 4 * mid, stride, True)] if project else []
        return [*convs, (1, cin, mid, stride, True), (3, mid, mid, stride, True),
                (1, mid, 4 * mid, stride, True)]  # fmt: skip

    convs = [(3, 3, w(32), 4, True), (3, w(32), w(32), 4, True), (3, w(32), w(64), 4, True)]
    convs += bottleneck(w(64), w(32), 8, True) + 2 * bottleneck(w(128), w(32), 8, False)
    convs += bottleneck(w(128), w(64), 16, True)
    convs += 3 * bottleneck(w(256), w(64), 32, False)
    convs += bottleneck(w(256), w(128), 32, True) + 5 * bottleneck(w(512), w(128), 32, False)
    convs += bottleneck(w(512), w(256), 32, True) + 2 * bottleneck(w(1024), w(256), 32, False)
    convs += [(1, w(1024), w(256), 32, True)]  # conv5_4_k1 after pyramid pooling
    convs += [(3, w(256), w(128), 16, True), (1, w(256), w(128), 16, True)]  # CFF sub24
    convs += [(3, 3, w(32), 2, True), (3, w(32), w(32), 4, True), (3, w(32), w(64), 8, True)]
    convs += [(3, w(128), w(128), 8, True), (1, w(64), w(128), 8, True)]  # CFF sub12
    return [*convs, (1, w(128), num_classes, 4, False)]  # conv6_cls, with bias


def hand_count(alpha, num_classes, size) -> tuple[int, int]:
    """(parameters incl. BN moving statistics, multiply-accumulates per image)."""
    params = macs = 0
    for kernel, cin, cout, stride, batchnorm in hand_counted_convs(alpha, num_classes):
        weights = kernel * kernel * cin * cout
        params += weights + (4 * cout if batchnorm else cout)
        macs += (size[0] // stride) * (size[1] // stride) * weights
    return params, macs


@pytest.mark.parametrize(
    ("size", "alpha"), [((256, 256), 1.0), ((256, 256), 0.25), ((256, 512), 1.0), ((96, 160), 0.25)]
)
def test_outputs_are_logits_at_s4_s8_s16_and_inference_gives_probabilities(size, alpha):
    model = icnet.build_icnet(num_classes=4, image_size=size, alpha=alpha)
    image = np.random.default_rng(0).uniform(-0.5, 0.5, (1, *size, 3)).astype("float32")
    outputs = model(image, training=False)
    height, width = size
    assert model.input.name == "image"
    assert {name: tuple(out.shape) for name, out in outputs.items()} == {
        "conv6_cls": (1, height // 4, width // 4, 4),
        "sub24_out": (1, height // 8, width // 8, 4),
        "sub4_out": (1, height // 16, width // 16, 4),
    }
    for out in outputs.values():
        assert out.dtype == "float32"
        assert not np.allclose(np.sum(out, axis=-1), 1.0, atol=1e-2)  # logits, not probabilities
    probabilities = icnet.inference_model(model)(image, training=False)
    np.testing.assert_allclose(probabilities, keras.ops.softmax(outputs["conv6_cls"]), atol=1e-6)


@pytest.mark.parametrize("size", [(100, 100), (256, 250), (0, 256), (-32, 64), (64.5, 64)])
def test_bad_image_size_is_refused(size):
    with pytest.raises(StageError, match="positive multiples of 32"):
        icnet.build_icnet(4, size)


def test_image_size_needs_height_and_width():
    with pytest.raises(StageError, match=r"must be \(height, width\), got \(256,\)"):
        icnet.build_icnet(4, (256,))


def test_bad_size_message_suggests_a_valid_size():
    with pytest.raises(StageError, match=r"image size 500x375 .* e\.g\. 512x384"):
        icnet.build_icnet(4, (500, 375))


@pytest.mark.parametrize("alpha", [0.0, -0.5, float("nan")])
def test_bad_alpha_is_refused(alpha):
    with pytest.raises(StageError, match=r"alpha .* must be > 0"):
        icnet.build_icnet(4, (64, 64), alpha=alpha)


def test_fewer_than_two_classes_is_refused():
    with pytest.raises(StageError, match="at least 2 classes"):
        icnet.build_icnet(1, (64, 64))


def test_bin_edges_cover_every_pixel_when_bins_do_not_divide():
    # 1024x2048 gives 32x64 at S/32: bin 3 divides neither side.
    assert icnet.bin_edges(32, 3) == [(0, 11), (10, 22), (21, 32)]
    assert icnet.bin_edges(12, 6) == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10), (10, 12)]
    assert icnet.bin_edges(2, 6) == [(0, 1), (0, 1), (0, 1), (1, 2), (1, 2), (1, 2)]


@pytest.mark.parametrize(("height", "width", "bins"), [(5, 7, 3), (4, 5, 6), (32, 64, 3)])
def test_adaptive_pooling_averages_each_bin(height, width, bins):
    x = np.random.default_rng(1).normal(size=(2, height, width, 3)).astype("float32")
    pooled = np.asarray(icnet.AdaptiveAveragePooling2D(bins)(x))
    assert pooled.shape == (2, bins, bins, 3)
    for i in range(bins):
        top, bottom = math.floor(i * height / bins), math.ceil((i + 1) * height / bins)
        for j in range(bins):
            left, right = math.floor(j * width / bins), math.ceil((j + 1) * width / bins)
            expected = x[:, top:bottom, left:right].mean(axis=(1, 2))
            np.testing.assert_allclose(pooled[:, i, j], expected, rtol=1e-5, atol=1e-6)


def test_adaptive_pooling_equals_average_pooling_when_bins_divide():
    x = np.random.default_rng(2).normal(size=(1, 12, 18, 4)).astype("float32")
    expected = keras.layers.AveragePooling2D(pool_size=(4, 6))(x)
    np.testing.assert_allclose(icnet.AdaptiveAveragePooling2D(3)(x), expected, rtol=1e-5)


@pytest.mark.slow
def test_size_and_flops_match_hand_counts_and_the_paper():
    """FLOPs are multiply-accumulates (MACs) of convs and dense layers, per image."""
    counts = {}
    for alpha in (1.0, 0.25):
        for size in ((768, 768), (1024, 2048)):
            model = icnet.inference_model(icnet.build_icnet(19, size, alpha))
            params, macs = model.count_params(), icnet.count_multiply_adds(model)
            counts[alpha, size] = params, macs
            print(
                f"ICNet alpha={alpha} {size[0]}x{size[1]} 19 classes: {params:,} parameters, "
                f"{macs / 1e9:.2f} GMACs (= {2 * macs / 1e9:.2f} G multiplies + adds)"
            )
            assert (params, macs) == hand_count(alpha, 19, size)

    # Exact values, worked out by hand from the architecture (see hand_counted_convs).
    assert counts[1.0, (768, 768)][0] == 6_728_531
    assert counts[0.25, (768, 768)][0] == 432_035
    # Widths scale by alpha, so parameters and MACs by about alpha^2 (a bit more: the
    # 3-channel input and the class count do not scale).
    for index in (0, 1):
        ratio = counts[0.25, (768, 768)][index] / counts[1.0, (768, 768)][index]
        assert 1 / 16 < ratio < 1.1 / 16
    # Every layer's output is a fixed fraction of the input: MACs scale with pixel count.
    for alpha in (1.0, 0.25):
        big, small = counts[alpha, (1024, 2048)][1], counts[alpha, (768, 768)][1]
        assert big * 768 * 768 == small * 1024 * 2048
    # The paper's 28.3 GFLOPs at 1024x2048 counts MACs: within 5% of ours.
    assert counts[1.0, (1024, 2048)][1] / 1e9 == pytest.approx(PAPER_GFLOPS_1024X2048, rel=0.05)
    # fritz's alpha-1 model file was 26.9 MB of FP32 weights; its 10-label whitelist gives
    # 11 classes, and its parameter-free pyramid pooling matches ours in size.
    legacy_params = counts[1.0, (768, 768)][0] - (19 - 11) * (128 + 1)
    assert 4 * legacy_params == pytest.approx(LEGACY_MLMODEL_BYTES, rel=0.01)


def test_training_model_adds_only_the_guidance_heads():
    model = icnet.build_icnet(19, (256, 256), 1.0)
    inference = icnet.inference_model(model)
    heads = (128 * 19 + 19) + (256 * 19 + 19)  # sub24_out from 128 channels, sub4_out from 256
    assert model.count_params() - inference.count_params() == heads
    assert {layer.name for layer in model.layers} - {layer.name for layer in inference.layers} == {
        "sub24_out_logits", "sub24_out", "sub4_out_logits", "sub4_out"
    }  # fmt: skip


def test_inference_model_shares_the_training_weights():
    training = icnet.build_icnet(num_classes=3, image_size=(64, 96), alpha=0.25)
    inference = icnet.inference_model(training)
    assert inference.output.shape == (None, 16, 24, 3)
    assert len(inference.outputs) == 1
    assert inference.get_layer("conv6_cls_logits") is training.get_layer("conv6_cls_logits")

    image = np.random.default_rng(3).uniform(-0.5, 0.5, (1, 64, 96, 3)).astype("float32")
    before = np.asarray(inference(image, training=False))
    kernel, bias = training.get_layer("conv6_cls_logits").get_weights()
    training.get_layer("conv6_cls_logits").set_weights(
        [kernel, bias + np.array([0.0, 0.0, 50.0], "float32")]
    )
    after = np.asarray(inference(image, training=False))
    assert np.all(after.argmax(axis=-1) == 2)
    assert not np.allclose(before, after)
    logits = training(image, training=False)["conv6_cls"]
    np.testing.assert_allclose(after, keras.ops.softmax(logits), atol=1e-6)


def test_mixed_precision_keeps_float32_logits_and_probabilities():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = icnet.build_icnet(num_classes=3, image_size=(64, 64), alpha=0.25)
        inference = icnet.inference_model(model)
    finally:
        keras.config.set_dtype_policy("float32")
    assert model.get_layer("conv5_4_k1").compute_dtype == "float16"
    assert model.get_layer("conv6_cls_logits").compute_dtype == "float16"
    image = np.zeros((1, 64, 64, 3), "float32")
    for out in model(image, training=False).values():
        assert out.dtype == "float32"
    probabilities = inference(image, training=False)
    assert probabilities.dtype == "float32"
    np.testing.assert_allclose(np.sum(probabilities, axis=-1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_full_model_saves_and_loads(tmp_path):
    model = icnet.build_icnet(num_classes=3, image_size=(64, 64), alpha=0.25)
    randomize_batchnorm(model, np.random.default_rng(4))
    model.save(tmp_path / "icnet.keras")
    loaded = keras.models.load_model(tmp_path / "icnet.keras")
    image = np.random.default_rng(5).uniform(-0.5, 0.5, (1, 64, 64, 3)).astype("float32")
    expected, actual = model(image, training=False), loaded(image, training=False)
    assert set(actual) == {"conv6_cls", "sub24_out", "sub4_out"}
    for name, output in actual.items():
        np.testing.assert_allclose(output, expected[name], atol=1e-6)


@pytest.fixture(scope="module")
def eval_mode_model():
    """128x160 gives 4x5 at S/32, which bins 2, 3 and 6 do not all divide."""
    keras.utils.set_random_seed(6)
    model = icnet.inference_model(
        icnet.build_icnet(num_classes=5, image_size=(128, 160), alpha=0.25)
    )
    randomize_batchnorm(model, np.random.default_rng(7))
    return model


@pytest.mark.slow
def test_tflite_matches_keras_in_eval_mode(eval_mode_model):
    from ai_edge_litert.interpreter import Interpreter

    image = np.random.default_rng(8).uniform(-0.5, 0.5, (1, 128, 160, 3)).astype("float32")
    expected = np.asarray(eval_mode_model(image, training=False))
    interpreter = Interpreter(
        model_content=tf.lite.TFLiteConverter.from_keras_model(eval_mode_model).convert()
    )
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image)
    interpreter.invoke()
    (output,) = interpreter.get_output_details()
    actual = interpreter.get_tensor(output["index"])
    assert actual.shape == (1, 32, 40, 5)
    np.testing.assert_allclose(actual, expected, atol=1e-4)
    # BatchNorm in train mode (batch statistics) would differ: the check above can fail.
    weights = eval_mode_model.get_weights()  # a train-mode call updates the moving statistics
    train_mode = np.asarray(eval_mode_model(image, training=True))
    eval_mode_model.set_weights(weights)
    assert np.abs(actual - train_mode).max() > 1e-2


@pytest.mark.slow
def test_converts_to_core_ml_mlprogram(eval_mode_model):
    import coremltools as ct

    mlmodel = ct.convert(
        eval_mode_model,
        source="tensorflow",
        convert_to="mlprogram",
        minimum_deployment_target=ct.target.iOS16,
        inputs=[ct.ImageType(name="image", shape=(1, 128, 160, 3), scale=1 / 255, bias=[-0.5] * 3)],
    )
    spec = mlmodel.get_spec()
    (image,) = spec.description.input
    assert image.name == "image"
    assert (image.type.imageType.height, image.type.imageType.width) == (128, 160)
    (output,) = spec.description.output
    assert list(output.type.multiArrayType.shape) == [1, 32, 40, 5]
    operations = spec.mlProgram.functions["main"].block_specializations["CoreML6"].operations
    assert {"conv", "upsample_bilinear", "softmax"} <= {operation.type for operation in operations}
