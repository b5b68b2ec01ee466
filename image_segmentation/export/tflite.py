"""TFLite conversion, and the numeric check of a converted model against Keras.

Core ML cannot run on Linux, so the export's numerics are checked through TFLite: the same
in-memory Keras graph converted to TFLite must match Keras on real images (or, without any,
generated ADE20K-like ones) within fixed bounds, fed as the model's resize mode says
(`preprocessing.py`).
"""

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from image_segmentation.contracts import export_folder
from image_segmentation.data import preprocessing, synthetic
from image_segmentation.errors import StageError
from image_segmentation.export.options import OUTPUT_KINDS

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MAX_CHECK_IMAGES = 16
SYNTHETIC_CHECK_IMAGES = 3


@dataclass(frozen=True)
class Bounds:
    """How far a converted model may be from Keras on the check images."""

    max_abs_diff: float  # of the probabilities; not applied to label maps
    min_argmax_agreement: float  # share of pixels with the same class


# FP32 is the same computation (measured: < 1e-5). FP16 weights move probabilities by
# ~2e-4 on average and up to ~1e-2 at class boundaries, where they are steep (measured).
TFLITE_BOUNDS = {
    "float32": Bounds(max_abs_diff=1e-4, min_argmax_agreement=0.999),
    "float16": Bounds(max_abs_diff=5e-2, min_argmax_agreement=0.99),
}


def load_check_images(
    directory: Path | None, size: tuple[int, int], normalization: dict, resize: str
) -> tuple[np.ndarray, list[str]]:
    """Normalized [N, H, W, 3] images for the numeric checks, and their names.

    From `directory` (its first few JPEG/PNG files, sorted) or, without one, a few generated
    ADE20K-like images, so the check runs anywhere.
    """
    if directory is None:
        rng = np.random.default_rng(0)
        images = [
            synthetic.render_sample(rng, *size, synthetic.DEFAULT_CLASSES)[0]
            for _ in range(SYNTHETIC_CHECK_IMAGES)
        ]
        names = [f"synthetic-{number}" for number in range(len(images))]
    else:
        directory = Path(directory)
        if not directory.is_dir():
            raise StageError(f"--check-images {directory} is not a folder")
        paths = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise StageError(f"--check-images {directory} holds no {'/'.join(IMAGE_SUFFIXES)}")
        paths = paths[:MAX_CHECK_IMAGES]
        images = []
        for path in paths:  # decoded by TensorFlow, as training does (PIL's JPEG differs)
            try:
                image = tf.io.decode_image(path.read_bytes(), channels=3, expand_animations=False)
            except tf.errors.InvalidArgumentError as error:
                raise StageError(f"check image {path} cannot be read: {error.message}") from error
            images.append(image.numpy())
        names = [path.name for path in paths]
    inputs = [preprocessing.model_input(image, size, resize, normalization)[0] for image in images]
    return np.stack(inputs), names


def convert_tflite(model: keras.Model, precision: str) -> bytes:
    """TFLite flatbuffer; float16 stores the weights as float16 (half the size)."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if precision == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    return converter.convert()


def run_tflite(content: bytes, images: np.ndarray, threads: int | None = None) -> np.ndarray:
    """The TFLite model's output for each image (batch of one, as on a phone)."""
    interpreter = Interpreter(model_content=content, num_threads=threads)
    interpreter.allocate_tensors()
    (source,), (target,) = interpreter.get_input_details(), interpreter.get_output_details()
    outputs = []
    for image in images:
        interpreter.set_tensor(source["index"], image[None].astype(source["dtype"]))
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(target["index"])[0])
    return np.stack(outputs)


def compare(reference: np.ndarray, candidate: np.ndarray, output_kind: str) -> dict:
    """Max abs difference of probabilities and the share of pixels with the same class."""
    if reference.shape != candidate.shape:
        raise StageError(f"output shape {candidate.shape} differs from Keras' {reference.shape}")
    if OUTPUT_KINDS[output_kind].label_map:
        return {"max_abs_diff": None, "argmax_agreement": float(np.mean(reference == candidate))}
    return {
        "max_abs_diff": float(np.max(np.abs(reference - candidate))),
        "argmax_agreement": float(np.mean(reference.argmax(-1) == candidate.argmax(-1))),
    }


def check_against_keras(figures: dict, bounds: Bounds, what: str) -> None:
    """StageError when a converted model strays beyond its bounds."""
    problems = []
    if figures["max_abs_diff"] is not None and figures["max_abs_diff"] > bounds.max_abs_diff:
        problems.append(f"max abs diff {figures['max_abs_diff']:.3g} > {bounds.max_abs_diff:g}")
    if figures["argmax_agreement"] < bounds.min_argmax_agreement:
        problems.append(
            f"argmax agreement {figures['argmax_agreement']:.5f} < {bounds.min_argmax_agreement:g}"
        )
    if problems:
        raise StageError(f"{what} does not match the Keras model: {'; '.join(problems)}")


def export_tflite(
    model: keras.Model, images: np.ndarray, output_kind: str, output_dir: Path, model_name: str
) -> dict:
    """Write FP32 and FP16 TFLite files, each checked against Keras; return the figures."""
    reference = model.predict(images, batch_size=1, verbose=0)
    results = {}
    for precision, bounds in TFLITE_BOUNDS.items():
        content = convert_tflite(model, precision)
        figures = compare(reference, run_tflite(content, images), output_kind)
        check_against_keras(figures, bounds, f"TFLite {precision}")
        path = Path(output_dir) / export_folder.tflite_file(model_name, precision)
        path.write_bytes(content)
        results[precision] = {
            "file": path.name,
            "bytes": len(content),
            **figures,
            "bounds": asdict(bounds),
        }
        log.info("TFLite %s: %s", precision, figures)
    return results
