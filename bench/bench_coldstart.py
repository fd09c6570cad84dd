"""Cold start of the FLUX transformer: process start to the first finished step, in fresh processes.

    python -m bench.bench_coldstart --json bench/results/NAME.json [--model tiny] [--fp8 row]

(a) AoT, compiling from scratch (empty program and inductor caches); (b) AoT, loading the program
cached by (a); (c) torch.compile with an empty and with a warm inductor cache. Building the
model's weights (random, on the device) is timed separately and excluded: a Space loads them
from disk whatever it compiles. The AoT starts go through `optimization` and `aoti.ProgramCache`,
as the app does.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from compile_options import compiler_options  # standard library only: no import time to speak of
from config import OptimizationConfig

ROOT = Path(__file__).resolve().parent.parent

STARTS = {
    "aot, empty caches": ("aot", "empty"),
    "aot, cached program": ("aot", "warm"),
    "torch.compile, empty inductor cache": ("torch_compile", "empty"),
    "torch.compile, warm inductor cache": ("torch_compile", "warm"),
}


def child(mode: str, model_name: str, fp8: str, size: tuple[int, int], started: float) -> dict:
    """One start, in this fresh process: the seconds from process start to the first finished step."""
    import torch

    torch_imported = time.time()
    import aoti
    import optimization
    from attention import set_attention_backend
    from bench.bench_transformer import build, inputs, model_config, quantize_fp8_like_a_user_
    from bench.compile_phases import compile_phases
    from plan import Plan

    imported = time.time()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = model_config(model_name, None)
    begin = time.perf_counter()
    model = build(config, device, torch.bfloat16)
    call = inputs(config, *size, device, torch.bfloat16)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    weights_s = time.perf_counter() - begin
    begin = time.perf_counter()
    cached, phases = None, {}
    options = OptimizationConfig(cache_dir=os.environ["AOTI_CACHE_DIR"])
    attention = set_attention_backend(model, options.attention_backend)  # as the app does, for every start
    plan = Plan.assumed(options, fp8 or None, attention)
    if mode == "aot":
        with compile_phases() as phases:  # empty when loaded from the cache
            programs, cached = optimization.load_or_compile(
                model, options, plan, {"width": size[0], "height": size[1]}, calls=lambda: [aoti.CapturedCall((), call)],
            )
        optimization.apply_programs_(model, programs, options, plan)
        run = model
    else:
        if fp8:
            quantize_fp8_like_a_user_(model, fp8)
        run = torch.compile(model, fullgraph=True)
    with torch.inference_mode():
        run(**call)
    sync()
    ready_s = time.perf_counter() - begin
    return dict(
        import_s=imported - started, torch_import_s=torch_imported - started, weights_s=weights_s,
        compile_or_load_s=ready_s, cached=cached, compile_phases=phases,
        # process start to first finished step, weights excluded
        first_step_s=(imported - started) + ready_s,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["flux-dev", "tiny"], default="flux-dev")
    parser.add_argument("--fp8", choices=["", "row", "tensor"], default="row")
    parser.add_argument("--size", default="1024x1024")
    parser.add_argument("--starts", nargs="+", choices=["aot", "torch_compile"], default=["aot", "torch_compile"],
                        help="which starts to run (on a multi-GPU machine, one process per kind)")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "STARTED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = tuple(map(int, args.size.split("x")))
    if args.child:
        print("RESULT", json.dumps(child(args.child[0], args.model, args.fp8, size, float(args.child[1]))))
        return
    import torch

    options = compiler_options(OptimizationConfig(), args.fp8 or None)
    results = {"command": " ".join(["bench_coldstart.py", *sys.argv[1:]]), "model": args.model, "fp8": args.fp8,
               "size": args.size, "torch": torch.__version__, "inductor_configs": options,
               "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)",
               "rows": {}}
    with tempfile.TemporaryDirectory() as aot_cache, tempfile.TemporaryDirectory() as compile_cache:
        for label, (mode, _) in STARTS.items():
            if mode not in args.starts:
                continue
            # Empty starts use an inductor cache nothing has written; warm starts reuse the previous start's.
            inductor = f"{compile_cache}/{mode}"
            env = {**os.environ, "AOTI_CACHE_DIR": aot_cache, "TORCHINDUCTOR_CACHE_DIR": inductor}
            command = [sys.executable, "-m", "bench.bench_coldstart", "--model", args.model, "--fp8", args.fp8,
                       "--size", args.size, "--json", str(args.json), "--child", mode, repr(time.time())]
            done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3000)
            if done.returncode != 0:
                raise RuntimeError(f"{label} failed:\n{done.stderr[-3000:]}")
            row = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT"))[7:])
            results["rows"][label] = row
            print(f"{label:38} first step {row['first_step_s']:8.1f} s  (compile/load {row['compile_or_load_s']:7.1f} s, "
                  f"imports {row['import_s']:5.1f} s, weights {row['weights_s']:5.1f} s excluded)", flush=True)
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=1))
    rows = results["rows"]
    if "aot" not in args.starts:
        return
    if not rows["aot, cached program"]["cached"] or rows["aot, empty caches"]["cached"]:
        sys.exit("the cached start did not load the program the first start stored")
    ratio = rows["aot, empty caches"]["first_step_s"] / rows["aot, cached program"]["first_step_s"]
    print(f"cached program: {ratio:.1f}x sooner than compiling")


if __name__ == "__main__":
    main()
