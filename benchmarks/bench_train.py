"""Training throughput of the train stage (images/s, steady state) at 768x768, alpha 0.25.

It runs the stage's own pieces: `trainer.build_model` (ICNet, three-output loss, Adam) fed by
`dataset.make_dataset` from generated TFRecords of ADE20K-sized images (decode, random scale,
crop, flip, jitter, all on the CPU). On CPU: batch 8, float32. With a GPU visible: batch 16,
mixed precision, once fed from the TFRecords and once from one batch of in-memory tensors
(the model's speed without the input pipeline). Throughput counts only steps after warm-up
(the first step traces the graph). Reference: the legacy tool did 1.3 images/s on a K80.
"""

import io
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

from benchmarks import timing
from image_segmentation.data import dataset, labels, records, synthetic
from image_segmentation.stages import train
from image_segmentation.training import trainer

IMAGE_SIZE = (768, 768)
ALPHA = 0.25
LEGACY_K80_IMAGES_PER_S = 1.3
NUM_RECORDS = 32
CPU_RUN = {"batch_size": 8, "mixed_precision": False, "warmup_steps": 2, "steps": 5}
GPU_RUN = {"batch_size": 16, "mixed_precision": True, "warmup_steps": 10, "steps": 50}


def write_records(directory: Path, count: int, whitelist: labels.Whitelist) -> list[Path]:
    """Two train shards of generated samples at ADE20K's usual sizes, as prepare writes them."""
    rng = np.random.default_rng(0)
    table = whitelist.lookup_table()
    shards = [directory / f"train-{i:05d}-of-00002.tfrecord" for i in range(2)]
    writers = [records.TFRecordWriter(path) for path in shards]
    for number in range(count):
        height, width = synthetic.ADE_SIZES[number % len(synthetic.ADE_SIZES)]
        image, ade_mask = synthetic.render_sample(rng, height, width, synthetic.DEFAULT_CLASSES)
        jpeg, png = io.BytesIO(), io.BytesIO()
        Image.fromarray(image).save(jpeg, format="JPEG", quality=90)
        Image.fromarray(table[ade_mask]).save(png, format="PNG")
        example = records.segmentation_example(
            jpeg.getvalue(), f"sample_{number}", height, width, png.getvalue()
        )
        writers[number % 2].write(example)
    for writer in writers:
        writer.close()
    return shards


def measure(
    shards: list[Path],
    num_classes: int,
    batch_size: int,
    mixed_precision: bool,
    warmup_steps: int,
    steps: int,
    in_memory: bool = False,
) -> dict:
    settings = train.TrainSettings(image_size=IMAGE_SIZE, alpha=ALPHA, batch_size=batch_size)
    model = trainer.build_model(
        [1.0] * num_classes, settings, warmup_steps + steps, mixed_precision
    )
    data = dataset.make_dataset(
        shards,
        IMAGE_SIZE,
        batch_size,
        training=True,
        target_sizes=trainer.output_sizes(model),
    )
    if in_memory:
        data = tf.data.Dataset.from_tensors(next(iter(data))).repeat()
    timer = timing.StepTimes()
    started = time.perf_counter()
    model.fit(data, epochs=1, steps_per_epoch=warmup_steps + steps, callbacks=[timer], verbose=0)
    steady = timer.times[-1] - timer.times[warmup_steps - 1]
    return {
        "input": "in-memory tensors" if in_memory else "tfrecords",
        "batch_size": batch_size,
        "mixed_precision": mixed_precision,
        "warmup_steps": warmup_steps,
        "steps": steps,
        "images_per_s": round(steps * batch_size / steady, 3),
        "seconds_per_step": round(steady / steps, 3),
        "first_step_s": round(timer.times[0] - started, 1),  # graph tracing included
    }


def device_name() -> str:
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return f"{len(gpus)} x {details.get('device_name', 'GPU')}"
    cpuinfo = Path("/proc/cpuinfo")
    model = "CPU"
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model} ({os.cpu_count()} cores)"


def run() -> dict:
    """Measure throughput on this machine's device."""
    gpu = bool(tf.config.list_physical_devices("GPU"))
    whitelist = labels.parse_whitelist(labels.LIVING_ROOM_WHITELIST)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        shards = write_records(Path(tmp), NUM_RECORDS, whitelist)
        if gpu:
            runs = [
                measure(shards, whitelist.num_classes, **GPU_RUN),
                measure(shards, whitelist.num_classes, **GPU_RUN, in_memory=True),
            ]
        else:
            runs = [measure(shards, whitelist.num_classes, **CPU_RUN)]
    result = {
        "benchmark": "train",
        "device": device_name(),
        "image_size": list(IMAGE_SIZE),
        "alpha": ALPHA,
        "num_classes": whitelist.num_classes,
        "runs": runs,
        "legacy_k80_images_per_s": LEGACY_K80_IMAGES_PER_S,
        "tensorflow": tf.__version__,
    }
    return result
