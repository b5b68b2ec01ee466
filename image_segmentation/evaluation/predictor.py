"""The predict stage's work (its command line is stages/predict.py): photos segmented by a model
folder's Keras model or an exported TFLite file, through one code path so that both give the
same labels.

Each photo becomes the model input as `preprocessing.py` says; the model's output is brought back
to the window the model saw (probabilities bilinearly, then their argmax, as scoring does; a
label map nearest-neighbour) and placed into a label map of the photo's own size, IGNORE (255)
outside the window.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from PIL import Image, ImageOps

from image_segmentation import disk, files
from image_segmentation.contracts import model_folder
from image_segmentation.contracts.prediction_folder import (
    COVERAGE_SUFFIX,
    LABELS_SUFFIX,
    OVERLAY_SUFFIX,
)
from image_segmentation.data import preprocessing
from image_segmentation.data.labels import IGNORE
from image_segmentation.errors import StageError
from image_segmentation.evaluation import report, scoring
from image_segmentation.export.options import OUTPUT_KINDS
from image_segmentation.model.weights import load_inference_model

log = logging.getLogger(__name__)

# Probabilities resized per band of rows of at most this many values: a 12-megapixel photo and
# 151 classes would otherwise need a 7 GB array.
BAND_VALUES = 1 << 25
SUMMARY_CLASSES = 3  # classes named in the one-line summary


@dataclass(frozen=True)
class Model:
    """A model as predicting needs it, whichever file it came from."""

    kind: str  # "model dir" or "tflite"
    path: Path
    labels: list[str]
    size: tuple[int, int]  # the model input's (height, width)
    normalization: dict
    resize: str  # a photo_input.RESIZE_MODES mode
    output: str  # what `run` returns: one of OUTPUT_KINDS
    run: Callable[[tf.Tensor], np.ndarray]  # one model input [*size, 3] to its output


def load_keras_model(model_dir: Path, config: dict | None = None) -> Model:
    """The inference model (S/4 probabilities) of a complete model folder; `config` is its
    config when the caller has checked the folder already."""
    keras_model, config = load_inference_model(model_dir, config=config)
    predict = scoring.predictor(keras_model)
    return Model(
        kind="model dir",
        path=Path(model_dir),
        labels=config["labels"],
        size=tuple(config["image_size"]),
        normalization=config["normalization"],
        resize=model_folder.resize_mode(config),
        output="probabilities",
        run=lambda image: predict(image[None])[0].numpy(),
    )


def tflite_model(path: Path, record: dict) -> Model:
    """The TFLite file `path` run as the export record `record` describes it."""
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    (source,), (target,) = interpreter.get_input_details(), interpreter.get_output_details()

    def run(image: tf.Tensor) -> np.ndarray:
        interpreter.set_tensor(source["index"], np.asarray(image, source["dtype"])[None])
        interpreter.invoke()
        return interpreter.get_tensor(target["index"])[0]

    return Model(
        kind="tflite",
        path=Path(path),
        labels=record["labels"],
        size=tuple(record["image_size"]),
        normalization=record["normalization"],
        resize=model_folder.resize_mode(record.get("config", {})),
        output=record["output"]["kind"],
        run=run,
    )


WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16- and 32-bit grey


def read_photo(path: Path) -> np.ndarray:
    """uint8 RGB [H, W, 3] as the photo is shown: EXIF orientation applied, any mode converted
    (`rgb`)."""
    try:
        with Image.open(path) as image:
            return rgb(ImageOps.exif_transpose(image))
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise StageError(f"{path} cannot be read as a photo: {error}") from error


def rgb(image: Image.Image) -> np.ndarray:
    """uint8 RGB of an image of any mode Pillow opens. Pillow's own conversion clips 16-bit
    grey to white, so wide grey is scaled down to 8 bits here; transparent pixels are laid on
    white, as a viewer shows them; grey, palette and CMYK convert as Pillow converts them.
    Floating-point images (mode F) hold measurements, not photos, and are refused."""
    if image.mode in WIDE_GREY_MODES:
        values = np.asarray(image, dtype=np.float64)
        top = 255 if image.mode == "I" and values.max() <= 255 else 65535
        grey = np.clip(np.round(values * 255 / top), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if image.mode == "F":
        raise ValueError("a floating-point image (mode F) is not a photo")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        image = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image)
    return np.asarray(image.convert("RGB"))


def window_labels(output: np.ndarray, kind: str, rows: int, columns: int) -> np.ndarray:
    """The class of each pixel of the window (uint8 [rows, columns]) from one model output.

    Probabilities are resized bilinearly and their argmax taken; the height first, then the
    width band by band (one resize's values to within rounding, in bounded memory).
    """
    if OUTPUT_KINDS[kind].label_map:
        resized = tf.image.resize(output[..., None], (rows, columns), method="nearest")
        return resized.numpy()[..., 0].astype(np.uint8)
    tall = tf.image.resize(output, (rows, output.shape[1]), method="bilinear")
    band = max(1, BAND_VALUES // (columns * output.shape[-1]))
    labels = np.empty((rows, columns), np.uint8)
    for start in range(0, rows, band):
        part = tall[start : start + band]
        wide = tf.image.resize(part, (part.shape[0], columns), method="bilinear")
        labels[start : start + band] = tf.argmax(wide, axis=-1).numpy()
    return labels


def segment(model: Model, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The class of every pixel of the photo (uint8 [H, W], IGNORE outside the window the
    model saw), and that window (top, left, height, width)."""
    model_input, window = preprocessing.model_input(
        image, model.size, model.resize, model.normalization
    )
    top, left, rows, columns = window = tuple(int(value) for value in np.asarray(window))
    labels = np.full(image.shape[:2], IGNORE, np.uint8)
    labels[top : top + rows, left : left + columns] = window_labels(
        model.run(model_input), model.output, rows, columns
    )
    return labels, window


def coverage(labels: np.ndarray, names: list[str], colors: np.ndarray) -> list[dict]:
    """Each predicted class with its colour, pixels and share of the photo, largest first."""
    counts = np.bincount(labels.ravel(), minlength=256)[: len(names)]
    return [
        {
            "class": int(index),
            "label": names[index],
            "color": report.hex_color(colors[index]),
            "pixels": int(counts[index]),
            "fraction": float(counts[index] / labels.size),
        }
        for index in np.argsort(-counts, kind="stable")
        if counts[index]
    ]


def summary(source: str, record: dict) -> str:
    """One line: the photo, its size and its largest classes."""
    shares = [f"{entry['label']} {entry['fraction']:.0%}" for entry in record["classes"]]
    if len(shares) > SUMMARY_CLASSES:
        shares = [*shares[:SUMMARY_CLASSES], f"+{len(shares) - SUMMARY_CLASSES} more"]
    predicted = record["pixels_predicted"] / record["pixels"]
    window = "" if predicted == 1 else f" ({predicted:.0%} of it predicted)"
    return f"{source} {record['width']}x{record['height']}{window}: {', '.join(shares)}"


def predict_photos(
    model: Model, sources: dict[str, Path], names: list[str], output_dir: Path
) -> list[str]:
    """Segment each photo (`sources`: what the user named it, its file) and write its overlay,
    label map and coverage JSON into `output_dir`, starting with its name of `names`. A photo
    that cannot be decoded (a truncated file) is skipped; returns one line for each."""
    if len(model.labels) > IGNORE:
        raise StageError(f"{len(model.labels)} classes do not fit a label PNG beside {IGNORE}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    colors = report.palette(len(model.labels))
    log.info(
        "predicting %d photo(s) with the %s %s (%s resize) into %s",
        len(sources),
        model.kind,
        model.path,
        model.resize,
        output_dir,
    )
    skipped = []
    for number, ((source, path), name) in enumerate(zip(sources.items(), names, strict=True), 1):
        try:
            image = read_photo(path)
        except StageError as error:
            skipped.append(f"{source} ({error})")
            continue
        labels, (top, left, rows, columns) = segment(model, image)
        overlay, label_map = f"{name}{OVERLAY_SUFFIX}", f"{name}{LABELS_SUFFIX}"
        with disk.disk_full_error(output_dir / overlay, None):
            Image.fromarray(report.overlay(image, labels, colors)).save(output_dir / overlay)
            Image.fromarray(labels).save(output_dir / label_map)
        record = {
            "photo": source,
            "height": int(labels.shape[0]),
            "width": int(labels.shape[1]),
            "model": {"kind": model.kind, "path": str(model.path), "output": model.output},
            "resize": model.resize,
            "window": {"top": top, "left": left, "height": rows, "width": columns},
            "pixels": int(labels.size),
            "pixels_predicted": rows * columns,
            "classes": coverage(labels, model.labels, colors),
            "overlay": overlay,
            "labels": label_map,
            "no_class": IGNORE,
        }
        with disk.disk_full_error(output_dir / f"{name}{COVERAGE_SUFFIX}", None):
            files.write_json(output_dir / f"{name}{COVERAGE_SUFFIX}", record)
        print(f"[{number}/{len(sources)}] {summary(source, record)}", flush=True)
    return skipped
