"""Render the committed benchmark results into the tables of bench/README.md and README.md.

    python -m bench.report                          # regenerate every table from bench/results
    python -m bench.report --table OUT/gpu*.json    # print the step tables of some runs (bench/ladder.sh)

Speed-ups are against the eager rung of the same file, i.e. the same process on the same card.
AoT rows compiled with inductor options other than the project's current ones are labelled with
the difference, e.g. "(CD, all directions)" for coordinate-descent tuning. The per-size table
shows each rung's latest run with the current options (files in natural order of their paths, so
run10 comes after run9): the rung as the project now configures it, not the luckiest of several.
README.md's summary shows the range over every run with the current options instead: a reader
should see how much one process differs from the next. The sections between `<!-- bench:NAME -->`
and `<!-- /bench:NAME -->` are replaced, so the published tables are always the committed results.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import shlex
import struct
from pathlib import Path

from config import OptimizationConfig

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TRANSFORMER = sorted((RESULTS / "h200-full").glob("*/*.json"))
# The current defaults' cold starts first: the summary quotes the first file.
COLDSTART = [RESULTS / f"coldstart-h200-{name}.json" for name in ("fp8", "bf16", "bf16-session3")]
STARTUP = RESULTS / "startup-cpu.json"
ZEROGPU = RESULTS / "zerogpu-h200" / "zerogpu-h200-flux-dev.json"
ZEROGPU_LORA = RESULTS / "zerogpu-h200" / "zerogpu-h200-flux-dev-lora-cudnn.json"
# Each plan of plan.py on one card, forced where the card is another (AOTI_FAIL_PROBES); the later file re-measured
# Blackwell's plan after a fix, so it comes last.
PLANS = [RESULTS / "plans-h100" / name for name in ("pipeline.json", "pipeline-sm120-fixed.json")]
PLAN_VARIANTS = {"eager": "eager", "aot": "Hopper's plan", "aot_sm120": "Blackwell's (FP8 per tensor, bf16 attention)",
                 "aot_safest": "no FP8"}
# Under a 48 GB cap, oldest first; the README quotes the last. The app's expandable segments are not measured yet.
ZEROGPU_MEMORY = [RESULTS / "zerogpu-memory-h100" / "fixed-segments.json"]
PIPELINE = sorted((RESULTS / "pipeline-h200").glob("*.json"))
# README.md's seconds per image: the app's default ("aot") as last measured; eager and torch.compile from every run.
PIPELINE_DEFAULT = RESULTS / "pipeline-h200" / "eager-aot-rope-pairs-split.json"
VAE = sorted((RESULTS / "vae-h200").glob("*.json"))
LORA = RESULTS / "lora-h200" / "ranks-16-64-128.json"
SERVE = sorted((RESULTS / "serve-h200").glob("*.json"))
PAGES = (ROOT / "bench" / "README.md", ROOT / "README.md")
SIZES = ("1024x1024", "1344x768", "768x1344", "512x512")
# The per-size table; "+cudagraph" rows are the app's default on the GPU.
SUMMARY = (
    "eager", "aot_bf16+cudagraph", "aot_bf16", "torch_compile",
    "aot_fp8_row_fusedq_ff_cudnnstaticqk_rows4096_ropesplit+cudagraph",
    "aot_fp8_row_fusedq_ff_cudnnstaticqk_rows4096_ropesplit", "aot_fp8_row_fusedq_ff_cudnnstaticqk_rows4096+cudagraph",
    "aot_fp8_row_fusedq_ff_cudnnstaticqk_rows4096", "aot_fp8_row_fusedq_ff_cudnnstaticqk+cudagraph",
    "aot_fp8_row_fusedq_ff_cudnnstaticqk", "aot_fp8_row_fusedq_cudnnstaticqk+cudagraph",
    "aot_fp8_row_fusedq_cudnnstaticqk", "aot_fp8_row_fusedq_ff_cudnnattn+cudagraph", "aot_fp8_row_fusedq_cudnnattn+cudagraph",
    "aot_fp8_row_fusedq_cudnnattn", "aot_fp8_row_fusedq+cudagraph", "aot_fp8_row_fusedq", "aot_fp8_row+cudagraph",
    "aot_fp8_row", "torch_compile_fp8",
)
SHORT = {"coordinate_descent_tuning": "CD", "coordinate_descent_check_all_directions": "all directions",
         "split_reductions": "split reductions"}
# How the host wrapper is built: it changes the compile time, not the kernels (same step time, bench/NOTES.md).
BUILD_ONLY = {"aot_inductor.compile_wrapper_opt_level"}
# README.md's summary: column title, rung.
SPEED = {"eager bf16": "eager", "`torch.compile` + FP8": "torch_compile_fp8",
         "this template (AoT, FP8, CUDA graphs)": "aot_fp8_row_fusedq_ff_cudnnstaticqk_rows4096_ropesplit+cudagraph"}
# Rungs whose code the template no longer has, by run and part of the rung name: in bench/README.md, marked, and
# not in README.md's summary.
SUPERSEDED = {
    "run16-bf16text-cudnn-attention": "cudnnattn",  # cuDNN attention with ATen quantization, FP8 at every size
    # The static-q/k rungs ran a one-pass Triton kernel for q and k (removed: slower), not the cast in the graph.
    "run22-norm-rope-kernel-v1": "cudnnstaticqk", "run23-norm-rope-kernel-v2": "cudnnstaticqk",
    # Its one-pass q/k op (removed), and the single blocks' quantization kernel before it skipped GELU in its first pass.
    "run24-default-fused-qk-op": "cudnnstaticqk",
}


def superseded(row: dict, path: Path) -> bool:
    return SUPERSEDED.get(path.parent.name, "\0") in row["rung"]


KERNELS = [RESULTS / "kernels-h200" / name for name in
           ("kernels.json", "cudnn-fp8-attention-cudagraph.json", "cudnn-fp8-attention-fused-cudagraph.json",
            "cudnn-fp8-attention-static-qk-cudagraph.json", "gelu-cat-quantize-gelu-of-max.json", "qk-rope-layout.json")]


def natural(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def load(paths: list[Path]) -> list[dict]:
    rows = []
    for order, path in enumerate(sorted(paths, key=natural)):
        run = json.loads(path.read_text())
        run.update(order=order, path=path, options=options_label(run.get("inductor_configs", {})))
        eager = {r["size"]: r for r in run["rows"] if r["rung"] == "eager"}
        for row in run["rows"]:
            base = eager.get(row["size"])
            rows.append({
                **row, "run": run, "speedup": base["ms"] / row["ms"] if base else None,
                "label": row["rung"] + (run["options"] if row["rung"].startswith("aot") else "")
                + (f" [{path.parent.name}: code since removed]" if superseded(row, path) else ""),
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
    runs = list({id(r["run"]): r["run"] for r in rows}.values())
    return "\n".join([
        header(rows), "", *size_table(rows), "", *full_table(rows, sizes_of(rows)[0]), "",
        "Commands (each one process on one H200; runs 1-6 on a 4-GPU machine, one process per GPU at once, "
        "runs `*-one-gpu` alone on a 1-GPU machine):", "",
        *[f"- `{command(run['env']['command'], run['path'])}`" for run in runs],
    ])


def render_summary(rows: list[dict], coldstart: Path) -> str:
    """README.md's speed table: per size, the range over every run with the current options and code."""
    rows = [r for r in rows if not r["run"]["options"] and not superseded(r, r["run"]["path"])]
    lines = ["| size | " + " | ".join(SPEED) + " |", "|---|" + "---:|" * len(SPEED)]
    for size in SIZES:
        cells = []
        for rung in SPEED.values():
            found = [r for r in rows if r["label"] == rung and r["size"] == size]
            if not found:
                cells.append("not measured")
                continue
            speedup = "" if rung == "eager" else f" ({span([r['speedup'] for r in found], '.2f')}x)"
            cells.append(f"{span([r['ms'] for r in found], '.1f')} ms{speedup}")
        lines.append(f"| {size} | " + " | ".join(cells) + " |")
    env = sorted({(r["run"]["env"].get("card", "CPU"), r["run"]["env"]["torch"], r["run"]["env"]["diffusers"],
                   r["run"]["env"]["torchao"]) for r in rows})
    cards = "; ".join(versions(dict(card=card, torch=torch, diffusers=diffusers, torchao=torchao))
                      for card, torch, diffusers, torchao in env)
    cold = json.loads(coldstart.read_text())
    empty, cached = cold["rows"]["aot, empty caches"], cold["rows"]["aot, cached program"]
    return "\n".join([
        *lines, "",
        f"Milliseconds per step of FLUX.1-dev's transformer (random weights), lowest to highest over "
        f"{len({id(r['run']) for r in rows})} processes, speed-up against eager in the same process. First start with FP8: "
        f"{empty['compile_or_load_s']:.0f} s of compile (imports not counted); a restart loads the program in "
        f"{cached['compile_or_load_s']:.1f} s. {cards}; every run and command: [bench/README.md](bench/README.md).",
    ])


