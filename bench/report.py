"""Merge benchmark JSON files into tables; optionally write them into the README.

    python bench/report.py bench/results/h200-full/*/*.json --coldstart bench/results/coldstart-h200-fp8.json \
        bench/results/coldstart-h200-bf16.json --startup bench/results/startup-cpu.json [--readme README.md]

Speed-ups are against the eager rung of the same file, i.e. the same process on the same card.
AoT rows compiled with inductor options other than the project's current ones are labelled with
the difference, e.g. "(CD, all directions)" for coordinate-descent tuning. The per-size table
shows each rung's latest run with the current options (files in natural order of their paths, so
run10 comes after run9): the rung as the project now configures it, not the luckiest of several.
The README sections between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` are replaced, so the
published tables are always generated from the committed results.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import shlex
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from config import OptimizationConfig  # noqa: E402

BEGIN, END = "<!-- bench:transformer -->", "<!-- /bench:transformer -->"
COLDSTART_BEGIN, COLDSTART_END = "<!-- bench:coldstart -->", "<!-- /bench:coldstart -->"
STARTUP_BEGIN, STARTUP_END = "<!-- bench:startup -->", "<!-- /bench:startup -->"
SIZES = ("1024x1024", "1344x768", "768x1344", "512x512")
# The per-size table; "+cudagraph" rows are the app's default on the GPU.
SUMMARY = (
    "eager", "aot_bf16+cudagraph", "aot_bf16", "torch_compile", "aot_fp8_row+cudagraph", "aot_fp8_row", "torch_compile_fp8",
)
SHORT = {"coordinate_descent_tuning": "CD", "coordinate_descent_check_all_directions": "all directions",
         "split_reductions": "split reductions"}
# How the host wrapper is built: it changes the compile time, not the kernels (same step time, bench/NOTES.md).
BUILD_ONLY = {"aot_inductor.compile_wrapper_opt_level"}


def natural(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def load(paths: list[Path]) -> list[dict]:
    rows = []
    for order, path in enumerate(sorted(paths, key=natural)):
        run = {**json.loads(path.read_text()), "order": order}
        eager = {r["size"]: r for r in run["rows"] if r["rung"] == "eager"}
        options = options_label(run.get("inductor_configs", {}))
        for row in run["rows"]:
            base = eager.get(row["size"])
            rows.append({
                **row, "run": run, "speedup": base["ms"] / row["ms"] if base else None,
                "label": row["rung"] + (options if row["rung"].startswith("aot") else ""),
            })
    return rows


def options_label(configs: dict) -> str:
    """How a run's inductor options differ from the project's current ones ("" when they do not)."""
    current = OptimizationConfig().inductor_configs

    def effective(options) -> dict:  # search directions mean nothing without the search
        cd = options.get("coordinate_descent_tuning")
        return {k: v for k, v in options.items()
                if (cd or k != "coordinate_descent_check_all_directions") and k not in BUILD_ONLY}

    def value(options, key):  # a run that did not set an option ran with inductor's default
        if key in options:
            return options[key]
        import torch._inductor.config as inductor

        return functools.reduce(getattr, key.split("."), inductor)  # "aot_inductor.x" is a nested option

    configs, current = effective(configs), effective(current)
    changed = [k for k in sorted({*configs, *current}) if value(configs, k) != value(current, k)]
    order = [*SHORT, *sorted(set(changed) - set(SHORT))]
    named = [
        ("" if value(configs, k) else "no ") + SHORT[k] if k in SHORT else f"{k}={value(configs, k)}"
        for k in sorted(changed, key=order.index)
    ]
    return f" ({', '.join(named)})" if named else ""


def guidance(row: dict) -> float:
    # Runs before the inputs were recorded used guidance 3.5 (bench_transformer.GUIDANCE says why it changed).
    return row["run"].get("inputs", {}).get("guidance", 3.5)


def bf16(value: float) -> float:
    """`value` rounded to bfloat16 (the top 16 bits of its float32, rounded to nearest even)."""
    bits = struct.unpack("<I", struct.pack("<f", value))[0]
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return struct.unpack("<f", struct.pack("<I", bits))[0]


def rounded_in_bf16(value: float) -> bool:
    """Whether the transformer's value*1000, computed in bf16, differs from fp32's."""
    return bf16(value * 1000) != value * 1000


def error(row: dict) -> str:
    return f"{row['rel_error']:.1e}" + "*" * rounded_in_bf16(guidance(row))


def header(rows: list[dict]) -> str:
    env, blocks = rows[0]["run"]["env"], rows[0]["run"]["blocks"]
    exact = sorted({guidance(r) for r in rows if not rounded_in_bf16(guidance(r))})
    shifted = sorted({guidance(r) for r in rows if rounded_in_bf16(guidance(r))})
    shifts = ", ".join(f"{g * 1000:g} becomes {bf16(g * 1000):g}" for g in shifted)
    note = (f"; errors marked * are from runs at guidance {' or '.join(map(str, shifted))}, which bf16 shifts inside the "
            f"transformer ({shifts}) while the reference does not: they measure mostly that shift") if shifted else ""
    return (
        f"{env.get('card', 'CPU')}, driver {env.get('driver', '-')}, CUDA {env.get('cuda', '-')}, torch {env['torch']}, "
        f"diffusers {env['diffusers']}, torchao {env['torchao']}. FLUX.1-dev transformer ({blocks[0]}+{blocks[1]} blocks, "
        "random bf16 weights), one denoising step, median of 10 CUDA-event timings after warm-up; speed-up against "
        "eager bf16 measured in the same process on the same card; error is ||out - ref|| / ||ref|| against fp32 eager"
        f"{', guidance ' + ' or '.join(map(str, exact)) if exact else ''}{note}."
    )


def full_table(rows: list[dict], size: str) -> list[str]:
    lines = [
        f"| rung ({size}) | attention | ms / step | vs eager | rel. error vs fp32 | peak GiB | compile s | package MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    picked = [r for r in rows if r["size"] == size]
    eager = [r for r in picked if r["rung"] == "eager"]
    # One median per kind of inputs: errors at rounded and at exact guidance are not comparable.
    groups = [[r for r in eager if rounded_in_bf16(guidance(r)) == rounded] for rounded in (False, True)]
    errors = [error(sorted(g, key=lambda r: r["rel_error"])[(len(g) - 1) // 2]) for g in groups if g]
    lines.append(f"| eager, one per process (median error) | native | {eager_range(rows, size)} | 1.00x | "
                 f"{' / '.join(errors)} | | | |")
    for r in sorted((r for r in picked if r["rung"] != "eager"), key=lambda r: r["ms"]):
        compile_s = r.get("compile_s") or (r.get("first_call_s") if r["rung"].startswith("torch_compile") else None)
        lines.append(
            f"| {r['label']} | {r.get('attention', '')} | {r['ms']:.1f} | {r['speedup']:.2f}x | {error(r)} | "
            f"{r.get('peak_gib', 0):.1f} | "
            f"{fmt(compile_s, '.0f')}{' (portable cache)' * bool(r.get('compile_cache'))} | {fmt(r.get('package_mb'), '.1f')} |"
        )
    return lines


def sizes_of(rows: list[dict]) -> list[str]:
    """The measured sizes, the UI's presets first."""
    seen = list(dict.fromkeys(r["size"] for r in rows))
    return [s for s in SIZES if s in seen] + [s for s in seen if s not in SIZES]


