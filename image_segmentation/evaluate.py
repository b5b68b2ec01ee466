"""The evaluate stage: score a trained model on the whole validation split, write a report.

Each validation image is resized (bilinear, aspect not kept) to the model's input size, as
an app feeds a whole camera frame to the exported model; the main output's S/4 class
probabilities are upsampled (bilinear) to the size of the stored annotation, and every
annotated pixel is scored there, at full label resolution (the ADE20K convention). So the
figures cover whole images, unlike the center crops that the train stage validates on each
epoch, and differ from them.

One confusion matrix is accumulated over the split and the metrics are computed from it once
(see metrics.py for the two conventions). The quality gate is `miou`: the mean IoU ignoring
pixels whose ground truth is class 0 ("none"), the ADE20K benchmark convention.
"""

import argparse
import logging
import math
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from image_segmentation import (
    dataset,
    files,
    inference,
    labels,
    metrics,
    model_folder,
    records,
    report,
    train,
)
from image_segmentation.errors import StageError

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.html"
GATE_METRIC = "miou"
LOG_EVERY_SECONDS = 30.0
KFP_SCALARS = ("miou", "pixel_accuracy", "miou_all_classes", "pixel_accuracy_all_classes")


def check_inputs(model_dir: Path, data_dir: Path) -> tuple[dict, list[str], list[Path]]:
    """The model's config, the data dir's labels and val shards; a missing or incomplete
    input is a clear error, before the model is built."""
    config = model_folder.require_complete(model_dir)
    if not Path(data_dir).is_dir():
        raise StageError(f"data dir {data_dir} does not exist")
    labels_file = Path(data_dir) / train.LABELS_FILE
    if not labels_file.is_file():
        raise StageError(
            f"{data_dir} has no {train.LABELS_FILE}: is it the prepare stage's output?"
        )
    shards = dataset.list_shards(data_dir, "val")
    if not shards:
        raise StageError(f"{data_dir} has no validation shards (val-NNNNN-of-NNNNN.tfrecord)")
    return config, labels.read_labels_file(labels_file), shards


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
    normalization: dataset.Normalization,
    batch_size: int,
    max_images: int | None,
) -> tf.data.Dataset:
    """Batches of the val records in file order: the model input and the original sample.

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
        resized = tf.image.resize(
            tf.cast(image, tf.float32), image_size, method="bilinear", antialias=True
        )
        return {
            "input": dataset.normalize(resized, normalization),
            "image": image,
            "mask": mask,
            "size": tf.shape(mask),
            "name": name,
        }

    data = data.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    padding = {
        "input": 0.0,
        "image": tf.constant(0, tf.uint8),
        "mask": tf.constant(dataset.IGNORE, tf.uint8),
        "size": 0,
        "name": "",
    }
    return data.padded_batch(batch_size, padding_values=padding).prefetch(tf.data.AUTOTUNE)


def predict_at(probabilities: tf.Tensor, height: int, width: int) -> np.ndarray:
    """The class map of one image at (height, width): bilinear upsampling, then argmax."""
    upsampled = tf.image.resize(probabilities[None], (height, width), method="bilinear")
    return tf.argmax(upsampled[0], axis=-1, output_type=tf.int32).numpy().astype(np.uint8)


def evaluate_model(
    model: keras.Model,
    batches: tf.data.Dataset,
    num_classes: int,
    total: int,
    report_images: int,
) -> tuple[np.ndarray, list[report.Example], int]:
    """Confusion matrix over all batches, the first `report_images` examples, images seen."""
    predict = tf.function(lambda images: model(images, training=False), reduce_retracing=True)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    examples: list[report.Example] = []
    seen, started, last_log = 0, time.monotonic(), time.monotonic()
    for batch in batches:
        probabilities = predict(batch["input"])
        for index, (height, width) in enumerate(batch["size"].numpy()):
            truth = batch["mask"][index, :height, :width].numpy()
            bad = truth[(truth >= num_classes) & (truth != dataset.IGNORE)]
            if bad.size:
                raise StageError(
                    f"validation image {seen + 1} has mask value {bad.max()}, but the labels "
                    f"list only {num_classes} classes: the labels do not belong to the records"
                )
            predicted = predict_at(probabilities[index], int(height), int(width))
            confusion += metrics.confusion_matrix(truth, predicted, num_classes)
            if len(examples) < report_images:
                image = batch["image"][index, :height, :width].numpy()
                name = batch["name"][index].numpy().decode() or f"image {seen + 1}"
                examples.append(report.make_example(name, image, truth, predicted, num_classes))
            seen += 1
        if time.monotonic() - last_log > LOG_EVERY_SECONDS or seen == total:
            last_log = time.monotonic()
            rate = seen / max(last_log - started, 1e-9)
            log.info("evaluated %d/%d images (%.1f images/s)", seen, total, rate)
    return confusion, examples, seen


def kfp_metrics(summary: dict) -> dict[str, float]:
    """Metadata of a KFP `system.Metrics` artifact: a flat {name: number} object.

    Shape from the kfp SDK (kfp/dsl/types/artifact_types.py, `Metrics.log_metric` sets
    `metadata[name] = value`) and the Kubeflow UI, which lists each metadata entry as a scalar
    (frontend/src/components/viewers/MetricsVisualizations.tsx, ScalarMetricsSection).
    Undefined values (no pixel scored) are left out: the metadata holds numbers only.
    """
    return {
        name: float(summary[name])
        for name in KFP_SCALARS
        if summary.get(name) is not None and math.isfinite(summary[name])
    }


def kfp_confusion_matrix(confusion: np.ndarray, class_labels: list[str]) -> dict:
    """Metadata of a KFP `system.ClassificationMetrics` artifact holding the confusion matrix.

    Shape from the kfp SDK (`ClassificationMetrics.log_confusion_matrix` sets
    `metadata["confusionMatrix"] = {"annotationSpecs": [{"displayName": ...}], "rows":
    [{"row": [...]}]}`), which the Kubeflow UI validates the same way (MetricsVisualizations.tsx,
    ConfusionMatrixSection: as many rows as annotationSpecs, each row as long). Rows are the
    true class, as in metrics.json; counts are pixels.
    """
    if np.shape(confusion) != (len(class_labels), len(class_labels)):
        raise ValueError(f"confusion matrix {np.shape(confusion)} for {len(class_labels)} labels")
    return {
        "confusionMatrix": {
            "annotationSpecs": [{"displayName": label} for label in class_labels],
            "rows": [{"row": [int(count) for count in row]} for row in confusion],
        }
    }


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
    config, data_labels, shards = check_inputs(model_dir, data_dir)
    check_labels(config["labels"], data_labels)
    model, _ = inference.load_inference_model(model_dir)
    image_size = tuple(config["image_size"])
    total = dataset.count_records(shards)
    if max_images:
        total = min(total, max_images)
    log.info(
        "evaluating %s on %d validation images of %s (%d classes, model input %s)",
        model_dir, total, data_dir, len(data_labels), "x".join(map(str, image_size)),
    )  # fmt: skip
    batches = validation_batches(
        shards,
        image_size,
        dataset.Normalization(**config["normalization"]),
        batch_size,
        max_images,
    )
    confusion, examples, seen = evaluate_model(
        model, batches, len(data_labels), total, report_images
    )
    if not seen:
        raise StageError(f"{data_dir}: the validation shards hold no records")
    summary = metrics.summary(confusion, data_labels)
    if summary[GATE_METRIC] is None:
        raise StageError(
            f"no validation pixel has a class other than 0 ({data_labels[0]!r}): "
            "the gated mean IoU cannot be computed"
        )
    result = {
        **summary,
        "gate_metric": GATE_METRIC,
        "images": seen,
        "labels": data_labels,
        "confusion_matrix": confusion.tolist(),
        "confusion_matrix_axes": ["true class", "predicted class"],
        "evaluation": {
            "model_dir": str(model_dir),
            "data_dir": str(data_dir),
            "model_input_size": list(image_size),
            "scored_at": "stored annotation resolution (predictions upsampled bilinearly)",
        },
    }
    output_dir = Path(output_dir)
    files.write_json(output_dir / METRICS_FILE, result)
    details = {
        "model": str(model_dir),
        "data": str(data_dir),
        "images scored": f"{seen} (model input {'x'.join(map(str, image_size))}, scored at "
        "the annotations' own resolution)",
    }
    page = report.render(
        summary, data_labels, examples, model_folder.read_history(model_dir), details
    )
    (output_dir / REPORT_FILE).write_text(page)
    if report_html:
        report_html = Path(report_html)
        report_html.parent.mkdir(parents=True, exist_ok=True)
        report_html.write_text(page)
    log.info(
        "mean IoU ignoring none (the gate) %.4f, pixel accuracy %.4f; all classes: mean IoU "
        "%.4f, pixel accuracy %.4f -> %s",
        summary["miou"], summary["pixel_accuracy"], summary["miou_all_classes"],
        summary["pixel_accuracy_all_classes"], output_dir,
    )  # fmt: skip
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Score a trained model on the whole validation split and write OUTPUT/metrics.json "
        "and OUTPUT/report.html. Images are resized to the model input; predictions are "
        "upsampled to each annotation's own size and every annotated pixel is scored. "
        "Reports two conventions: all classes, and the ADE20K benchmark one that ignores "
        "pixels whose ground truth is class 0 ('none'). The quality gate value is `miou`: "
        "the mean IoU ignoring class 0. Classes absent from both the ground truth and the "
        "predictions are left out of the means. Prints `miou VALUE` on stdout."
    )
    add = parser.add_argument
    add("--model-dir", type=Path, required=True, help="the train stage's output")
    add("--data-dir", type=Path, required=True, help="the prepare stage's output (val shards)")
    add("--output-dir", type=Path, required=True, help="where metrics.json and report.html go")
    add("--batch-size", type=int, default=8, help="images per model call (default 8)")
    add("--max-images", type=int, default=None, help="score only the first N val images")
    add(
        "--report-images",
        type=int,
        default=12,
        help="validation images shown in the report (default 12)",
    )
    add(
        "--report-html",
        type=Path,
        default=None,
        help="also write the report to this file (e.g. a KFP HTML artifact's path)",
    )
    add(
        "--metrics-json",
        type=Path,
        default=None,
        help="write the scalar metrics as a KFP system.Metrics metadata object to this file",
    )
    add(
        "--confusion-matrix-json",
        type=Path,
        default=None,
        help="write the confusion matrix as KFP system.ClassificationMetrics metadata here",
    )
    add(
        "--miou-output",
        type=Path,
        default=None,
        help="write the gate value (miou) as plain text to this file (a KFP float output)",
    )


def run(args: argparse.Namespace) -> int:
    result = evaluate(
        args.model_dir,
        args.data_dir,
        args.output_dir,
        batch_size=args.batch_size,
        max_images=args.max_images,
        report_images=args.report_images,
        report_html=args.report_html,
    )
    if args.metrics_json:
        files.write_json(args.metrics_json, kfp_metrics(result))
    if args.confusion_matrix_json:
        confusion = kfp_confusion_matrix(np.array(result["confusion_matrix"]), result["labels"])
        files.write_json(args.confusion_matrix_json, confusion)
    if args.miou_output:
        args.miou_output.parent.mkdir(parents=True, exist_ok=True)
        args.miou_output.write_text(repr(result[GATE_METRIC]))
    print(f"{GATE_METRIC} {result[GATE_METRIC]:.6f}")
    return 0
