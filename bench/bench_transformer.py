"""FLUX.1-dev transformer per step: eager vs the project's AoT path (bf16, FP8, ...), on one GPU.

    python -m bench.bench_transformer --json bench/results/NAME.json [--blocks 19 38] [--rungs ...]

Random bf16 weights with FLUX.1-dev's exact config (speed does not depend on weight values);
`--blocks 2 4` keeps the geometry and cuts the depth, for quick iterations. Every rung runs the
same inputs in the same process and is compared with this process's eager rung (same card).
Accuracy is ||out - ref|| / ||ref|| against fp32 eager on the same inputs. The AoT rungs go
through `optimization.compile_transformer` and `apply_programs_`, exactly as the app does.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, PerTensor, quantize_

import aoti
import optimization
from attention import set_attention_backend
from bench.compile_phases import compile_phases
from compile_options import persistent_rows_up_to
from config import EMBEDDED_MODEL, MAX_SEQUENCE_LENGTH, OptimizationConfig
from plan import Plan

FLUX_DEV = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)

# The transformer multiplies both by 1000 in its own dtype. FLUX's usual guidance 3.5 would become 3504 in
# bf16 and stay 3500 in the fp32 reference: that conditioning shift alone made 4.2e-2 of eager bf16's error
# (1+2 blocks, CPU; 5.1e-3 without it) and hid what compiling and FP8 change. 500 and 4000 are exact in bf16.
TIMESTEP, GUIDANCE = 0.5, 4.0


@dataclass(frozen=True)
class Rung:
    kind: str  # eager | aot | torch_compile
    attention: str = "auto"  # "native": diffusers' default SDPA; "auto": the project's choice
    fp8: str = ""  # "", "row" or "tensor"
    regional: bool = True
    fuse_qkv: bool = False
    static: bool = False  # static graphs for --static-sizes beside the dynamic one
    fused_quant: bool = False  # the single blocks' one-pass GELU + concat + FP8 quantization
    fused_ff_quant: bool = False  # the double blocks' one-pass feed-forward GELU + FP8 quantization
    fp8_attention: str = "off"  # attention in FP8 (fp8_kernels/): one of config.FP8_ATTENTION
    fp8_text_stream: bool = True  # off: the double blocks' text-stream linears stay bf16
    inductor: tuple[tuple[str, Any], ...] = ()  # options over the run's, to compare one in the same process
    persistent_up_to: int = 1024  # config.persistent_reductions_up_to
    merge_duplicates: bool = True  # config.merge_duplicates
    rope_pairs_split: bool = False  # config.rope_pairs_split (with fp8_attention "cudnn_static_qk")


RUNGS = {
    "eager": Rung("eager", attention="native"),
    "eager_attention": Rung("eager"),
    "aot_bf16": Rung("aot"),
    "aot_bf16_full": Rung("aot", regional=False),
    "aot_bf16_qkv": Rung("aot", fuse_qkv=True),
    "aot_bf16_static": Rung("aot", static=True),
    "aot_fp8_row": Rung("aot", fp8="row"),
    "aot_fp8_tensor": Rung("aot", fp8="tensor"),
    "aot_fp8_row_full": Rung("aot", fp8="row", regional=False),
    "aot_fp8_row_qkv": Rung("aot", fp8="row", fuse_qkv=True),
    "aot_fp8_row_cudnn": Rung("aot", fp8="row", attention="_native_cudnn"),  # diffusers' forced cuDNN
    "aot_fp8_row_static": Rung("aot", fp8="row", static=True),
    "aot_fp8_row_split": Rung("aot", fp8="row", inductor=(("split_reductions", True),)),  # the default before session 7
    "aot_fp8_row_fusedq": Rung("aot", fp8="row", fused_quant=True),
    "aot_fp8_row_fusedq_bf16text": Rung("aot", fp8="row", fused_quant=True, fp8_text_stream=False),
    "aot_fp8_row_fusedq_cudnnattn": Rung("aot", fp8="row", fused_quant=True, fp8_attention="cudnn"),
    "aot_fp8_row_fusedq_cudnnstaticqk": Rung("aot", fp8="row", fused_quant=True, fp8_attention="cudnn_static_qk"),
    "aot_fp8_row_fusedq_ff_cudnnattn": Rung("aot", fp8="row", fused_quant=True, fused_ff_quant=True, fp8_attention="cudnn"),
    "aot_fp8_row_fusedq_ff_cudnnstaticqk": Rung(
        "aot", fp8="row", fused_quant=True, fused_ff_quant=True, fp8_attention="cudnn_static_qk"),
    "aot_fp8_row_fusedq_ff_cudnnstaticqk_nomerge": Rung(
        "aot", fp8="row", fused_quant=True, fused_ff_quant=True, fp8_attention="cudnn_static_qk", merge_duplicates=False),
    "aot_fp8_row_fusedq_ff_cudnnstaticqk_rows4096": Rung(
        "aot", fp8="row", fused_quant=True, fused_ff_quant=True, fp8_attention="cudnn_static_qk", persistent_up_to=4096),
    # The default: the above with q and k's RoPE pairs half a head apart.
    "aot_fp8_row_fusedq_ff_cudnnstaticqk_rows4096_ropesplit": Rung(
        "aot", fp8="row", fused_quant=True, fused_ff_quant=True, fp8_attention="cudnn_static_qk", persistent_up_to=4096,
        rope_pairs_split=True),
    # Persistent reductions (each row read once) for the row-wise FP8 scales: inductor's multi-kernel picks per
    # kernel by timing both at compile time; "persistent" forces them.
    "aot_fp8_row_fusedq_cudnnstaticqk_multikernel": Rung(
        "aot", fp8="row", fused_quant=True, fp8_attention="cudnn_static_qk", inductor=(("triton.multi_kernel", 1),)),
    "aot_fp8_row_fusedq_cudnnstaticqk_persistent": Rung(
        "aot", fp8="row", fused_quant=True, fp8_attention="cudnn_static_qk", inductor=(("triton.multi_kernel", 2),)),
    "aot_fp8_row_fusedq_bf16text_cudnnattn": Rung(
        "aot", fp8="row", fused_quant=True, fp8_text_stream=False, fp8_attention="cudnn"),
    # Inductor benchmarks Triton templates against cuBLAS for each GEMM shape at compile time.
    "aot_fp8_row_fusedq_autotune": Rung("aot", fp8="row", fused_quant=True, inductor=(
        ("max_autotune", True), ("max_autotune_gemm_backends", "ATEN,TRITON"))),
    # What plan.py falls back to where probes fail, with today's other defaults: the sm_100/sm_120 plan (per-tensor FP8
    # GEMMs, bf16 SDPA: cuDNN's FP8 attention failing its probe) and the safest rung (no FP8).
    "plan_sm120": Rung("aot", fp8="tensor", persistent_up_to=4096),
    "plan_safest": Rung("aot", persistent_up_to=4096),
    "torch_compile": Rung("torch_compile"),
    "torch_compile_fp8": Rung("torch_compile", fp8="row"),
}


def model_config(name: str, blocks: tuple[int, int] | None) -> dict:
    """FLUX.1-dev's transformer config, or the embedded tiny model's (`tiny`: a CPU smoke test)."""
    if name == "tiny":
        config = json.loads((Path(EMBEDDED_MODEL) / "transformer" / "config.json").read_text())
        config = {k: v for k, v in config.items() if not k.startswith("_")}
    else:
        config = dict(FLUX_DEV)
    if blocks:
        config.update(num_layers=blocks[0], num_single_layers=blocks[1])
    return config


def build(config: dict, device: str, dtype: torch.dtype):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    with torch.device(device):
        model = FluxTransformer2DModel(**config)
    return model.to(dtype).eval().requires_grad_(False)


def inputs(config: dict, width: int, height: int, device: str, dtype: torch.dtype, seed: int = 0) -> dict:
    """One denoising step's transformer call, with the dtypes FluxPipeline passes."""
    g = torch.Generator(device).manual_seed(seed)
    h, w = height // 16, width // 16
    img_ids = torch.zeros(h, w, 3, device=device)
    img_ids[..., 1] = torch.arange(h, device=device)[:, None]
    img_ids[..., 2] = torch.arange(w, device=device)[None, :]
    return dict(
        hidden_states=torch.randn(1, h * w, 64, device=device, generator=g).to(dtype),
        timestep=torch.full((1,), TIMESTEP, device=device, dtype=dtype),
        guidance=torch.full((1,), GUIDANCE, device=device, dtype=torch.float32),
        pooled_projections=torch.randn(1, config["pooled_projection_dim"], device=device, generator=g).to(dtype),
        encoder_hidden_states=torch.randn(1, MAX_SEQUENCE_LENGTH, config["joint_attention_dim"], device=device,
                                          generator=g).to(dtype),
        txt_ids=torch.zeros(MAX_SEQUENCE_LENGTH, 3, device=device, dtype=dtype),
        img_ids=img_ids.reshape(h * w, 3).to(dtype),
        joint_attention_kwargs={},
        return_dict=False,
    )


