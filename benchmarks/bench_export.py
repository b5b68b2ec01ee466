"""Exported file sizes, the quality of each Core ML weight compression, and TFLite CPU
latency of ICNet at 768x768, alpha 1 and 0.25.

Each alpha is trained briefly on generated photo-like rooms (`generate.generate_rooms`, seed 0,
at 256x256: a CPU cannot train at 768 in benchmark time; the weights of ICNet do not depend on
the input size) and exported at 768x768. Every compression's Core ML file is written as the
export stage writes it, its weights are read back out of the file (decompressed) into the
Keras model and scored with the evaluate stage's scorer on generated rooms the training never
saw (seed 1): the mean-IoU change against the FP32 Keras model is the compression's cost.
Reference: the legacy 768x768 .mlmodel (FP32, alpha 1) was 26.9 MB; the target is 1/8 of it
within one point of mean IoU. Latency is the median of `runs` TFLite invocations of one image,
batch 1, after one warm-up, with all cores as threads.
"""

import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from benchmarks.bench_learning import prepare_rooms
from image_segmentation import cli
from image_segmentation.export import exporter
from image_segmentation.export.options import ExportOptions
from image_segmentation.model import icnet
from image_segmentation.model.weights import load_inference_model

IMAGE_SIZE = (768, 768)
ALPHAS = (1.0, 0.25)
LEGACY_MLMODEL_MB = 26.9
TARGET_MB = LEGACY_MLMODEL_MB / 8
TARGET_MIOU_DROP = 0.01
TRAIN_IMAGES, VAL_IMAGES = 100, 100
TRAIN_ARGS = ["--image-size", "256", "--batch-size", "8", "--class-balance", "sqrt-frequency"]
EPOCHS = {1.0: 40, 0.25: 80}
TFLITE_VARIANT = "mlpackage_fp16"  # the one run that also writes the TFLite files
VARIANTS = {
    "mlpackage_fp16": ExportOptions(),
    "mlpackage_fp32": ExportOptions(precision="float32", tflite=False),
    "mlmodel_fp32": ExportOptions(format="neuralnetwork", precision="float32", tflite=False),
    "mlmodel_fp16": ExportOptions(format="neuralnetwork", tflite=False),
}


def train(model_dir: Path, data: Path, alpha: float) -> dict:
    """Train ICNet of `alpha` on the generated rooms; returns its size figures."""
    started = time.perf_counter()
    argv = ["train", "--data-dir", str(data), "--output-dir", str(model_dir), *TRAIN_ARGS]
    if cli.main([*argv, "--alpha", str(alpha), "--epochs", str(EPOCHS[alpha])]) != 0:
        raise RuntimeError(f"training alpha {alpha} failed")
    inference, _ = load_inference_model(model_dir, IMAGE_SIZE)
    return {
        "parameters": inference.count_params(),
        "gmacs": icnet.count_multiply_adds(inference) / 1e9,
        "train_seconds": round(time.perf_counter() - started),
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
    """Train, then export every variant and every compression, for each alpha."""
    threads = os.cpu_count() or 1
    models = {}
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        tmp = Path(tmp)
        data = prepare_rooms(tmp / "seen", 0, TRAIN_IMAGES, VAL_IMAGES, "rooms")
        unseen = prepare_rooms(tmp / "unseen", 1, 0, VAL_IMAGES, "rooms")
        for alpha in ALPHAS:
            name = f"alpha_{alpha:g}"
            model_dir = tmp / name / "model"
            figures = train(model_dir, data, alpha)
            sizes, seconds, results = {}, {}, {}
            for variant, options in VARIANTS.items():
                started = time.perf_counter()
                results[variant] = exporter.export_model(
                    model_dir,
                    tmp / name / variant,
                    replace(options, model_name=name, image_size=IMAGE_SIZE),
                )
                seconds[variant] = round(time.perf_counter() - started, 1)
                sizes[variant] = round(results[variant]["coreml"]["bytes"] / 1e6, 2)
            tflite = results[TFLITE_VARIANT]["tflite"]
            tflite_dir = tmp / name / TFLITE_VARIANT
            for precision, entry in tflite.items():
                sizes[f"tflite_{precision}"] = round(entry["bytes"] / 1e6, 2)
            started = time.perf_counter()
            reference, compressions = exporter.measure_compressions(
                model_dir,
                ExportOptions(model_name=name, image_size=IMAGE_SIZE, data_dir=unseen),
            )
            models[name] = {
                "alpha": alpha,
                **figures,
                "epochs": EPOCHS[alpha],
                "sizes_mb": sizes,
                "fp32_miou": round(reference["miou"], 4),
                "compressions": [_compression_row(entry) for entry in compressions],
                "compression_seconds": round(time.perf_counter() - started),
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
    alpha_1 = models["alpha_1"]["compressions"]
    qualifying = [
        row["compression"]
        for row in alpha_1
        if row["mb"] <= TARGET_MB and row["miou_change"] >= -TARGET_MIOU_DROP
    ]
    return {
        "benchmark": "export",
        "image_size": list(IMAGE_SIZE),
        "data": f"generated rooms: trained on {TRAIN_IMAGES} (seed 0) at 256x256, "
        f"compressions scored at 768x768 on {VAL_IMAGES} others (seed 1)",
        "train_args": " ".join(TRAIN_ARGS),
        "legacy_mlmodel_mb": LEGACY_MLMODEL_MB,
        "target": f"alpha 1: a Core ML file of at most {TARGET_MB:.2f} MB within "
        f"{TARGET_MIOU_DROP} of the FP32 mean IoU",
        "meets_target": qualifying,
        "models": models,
        "tflite_threads": threads,
        "tflite_runs": runs,
    }


def _compression_row(entry: dict) -> dict:
    quality = entry["quality"]
    return {
        "compression": entry["compression"],
        "mb": round(entry["bytes"] / 1e6, 2),
        "ios": entry["minimum_deployment_target"],
        "miou": round(quality["miou"], 4),
        "miou_change": round(quality["miou_change"], 4),
        "worst_class_iou_change": round(
            min(v for v in quality["class_iou_change"].values() if v is not None), 4
        ),
    }
