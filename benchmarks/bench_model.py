"""The model's own training speed (images/s, steady state): ICNet's training step on one batch of
in-memory tensors, without the input pipeline, on whichever Keras backend KERAS_BACKEND names
(tensorflow, jax or torch).

It imports no TensorFlow of its own and only the pure-Keras parts of the trainer (`icnet`,
`losses`), so it also runs where TensorFlow is not installed: a GPU machine that has only JAX
(see benchmarks/gpu/run.sh). The model is compiled as `trainer.build_model` compiles it: the
three outputs, each with the weighted cross-entropy, loss weights 1.0, 0.4, 0.16, and Adam.
The batch is made once, on the device, and fed again at every step; each step waits for its
loss on the host, and only steps after warm-up (the first one compiles) count.

`make bench BENCH=bench_model` measures what suits this machine (`run`); pick sizes with
`python -m benchmarks.bench_model --image-size 768 --alphas 0.25,1 --batch-size 16
--precision mixed_bfloat16,float32 --steps 50 --warmup 10 --output FILE`.
"""

import argparse
import gc
import importlib.metadata
import json
import os
import platform
import time
from pathlib import Path

import keras
import numpy as np

from benchmarks import timing
from image_segmentation.data import labels
from image_segmentation.model import icnet
from image_segmentation.training import losses

LOSS_WEIGHTS = (1.0, 0.4, 0.16)  # train.TrainSettings.loss_weights
LEARNING_RATE = 1e-3
NUM_CLASSES = labels.parse_whitelist(labels.LIVING_ROOM_WHITELIST).num_classes
ACCELERATOR_RUN = {
    "image_size": (768, 768),
    "alphas": (0.25, 1.0),
    "batch_size": 16,
    "precisions": ("mixed_bfloat16", "float32"),
    "warmup": 10,
    "steps": 50,
}
CPU_RUN = {
    "image_size": (768, 768),
    "alphas": (0.25,),
    "batch_size": 4,
    "precisions": ("float32",),  # bfloat16 has no fast CPU kernels on most machines
    "warmup": 2,
    "steps": 5,
}


def build_model(image_size: tuple[int, int], alpha: float, precision: str) -> keras.Model:
    """ICNet compiled like `trainer.build_model`. Neither the class weights nor the learning
    rate's schedule changes the cost of a step, so the weights are all 1 and the rate fixed."""
    with icnet.dtype_policy(precision):
        model = icnet.build_icnet(NUM_CLASSES, image_size, alpha)
    optimizer = keras.optimizers.Adam(LEARNING_RATE, name="adam")
    losses.compile_for_training(model, [1.0] * NUM_CLASSES, optimizer, LOSS_WEIGHTS)
    return model


def device_batch(model: keras.Model, batch_size: int, seed: int = 0) -> tuple:
    """One batch of images and per-output labels, made once as the backend's own tensors (on
    the accelerator where there is one), so that no step copies it from the host again."""
    rng = np.random.default_rng(seed)
    height, width = model.input.shape[1:3]
    images = rng.standard_normal((batch_size, height, width, 3), dtype=np.float32)
    targets = {
        name: rng.integers(0, NUM_CLASSES, (batch_size, *model.get_layer(name).output.shape[1:3]))
        for name in icnet.OUTPUTS
    }
    to_device = keras.ops.convert_to_tensor
    return to_device(images), {name: to_device(t, "int32") for name, t in targets.items()}


def repeat(batch: tuple):
    """The same batch at every step: the model's speed with no input cost."""
    while True:
        yield batch


def measure(
    image_size: tuple[int, int],
    alpha: float,
    batch_size: int,
    precision: str,
    warmup: int,
    steps: int,
) -> dict:
    keras.utils.set_random_seed(0)
    model = build_model(image_size, alpha, precision)
    batch = device_batch(model, batch_size)
    reset_peak_memory()
    timer = timing.StepTimes()
    started = time.perf_counter()
    model.fit(
        repeat(batch),
        epochs=1,
        steps_per_epoch=warmup + steps,
        shuffle=False,
        callbacks=[timer],
        verbose=0,
    )
    steady = timer.times[-1] - timer.times[warmup - 1]
    result = {
        "image_size": list(image_size),
        "alpha": alpha,
        "batch_size": batch_size,
        "precision": precision,
        "jit_compile": model.jit_compile,
        "parameters": model.count_params(),
        "multiply_adds_per_image": icnet.count_multiply_adds(model),
        "warmup_steps": warmup,
        "steps": steps,
        "images_per_s": round(steps * batch_size / steady, 3),
        "seconds_per_step": round(steady / steps, 4),
        "first_step_s": round(timer.times[0] - started, 1),  # tracing and compiling included
        "peak_memory_bytes": peak_memory(),
    }
    del model, batch
    keras.backend.clear_session()
    gc.collect()
    return result


