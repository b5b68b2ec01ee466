"""The model benchmark on the JAX backend, as benchmarks/gpu/run.sh runs it on a GPU machine that
has no TensorFlow: here on the CPU at a tiny size, in a subprocess (Keras fixes its backend once
per process) in which importing TensorFlow fails."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Most of the run is XLA compiling for the CPU; its cheapest settings halve that.
FAST_CPU_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
WITHOUT_TENSORFLOW = """
import sys
sys.modules["tensorflow"] = None  # `import tensorflow` now fails, as on the GPU machine
from benchmarks import bench_model
sys.exit(bench_model.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_model_benchmark_runs_on_jax_without_tensorflow(tmp_path):
    output = tmp_path / "model.json"
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": FAST_CPU_COMPILE,
    }
    subprocess.run(
        [sys.executable, "-c", WITHOUT_TENSORFLOW, "--image-size", "64", "--alphas", "0.25",
         "--batch-size", "2", "--precision", "mixed_bfloat16", "--warmup", "1", "--steps", "2",
         "--output", str(output)],
        cwd=ROOT, env=env, check=True, timeout=600,
    )  # fmt: skip
    result = json.loads(output.read_text())
    assert result["backend"] == "jax"
    assert "jax" in result["versions"]
    assert [(run["alpha"], run["precision"]) for run in result["runs"]] == [
        (0.25, "mixed_bfloat16")
    ]
    for run in result["runs"]:
        assert run["images_per_s"] > 0
        assert run["seconds_per_step"] > 0
