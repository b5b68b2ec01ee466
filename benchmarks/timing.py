"""Step timing for the training benchmarks, in Keras only (bench_model runs without TensorFlow)."""

import time

import keras


class StepTimes(keras.callbacks.Callback):
    """Wall time at the end of each step, after the step's loss has reached the host."""

    def __init__(self):
        super().__init__()
        self.times: list[float] = []

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        float(logs["loss"])  # waits for the device to finish the step
        self.times.append(time.perf_counter())
