"""How the evaluate stage scores a model (its command line and outputs are `evaluate.py`): the
model folder and the prepared data checked (`model_folder.py`, `data_folder.py`), every
validation image fed to the model as the model's resize mode says (`preprocessing.py`) and
scored at its annotation's own size (`scoring.py`, as training validates), metrics.json and the
report written.

Each validation image becomes the model's input as the model's resize mode says
(`preprocessing.py`: the whole image stretched, or its centred window), as an app feeds a
camera frame to the exported model; the main output's S/4 class probabilities are upsampled
(bilinear) to the annotation's own size, and every labelled pixel the model sees is scored
there, at full label resolution.

One confusion matrix is accumulated over the split and the metrics are computed from it once.
The quality gate is `miou`, the mean IoU in the ADE20K benchmark's convention (`metrics.py`):
"none" (every class not on the whitelist) is a class like the others, and only the pixels
ADE20K leaves unlabelled are not scored.
"""

import logging
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from image_segmentation import files
from image_segmentation.contracts import data_folder, model_folder
from image_segmentation.contracts.evaluation_folder import (
    CONVENTION,
    DATA_DIGEST,
    GATE_METRIC,
    METRICS_FILE,
    REPORT_FILE,
    validation_digest,
)
from image_segmentation.data import dataset, preprocessing, records
from image_segmentation.errors import StageError
from image_segmentation.evaluation import metrics, report, scoring
from image_segmentation.model.weights import load_inference_model

log = logging.getLogger(__name__)

LOG_EVERY_SECONDS = 30.0


def check_labels(model_labels: list[str], data_labels: list[str]) -> None:
    """The model's class k must be the data's class k, or every score would be meaningless."""
    if model_labels == data_labels:
        return
    differ = [
        f"class {k}: model {m!r}, data {d!r}"
        for k, (m, d) in enumerate(zip(model_labels, data_labels, strict=False))
        if m != d
    ]
    if len(model_labels) != len(data_labels):
        differ.insert(0, f"model has {len(model_labels)} classes, data {len(data_labels)}")
    raise StageError("the model and the data have different labels: " + "; ".join(differ[:4]))