def size_table(rows: list[dict]) -> list[str]:
    sizes = sizes_of(rows)
    lines = ["| rung | " + " | ".join(sizes) + " |", "|---|" + "---:|" * len(sizes)]
    for rung in SUMMARY:
        cells = []
        for size in sizes:
            if rung == "eager":
                cells.append(f"{eager_range(rows, size)} ms")
                continue
            found = [r for r in rows if r["label"] == rung and r["size"] == size]
            latest = max(found, key=lambda r: r["run"]["order"]) if found else None
            cells.append(f"{latest['ms']:.1f} ms ({latest['speedup']:.2f}x, error {error(latest)})" if latest else "not measured")
        lines.append(f"| {rung} | " + " | ".join(cells) + " |")
    return lines


def render(rows: list[dict]) -> str:
    commands = sorted({r["run"]["env"]["command"] for r in rows})
    return "\n".join([
        header(rows), "", *size_table(rows), "", *full_table(rows, sizes_of(rows)[0]), "",
        "Commands (each one process on one H200; runs 1-6 on a 4-GPU machine, one process per GPU at once, "
        "runs `*-one-gpu` alone on a 1-GPU machine):", "",
        *[f"- `{c}`" for c in commands],
    ])


def render_coldstart(paths: list[Path]) -> str:
    """One table per cold-start JSON (bench_coldstart.py): seconds from process start to the first step."""
    out = []
    for path in paths:
        run = json.loads(path.read_text())
        rows = run["rows"]
        # Files written before the script recorded these carry them only in their command line.
        model = run.get("model", option(run["command"], "--model", "flux-dev"))
        fp8 = run.get("fp8", option(run["command"], "--fp8", ""))
        size = run.get("size", option(run["command"], "--size", "1024x1024"))
        what = f"{'FLUX.1-dev' if model == 'flux-dev' else model}, {f'FP8 per {fp8}' if fp8 else 'bf16'}, {size}"
        if "inductor_configs" in run:
            what += f", inductor options {run['inductor_configs']}"
        else:  # files written before the script recorded them
            what += ", inductor options of that time (coordinate-descent tuning on)"
        out += [
            f"{what}; {run['device']}, torch {run['torch']}: `{run['command']}`", "",
            "| start | process start to first step, s | compile or load + first step, s | imports, s | weights (excluded), s |",
            "|---|---:|---:|---:|---:|",
            *[f"| {label} | {r['first_step_s']:.1f} | {r['compile_or_load_s']:.1f} | {r['import_s']:.1f} | {r['weights_s']:.1f} |"
              for label, r in rows.items()],
            "",
        ]
        empty, cached = rows.get("aot, empty caches"), rows.get("aot, cached program")
        if empty and cached:
            out += [
                f"Cached program: {empty['first_step_s'] / cached['first_step_s']:.1f}x sooner to the first step than "
                f"compiling; {empty['compile_or_load_s'] / cached['compile_or_load_s']:.0f}x sooner once imported.", "",
            ]
    return "\n".join(out).rstrip()


