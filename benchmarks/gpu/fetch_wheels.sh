#!/usr/bin/env bash
# Fills benchmarks/gpu/wheels/ with what benchmarks/gpu/run.sh installs on a GPU machine that
# has JAX but no package index: keras and the dependencies JAX does not bring, at the versions
# and hashes of requirements.lock. Compiled wheels (h5py, optree) come for each CPython that
# keras 3.15 supports and a GPU machine is likely to have (PYTHONS); pure ones once.
# Usage: benchmarks/gpu/fetch_wheels.sh [PYTHON]   (`make gpu-wheels`)
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${1:-.venv/bin/python}
PYTHONS=${PYTHONS:-"3.11 3.12 3.13"}
WHEELS=benchmarks/gpu/wheels
# numpy and ml-dtypes are left out: JAX brings them, built for its own jaxlib.
PACKAGES="keras absl-py namex optree typing-extensions h5py packaging rich markdown-it-py mdurl
pygments"
PLATFORMS="manylinux2014_x86_64 $(printf 'manylinux_2_%s_x86_64 ' $(seq 17 28))"

pins=$(mktemp)
trap 'rm -f "$pins"' EXIT
# Each pin's block of requirements.lock: "name==version \" then its --hash and "# via" lines.
awk -v wanted=" $(echo $PACKAGES) " '
  /^[a-z0-9]/ { split($1, pin, "=="); keep = index(wanted, " " pin[1] " ") > 0 }
  keep && !/^ *#/ { print }
' requirements.lock >"$pins"
for package in $PACKAGES; do
  grep -q "^$package==" "$pins" || { echo "$package is not in requirements.lock" >&2; exit 1; }
done

rm -rf "$WHEELS"
mkdir -p "$WHEELS"
for version in $PYTHONS; do
  abi=cp${version/./}
  "$PYTHON" -m pip download --quiet --no-deps --require-hashes --only-binary=:all: \
    --python-version "$version" --implementation cp --abi "$abi" --abi abi3 --abi none \
    $(printf -- '--platform %s ' $PLATFORMS any) -r "$pins" -d "$WHEELS"
done
ls -l "$WHEELS"
du -sh "$WHEELS"
