"""`make bench`: run the benchmarks and write each one's figures to benchmarks/results/NAME.json.

Each `benchmarks/bench_NAME.py` has `run() -> dict`; the machine facts that make figures
comparable (cores, load from other work, date) are added here.
"""

import datetime
import importlib
import json
import os
import sys
from pathlib import Path

BENCHMARKS = (
    "bench_prepare",
    "bench_input",
    "bench_train",
    "bench_model",
    "bench_export",
    "bench_learning",
    "bench_learning_rooms",
)
RESULTS = Path(__file__).resolve().parent / "results"


def main(names: list[str]) -> int:
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in names or BENCHMARKS:
        module = importlib.import_module(f"benchmarks.{name}")
        print(f"== {name}", flush=True)
        load = os.getloadavg()[0]
        result = module.run()
        result["cpu_count"] = os.cpu_count()
        result["load_average_before"] = round(load, 2)  # other work on the cores skews timings
        result["date"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        text = json.dumps(result, indent=2) + "\n"
        (RESULTS / f"{name.removeprefix('bench_')}.json").write_text(text)
        print(text, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