def pipeline_rows(paths: list[Path], ordered: bool = False) -> list[dict]:
    """bench_pipeline rows, each with its run and its speed-up against the same run's eager image; the files in natural
    order of their names unless `ordered` (as given)."""
    rows = []
    for path in paths if ordered else sorted(paths, key=natural):
        run = {**json.loads(path.read_text()), "path": path}
        eager = {r["workload"]: r["seconds"] for r in run["rows"] if r["variant"] == "eager"}
        rows += [{**r, "run": run, "speedup": eager[r["workload"]] / r["seconds"] if r["workload"] in eager else None}
                 for r in run["rows"]]
    return rows


def workload_label(row: dict) -> str:
    width, height, steps = row["workload"].split("x")
    return f"{width}x{height}, {steps} steps"


def render_pipeline_summary(paths: list[Path], default: Path) -> str:
    """README.md's seconds per image: eager, torch.compile + FP8 and the app's default (AoT), as ranges over the runs."""
    rows = [r for r in pipeline_rows(paths) if r["variant"] != "aot" or r["run"]["path"] == default]
    lines = ["| image | eager bf16 | `torch.compile` + FP8 | this template | images / min |", "|---|---:|---:|---:|---:|"]

    def cell(found: list[dict]) -> str:
        if not found:
            return "not measured"
        return f"{span([r['seconds'] for r in found], '.2f')} s ({span([r['speedup'] for r in found], '.2f')}x)"

    for workload in dict.fromkeys(r["workload"] for r in rows):
        eager, compiled, aot = ([r for r in rows if r["workload"] == workload and r["variant"] == variant]
                                for variant in ("eager", "torch_compile_fp8", "aot"))
        lines.append(
            f"| {workload_label(aot[0])} | {span([r['seconds'] for r in eager], '.2f')} s | {cell(compiled)} | {cell(aot)} | "
            f"{span([r['images_per_minute'] for r in eager], '.0f')} -> {span([r['images_per_minute'] for r in aot], '.0f')} |"
        )
    return "\n".join(lines)


