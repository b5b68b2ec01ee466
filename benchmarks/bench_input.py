"""Training input pipeline throughput (images/s, steady state) at 768x768, batch 16, on the CPU.

From generated TFRecords of ADE20K-sized JPEG images (`bench_train.write_records`) it times:
reading the records, decoding them (JPEG image, PNG mask), and the whole training pipeline,
`dataset.make_dataset(training=True)` with every augmentation and the three-output targets the
train stage feeds, in both resize modes. For comparison it times the pipeline this project had
before (`baseline_augment`, `baseline_pipeline`: copies kept here only as the baseline), which
resized the whole frame, antialiased, in float32, then cropped, then changed the colour with
TensorFlow's image ops; it only had the "crop" mode's scales. All of it runs here, on the same
cores, in turns, so the ratios hold whatever the machine.

Each stage is timed after a warm-up, ROUNDS times in turns, and its best round is reported:
other work on the cores only slows rounds down. `load_average` is the 1-minute load before and
after the timings (run.py adds the load before the benchmark); the CPU time per image (all
threads of this process) depends less on that load.
"""

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import tensorflow as tf

from benchmarks import bench_train
from image_segmentation.data import dataset, labels, photo_input
from image_segmentation.model import icnet
from image_segmentation.training import trainer

IMAGE_SIZE = (768, 768)
BATCH_SIZE = 16
NUM_RECORDS = 32
WARMUP_BATCHES = 5
BATCHES = 40
BASELINE_BATCHES = 16  # the baseline is ~8x slower: as many seconds as 128 new batches
ROUNDS = 2  # every stage is timed this often, in turns; the best round counts


