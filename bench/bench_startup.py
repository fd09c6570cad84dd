"""Cold start of the app: process start to a served-ready app, with an empty and a warm program cache.

    python -m bench.bench_startup --json bench/results/startup-cpu.json [--runs 2]

Each start is a fresh `python -c "import app"` (load, optimize, build the UI; no launch). Each run
gets empty AOTI and inductor caches: its first start compiles and fills them, the second loads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
PROBE = "import app; print('REPORT', app.report.cached, round(app.report.seconds, 2))"


def start(cache_dir: str) -> tuple[float, bool, float]:
    # Inductor's own cache lives beside ours: "empty" means nothing compiled before, anywhere.
    env = {**os.environ, "AOTI_CACHE_DIR": f"{cache_dir}/aoti", "TORCHINDUCTOR_CACHE_DIR": f"{cache_dir}/inductor"}
    begin = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - begin
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    _, cached, seconds = next(line for line in done.stdout.splitlines() if line.startswith("REPORT")).split()
    return wall, cached == "True", float(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    rows = {"empty cache": [], "warm cache": []}
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as cache:
            for label in rows:
                wall, cached, optimize_s = start(cache)
                assert cached == (label == "warm cache"), f"{label}: cached={cached}"
                rows[label].append({"startup_s": wall, "optimize_s": optimize_s})
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    result = {
        "device": device, "torch": torch.__version__, "python": platform.python_version(),
        "command": " ".join(["bench_startup.py", *sys.argv[1:]]),
        "rows": {label: {"startup_s": statistics.median(r["startup_s"] for r in runs),
                         "optimize_s": statistics.median(r["optimize_s"] for r in runs), "runs": runs}
                 for label, runs in rows.items()},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(f"{device}, torch {torch.__version__}")
    print(f"{'':12} {'startup s':>10} {'compile/load s':>15}")
    for label, row in result["rows"].items():
        print(f"{label:12} {row['startup_s']:10.1f} {row['optimize_s']:15.2f}")


if __name__ == "__main__":
    main()