def render_plans_summary(paths: list[Path], workload: str = "1024x1024x28") -> str:
    """README's sentence on what each plan costs on the card measured: a later file's variant replaces an earlier one's."""
    latest = {r["variant"]: r for r in pipeline_rows(paths, ordered=True) if r["workload"] == workload}
    eager = latest["eager"]
    cells = [f"{label} {latest[variant]['seconds']:.2f} s" + (f" ({latest[variant]['speedup']:.2f}x)" * (variant != "eager"))
             for variant, label in PLAN_VARIANTS.items() if variant in latest]
    where = f"On an {short_card(eager['run']['env']['card'])} (FLUX.1-dev, random weights, {workload_label(eager)})"
    return f"{where}: " + "; ".join(cells) + "."


def speedup(row: dict) -> str:
    return f"{row['speedup']:.2f}x" if row["speedup"] else "-"  # "-": no eager image in that run


def render_pipeline(paths: list[Path]) -> str:
    """Every bench_pipeline run: seconds per image and where they go."""
    out = []
    for path in sorted(paths, key=natural):
        rows = pipeline_rows([path])
        env = rows[0]["run"]["env"]
        out += [
            f"{versions(env)}: `{command(env['command'], path)}`; median of the timed images after a warm-up image.", "",
            "| variant | image | s / image | vs eager | images / min | text encoders, s | denoising, s | VAE decode, s | "
            "first image, s | error vs eager |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
            *[f"| {r['variant']} | {workload_label(r)} | {r['seconds']:.3f} | {speedup(r)} | "
              f"{r['images_per_minute']:.1f} | {r['text_s']:.3f} | {r['denoise_s']:.3f} | "
              f"{r['decode_s']:.3f} ({r['decode_s'] / r['seconds']:.0%}) | {r['first_image_s']:.1f} | "
              f"{fmt(r.get('rel_error_vs_eager'), '.1e')} |" for r in rows],
            "",
        ]
    return "\n".join(out).rstrip()


