"""Merge benchmark JSON files into one table; optionally write it into the README.

    python bench/report.py bench/results/h200-full/*.json [--readme README.md]

Speed-ups are against the eager rung of the same file, i.e. the same process on the same card.
The README section between `<!-- bench:transformer -->` and `<!-- /bench:transformer -->` is
replaced, so the published table is always generated from the committed results.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

BEGIN, END = "<!-- bench:transformer -->", "<!-- /bench:transformer -->"
SIZES = ("1024x1024", "1344x768", "768x1344", "512x512")


def load(paths: list[Path]) -> list[dict]:
    runs = []
    for path in paths:
        run = json.loads(path.read_text())
        run["file"] = path.name
        eager = {r["size"]: r["ms"] for r in run["rows"] if r["rung"] == "eager"}
        for row in run["rows"]:
            row["speedup"] = eager[row["size"]] / row["ms"] if row["size"] in eager else None
            row["eager_error"] = next((r["rel_error"] for r in run["rows"] if r["rung"] == "eager" and r["size"] == row["size"]), None)
        runs.append(run)
    return runs


def table(runs: list[dict]) -> str:
    env = runs[0]["env"]
    lines = [
        f"{env.get('card', 'CPU')}, driver {env.get('driver', '-')}, CUDA {env.get('cuda', '-')}, torch {env['torch']}, "
        f"diffusers {env['diffusers']}, torchao {env['torchao']}; FLUX.1-dev transformer "
        f"({runs[0]['blocks'][0]}+{runs[0]['blocks'][1]} blocks, random bf16 weights), median of CUDA-event timings.",
        "",
        "| rung | size | ms / step | vs eager | rel. error vs fp32 | peak GiB | compile s | package MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    seen = set()
    rows = [r for run in runs for r in run["rows"]]
    order = {size: i for i, size in enumerate(SIZES)}
    for r in sorted(rows, key=lambda r: (order.get(r["size"], 99), r["ms"] if r["rung"] != "eager" else -1)):
        if r["rung"] == "eager" and (r["size"], "eager") in seen:
            continue  # one baseline row per size; each file's own baseline still gives its speed-ups
        seen.add((r["size"], r["rung"]))
        compile_s = r.get("compile_s") or (r.get("first_call_s") if r["rung"].startswith("torch_compile") else None)
        lines.append(
            f"| {r['rung']} | {r['size']} | {r['ms']:.1f} | {r['speedup']:.2f}x | {r['rel_error']:.1e} | "
            f"{r.get('peak_gib', 0):.1f} | {fmt(compile_s, '.0f')} | {fmt(r.get('package_mb'), '.1f')} |"
        )
    lines += ["", "Commands (one per GPU, same machine):", ""]
    lines += [f"- `{run['env']['command']}`" for run in runs]
    return "\n".join(lines)


def fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--readme", type=Path)
    args = parser.parse_args()
    text = table(load(args.paths))
    print(text)
    if args.readme:
        readme = args.readme.read_text()
        pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
        if not pattern.search(readme):
            raise SystemExit(f"{args.readme} has no {BEGIN} ... {END} section")
        args.readme.write_text(pattern.sub(lambda _: f"{BEGIN}\n{text}\n{END}", readme))


if __name__ == "__main__":
    main()