def fp32_reference(model, calls: dict) -> dict:
    """fp32 eager outputs, one block upcast at a time: an fp32 copy would not fit beside bf16 on 80 GB."""
    blocks = [*model.transformer_blocks, *model.single_transformer_blocks]
    def upcast(module, args):
        module.float()

    def downcast(module, args, out):
        module.to(torch.bfloat16)  # bf16 -> fp32 -> bf16 is exact

    hooks = [b.register_forward_pre_hook(upcast) for b in blocks] + [b.register_forward_hook(downcast) for b in blocks]
    rest = [m for name, m in model.named_children() if name not in ("transformer_blocks", "single_transformer_blocks")]
    for m in rest:
        m.float()
    try:
        with torch.inference_mode():
            return {
                size: model(**{k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in kw.items()})[0]
                for size, kw in calls.items()
            }
    finally:
        for hook in hooks:
            hook.remove()
        for m in rest:
            m.to(torch.bfloat16)


def quantize_fp8_like_a_user_(model, granularity: str) -> None:
    """FP8 for the torch.compile reference: torchao's defaults, which also switch on coordinate-descent
    tuning for the process (the project's `quantize_fp8_` keeps them off)."""
    scale = PerRow() if granularity == "row" else PerTensor()
    quantize_(model, Float8DynamicActivationFloat8WeightConfig(granularity=scale))


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


