"""ICNet (Zhao et al., "ICNet for Real-Time Semantic Segmentation on High-Resolution Images",
ECCV 2018), with every width scaled by `alpha`.

Three branches see the image at full, 1/2 and 1/4 resolution. The expensive dilated ResNet
runs only on the 1/4 branch (at 1/32 of the input); the 1/2 branch shares its first layers
(conv1..conv3_1), and the cheap full-resolution branch adds detail. Cascade feature fusion
(CFF) units merge them at S/16 and S/8, and the classifier runs at S/4. Two extra classifiers
at S/16 and S/8 give the cascade label guidance used only in training. Every classifier outputs
logits, which the loss takes; the softmax is only in the inference model.

Layer names follow the reference Caffe/TensorFlow implementations (conv1_1_3x3_s2, conv3_1,
conv5_4_k1, conv_sub4, ...) and stay stable: checkpoints, and weight copies between models of
other input sizes, find weights by them. Everything here converts to Core ML and TFLite: fixed
2x upsamplings are `UpSampling2D(interpolation="bilinear")`, other resizes are the small
`BilinearResize` layer (never keras `Resizing`: after `model.export()` a model that holds it
runs BatchNorm in training mode, and its outputs are wrong).
"""

import contextlib
import math
from collections.abc import Iterator

import keras
import numpy as np
from keras import layers, ops

from image_segmentation.errors import StageError
from image_segmentation.model import shapes

SIZE_MULTIPLE = shapes.SIZE_MULTIPLE
PYRAMID_BINS = (1, 2, 3, 6)
INFERENCE_OUTPUT = "conv6_cls"  # S/4; the label-guidance heads are "sub24_out" and "sub4_out"
OUTPUTS = (INFERENCE_OUTPUT, "sub24_out", "sub4_out")  # the training model's, S/4 first
BN_MOMENTUM = 0.95  # reference implementations; Keras' 0.99 lags on short training runs
BN_EPSILON = 1e-5


@keras.saving.register_keras_serializable(package="image_segmentation")
class BilinearResize(layers.Layer):
    """Bilinear resize to a fixed (height, width), for ratios that are not integer factors."""

    def __init__(self, size: tuple[int, int], **kwargs):
        super().__init__(**kwargs)
        self.size = tuple(int(dim) for dim in size)

    def call(self, inputs):
        return ops.image.resize(inputs, self.size, interpolation="bilinear")

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.size, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "size": self.size}


