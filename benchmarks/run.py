"""`make bench`: run every benchmark and write its figures to benchmarks/results/."""

import importlib
import json
import sys
from pathlib import Path

BENCHMARKS = ("bench_prepare", "bench_train", "bench_export")
RESULTS = Path(__file__).resolve().parent / "results"


def main(names: list[str]) -> int:
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in names or BENCHMARKS:
        module = importlib.import_module(f"benchmarks.{name}")
        print(f"== {name}", flush=True)
        print(json.dumps(module.run(RESULTS), indent=2), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
