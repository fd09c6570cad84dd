"""FLUX.1-dev transformer per step: eager vs the project's AoT path (bf16, FP8), on one GPU.

    python bench/bench_transformer.py --json bench/results/NAME.json [--blocks 19 38] [--rungs ...]

Random bf16 weights with FLUX.1-dev's exact config (speed does not depend on weight values);
`--blocks 2 4` keeps the geometry and cuts the depth, for quick iterations. Every rung runs the
same inputs in the same process; accuracy is ||out - ref|| / ||ref|| against an fp32 eager
reference. The AoT rungs go through `aoti` and `optimization` exactly as the app does, and the
bf16 program is also saved, reloaded in a fresh process and checked there.
"""

from __future__ import annotations

import argparse
import copy
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
sys.path.insert(0, str(ROOT))

import aoti  # noqa: E402
from attention import set_attention_backend  # noqa: E402
from config import MAX_SEQUENCE_LENGTH, OptimizationConfig  # noqa: E402
from optimization import DYNAMIC_AXES, quantize_fp8_  # noqa: E402

FLUX_DEV = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
RUNGS = ("eager", "eager_cudnn", "aot_bf16", "fresh_process", "aot_fp8_row", "aot_fp8_tensor", "torch_compile")


def build(blocks: tuple[int, int], device: str, dtype: torch.dtype):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    with torch.device(device):
        model = FluxTransformer2DModel(**{**FLUX_DEV, "num_layers": blocks[0], "num_single_layers": blocks[1]})
    return model.to(dtype).eval().requires_grad_(False)


def inputs(width: int, height: int, device: str, dtype: torch.dtype, seed: int = 0) -> dict:
    """One denoising step's transformer call, with the dtypes FluxPipeline passes."""
    g = torch.Generator(device).manual_seed(seed)
    h, w = height // 16, width // 16
    img_ids = torch.zeros(h, w, 3, device=device)
    img_ids[..., 1] = torch.arange(h, device=device)[:, None]
    img_ids[..., 2] = torch.arange(w, device=device)[None, :]
    return dict(
        hidden_states=torch.randn(1, h * w, 64, device=device, generator=g).to(dtype),
        timestep=torch.full((1,), 0.5, device=device, dtype=dtype),
        guidance=torch.full((1,), 3.5, device=device, dtype=torch.float32),
        pooled_projections=torch.randn(1, 768, device=device, generator=g).to(dtype),
        encoder_hidden_states=torch.randn(1, MAX_SEQUENCE_LENGTH, 4096, device=device, generator=g).to(dtype),
        txt_ids=torch.zeros(MAX_SEQUENCE_LENGTH, 3, device=device, dtype=dtype),
        img_ids=img_ids.reshape(h * w, 3).to(dtype),
        joint_attention_kwargs={},
        return_dict=False,
    )


def median_ms(fn, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    if not torch.cuda.is_available():
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events)


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def weight_bytes(module: torch.nn.Module) -> int:
    from aoti.weights import named_weights, unwrapped_subclasses

    with unwrapped_subclasses(module):
        return sum(t.numel() * t.element_size() for t in named_weights(module).values())