def validation_batches(
    shards: list[Path],
    image_size: tuple[int, int],
    normalization: dict,
    resize: str,
    batch_size: int,
    max_images: int | None,
) -> tf.data.Dataset:
    """Batches of the records of `shards` in file order: the model input, the original sample
    and the window of it the model sees.

    Originals differ in size, so they are padded to the largest of the batch; "size" gives
    each one's true (height, width).
    """
    data = tf.data.TFRecordDataset([str(path) for path in shards])
    if max_images:
        data = data.take(max_images)

    def load(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        image, mask = dataset.parse_example(serialized)
        name = tf.io.parse_single_example(
            serialized, {records.IMAGE_FILENAME: tf.io.FixedLenFeature([], tf.string, "")}
        )[records.IMAGE_FILENAME]
        model_input, window = preprocessing.model_input(image, image_size, resize, normalization)
        return {
            "input": model_input,
            "window": window,
            "image": image,
            "mask": mask,
            "size": tf.shape(mask),
            "name": name,
        }

    data = data.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    padding = {
        "input": 0.0,
        "window": 0,
        "image": tf.constant(0, tf.uint8),
        "mask": tf.constant(dataset.IGNORE, tf.uint8),
        "size": 0,
        "name": "",
    }
    return data.padded_batch(batch_size, padding_values=padding).prefetch(tf.data.AUTOTUNE)


def evaluate_model(
    model: keras.Model | scoring.Predict,
    batches: tf.data.Dataset,
    num_classes: int,
    total: int,
    report_images: int,
) -> tuple[np.ndarray, list[report.Example], int]:
    """Confusion matrix over all batches, the first `report_images` examples, images seen.

    `model` is a Keras model, or any function from a batch of model inputs to class
    probabilities (an exported TFLite model, `tflite_predictor`)."""
    predict = scoring.predictor(model) if isinstance(model, keras.Model) else model
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    examples: list[report.Example] = []
    seen, started, last_log = 0, time.monotonic(), time.monotonic()
    for batch in batches:
        probabilities = predict(batch["input"])
        windows = batch["window"].numpy()
        for index, (height, width) in enumerate(batch["size"].numpy()):
            truth = batch["mask"][index, :height, :width].numpy()
            bad = truth[(truth >= num_classes) & (truth != dataset.IGNORE)]
            if bad.size:
                raise StageError(
                    f"validation image {seen + 1} has mask value {bad.max()}, but the labels "
                    f"list only {num_classes} classes: the labels do not belong to the records"
                )
            top, left, rows, columns = windows[index]
            seen_truth = truth[top : top + rows, left : left + columns]
            predicted, image_confusion = scoring.score(
                probabilities[index : index + 1], seen_truth[None], num_classes
            )
            confusion += image_confusion.numpy()
            if len(examples) < report_images:
                image = batch["image"][index, :height, :width].numpy()
                name = batch["name"][index].numpy().decode() or f"image {seen + 1}"
                classes = np.full(truth.shape, dataset.IGNORE, np.uint8)  # outside: no class
                classes[top : top + rows, left : left + columns] = predicted[0].numpy()
                examples.append(report.make_example(name, image, truth, classes, num_classes))
            seen += 1
        if time.monotonic() - last_log > LOG_EVERY_SECONDS or seen == total:
            last_log = time.monotonic()
            rate = seen / max(last_log - started, 1e-9)
            log.info("evaluated %d/%d images (%.1f images/s)", seen, total, rate)
    return confusion, examples, seen


def evaluate(
    model_dir: Path,
    data_dir: Path,
    output_dir: Path,
    batch_size: int = 8,
    max_images: int | None = None,
    report_images: int = 12,
    report_html: Path | None = None,
) -> dict:
    """Score the model on the val split; write metrics.json and report.html; return metrics."""
    if batch_size < 1:
        raise StageError(f"--batch-size must be >= 1, got {batch_size}")
    if max_images is not None and max_images < 1:
        raise StageError(f"--max-images must be >= 1, got {max_images}")
    if report_images < 0:
        raise StageError(f"--report-images must be >= 0, got {report_images}")
    config = model_folder.require_complete(model_dir)
    data = data_folder.read_prepared(data_dir, splits=("val",))
    check_labels(config["labels"], data.labels)
    model, _ = load_inference_model(model_dir, config=config)
    image_size = tuple(config["image_size"])
    total = data.records["val"] if max_images is None else min(data.records["val"], max_images)
    log.info(
        "evaluating %s on %d validation images of %s (%d classes, model input %s)",
        model_dir, total, data_dir, len(data.labels), "x".join(map(str, image_size)),
    )  # fmt: skip
    resize = model_folder.resize_mode(config)
    batches = validation_batches(
        data.shards["val"], image_size, config["normalization"], resize, batch_size, max_images
    )
    confusion, examples, seen = evaluate_model(
        model, batches, len(data.labels), total, report_images
    )
    summary = metrics.summary(confusion, data.labels)
    if summary[GATE_METRIC] is None:
        raise StageError("no validation pixel has a label: the gated mean IoU cannot be computed")
    result = {
        **summary,
        "gate_metric": GATE_METRIC,
        "convention": CONVENTION,
        "images": seen,
        "labels": data.labels,
        DATA_DIGEST: validation_digest(
            data.shards["val"], Path(data_dir) / data_folder.LABELS_FILE, max_images
        ),
        "confusion_matrix": confusion.tolist(),
        "confusion_matrix_axes": ["true class", "predicted class"],
        "evaluation": {
            "model_dir": str(model_dir),
            "data_dir": str(data_dir),
            "model_input_size": list(image_size),
            "resize": resize,
            "scored_at": "stored annotation resolution (predictions upsampled bilinearly)"
            + (", inside the centred window the model sees" if resize == "crop" else ""),
            "model_weights_sha256": model_folder.weights_digest(model_dir),
        },
    }
    output_dir = Path(output_dir)
    files.write_json(output_dir / METRICS_FILE, result)
    details = {
        "model": str(model_dir),
        "data": str(data_dir),
        "images scored": f"{seen} (model input {'x'.join(map(str, image_size))}, photos "
        f"{'stretched' if resize == 'stretch' else 'centre-cropped'} to it; scored at the "
        "annotations' own resolution)",
    }
    page = report.render(
        summary, data.labels, examples, model_folder.read_history(model_dir), details
    )
    (output_dir / REPORT_FILE).write_text(page)
    if report_html:
        report_html = Path(report_html)
        report_html.parent.mkdir(parents=True, exist_ok=True)
        report_html.write_text(page)
    log.info(
        "mean IoU (the gate) %.4f, pixel accuracy %.4f -> %s",
        summary["miou"], summary["pixel_accuracy"], output_dir,
    )  # fmt: skip
    return result


def tflite_predictor(model) -> scoring.Predict:
    """A batch of model inputs to class probabilities through an exported TFLite model
    (`predictor.Model`), one image at a time as it takes them. A label-map output becomes
    one-hot probabilities, so the scorer's bilinear upsampling and argmax keep its labels."""
    from image_segmentation.export.options import OUTPUT_KINDS

    label_map = OUTPUT_KINDS[model.output].label_map
    classes = len(model.labels)

    def predict(images: tf.Tensor) -> tf.Tensor:
        outputs = np.stack([model.run(image) for image in images.numpy()])
        if label_map:
            outputs = np.eye(classes, dtype=np.float32)[outputs.astype(np.int64)]
        return tf.constant(outputs, tf.float32)

    return predict


def score_tflite(tflite_path: Path, record: dict, data_dir: Path, batch_size: int = 8) -> dict:
    """Score an exported FP32 TFLite model (its export.json `record`) on the val split of
    `data_dir` exactly as `evaluate` scores a model folder (see `score`)."""
    from image_segmentation.evaluation import predictor

    model = predictor.tflite_model(tflite_path, record)
    return score(
        tflite_predictor(model),
        model.labels,
        model.size,
        model.normalization,
        model.resize,
        data_dir,
        str(tflite_path),
        batch_size,
    )


def score(
    predict: keras.Model | scoring.Predict,
    labels: list[str],
    size: tuple[int, int],
    normalization: dict,
    resize: str,
    data_dir: Path,
    name: str,
    batch_size: int = 8,
    max_images: int | None = None,
    split: str = "val",
) -> dict:
    """The metrics summary (its `miou` is the gate's) of a model on a split of `data_dir`
    (val unless `split` says otherwise), scored as `evaluate` scores a model folder: inputs
    of `size` made with the model's normalization and resize mode, every labelled pixel at
    the annotation's size, one confusion matrix. `predict` is a Keras model or a batch
    function. split="train" scores the photos a model trained on: how well it fits them,
    against how well it generalizes."""
    data = data_folder.read_prepared(data_dir, splits=(split,))
    check_labels(labels, data.labels)
    total = data.records[split] if max_images is None else min(data.records[split], max_images)
    batches = validation_batches(
        data.shards[split], size, normalization, resize, batch_size, max_images
    )
    log.info("scoring %s on %d %s images of %s (%s resize)", name, total, split, data_dir, resize)
    confusion, _, seen = evaluate_model(predict, batches, len(data.labels), total, 0)
    return {**metrics.summary(confusion, data.labels), "images": seen}