# Kernel names by what they do, first match wins: where a step's device time goes.
KERNEL_KINDS = (
    ("inductor", r"^triton_"),  # its names list the fused ops, _scaled_mm's quantization among them
    ("gemm", r"nvjet|gemm|cutlass|xmma"),
    ("attention", r"sdpa|fmha|flash|attention_kernel"),
    ("gelu_cat_quantize", r"_gelu_cat"),
    ("attention quantization (op)", r"^_amax_kernel|^_quantize_kernel|^_scale_cast_kernel"),
)


def kernel_profile(fn, steps: int = 3, top: int = 60) -> dict:
    """Device kernels (CPU ops on CPU) per step, by total time: what a variant spends its step on.

    On the GPU it also lists the CPU side: the CUDA runtime calls that can stall it (synchronizations,
    copies, allocations) and the ops that take its time. A GPU that waits for the CPU shows as
    kernel_ms well below wall_ms, and host_top says where that CPU time went.
    """
    from torch.profiler import ProfilerActivity, profile

    on_gpu = torch.cuda.is_available()
    fn()
    sync()
    with profile(activities=[ProfilerActivity.CPU, *[ProfilerActivity.CUDA] * on_gpu]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        sync()
        wall_ms = (time.perf_counter() - start) * 1e3 / steps
    events = prof.key_averages()
    kind = torch.autograd.DeviceType.CUDA if on_gpu else torch.autograd.DeviceType.CPU
    kernels = [e for e in events if e.device_type == kind and not (on_gpu and e.key.startswith("cuda"))]
    self_us = (lambda e: e.self_device_time_total) if on_gpu else (lambda e: e.self_cpu_time_total)
    kernels.sort(key=self_us, reverse=True)
    host = sorted((e for e in events if e.device_type == torch.autograd.DeviceType.CPU), key=lambda e: e.self_cpu_time_total,
                  reverse=True)
    stalls = ("Synchronize", "Memcpy", "Malloc", "Free", "EventQuery")
    runtime = {e.key: e.count / steps for e in events if e.key.startswith("cuda") and any(s in e.key for s in stalls)}
    by_kind: dict[str, float] = {}
    for e in kernels:
        kind_name = next((name for name, pattern in KERNEL_KINDS if re.search(pattern, e.key)), "other")
        by_kind[kind_name] = by_kind.get(kind_name, 0.0) + self_us(e) / 1e3 / steps
    return dict(
        wall_ms=wall_ms,  # profiled, so a little slower than `ms`
        kernel_ms=sum(map(self_us, kernels)) / 1e3 / steps,
        by_kind=by_kind,  # ms per step by KERNEL_KINDS
        kernels=sum(e.count for e in kernels) / steps,
        runtime_calls=runtime,
        top=[[e.key[:160], self_us(e) / 1e3 / steps, e.count / steps] for e in kernels[:top]],
        host_top=[[e.key[:160], e.self_cpu_time_total / 1e3 / steps, e.count / steps] for e in host[:top]] if on_gpu else [],
    )


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def weight_bytes(module: torch.nn.Module) -> int:
    from aoti.weights import named_weights, unwrapped_subclasses

    with unwrapped_subclasses(module):
        return sum(t.numel() * t.element_size() for t in named_weights(module).values())


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["flux-dev", "tiny"], default="flux-dev")
    parser.add_argument("--blocks", type=int, nargs=2, default=None, metavar=("DOUBLE", "SINGLE"),
                        help="fewer blocks of the same widths (default: the model's 19 and 38)")
    parser.add_argument("--sizes", nargs="+", default=["1024x1024", "1344x768", "768x1344", "512x512"])
    parser.add_argument("--rungs", nargs="+", default=["eager", "eager_attention", "aot_bf16", "aot_fp8_row"], choices=RUNGS)
    parser.add_argument("--inductor", nargs="*", default=[], metavar="OPTION=VALUE",
                        help="override the project's inductor options: 0 and 1 are booleans, anything else a string, "
                             "e.g. coordinate_descent_tuning=0 aot_inductor.compile_wrapper_opt_level=O1")
    parser.add_argument("--static-sizes", default="1024x1024", help="the static graphs of the *_static rungs")
    parser.add_argument("--cudagraph", action="store_true",
                        help="also time each AoT rung replayed as one CUDA graph per size (same compiled program)")
    parser.add_argument("--profile", action="store_true",
                        help="also record each rung's kernels per step at each size (where the time goes)")
    parser.add_argument("--compile-cache", type=Path, default=None, metavar="FILE",
                        help="torch.compile's portable cache: loaded before the torch_compile rungs when FILE exists, "
                             "saved after them. It skips codegen, not coordinate-descent tuning, which runs again at "
                             "each kernel's first launch: FP8 at 1024x1024 on an H200, 348 s instead of 508 s")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sizes = [tuple(map(int, s.split("x"))) for s in args.sizes]
    config = model_config(args.model, args.blocks)
    blocks = (config["num_layers"], config["num_single_layers"])
    overrides = (o.split("=", 1) for o in args.inductor)
    inductor = {**OptimizationConfig().inductor_configs, **{k: bool(int(v)) if v in ("0", "1") else v for k, v in overrides}}
    results: dict = {"env": environment(), "model": args.model, "blocks": blocks, "inductor_configs": inductor,
                     "inputs": dict(timestep=TIMESTEP, guidance=GUIDANCE), "rows": []}
    calls = {size: inputs(config, *size, device, torch.bfloat16, seed=i) for i, size in enumerate(sizes)}

    def save() -> None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))

    def measure(name: str, model, extra: dict) -> None:
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()  # peaks per rung
        for size, kwargs in calls.items():
            with torch.inference_mode():
                sync()
                start = time.perf_counter()
                out = model(**kwargs)[0].float()
                sync()
                first_call_s = time.perf_counter() - start  # includes torch.compile's (re)compiles
                ms = median_ms(lambda: model(**kwargs), args.warmup, args.iters)
            row = dict(rung=name, size=f"{size[0]}x{size[1]}", ms=ms, rel_error=rel_error(out, refs[size]),
                       first_call_s=first_call_s, **extra)
            if device == "cuda":
                row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
                row["allocated_gib"] = torch.cuda.memory_allocated() / 2**30
            if args.profile:
                with torch.inference_mode():  # as timed
                    row["profile"] = kernel_profile(lambda: model(**kwargs))
            results["rows"].append(row)
            print(json.dumps(row), flush=True)
            save()

    model = build(config, device, torch.bfloat16)
    refs = fp32_reference(model, calls)
    results["weights_gib_bf16"] = weight_bytes(model) / 2**30
    for name in args.rungs:
        rung = RUNGS[name]
        if model is None:
            if device == "cuda":
                torch.cuda.empty_cache()
            model = build(config, device, torch.bfloat16)
        # torchao's defaults (the torch.compile FP8 rung) switch on coordinate-descent tuning for the whole
        # process: without the restore, every later AoT rung would compile with it too.
        inductor_before = torch._inductor.config.get_config_copy()
        try:
            run_rung(name, rung, model, calls, sizes[0], args.static_sizes if rung.static else "", inductor, measure,
                     args.cudagraph and device == "cuda", args.compile_cache)
        except Exception as error:  # one failing rung must not lose the others' numbers
            results.setdefault("failures", {})[name] = f"{type(error).__name__}: {error}"[:2000]
            print(f"RUNG {name} FAILED: {error!r}", flush=True)
            save()
        torch._inductor.config.load_config(inductor_before)
        if rung.kind != "eager":
            model = None  # compiled, quantized or fused: the next rung starts from a fresh model
            torch._dynamo.reset()
    save()
    print_table(results)
    if results.get("failures"):
        sys.exit(f"{len(results['failures'])} rung(s) failed: {', '.join(results['failures'])}")