def baseline_augment(
    image: tf.Tensor, mask: tf.Tensor, size: tuple[int, int], seed: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """BASELINE ONLY, not used in training: the former `dataset.augment` ("crop" mode)."""
    seeds = tf.random.experimental.stateless_split(seed, 6)
    image = tf.cast(image, tf.float32)
    factor = tf.random.stateless_uniform([], seeds[0], minval=0.75, maxval=1.5)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = tf.maximum(size[0] / shape[0], size[1] / shape[1]) * factor
    height = tf.maximum(tf.cast(tf.math.round(shape[0] * scale), tf.int32), 1)
    width = tf.maximum(tf.cast(tf.math.round(shape[1] * scale), tf.int32), 1)
    image = tf.image.resize(image, tf.stack([height, width]), method="bilinear", antialias=True)
    mask = tf.image.resize(mask[:, :, None], tf.stack([height, width]), method="nearest")[..., 0]
    pad_h, pad_w = tf.maximum(size[0] - height, 0), tf.maximum(size[1] - width, 0)
    paddings = [[pad_h // 2, pad_h - pad_h // 2], [pad_w // 2, pad_w - pad_w // 2]]
    image = tf.pad(image, [*paddings, [0, 0]])
    mask = tf.pad(mask, paddings, constant_values=dataset.IGNORE)
    stacked = tf.concat([image, tf.cast(mask, tf.float32)[:, :, None]], axis=2)
    stacked = tf.image.stateless_random_crop(stacked, [size[0], size[1], 4], seeds[1])
    stacked = tf.image.stateless_random_flip_left_right(stacked, seeds[2])
    image, mask = stacked[:, :, :3], tf.cast(stacked[:, :, 3], tf.uint8)
    image = tf.image.stateless_random_brightness(image, 20.0, seeds[3])
    image = tf.image.stateless_random_contrast(image, 0.8, 1.2, seeds[4])
    image = tf.image.stateless_random_saturation(image, 0.8, 1.2, seeds[5])
    return tf.clip_by_value(image, 0.0, 255.0), mask


def baseline_pipeline(
    shards: list[Path], target_sizes: dict[str, tuple[int, int]]
) -> tf.data.Dataset:
    """BASELINE ONLY: the former `make_dataset(training=True)` around `baseline_augment`."""
    autotune = tf.data.AUTOTUNE
    files = tf.data.Dataset.from_tensor_slices([str(path) for path in shards])
    files = files.shuffle(len(shards), seed=0).repeat()
    data = files.interleave(tf.data.TFRecordDataset, cycle_length=2, num_parallel_calls=autotune)
    data = data.shuffle(512, seed=0)
    data = tf.data.Dataset.zip(data, tf.data.Dataset.random(seed=0).batch(2)).map(
        lambda serialized, pair: baseline_augment(
            *dataset.parse_example(serialized), IMAGE_SIZE, pair
        ),
        num_parallel_calls=autotune,
    )
    data = data.map(lambda image, mask: (dataset.normalize(image, dataset.Normalization()), mask))
    data = data.batch(BATCH_SIZE, drop_remainder=True).map(
        lambda images, masks: (images, baseline_targets(masks, target_sizes)),
        num_parallel_calls=autotune,
    )
    return data.prefetch(autotune)


def baseline_targets(
    masks: tf.Tensor, target_sizes: dict[str, tuple[int, int]]
) -> dict[str, tf.Tensor]:
    """BASELINE ONLY: the former `dataset.multiscale_targets`."""
    labels = tf.cast(masks, tf.int32)[..., None]
    return {
        name: tf.image.resize(labels, size, method="nearest")[..., 0]
        for name, size in target_sizes.items()
    }


def records(shards: list[Path]) -> tf.data.Dataset:
    """The serialized records of `shards`, repeated."""
    files = tf.data.Dataset.from_tensor_slices([str(path) for path in shards]).repeat()
    return files.interleave(
        tf.data.TFRecordDataset, cycle_length=2, num_parallel_calls=tf.data.AUTOTUNE
    )


def decoded(shards: list[Path]) -> tf.data.Dataset:
    """Records decoded to image and mask. Only their shapes are batched (sizes differ), which
    still takes both decodes."""
    data = records(shards).map(
        lambda serialized: tuple(tf.shape(part) for part in dataset.parse_example(serialized)),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return data.batch(BATCH_SIZE).prefetch(tf.data.AUTOTUNE)


def measure(make: Callable[[], tf.data.Dataset], batches: int) -> dict:
    """Images/s and CPU ms/image over `batches` batches after WARMUP_BATCHES."""
    batch_iterator = iter(make())
    for _ in range(WARMUP_BATCHES):
        next(batch_iterator)
    started, cpu_started = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(batch_iterator)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    images = batches * BATCH_SIZE
    return {"images_per_s": images / seconds, "cpu_ms_per_image": 1000 * cpu_seconds / images}


def best(rounds: list[dict], batches: int) -> dict:
    """The fastest round of a stage: other work on the cores only ever slows a round down."""
    return {
        "images_per_s": round(max(r["images_per_s"] for r in rounds), 1),
        "cpu_ms_per_image": round(min(r["cpu_ms_per_image"] for r in rounds), 2),
        "batches": batches,
        "images_per_s_by_round": [round(r["images_per_s"], 1) for r in rounds],
    }


def run() -> dict:
    """Time each stage of the input pipeline and the baseline, ROUNDS times in turns."""
    whitelist = labels.parse_whitelist(labels.LIVING_ROOM_WHITELIST)
    model = icnet.build_icnet(whitelist.num_classes, IMAGE_SIZE, bench_train.ALPHA)
    target_sizes = trainer.output_sizes(model)
    loads = []
    with tempfile.TemporaryDirectory(prefix="bench-input-") as tmp:
        shards = bench_train.write_records(Path(tmp), NUM_RECORDS, whitelist)
        stages = {
            "read_records": (lambda: records(shards).batch(BATCH_SIZE), BATCHES * 10),
            "decode": (lambda: decoded(shards), BATCHES * 2),
            **{
                f"train_pipeline_{mode}": (
                    lambda mode=mode: dataset.make_dataset(
                        shards,
                        IMAGE_SIZE,
                        BATCH_SIZE,
                        training=True,
                        target_sizes=target_sizes,
                        resize=mode,
                    ),
                    BATCHES,
                )
                for mode in photo_input.RESIZE_MODES
            },
            "baseline_train_pipeline_crop": (
                lambda: baseline_pipeline(shards, target_sizes),
                BASELINE_BATCHES,
            ),
        }
        rounds = {name: [] for name in stages}
        loads.append(os.getloadavg()[0])
        for _ in range(ROUNDS):
            for name, (make, batches) in stages.items():
                rounds[name].append(measure(make, batches))
        loads.append(os.getloadavg()[0])
    results = {name: best(rounds[name], stages[name][1]) for name in stages}
    baseline = results["baseline_train_pipeline_crop"]["images_per_s"]
    return {
        "benchmark": "input",
        "image_size": list(IMAGE_SIZE),
        "batch_size": BATCH_SIZE,
        "records": NUM_RECORDS,
        "stages": results,
        "speedup_vs_baseline": {
            mode: round(results[f"train_pipeline_{mode}"]["images_per_s"] / baseline, 1)
            for mode in photo_input.RESIZE_MODES
        },
        "load_average": [round(load, 2) for load in loads],  # before and after the timings
        "tensorflow": tf.__version__,
    }