def render_kernels(paths: list[Path]) -> str:
    """bench_kernels: each FP8 kernel against what it replaces, at FLUX.1-dev's shapes."""
    lines = []
    for path in paths:
        run = json.loads(path.read_text())
        env = run["env"]
        graphed = "--cudagraph" in env["command"] or f"{env['command']} ".count("--kernels qk ")  # qk rows always are
        replays = "CUDA graph replays (no launch cost)" if graphed else "calls from Python"
        iters = re.search(r"--iters (\d+)", env["command"])
        lines += [
            f"{env.get('card', 'CPU')}, torch {env['torch']}: `{command(env['command'], path)}`; median of "
            f"{iters[1] if iters else 50} CUDA-event timings of {replays}. Error: attention against fp32 SDPA; "
            "quantization, the share of FP8 bytes unlike torchao's (q/k: unlike eager PyTorch's, after the reorder).", "",
            "| size | kernel | variant | ms | vs first row | error |", "|---|---|---|---:|---:|---:|",
        ]
        for r in run["rows"]:
            if "ms" in r:
                err = r["rel_error"] if "rel_error" in r else 1 - r["bytes_equal"]
                lines.append(f"| {r['size']} | {r['kernel']} | {r['variant']} | {r['ms']:.3f} | {r['speedup']:.2f}x | "
                             f"{fmt(err, '.1e')} |")
        lines.append("")
    return "\n".join(lines).rstrip()


def inductor_options(configs: dict | None) -> str:
    """How options differ from the project's current ones, for a table cell ("-": not compiled)."""
    if configs is None:
        return "-"
    return options_label(configs).strip(" ()") or "the project's"


def decoder_program(row: dict) -> str:
    """Which decoder ran a bench_vae row: eager, a static program, or (older runs) the one dynamic program."""
    if row["options"] == "eager" or row.get("compiled") is False:
        return "eager"
    if "compiled" not in row:  # before the decoder was static: only the variant named so was
        return "static" if row["options"] == "static" else "dynamic"
    return "static"


def render_vae(paths: list[Path]) -> str:
    """bench_vae: the VAE decoder's AoT programs against the eager decoder, per variant and size."""
    lines = []
    for path in paths:
        run = json.loads(path.read_text())
        eager = {r["size"]: r["ms"] for r in run["rows"] if r["options"] == "eager"}
        lines += [
            f"{versions(run['env'])}: `{command(run['env']['command'], path)}`; median decode of the same latents.", "",
            "| variant | inductor options | size | decoder | ms | vs eager | compile, s | error vs eager |",
            "|---|---|---|---|---:|---:|---:|---:|",
            *[f"| {r['options']} | {inductor_options(run['options'].get(r['options']))} | {r['size']} | {decoder_program(r)} | "
              f"{r['ms']:.1f} | {eager[r['size']] / r['ms']:.2f}x | {r['compile_s']:.0f} | {r['rel_error_vs_eager']:.1e} |"
              for r in run["rows"]],
            "",
        ]
    return "\n".join(lines).rstrip()


def lora_rows(run: dict) -> dict[tuple[str, str], dict]:
    return {(r["precision"], r["lora"]): r for r in run["rows"]}


def render_lora_summary(path: Path) -> str:
    """README.md's LoRA line: per rank, the switch and what it costs a step, with FP8."""
    run = json.loads(path.read_text())
    rows, base = lora_rows(run), lora_rows(run)[("fp8", "none")]
    ranks = [r["lora"] for r in run["rows"] if r["precision"] == "fp8" and r["lora"] != "none"]
    return "\n".join([
        "| LoRA over every attention and MLP linear | " + " | ".join(ranks) + " |", "|---|" + "---:|" * len(ranks),
        "| switch (FP8; bf16) | " + " | ".join(f"{rows[('fp8', k)]['switch_s']:.2f} s; {rows[('bf16', k)]['switch_s']:.2f} s"
                                            for k in ranks) + " |",
        "| step with it fused (FP8) | " + " | ".join(f"{rows[('fp8', k)]['step_vs_base']:+.1%}" for k in ranks) + " |",
        f"| error vs fp32 with it unfused (FP8; no LoRA: {base['rel_error']:.1e}) | "
        + " | ".join(f"{rows[('fp8', k)]['rel_error']:.1e}" for k in ranks) + " |",
    ])


