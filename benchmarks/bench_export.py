"""Exported file sizes and TFLite CPU latency of ICNet at 768x768, alpha 1 and 0.25.

Each variant is a real run of the export stage. The weights are untrained (random init, with
the classifier scaled up so the probabilities are peaked like a trained model's and the
stage's TFLite checks mean something): file sizes depend only on the architecture and the
weight types, and latency not at all on the values. Reference: the legacy 768x768 .mlmodel
(FP32, alpha 1) was 26.9 MB. Latency is the median of `runs` TFLite invocations of one
image, batch 1, after one warm-up, with all cores as threads.
"""

import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from image_segmentation.contracts import model_folder
from image_segmentation.data import labels
from image_segmentation.export import exporter
from image_segmentation.model import icnet
from image_segmentation.stages import export

IMAGE_SIZE = (768, 768)
ALPHAS = (1.0, 0.25)
LEGACY_MLMODEL_MB = 26.9
TFLITE_VARIANT = "mlpackage_fp16"  # the one run that also writes the TFLite files
VARIANTS = {
    "mlpackage_fp16": export.ExportOptions(),
    "mlpackage_fp32": export.ExportOptions(precision="float32", tflite=False),
    "mlpackage_fp16_palettized": export.ExportOptions(palettize=True, tflite=False),
    "mlmodel_fp32": export.ExportOptions(format="neuralnetwork", precision="float32", tflite=False),
    "mlmodel_fp16": export.ExportOptions(format="neuralnetwork", tflite=False),
}


def write_model_dir(directory: Path, alpha: float, class_labels: list[str]) -> dict:
    """A train-stage model directory with random weights; returns the model's size figures."""
    model = icnet.build_icnet(len(class_labels), IMAGE_SIZE, alpha)
    logits = model.get_layer("conv6_cls_logits")
    logits.kernel.assign(logits.kernel.numpy() * 30)
    model_folder.write_model_dir(
        directory,
        write_weights=model.save_weights,
        config={
            "labels": class_labels,
            "num_classes": len(class_labels),
            "image_size": list(IMAGE_SIZE),
            "alpha": alpha,
            "normalization": {"scale": 1 / 255, "offset": -0.5},
        },
        history=[],
        training_metrics={},
    )
    inference = icnet.inference_model(model)
    return {
        "parameters": inference.count_params(),
        "gmacs": icnet.count_multiply_adds(inference) / 1e9,
    }


def tflite_latency_ms(path: Path, threads: int, runs: int) -> float:
    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    (source,) = interpreter.get_input_details()
    image = np.random.default_rng(0).uniform(-0.5, 0.5, source["shape"]).astype(np.float32)
    interpreter.set_tensor(source["index"], image)
    interpreter.invoke()  # warm-up: allocations, weight repacking
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        interpreter.invoke()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def run(runs: int = 5) -> dict:
    """Export every variant for each alpha."""
    class_labels = list(labels.parse_whitelist(labels.LIVING_ROOM_WHITELIST).labels)
    threads = os.cpu_count() or 1
    models = {}
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        tmp = Path(tmp)
        for alpha in ALPHAS:
            name = f"alpha_{alpha:g}"
            figures = write_model_dir(tmp / name / "model", alpha, class_labels)
            sizes, seconds, results = {}, {}, {}
            for variant, options in VARIANTS.items():
                started = time.perf_counter()
                results[variant] = exporter.export_model(
                    tmp / name / "model", tmp / name / variant, replace(options, model_name=name)
                )
                seconds[variant] = round(time.perf_counter() - started, 1)
                sizes[variant] = round(results[variant]["coreml"]["bytes"] / 1e6, 2)
            tflite = results[TFLITE_VARIANT]["tflite"]
            tflite_dir = tmp / name / TFLITE_VARIANT
            for precision, entry in tflite.items():
                sizes[f"tflite_{precision}"] = round(entry["bytes"] / 1e6, 2)
            models[name] = {
                "alpha": alpha,
                "parameters": figures["parameters"],
                "gmacs": round(figures["gmacs"], 2),
                "sizes_mb": sizes,
                "tflite_latency_ms": {
                    precision: round(
                        tflite_latency_ms(tflite_dir / entry["file"], threads, runs), 1
                    )
                    for precision, entry in tflite.items()
                },
                "tflite_checks": {
                    precision: {k: entry[k] for k in ("max_abs_diff", "argmax_agreement")}
                    for precision, entry in tflite.items()
                },
                "export_seconds": seconds,
            }
    result = {
        "benchmark": "export",
        "image_size": list(IMAGE_SIZE),
        "num_classes": len(class_labels),
        "weights": "untrained (random init, classifier scaled); sizes do not depend on values",
        "legacy_mlmodel_mb": LEGACY_MLMODEL_MB,
        "models": models,
        "tflite_threads": threads,
        "tflite_runs": runs,
    }
    return result
