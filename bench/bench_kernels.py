"""The FP8 kernels of `fp8_kernels/` alone, at FLUX.1-dev's shapes, against what they replace (GPU).

    python -m bench.bench_kernels --json bench/results/NAME.json

Attention: bf16 SDPA (cuDNN on Hopper) against the FP8 Triton kernel, with and without its q/k/v
quantization (eager, and fused by torch.compile as AOTInductor fuses it), cuDNN's FP8 attention
(nvidia-cudnn-frontend) alone and as the op the programs call, plus SageAttention's INT8 Triton
kernels where that package is installed. Error is ||out - ref|| / ||ref|| against fp32
SDPA on the same inputs (q and k RMS-normalized per head, as FLUX's are).
Quantization: the single blocks' GELU + concat + per-row FP8 in one pass against torchao's path in
eager and under torch.compile; the bytes must match.
q/k: RMSNorm + RoPE + FP8 cast as inductor compiles it, with RoPE's channel pairs interleaved (FLUX's
order) against the same channels reordered so that a pair's halves lie 64 channels apart (the order
`rotate_half` uses), with the rotary tables at full or half width; the bytes must match after the reorder.
Inductor's generated code for each is written beside the JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from bench.bench_transformer import environment, median_ms, rel_error
from bench.experiments import triton_fp8_attention
from config import OptimizationConfig
from fp8_kernels import cudnn_attention, flux_attention, quantize

HEADS, HEAD_DIM, TEXT_TOKENS, DIM, MLP = 24, 128, 512, 3072, 12288


def flops(tokens: int) -> float:
    return 4 * HEADS * tokens * tokens * HEAD_DIM


def graphed(fn):
    """fn replayed as one CUDA graph: kernels without the host's launch cost, as in the compiled programs."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm-up: autotuning, cuDNN plans, workspace
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph.replay, out


def attention_rows(tokens: int, args) -> list[dict]:
    g = torch.Generator("cuda").manual_seed(tokens)
    q, k, v = (torch.randn(1, tokens, HEADS, HEAD_DIM, device="cuda", generator=g, dtype=torch.bfloat16).transpose(1, 2)
               for _ in range(3))
    q, k = (F.rms_norm(x, (HEAD_DIM,)) for x in (q, k))
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    backends = {"bf16 cuDNN SDPA": [SDPBackend.CUDNN_ATTENTION], "bf16 flash SDPA": [SDPBackend.FLASH_ATTENTION]}
    variants = {name: (lambda: F.scaled_dot_product_attention(q, k, v)) for name in backends}
    experiment = triton_fp8_attention  # the Triton kernel that lost to cuDNN's, for comparison
    q8, qs = experiment.quantize_per_head(q)
    k8, ks = experiment.quantize_per_head(k)
    vt8, vs = experiment.quantize_value(v)
    scale = HEAD_DIM ** -0.5
    variants["fp8 kernel (inputs quantized)"] = lambda: experiment.fp8_attention(q8, k8, vt8, qs, ks, vs, scale)
    variants["fp8 + quantization, eager"] = lambda: experiment.sdpa(q, k, v)
    compiled = torch.compile(experiment.sdpa, fullgraph=True)
    variants["fp8 + quantization, compiled"] = lambda: compiled(q, k, v)
    out_scales = {}
    unavailable = cudnn_attention.unavailable(q.device)
    if unavailable is None:
        q8c, k8c, v8c, scales = cudnn_attention.quantize(q, k, v)
        # FP8 out, scaled by 1 / max|v|: dequantized below for the error, after the timing.
        variants["cuDNN fp8 kernel (inputs quantized)"] = lambda: cudnn_attention.attend(q8c, k8c, v8c, scales, scale)
        out_scales["cuDNN fp8 kernel (inputs quantized)"] = scales[2]
        variants["cuDNN fp8 quantization alone"] = lambda: cudnn_attention.quantize(q, k, v)[0]
        variants["cuDNN fp8 + quantization"] = lambda: cudnn_attention.attention_fp8(q, k, v, scale)
        variants["cuDNN fp8 op (bf16 below MIN_TOKENS)"] = lambda: cudnn_attention.cudnn_fp8_attention(q, k, v, scale)
        # q and k as the compiled graph casts them with AOTI_FP8_ATTENTION=cudnn_static_qk (RMSNorm weights of 1).
        bounds = torch.full((2,), HEAD_DIM ** 0.5 * 1.02, device="cuda")
        q8b, k8b = (flux_attention.quantize_bounded(x, b) for x, b in zip((q, k), bounds))
        variants["cuDNN fp8 static-qk op (q, k cast upstream)"] = (
            lambda: cudnn_attention.cudnn_fp8_attention_static_qk(q8b, k8b, v, bounds, scale))
    else:
        print(f"cuDNN FP8 attention: {unavailable}", flush=True)
    try:
        from sageattention import sageattn

        variants["sageattention int8 (Triton)"] = lambda: sageattn(q, k, v, tensor_layout="HND", is_causal=False)
    except Exception as error:  # not installed, or no kernel for this card
        print(f"sageattention: {type(error).__name__}: {error}", flush=True)
    rows = []
    base = None
    for name, fn in variants.items():
        try:
            with sdpa_kernel(backends[name]) if name in backends else contextlib.nullcontext():
                out = fn()
                if args.cudagraph:
                    fn, out = graphed(fn)
                    fn()
                ms = median_ms(fn, args.warmup, args.iters)
        except Exception as error:
            rows.append(dict(kernel="attention", variant=name, tokens=tokens, error=f"{type(error).__name__}: {error}"[:500]))
            print(json.dumps(rows[-1]), flush=True)
            continue
        base = base or ms
        error = None if out.dtype == cudnn_attention.FP8 and name not in out_scales else (
            rel_error(out.float() * out_scales.get(name, 1.0), ref))  # FP8 q alone has no error to give
        rows.append(dict(kernel="attention", variant=name, tokens=tokens, ms=ms, speedup=base / ms,
                         tflops=flops(tokens) / ms / 1e9, rel_error=error))
        print(json.dumps(rows[-1]), flush=True)
    best = getattr(getattr(experiment, "_attention_kernel", None), "best_config", None)
    rows.append(dict(kernel="attention", variant="autotuned config", tokens=tokens, config=str(best)))
    return rows