FRESH = """
import sys, time, torch
sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[1] + "/bench")
start = time.perf_counter()
import aoti, bench_transformer as b
model = b.build(tuple(map(int, sys.argv[3].split(","))), sys.argv[4], torch.bfloat16)
aoti.apply(model, aoti.load(sys.argv[2]))
kwargs = torch.load(sys.argv[5])
with torch.inference_mode():
    out = model(**kwargs)[0]
torch.save(out.cpu(), sys.argv[6])
print("FRESH_SECONDS", time.perf_counter() - start)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, nargs=2, default=(19, 38), metavar=("DOUBLE", "SINGLE"))
    parser.add_argument("--sizes", nargs="+", default=["1024x1024", "1344x768", "768x1344", "512x512"])
    parser.add_argument("--rungs", nargs="+", default=list(RUNGS), choices=RUNGS)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sizes = [tuple(map(int, s.split("x"))) for s in args.sizes]
    blocks = tuple(args.blocks)
    inductor_configs = dict(OptimizationConfig().inductor_configs)
    results: dict = {"rows": [], "env": environment(args), "blocks": blocks}
    calls = {size: inputs(*size, device, torch.bfloat16, seed=i) for i, size in enumerate(sizes)}

    def save() -> None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))

    def measure(rung: str, model, extra: dict | None = None) -> dict[tuple[int, int], torch.Tensor]:
        outputs = {}
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()  # peaks per rung, not the fp32 reference's
        for size, kwargs in calls.items():
            with torch.inference_mode():
                outputs[size] = model(**kwargs)[0].float()
                ms = median_ms(lambda: model(**kwargs), args.warmup, args.iters)
            row = dict(rung=rung, size=f"{size[0]}x{size[1]}", ms=ms, rel_error=rel_error(outputs[size], refs[size]),
                       **(extra or {}))
            if device == "cuda":
                row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
                row["allocated_gib"] = torch.cuda.memory_allocated() / 2**30
            results["rows"].append(row)
            print(json.dumps(row), flush=True)
            save()
        return outputs

    # fp32 reference, then dropped: all rungs are compared with it.
    model = build(blocks, device, torch.bfloat16)
    reference = copy.deepcopy(model).float()
    with torch.inference_mode():
        refs = {
            size: reference(**{k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in kw.items()})[0]
            for size, kw in calls.items()
        }
    del reference
    results["weights_gib_bf16"] = weight_bytes(model) / 2**30

    if "eager" in args.rungs:
        measure("eager", model)
    if "eager_cudnn" in args.rungs and device == "cuda":
        model.set_attention_backend("_native_cudnn")
        measure("eager_cudnn", model)
        model.reset_attention_backend()
    if "torch_compile" in args.rungs:
        compiled = torch.compile(model, fullgraph=True)
        start = time.perf_counter()
        with torch.inference_mode():
            compiled(**calls[sizes[0]])
        measure("torch_compile", compiled, {"compile_s": time.perf_counter() - start})
        del compiled
        torch._dynamo.reset()

    def aot(rung: str, model, granularity: str | None) -> tuple[aoti.CompiledProgram, dict]:
        attention = set_attention_backend(model, OptimizationConfig().attention_backend)  # as the app does
        if granularity:
            quantize_fp8_(model, granularity)
        weights = weight_bytes(model)
        start = time.perf_counter()
        exported = aoti.export(model, aoti.CapturedCall((), calls[sizes[0]]), DYNAMIC_AXES)
        export_s = time.perf_counter() - start
        program = aoti.compile(exported, inductor_configs)
        del exported
        aoti.apply(model, program)
        extra = dict(attention=attention, export_s=export_s, compile_s=program.compile_seconds, package_mb=len(program.package) / 1e6,
                     weights_gib=weights / 2**30)
        return program, measure(rung, model, extra)

    aot_outputs = None
    if "aot_bf16" in args.rungs:
        program, aot_outputs = aot("aot_bf16", model, None)
        if "fresh_process" in args.rungs:
            fresh_process(program, blocks, device, calls[sizes[0]], aot_outputs[sizes[0]], results)
            save()
    for granularity in ("row", "tensor"):
        if f"aot_fp8_{granularity}" in args.rungs and device == "cuda":
            del model
            torch.cuda.empty_cache()
            model = build(blocks, device, torch.bfloat16)
            aot(f"aot_fp8_{granularity}", model, granularity)
    save()
    print_table(results)


def fresh_process(program, blocks, device, kwargs, expected, results) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        aoti.save(program, f"{tmp}/program")
        torch.save(kwargs, f"{tmp}/inputs.pt")
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", FRESH, str(ROOT), f"{tmp}/program", ",".join(map(str, blocks)), device,
             f"{tmp}/inputs.pt", f"{tmp}/out.pt"], capture_output=True, text=True, timeout=300,
        )
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"fresh-process load failed (rc {done.returncode}):\n{done.stderr[-3000:]}")
        out = torch.load(f"{tmp}/out.pt").to(expected.device).float()
    results["fresh_process"] = dict(rel_error_vs_in_process=rel_error(out, expected), wall_s=wall)
    print("fresh process:", results["fresh_process"], flush=True)


def environment(args) -> dict:
    import diffusers
    import torchao

    env = dict(torch=torch.__version__, diffusers=diffusers.__version__, torchao=torchao.__version__,
               python=platform.python_version(), command=" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]))
    if torch.cuda.is_available():
        env["card"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True).stdout.strip()
        except OSError:
            pass
    env["cxx"] = os.environ.get("CXX", "")
    return env


def print_table(results: dict) -> None:
    base = {r["size"]: r["ms"] for r in results["rows"] if r["rung"] == "eager"}
    print(f"\n{results['env']}\nblocks {results['blocks']}")
    print(f"{'rung':16} {'size':10} {'ms/step':>9} {'speed-up':>9} {'rel err':>9} {'peak GiB':>9} {'compile s':>10}")
    for r in results["rows"]:
        speedup = base.get(r["size"], float("nan")) / r["ms"]
        print(f"{r['rung']:16} {r['size']:10} {r['ms']:9.2f} {speedup:9.2f} {r['rel_error']:9.2e} "
              f"{r.get('peak_gib', 0):9.2f} {r.get('compile_s', 0):10.1f}")


if __name__ == "__main__":
    main()