def reset_peak_memory() -> None:
    """Restart the accelerator's peak-memory count where the backend can (JAX cannot: its
    figure is the peak of the process so far, so smaller models are measured first)."""
    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
    elif backend == "tensorflow":
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            tf.config.experimental.reset_memory_stats("GPU:0")


def peak_memory() -> int | None:
    """Peak bytes the backend allocated on the accelerator; None on CPU or when unknown."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        stats = device.memory_stats() if device.platform != "cpu" else None
        return (stats or {}).get("peak_bytes_in_use")
    if backend == "torch":
        import torch

        return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    if backend == "tensorflow":
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            return tf.config.experimental.get_memory_info("GPU:0")["peak"]
    return None


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    return f"{platform.processor() or 'CPU'} ({os.cpu_count()} cores)"


def accelerator() -> str | None:
    """The accelerator the backend computes on, by name; None when it runs on the CPU."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform == "cpu":
            return None
        return f"{jax.device_count()} x {device.device_kind}"
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name()}"
        return None
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            details = tf.config.experimental.get_device_details(gpus[0])
            return f"{len(gpus)} x {details.get('device_name', 'GPU')}"
    return None


def versions() -> dict:
    names = {
        "jax": ("jax", "jaxlib"),
        "torch": ("torch",),
        "tensorflow": ("tensorflow", "tensorflow-cpu"),
    }
    found = {"python": platform.python_version()}
    for name in ("keras", "numpy", *names.get(keras.backend.backend(), ())):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def benchmark(
    image_size: tuple[int, int],
    alphas: tuple[float, ...],
    batch_size: int,
    precisions: tuple[str, ...],
    warmup: int,
    steps: int,
    output: Path | None = None,
) -> dict:
    """Every precision x alpha, smallest first; `output` is rewritten after each one, so a run
    cut short still leaves what it measured."""
    if warmup < 1 or steps < 1:
        raise ValueError("--warmup and --steps must be >= 1: the first step compiles")
    name = accelerator()
    result = {
        "benchmark": "model",
        "backend": keras.backend.backend(),
        "device": name or cpu_name(),
        "accelerator": name is not None,
        "cpu": cpu_name(),
        "num_classes": NUM_CLASSES,
        "input": "one batch of in-memory tensors, fed again at every step",
        "versions": versions(),
        "runs": [],
    }
    for precision in precisions:
        for alpha in sorted(alphas):
            print(f"-- {precision}, alpha {alpha}", flush=True)
            run = measure(image_size, alpha, batch_size, precision, warmup, steps)
            print(json.dumps(run), flush=True)
            result["runs"].append(run)
            if output is not None:
                output.parent.mkdir(parents=True, exist_ok=True)
                output.write_text(json.dumps(result, indent=2) + "\n")
    return result


def run() -> dict:
    """Measure at the GPU settings where the backend sees an accelerator, else a short CPU run."""
    return benchmark(**(ACCELERATOR_RUN if accelerator() else CPU_RUN))


def parse_size(text: str) -> tuple[int, int]:
    height, _, width = text.partition("x")
    return int(height), int(width or height)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=parse_size, default=(768, 768), help="768 or HxW")
    parser.add_argument("--alphas", default="0.25,1", help="comma-separated width multipliers")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--precision",
        default="mixed_bfloat16",
        help="comma-separated Keras dtype policies: mixed_bfloat16, mixed_float16, float32",
    )
    parser.add_argument("--warmup", type=int, default=10, help="steps left out of the timing")
    parser.add_argument("--steps", type=int, default=50, help="timed steps")
    parser.add_argument("--output", type=Path, help="JSON file for the figures")
    args = parser.parse_args(argv)
    result = benchmark(
        args.image_size,
        tuple(float(alpha) for alpha in args.alphas.split(",")),
        args.batch_size,
        tuple(args.precision.split(",")),
        args.warmup,
        args.steps,
        args.output,
    )
    if args.output is None:
        print(json.dumps(result, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
