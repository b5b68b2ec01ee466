#!/usr/bin/env bash
# The model's training speed on a GPU machine that has Python with JAX (CUDA) but neither
# TensorFlow nor a package index. It installs the wheels carried in benchmarks/gpu/wheels/
# (filled by `make gpu-wheels`: keras and what it needs that JAX does not bring, 20 MB) into a
# private folder, then runs benchmarks/bench_model.py on the JAX backend at 768x768, batch 16,
# alpha 0.25 and 1, mixed_bfloat16 then float32. The figures go to $OUT/model-gpu.json
# (default benchmarks/results/), rewritten after each configuration so that a run cut short
# keeps what it measured, and are printed at the end; they belong in
# benchmarks/results/model-gpu.json.
#   bash benchmarks/gpu/run.sh [bench_model options, which override the ones below]
# Needs CPython 3.11 to 3.13: keras 3.15 needs 3.11, and h5py and optree are carried for those.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-benchmarks/results}
PYTHON=${PYTHON:-python3}
LIMIT_S=${LIMIT_S:-420}  # the benchmark's share of a 480 s call; installing takes seconds
REQUIRE_GPU=${REQUIRE_GPU:-1}  # 0 to try the script on a CPU
WHEELS=benchmarks/gpu/wheels
PACKAGES="keras absl-py namex optree typing-extensions h5py packaging rich markdown-it-py mdurl
pygments"
SITE=$(mktemp -d)
trap 'rm -rf "$SITE"' EXIT

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no nvidia-smi"
"$PYTHON" - <<'PY'
import importlib.metadata
import sys

print(sys.executable, sys.version)
for name in ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "numpy", "ml-dtypes",
             "keras", "tensorflow", "torch"):
    try:
        print(f"{name} {importlib.metadata.version(name)}")
    except importlib.metadata.PackageNotFoundError:
        print(f"{name} not installed")
if sys.version_info < (3, 11):
    sys.exit("keras 3.15 needs Python >= 3.11: carry an older keras for this machine")
PY

echo "== wheels into $SITE"
ls "$WHEELS"/*.whl || { echo "no wheels: run make gpu-wheels, carry $WHEELS"; exit 1; }
if "$PYTHON" -m pip --version; then
  # --target: nothing of the machine's own packages changes, and no externally-managed refusal
  "$PYTHON" -m pip install --quiet --no-index --find-links "$WHEELS" --no-deps --target "$SITE" \
    $PACKAGES
else
  # No pip: a wheel is a zip of what goes into site-packages.
  tag=$("$PYTHON" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')
  for wheel in "$WHEELS"/*-py3-none-any.whl "$WHEELS"/*-"$tag"-"$tag"-*.whl; do
    "$PYTHON" -m zipfile -e "$wheel" "$SITE"
  done
fi
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
export KERAS_BACKEND=jax
"$PYTHON" -c 'import jax, keras; print("keras", keras.__version__, "on", jax.devices())'
if [[ $REQUIRE_GPU == 1 ]]; then  # at 768x768 a CPU would spend the whole call on one config
  "$PYTHON" -c 'import jax, sys; jax.devices()[0].platform == "gpu" or sys.exit("JAX has no GPU")'
fi

echo "== benchmark"
mkdir -p "$OUT"
status=0
timeout "$LIMIT_S" "$PYTHON" -m benchmarks.bench_model --image-size 768 --alphas 0.25,1 \
  --batch-size 16 --precision mixed_bfloat16,float32 --warmup 10 --steps 50 \
  --output "$OUT/model-gpu.json" "$@" || status=$?
echo "== $OUT/model-gpu.json (benchmark exit status $status; 124: cut at ${LIMIT_S}s)"
cat "$OUT/model-gpu.json" || echo "nothing measured"
exit "$status"
