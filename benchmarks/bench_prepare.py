"""Prepare-stage throughput against its floor: decoding every mask once and copying every JPEG.

The floor is what any prepare must at least do, in one process; prepare runs with the living-room
whitelist, threshold 0 (so every image is fully processed) and all cores. Target: prepare takes at
most 1.5x the floor's time. The two are timed in turn, `repeats` times each on the same files,
and the fastest run of each counts. CPU time per image is reported too: it depends less than wall
time on other work sharing the machine.
"""

import io
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from image_segmentation.contracts import data_folder
from image_segmentation.data import ade20k, labels, prepare, synthetic

TARGET_RATIO = 1.5


def floor(dataset: Path, copy_dir: Path) -> int:
    """Decode every training mask once and copy every training JPEG's bytes; return the count."""
    with ade20k.FolderSource(dataset) as source:
        samples = source.list_samples("training")
        for sample in samples:
            np.asarray(Image.open(io.BytesIO(source.read(sample.annotation))))
            (copy_dir / f"{sample.name}.jpg").write_bytes(source.read(sample.image))
    return len(samples)


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the prepare workers)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def _timed(function) -> tuple[float, float]:
    """Wall and CPU seconds of one call."""
    wall, cpu = time.perf_counter(), _cpu_seconds()
    function()
    return time.perf_counter() - wall, _cpu_seconds() - cpu


def run(num_images: int = 1000, repeats: int = 3) -> dict:
    """Generate `num_images` ADE-sized images, time the floor and prepare, write prepare.json."""
    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as tmp:
        tmp = Path(tmp)
        dataset = synthetic.generate_ade20k(tmp / "data", num_train=num_images, num_val=0)
        copy_dir, output_dir = tmp / "copy", tmp / "prepared"
        copy_dir.mkdir()
        workers = os.cpu_count() or 1
        floor_runs, prepare_runs = [], []
        for _ in range(repeats):  # alternated, so both see the same background load
            floor_runs.append(_timed(lambda: floor(dataset, copy_dir)))
            prepare_runs.append(
                _timed(
                    lambda: prepare.prepare_dataset(
                        dataset, output_dir, labels.LIVING_ROOM_WHITELIST, 0.0, workers=workers
                    )
                )
            )
        (floor_s, floor_cpu_s), (prepare_s, prepare_cpu_s) = min(floor_runs), min(prepare_runs)
        stats = data_folder.read_stats(output_dir)
        kept = stats["splits"]["train"]["kept"]
        output_bytes = sum(p.stat().st_size for p in output_dir.glob("*.tfrecord"))
    if kept != num_images:
        raise RuntimeError(f"prepare kept {kept} of {num_images} images; expected all")
    result = {
        "benchmark": "prepare",
        "images": num_images,
        "image_sizes": [list(size) for size in synthetic.ADE_SIZES],
        "floor_images_per_s": round(num_images / floor_s, 1),
        "prepare_images_per_s": round(num_images / prepare_s, 1),
        "ratio": round(prepare_s / floor_s, 3),
        "target_ratio": TARGET_RATIO,
        "floor_cpu_ms_per_image": round(floor_cpu_s / num_images * 1e3, 2),
        "prepare_cpu_ms_per_image": round(prepare_cpu_s / num_images * 1e3, 2),
        "within_target": prepare_s / floor_s <= TARGET_RATIO,
        "output_mb": round(output_bytes / 1e6, 1),
        "workers": workers,
        "repeats": repeats,
    }
    return result