def run_rung(
    name: str, rung: Rung, model, calls: dict, example: tuple[int, int], static_sizes: str, inductor: dict, measure,
    cudagraph: bool, compile_cache: Path | None,
) -> None:
    config = OptimizationConfig(
        regional=rung.regional, fuse_qkv=rung.fuse_qkv, cache=False,
        fp8_fused_quantization=rung.fused_quant, fp8_fused_ff_quantization=rung.fused_ff_quant,
        fp8_attention=rung.fp8_attention, fp8_text_stream=rung.fp8_text_stream, attention_backend=rung.attention,
        inductor_configs={**inductor, **dict(rung.inductor)}, static_sizes=static_sizes,
        persistent_reductions_up_to=rung.persistent_up_to, merge_duplicates=rung.merge_duplicates,
        rope_pairs_split=rung.rope_pairs_split,
    )
    attention = set_attention_backend(model, config.attention_backend)
    plan = Plan.assumed(config, rung.fp8 or None, attention)
    extra = dict(attention=attention, fp8=rung.fp8, regional=rung.regional, static_sizes=static_sizes,
                 fused_quant=rung.fused_quant, fused_ff_quant=rung.fused_ff_quant, fp8_attention=rung.fp8_attention,
                 fp8_text_stream=rung.fp8_text_stream, persistent_up_to=persistent_rows_up_to(config, plan.fp8),  # as compiled
                 merge_duplicates=rung.merge_duplicates, rope_pairs_split=rung.rope_pairs_split)
    if rung.kind == "eager":
        measure(name, model, extra)
        return
    if rung.kind == "torch_compile":
        if rung.fuse_qkv:
            optimization.fuse_qkv_(model)
        if rung.fp8:
            quantize_fp8_like_a_user_(model, rung.fp8)
        # A loaded cache makes first_call_s a warm start: the row says so.
        extra.update(compile_cache=bool(compile_cache and compile_cache.exists()))
        if extra["compile_cache"]:
            torch.compiler.load_cache_artifacts(compile_cache.read_bytes())
        torch._dynamo.utils.counters.clear()  # the cache counters printed below: this rung's, not earlier AoT compiles'
        measure(name, torch.compile(model, fullgraph=True), extra)
        print(f"{name}: inductor caches {dict(torch._dynamo.utils.counters['inductor'])}\n"
              f"{torch._dynamo.utils.compile_times()}", flush=True)
        if compile_cache and not extra["compile_cache"] and (artifacts := torch.compiler.save_cache_artifacts()):
            compile_cache.write_bytes(artifacts[0])
        return
    start = time.perf_counter()
    static = [aoti.CapturedCall((), calls[size]) for size in config.static_resolutions]
    with compile_phases() as phases:
        dynamic = aoti.CapturedCall((), calls[example])
        programs = optimization.compile_transformer(model, [*static, dynamic], config, plan)
    compile_s = time.perf_counter() - start  # capture, quantize, export and compile
    weights_gib = weight_bytes(model) / 2**30  # as served: FP8 where quantized; before apply moves them
    optimization.apply_programs_(model, programs, config, plan)
    flat = [p for group in programs.values() for p in group]
    # The options as compiled: a rung may override the run's, and per-tensor FP8 keeps split reductions.
    extra.update(compile_s=compile_s, programs=len(flat), package_mb=sum(len(p.package) for p in flat) / 1e6,
                 weights_gib=weights_gib, fuse_qkv=rung.fuse_qkv, compile_phases=phases,
                 inductor_configs=optimization.compiler_options(config, plan.fp8))
    measure(name, model, extra)
    if cudagraph:
        measure(f"{name}+cudagraph", aoti.CUDAGraphs(model), extra)  # the app's default on the GPU