def bin_edges(length: int, bins: int) -> list[tuple[int, int]]:
    """[start, end) of each adaptive-pooling bin: floor(i*n/b) to ceil((i+1)*n/b).

    Bins overlap by a pixel when `bins` does not divide `length` (1024x2048 gives 32x64
    at S/32, which bin 3 does not divide) and repeat pixels when bins > length, so any
    size pools to exactly `bins` cells. This is PyTorch's AdaptiveAvgPool2d rule.
    """
    return [(i * length // bins, math.ceil((i + 1) * length / bins)) for i in range(bins)]


@keras.saving.register_keras_serializable(package="image_segmentation")
class AdaptiveAveragePooling2D(layers.Layer):
    """Average-pools a map of any static size to bins x bins cells (pyramid pooling).

    Built from slices, means and concatenations, which every converter accepts; when
    `bins` divides the size it equals AveragePooling2D with pool = stride = size / bins.
    """

    def __init__(self, bins: int, **kwargs):
        super().__init__(**kwargs)
        self.bins = int(bins)

    def call(self, inputs):
        height, width = inputs.shape[1], inputs.shape[2]
        rows = [
            ops.mean(inputs[:, start:end], axis=1, keepdims=True)
            for start, end in bin_edges(height, self.bins)
        ]
        rows = ops.concatenate(rows, axis=1)
        cells = [
            ops.mean(rows[:, :, start:end], axis=2, keepdims=True)
            for start, end in bin_edges(width, self.bins)
        ]
        return ops.concatenate(cells, axis=2)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.bins, self.bins, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "bins": self.bins}


def conv_bn(x, filters: int, kernel: int, name: str, strides=1, dilation=1, relu=True):
    """Conv without bias (BatchNorm supplies the offset), BatchNorm, optional ReLU."""
    x = layers.Conv2D(
        filters,
        kernel,
        strides=strides,
        dilation_rate=dilation,
        padding="same",
        use_bias=False,
        name=name,
    )(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x) if relu else x


def bottleneck(x, filters: int, name: str, strides=1, dilation=1, project=False):
    """ResNet bottleneck: 1x1 reduce, 3x3 (dilated), 1x1 increase to 4x `filters`, plus the
    shortcut, projected by a 1x1 conv when the width or stride changes."""
    shortcut = x
    if project:
        shortcut = conv_bn(x, 4 * filters, 1, f"{name}_1x1_proj", strides=strides, relu=False)
    x = conv_bn(x, filters, 1, f"{name}_1x1_reduce", strides=strides)
    x = conv_bn(x, filters, 3, f"{name}_3x3", dilation=dilation)
    x = conv_bn(x, 4 * filters, 1, f"{name}_1x1_increase", relu=False)
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.ReLU(name=f"{name}_relu")(x)


def residual_stage(x, filters: int, stage: int, last: int, first=1, strides=1, dilation=1):
    """Bottlenecks conv{stage}_{first}..conv{stage}_{last}; block 1 projects and strides."""
    for block in range(first, last + 1):
        x = bottleneck(
            x,
            filters,
            f"conv{stage}_{block}",
            strides=strides if block == 1 else 1,
            dilation=dilation,
            project=block == 1,
        )
    return x


def pyramid_pooling(x, filters: int):
    """Pyramid pooling (bins 1, 2, 3, 6), each upsampled back and summed with the input as in
    ICNet (PSPNet concatenates instead), then a 1x1 conv to `filters`."""
    size = (x.shape[1], x.shape[2])
    pooled = [x]
    for bins in PYRAMID_BINS:
        cells = AdaptiveAveragePooling2D(bins, name=f"conv5_3_pool{bins}")(x)
        pooled.append(BilinearResize(size, name=f"conv5_3_pool{bins}_interp")(cells))
    x = layers.Add(name="conv5_3_sum")(pooled)
    return conv_bn(x, filters, 1, "conv5_4_k1")


def cascade_feature_fusion(
    low, high, filters: int, name: str, upsample: str, low_conv: str, high_conv: str
):
    """CFF unit: the low-resolution map upsampled 2x then a 3x3 dilation-2 conv + BN, the
    high-resolution map through a 1x1 conv + BN, added, ReLU.

    Returns the fused map and the upsampled low map, which feeds a label-guidance head.
    """
    upsampled = layers.UpSampling2D(2, interpolation="bilinear", name=upsample)(low)
    x = layers.Add(name=name)(
        [
            conv_bn(upsampled, filters, 3, low_conv, dilation=2, relu=False),
            conv_bn(high, filters, 1, high_conv, relu=False),
        ]
    )
    return layers.ReLU(name=f"{name}_relu")(x), upsampled


def classifier(x, num_classes: int, name: str):
    """1x1 conv to class logits, output in float32 even under a mixed_float16 policy: the loss
    is computed on them, and float16 would round it."""
    x = layers.Conv2D(num_classes, 1, name=f"{name}_logits")(x)
    return layers.Activation("linear", dtype="float32", name=name)(x)


@contextlib.contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Build layers under a Keras dtype policy, restoring the previous one afterwards."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def check_arguments(num_classes: int, image_size: tuple[int, int], alpha: float) -> None:
    """Refuse what ICNet cannot build, with a message that says what would work."""
    found = shapes.problems(num_classes, image_size, alpha)
    if found:
        raise StageError("; ".join(found))


def build_icnet(num_classes: int, image_size: tuple[int, int], alpha: float = 1.0) -> keras.Model:
    """The training model: input "image" (float32 [batch, H, W, 3], already normalized),
    outputs {"conv6_cls": S/4, "sub24_out": S/8, "sub4_out": S/16} float32 class logits."""
    check_arguments(num_classes, image_size, alpha)

    def width(channels: int) -> int:
        return max(1, round(channels * alpha))

    height, image_width = (int(dim) for dim in image_size)
    image = keras.Input(shape=(height, image_width, 3), name="image")

    # 1/2 branch: light convs and conv2_1..conv3_1, S/2 -> S/16. Downsampling by exactly 2
    # with half-pixel bilinear interpolation is a 2x2 average, so it is pooling here.
    x = layers.AveragePooling2D(2, name="data_sub2")(image)
    x = conv_bn(x, width(32), 3, "conv1_1_3x3_s2", strides=2)
    x = conv_bn(x, width(32), 3, "conv1_2_3x3")
    x = conv_bn(x, width(64), 3, "conv1_3_3x3")
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool1_3x3_s2")(x)
    x = residual_stage(x, width(32), stage=2, last=3)
    conv3_1 = residual_stage(x, width(64), stage=3, last=1, strides=2)

    # 1/4 branch: continues from conv3_1 (shared weights), S/32, dilated instead of strided.
    x = layers.AveragePooling2D(2, name="conv3_1_sub4")(conv3_1)
    x = residual_stage(x, width(64), stage=3, first=2, last=4)
    x = residual_stage(x, width(128), stage=4, last=6, dilation=2)
    x = residual_stage(x, width(256), stage=5, last=3, dilation=4)
    conv5_4 = pyramid_pooling(x, width(256))

    # Full-resolution branch: three strided convs, S -> S/8.
    x = conv_bn(image, width(32), 3, "conv1_sub1", strides=2)
    x = conv_bn(x, width(32), 3, "conv2_sub1", strides=2)
    conv3_sub1 = conv_bn(x, width(64), 3, "conv3_sub1", strides=2)

    # Cascade feature fusion: S/32 + S/16 -> S/16, then + S/8 -> S/8.
    sub24, conv5_4_up = cascade_feature_fusion(
        conv5_4, conv3_1, width(128), name="sub24_sum",
        upsample="conv5_4_interp", low_conv="conv_sub4", high_conv="conv3_1_sub2_proj",
    )  # fmt: skip
    sub12, sub24_up = cascade_feature_fusion(
        sub24, conv3_sub1, width(128), name="sub12_sum",
        upsample="sub24_sum_interp", low_conv="conv_sub2", high_conv="conv3_sub1_proj",
    )  # fmt: skip
    sub12_up = layers.UpSampling2D(2, interpolation="bilinear", name="sub12_sum_interp")(sub12)

    outputs = {
        "conv6_cls": classifier(sub12_up, num_classes, "conv6_cls"),
        "sub24_out": classifier(sub24_up, num_classes, "sub24_out"),
        "sub4_out": classifier(conv5_4_up, num_classes, "sub4_out"),
    }
    return keras.Model(image, outputs, name="icnet")


def non_finite_weights(model: keras.Model) -> list[str]:
    """The paths of the model's weights that hold NaN or infinity: a run that diverged."""
    return [w.path for w in model.weights if not np.isfinite(ops.convert_to_numpy(w)).all()]


def inference_model(training_model: keras.Model) -> keras.Model:
    """The deployable model: the training model's own layers (so its weights, with no copy)
    up to the S/4 "conv6_cls" logits, without the label-guidance heads, then a float32 softmax:
    the class probabilities."""
    logits = training_model.get_layer(INFERENCE_OUTPUT).output
    probabilities = layers.Softmax(dtype="float32", name="probabilities")(logits)
    return keras.Model(training_model.input, probabilities, name="icnet_inference")


def count_multiply_adds(model: keras.Model) -> int:
    """Multiply-adds (MACs) per image of the model's convolutions and dense layers.

    The ICNet paper's "28.3 GFLOPs" at 1024x2048 counts these (double it for multiplies and
    adds counted apart). BatchNorm (folded into the convs on
    export), activations, pooling, resizing and additions are left out: they are small next
    to the convolutions. Reads static layer shapes; it never runs the model.
    """
    total = 0
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D | layers.Dense):
            # Conv kernel (kh, kw, cin/groups, cout) and Dense kernel (cin, cout): one MAC per
            # kernel element at every output position.
            positions = math.prod(layer.output.shape[1:-1])
            total += positions * math.prod(layer.kernel.shape)
    return total