def quantize_rows(tokens: int, args) -> list[dict]:
    g = torch.Generator("cuda").manual_seed(tokens)
    attn = torch.randn(1, tokens, DIM, device="cuda", generator=g).to(torch.bfloat16)
    mlp = (2 * torch.randn(1, tokens, MLP, device="cuda", generator=g)).to(torch.bfloat16)
    data_ref, scale_ref = quantize.reference(attn, mlp)
    compiled = torch.compile(quantize.reference, fullgraph=True)
    variants = {
        "torchao path, eager": lambda: quantize.reference(attn, mlp),
        "torchao path, torch.compile": lambda: compiled(attn, mlp),
        "one-pass Triton kernel": lambda: quantize.gelu_cat_quantize(attn, mlp),
    }
    rows, base = [], None
    for name, fn in variants.items():
        data, scale = fn()
        ms = median_ms(fn, args.warmup, args.iters)
        base = base or ms
        same = (data.view(torch.uint8) == data_ref.view(torch.uint8)).float().mean().item()
        rows.append(dict(kernel="gelu_cat_quantize", variant=name, tokens=tokens, ms=ms, speedup=base / ms,
                         gb_per_s=tokens * (DIM + MLP) * 3 / ms / 1e6, bytes_equal=same,
                         scale_max_rel_diff=((scale - scale_ref).abs() / scale_ref).max().item()))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _norm_rope_cast(x, weight, cos, sin, bound, layout: str):
    """[B, S, H, D] bf16 -> FP8: RMSNorm, RoPE with pairs in `layout`, cast by the static bound's scale."""
    x = F.rms_norm(x, x.shape[-1:], weight, 1e-6)
    cos, sin = cos[None, :, None], sin[None, :, None]
    if layout == "interleaved":  # diffusers' apply_rotary_emb: pairs (2j, 2j + 1)
        real, imag = x.unflatten(-1, (-1, 2)).unbind(-1)
        rotated = torch.stack([-imag, real], dim=-1).flatten(3)
    else:  # pairs (j, j + D/2)
        real, imag = x.chunk(2, dim=-1)
        rotated = torch.cat([-imag, real], dim=-1)
        if layout == "half_split_strided":  # FLUX's own tables: a pair's angle at its even channel
            cos, sin = cos[..., 0::2], sin[..., 0::2]
        if layout != "half_split":  # one angle per pair: tables of D/2
            cos, sin = torch.cat([cos, cos], dim=-1), torch.cat([sin, sin], dim=-1)
    out = (x.float() * cos + rotated.float() * sin).to(x.dtype)
    return flux_attention.quantize_bounded(out, bound)