def render_lora(path: Path) -> str:
    """Every row of a bench_lora run, with the card and the command."""
    run = json.loads(path.read_text())
    env = run["env"]
    return "\n".join([
        f"{versions(env)}, FLUX.1-dev's transformer (random weights), {run['size']}: `{command(env['command'], path)}`", "",
        "| precision | LoRA | file MB | ms / step | vs no LoRA | error vs fp32 | load, s | switch, s | same again, s | "
        "back to none, s | GPU memory after, GiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *[f"| {r['precision']} | {r['lora']} | {fmt(run['lora_file_mb'].get(r['lora'].removeprefix('rank ')), '.0f')} | "
          f"{r['ms']:.1f} | {fmt(r.get('step_vs_base'), '+.1%')} | {r['rel_error']:.2e} | {fmt(r.get('load_s'), '.2f')} | "
          f"{fmt(r.get('switch_s'), '.2f')} | {fmt(r.get('same_again_s'), '.4f')} | {fmt(r.get('to_none_s'), '.2f')} | "
          f"{r['allocated_gib']:.1f} |" for r in run["rows"]],
        "",
        "From one LoRA to another (rank " + " to ".join(k.removeprefix("rank ") for k in (
            [r["lora"] for r in run["rows"] if r["lora"] != "none"][:2])) + "): "
        + ", ".join(f"{s:.2f} s ({p})" for p, s in run["lora_to_lora_s"].items()) + ". Back to no LoRA, the output is the "
        "base's bit for bit: " + ", ".join(f"{p} {ok}" for p, ok in run["base_restored_bit_for_bit"].items()) + ".",
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
            f"{what}; {run['device']}, torch {run['torch']}: `{command(run['command'], path)}`", "",
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
        f"{run['device']}, torch {run['torch']}, embedded tiny model: `{command(run['command'], path)}`, median of the runs, "
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


def render_zerogpu(path: Path) -> str:
    """The app under spaces' ZeroGPU mode (bench_zerogpu.py): start to serving, and what a request pays."""
    run = json.loads(path.read_text())
    starts = run["starts"]

    def requests(worker: str, key: str):
        return lambda start: [r[key] for r in start["requests"] if r["worker"] == worker]

    rows = {
        "process start to serving": lambda start: [start["start_to_serving_s"]],
        "of which the startup worker (move in, compile or load, quantize, hand back)":
            lambda start: [start["startup_worker_s"]],
        "of which `launch()` packing the tracked tensors to disk": lambda start: [start["pack_and_launch_s"]],
        "a request in a fresh worker": requests("fresh", "latency_s"),
        "of which moving the weights into the worker": requests("fresh", "move_s"),
        "a request in a reused worker": requests("reused", "latency_s"),
    }
    calls = sorted({f"{r['width']}x{r['height']}, {r['steps']} steps" for start in starts for r in start["requests"]})
    reused = [r for start in starts for r in start["requests"] if r["worker"] == "reused"]
    model = "FLUX.1-dev's transformer (random weights)" if run["model"] == "flux-dev" else f"the {run['model']} model"
    return "\n".join([
        f"{model}, {'; '.join(calls)}; {run['card']}, torch {run['torch']}: `{command(run['command'], path)}`", "",
        "| | " + " | ".join(start["start"] for start in starts) + " |",
        "|---|" + "---:|" * len(starts),
        *[f"| {label} | " + " | ".join(f"{span(values(start), '.1f')} s" for start in starts) + " |"
          for label, values in rows.items()],
        "",
        f"In a reused worker the image is {span([r['generation_s'] for r in reused], '.1f')} s of steps "
        f"({span([r['seconds_per_step'] for r in reused], '.3f')} s each) plus "
        f"{span([r['latency_s'] - r['generation_s'] for r in reused], '.1f')} s.",
    ])


def render_zerogpu_requests(path: Path) -> str:
    """Each request of a bench_zerogpu run, in order: which worker served it, with which LoRA, and what it took."""
    run = json.loads(path.read_text())
    return "\n".join([
        f"{run['card']}, torch {run['torch']}: `{command(run['command'], path)}`", "",
        "| worker | LoRA | latency, s | generation, s | of it the LoRA fuse, s | s / step | move into the worker, s |",
        "|---|---|---:|---:|---:|---:|---:|",
        *[f"| {r['worker']} | {r.get('lora') or 'none'} | {r['latency_s']:.2f} | {r['generation_s']:.2f} | "
          f"{r.get('lora_s', 0):.2f} | {r['seconds_per_step']:.3f} | {r['move_s']:.2f} |"
          for start in run["starts"] for r in start["requests"]],
    ])


def memory_rows(run: dict) -> list[tuple[str, dict]]:
    """(call, peaks) of a bench_zerogpu --memory-cap-gb run: the startup compile, then each request."""
    rows = []
    for start in run["starts"]:
        rows.append((f"startup ({start['start']})", start["startup_peak"]))
        rows += [(f"{r['width']}x{r['height']}, {r['worker']} worker, LoRA {r.get('lora') or 'none'}", r)
                 for r in start["requests"]]
    return rows


def segments(run: dict) -> str:
    """How the workers' allocator kept its memory, as they reported it; runs from before the report are fixed."""
    return "expandable" if all(p.get("expandable_segments") for _, p in memory_rows(run)) else "fixed"


def render_zerogpu_memory(paths: list[Path]) -> str:
    """Peak GPU memory per call under a memory cap standing in for ZeroGPU's `large`, one table per run."""
    out = []
    for path in paths:
        run = json.loads(path.read_text())
        out += [
            f"{run['card']} capped at {run['memory_cap_gb']:.0f} GB (GB = 10^9 bytes), torch {run['torch']}, "
            f"{segments(run)} allocator segments: `{command(run['command'], path)}`", "",
            "| call | allocated | reserved | device (reserved + outside the allocator) |", "|---|---:|---:|---:|",
            *[f"| {call} | {p['peak_allocated_gb']:.1f} GB | {p['peak_reserved_gb']:.1f} GB | {p['device_peak_gb']:.1f} GB |"
              for call, p in memory_rows(run)],
            "", f"Largest: {run['memory']['largest']}, {run['memory']['verdict']} ({run['line_90_gb']:.1f} GB).", "",
        ]
    return "\n".join(out).rstrip()


def render_zerogpu_memory_summary(path: Path) -> str:
    """README's sentence: the default's peaks under the cap, against the line that leaves 10% spare."""
    run = json.loads(path.read_text())
    startup = max(p["device_peak_gb"] for call, p in memory_rows(run) if call.startswith("startup"))
    by_size: dict[str, list[dict]] = {}
    for r in (r for start in run["starts"] for r in start["requests"]):
        by_size.setdefault(f"{r['width']}x{r['height']}", []).append(r)
    sizes = ", ".join(f"{size} {max(r['device_peak_gb'] for r in rs):.1f} GB ({max(r['peak_allocated_gb'] for r in rs):.1f} "
                      "allocated)" for size, rs in by_size.items())
    return (f"Peak GPU memory under a {run['memory_cap_gb']:.0f} GB cap ({short_card(run['card'])} as `large`; FLUX.1-dev, "
            f"rank-{option(run['command'], '--lora-rank', '0')} LoRA or none, {segments(run)} "
            f"segments): startup {startup:.1f} GB, {sizes}; 10% spare is under {run['line_90_gb']:.1f} GB.")


def short_card(name: str) -> str:
    return re.sub(r"^NVIDIA (\w+) .*", r"\1", name)  # "NVIDIA H100 80GB HBM3": "H100"


def render_serve(paths: list[Path]) -> str:
    """bench_serve runs: the plain app and Ray Serve, side by side, per run."""
    out = []
    for path in paths:
        run = json.loads(path.read_text())
        plain, served = run["plain"], run["ray_serve"]
        out += [
            f"{run['device']} x{run['gpus']}, torch {run['torch']}: `{command(run['command'], path)}`", "",
            "| server | start to serving, s | median latency, s | images / min (requests at once) |", "|---|---:|---:|---:|",
            *[f"| {name} | {row['startup_s']:.0f} | {row['median_latency_s']:.2f} | {row['images_per_minute']:.1f} |"
              for name, row in (("plain app", plain), (f"Ray Serve, {len(served['replicas'])} replica(s)", served))],
            "",
            f"Latency x{run['latency_ratio']:.2f}, images per minute x{run['throughput_ratio']:.2f} against the plain app. "
            f"Replicas at start: {', '.join(sorted(served['replicas'].values()))}; a killed replica's replacement was "
            f"serving {served['replacement_s']:.1f} s after the kill ({served['replacement']}, imports and weight loading "
            "included).", "",
        ]
    return "\n".join(out).rstrip()


def sections() -> dict[str, str]:
    """Every generated section, by name, from the committed results."""
    rows = load(TRANSFORMER)
    return {
        "summary": render_summary(rows, COLDSTART[0]),
        "images": render_pipeline_summary(PIPELINE, PIPELINE_DEFAULT),
        "pipeline": render_pipeline(PIPELINE),
        "vae": render_vae(VAE),
        "loras": render_lora_summary(LORA),
        "lora": render_lora(LORA),
        "transformer": render(rows),
        "kernels": render_kernels(KERNELS),
        "kernels-in-blocks": render(load([RESULTS / "h200-2x4" / "fp8-kernels.json"])),
        "coldstart": render_coldstart(COLDSTART),
        "startup": render_startup(STARTUP),
        "zerogpu": render_zerogpu(ZEROGPU),
        "zerogpu-lora": render_zerogpu_requests(ZEROGPU_LORA),
        "serve": render_serve(SERVE),
        "plans": render_plans_summary(PLANS),
        "zerogpu-memory": render_zerogpu_memory(ZEROGPU_MEMORY),
        "zerogpu-memory-summary": render_zerogpu_memory_summary(ZEROGPU_MEMORY[-1]),
    }


def markers(name: str) -> tuple[str, str]:
    return f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"


def update(page: str, sections: dict[str, str]) -> str:
    """`page` with each section it has markers for replaced by the generated text."""
    for name, text in sections.items():
        begin, end = markers(name)
        page = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: f"{begin}\n{text}\n{end}", page, flags=re.S)
    return page