def environment() -> dict:
    import diffusers
    import torchao

    env = dict(torch=torch.__version__, diffusers=diffusers.__version__, torchao=torchao.__version__,
               python=platform.python_version(), command=" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
               cxx=os.environ.get("CXX", ""))
    if torch.cuda.is_available():
        env.update(card=torch.cuda.get_device_name(), cuda=torch.version.cuda)
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True).stdout.strip().splitlines()[0]
        except (OSError, IndexError):
            pass
    return env


def print_table(results: dict) -> None:
    base = {r["size"]: r["ms"] for r in results["rows"] if r["rung"] == "eager"}
    print(f"\n{results['env']}\nblocks {results['blocks']}")
    print(f"{'rung':24} {'size':10} {'ms/step':>9} {'speed-up':>9} {'rel err':>9} {'peak GiB':>9} {'compile s':>10}")
    for r in results["rows"]:
        speedup = base.get(r["size"], float("nan")) / r["ms"]
        print(f"{r['rung']:24} {r['size']:10} {r['ms']:9.2f} {speedup:9.2f} {r['rel_error']:9.2e} "
              f"{r.get('peak_gib', 0):9.2f} {r.get('compile_s', 0):10.1f}")
    for name, error in results.get("failures", {}).items():
        print(f"FAILED {name}: {error[:300]}")


if __name__ == "__main__":
    main()