def qk_rows(tokens: int, args) -> list[dict]:
    from diffusers.models.transformers.transformer_flux import FluxPosEmbed
    from torch._inductor.utils import run_and_get_code

    g = torch.Generator("cuda").manual_seed(tokens)
    cos, sin = FluxPosEmbed(theta=10000, axes_dim=[16, 56, 56])(torch.randint(0, 64, (tokens, 3), device="cuda").float())
    weight = (2 * torch.rand(HEAD_DIM, device="cuda", generator=g)).bfloat16()
    bound = weight.float().abs().amax() * HEAD_DIM ** 0.5 * 1.02
    order = torch.cat([torch.arange(0, HEAD_DIM, 2), torch.arange(1, HEAD_DIM, 2)]).cuda()  # interleaved -> half split
    q, k = (torch.randn(1, tokens, HEADS, HEAD_DIM, device="cuda", generator=g).bfloat16() for _ in range(2))
    tables = {"interleaved": (cos, sin), "half_split": (cos[:, order], sin[:, order]),
              "half_split_64": (cos[:, 0::2].contiguous(), sin[:, 0::2].contiguous()), "half_split_strided": (cos, sin)}
    rows, base = [], None
    for layout, (c, s) in tables.items():
        qx, kx, w = (q, k, weight) if layout == "interleaved" else (q[..., order], k[..., order], weight[order])
        qx, kx = qx.contiguous(), kx.contiguous()

        def both(qx=qx, kx=kx, w=w, c=c, s=s, layout=layout):  # q and k in one graph, as a block has them
            return [_norm_rope_cast(x, w, c, s, bound, layout) for x in (qx, kx)]

        compiled = torch.compile(both, fullgraph=True, dynamic=False, options=dict(OptimizationConfig().inductor_configs))
        out, code = run_and_get_code(compiled)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        (args.json.parent / f"{args.json.stem}-qk-{layout}-{tokens}.txt").write_text("\n\n".join(code))
        expected = [_norm_rope_cast(x, weight, cos, sin, bound, "interleaved") for x in (q, k)]
        if layout != "interleaved":
            expected = [e[..., order] for e in expected]
        fn, out = graphed(compiled)
        ms = median_ms(fn, args.warmup, args.iters) / 2
        base = base or ms
        same = sum((o.view(torch.uint8) == e.view(torch.uint8)).float().mean().item() for o, e in zip(out, expected)) / 2
        rows.append(dict(kernel="qk norm+rope+cast", variant=layout, tokens=tokens, ms=ms, speedup=base / ms,
                         gb_per_s=tokens * HEADS * HEAD_DIM * 3 / ms / 1e6, bytes_equal=same))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["1024x1024", "512x512"])
    parser.add_argument("--kernels", nargs="+", choices=["quantize", "attention", "qk"],
                        default=["quantize", "attention", "qk"])
    parser.add_argument("--cudagraph", action="store_true", help="time attention as CUDA graph replays (no launch cost)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    results = {"env": environment(), "rows": []}
    for size in args.sizes:
        width, height = map(int, size.split("x"))
        tokens = width * height // 256 + TEXT_TOKENS
        for rows in (dict(quantize=quantize_rows, attention=attention_rows, qk=qk_rows)[kernel] for kernel in args.kernels):
            try:
                results["rows"] += [dict(size=size, **row) for row in rows(tokens, args)]
            except Exception as error:  # one failing kernel must not lose the others' numbers
                results["rows"].append(dict(size=size, kernel=rows.__name__, error=f"{type(error).__name__}: {error}"[:2000]))
                print(json.dumps(results["rows"][-1]), flush=True)
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=1))
    print(f"\n{results['env']}")
    print(f"{'size':10} {'kernel':18} {'variant':34} {'ms':>8} {'speed-up':>9} {'rel err':>9}")
    for r in results["rows"]:
        if "ms" in r:
            err = r["rel_error"] if "rel_error" in r else 1 - r["bytes_equal"]
            err = "-" if err is None else f"{err:.2e}"
            print(f"{r['size']:10} {r['kernel'][:18]:18} {r['variant'][:34]:34} {r['ms']:8.3f} {r['speedup']:9.2f} {err:>9}")
        else:
            print(f"{r['size']:10} {r['kernel'][:18]:18} {r.get('variant', ''):34} {r.get('config') or r.get('error')}")


if __name__ == "__main__":
    main()