def render_startup(path: Path) -> str:
    """The whole app's start (bench_startup.py): empty against warm program cache."""
    run = json.loads(path.read_text())
    return "\n".join([
        f"{run['device']}, torch {run['torch']}, embedded tiny model: `{run['command']}`, median of the runs, "
        "fresh process each:", "",
        "| start | process start to ready, s | capture+export+compile or cache load, s |",
        "|---|---:|---:|",
        *[f"| {label} | {r['startup_s']:.1f} | {r['optimize_s']:.2f} |" for label, r in run["rows"].items()],
    ])


def option(command: str, name: str, default: str) -> str:
    words = shlex.split(command)
    if name not in words:
        return default
    value = words[words.index(name) + 1 :][:1]
    return value[0] if value and not value[0].startswith("--") else ""


def write_section(readme: str, begin: str, end: str, text: str, name: Path) -> str:
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if not pattern.search(readme):
        raise SystemExit(f"{name} has no {begin} ... {end} section")
    return pattern.sub(lambda _: f"{begin}\n{text}\n{end}", readme)


def eager_range(rows: list[dict], size: str) -> str:
    # Every process measured its own baseline: show their spread rather than one of them.
    times = [r["ms"] for r in rows if r["rung"] == "eager" and r["size"] == size]
    return f"{min(times):.1f}-{max(times):.1f}"


def fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help="bench_transformer.py JSON files")
    parser.add_argument("--coldstart", nargs="*", type=Path, default=[], help="bench_coldstart.py JSON files")
    parser.add_argument("--startup", type=Path, help="a bench_startup.py JSON file")
    parser.add_argument("--readme", type=Path)
    args = parser.parse_args()
    text = render(load(args.paths))
    sections = {(BEGIN, END): text}
    if args.coldstart:
        sections[COLDSTART_BEGIN, COLDSTART_END] = render_coldstart(args.coldstart)
    if args.startup:
        sections[STARTUP_BEGIN, STARTUP_END] = render_startup(args.startup)
    print(*sections.values(), sep="\n\n")
    if args.readme:
        readme = args.readme.read_text()
        for (begin, end), section in sections.items():
            readme = write_section(readme, begin, end, section, args.readme)
        args.readme.write_text(readme)


if __name__ == "__main__":
    main()