def command(recorded: str, path: Path) -> str:
    """A run's command as run from the repository root, its --json naming the file it is in, not the machine's path."""
    words = recorded.split(" ")  # recorded as " ".join(argv): splitting on one space keeps empty arguments
    while not words[0].endswith(".py"):  # "python3" in some records
        words.pop(0)
    script, args = Path(words[0]).stem, words[1:]
    if "--json" in args:
        args[args.index("--json") + 1] = repo_path(path)
    return shlex.join(["python", "-m", f"bench.{script}", *args])


def repo_path(path: Path) -> str:
    path = path.resolve()
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


def versions(env: dict) -> str:
    """A run's card and library versions, as every table's caption names them."""
    return f"{env.get('card', 'CPU')}, torch {env['torch']}, diffusers {env['diffusers']}, torchao {env['torchao']}"


def span(values: list[float], spec: str) -> str:
    # Every process measured its own numbers: show their spread rather than one of them.
    low, high = format(min(values), spec), format(max(values), spec)
    return low if low == high else f"{low}-{high}"


def eager_range(rows: list[dict], size: str) -> str:
    return span([r["ms"] for r in rows if r["rung"] == "eager" and r["size"] == size], ".1f")


def fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", nargs="+", type=Path, metavar="JSON", help="bench_transformer JSON files: print their tables")
    args = parser.parse_args()
    if args.table:
        print(render(load(args.table)))
        return
    generated, placed = sections(), set()
    for path in PAGES:
        page = path.read_text()
        placed |= {name for name in generated if markers(name)[0] in page}
        path.write_text(update(page, generated))
        print(f"updated {path.relative_to(ROOT)}")
    if missing := set(generated) - placed:
        raise SystemExit(f"no page has markers for {', '.join(sorted(missing))}: {', '.join(map(str, PAGES))}")


if __name__ == "__main__":
    main()
