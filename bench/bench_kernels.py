"""The FP8 kernels of `fp8_kernels/` alone, at FLUX.1-dev's shapes, against what they replace (GPU).

    python -m bench.bench_kernels --json bench/results/NAME.json

Attention: bf16 SDPA (cuDNN on Hopper) against the FP8 Triton kernel, with and without its q/k/v
quantization (eager, and fused by torch.compile as AOTInductor fuses it), plus SageAttention's
INT8 Triton kernels where that package is installed. Error is ||out - ref|| / ||ref|| against fp32
SDPA on the same inputs (q and k RMS-normalized per head, as FLUX's are).
Quantization: the single blocks' GELU + concat + per-row FP8 in one pass against torchao's path in
eager and under torch.compile; the bytes must match.
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
from fp8_kernels import attention as fp8_attention
from fp8_kernels import quantize

HEADS, HEAD_DIM, TEXT_TOKENS, DIM, MLP = 24, 128, 512, 3072, 12288


def flops(tokens: int) -> float:
    return 4 * HEADS * tokens * tokens * HEAD_DIM


def attention_rows(tokens: int, args) -> list[dict]:
    g = torch.Generator("cuda").manual_seed(tokens)
    q, k, v = (torch.randn(1, tokens, HEADS, HEAD_DIM, device="cuda", generator=g, dtype=torch.bfloat16).transpose(1, 2)
               for _ in range(3))
    q, k = (F.rms_norm(x, (HEAD_DIM,)) for x in (q, k))
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    backends = {"bf16 cuDNN SDPA": [SDPBackend.CUDNN_ATTENTION], "bf16 flash SDPA": [SDPBackend.FLASH_ATTENTION]}
    variants = {name: (lambda: F.scaled_dot_product_attention(q, k, v)) for name in backends}
    q8, qs = fp8_attention.quantize_per_head(q)
    k8, ks = fp8_attention.quantize_per_head(k)
    vt8, vs = fp8_attention.quantize_value(v)
    scale = HEAD_DIM ** -0.5
    variants["fp8 kernel (inputs quantized)"] = lambda: fp8_attention.fp8_attention(q8, k8, vt8, qs, ks, vs, scale)
    variants["fp8 + quantization, eager"] = lambda: fp8_attention.scaled_dot_product_attention_fp8(q, k, v)
    compiled = torch.compile(fp8_attention.scaled_dot_product_attention_fp8, fullgraph=True)
    variants["fp8 + quantization, compiled"] = lambda: compiled(q, k, v)
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
                ms = median_ms(fn, args.warmup, args.iters)
        except Exception as error:
            rows.append(dict(kernel="attention", variant=name, tokens=tokens, error=f"{type(error).__name__}: {error}"[:500]))
            print(json.dumps(rows[-1]), flush=True)
            continue
        base = base or ms
        rows.append(dict(kernel="attention", variant=name, tokens=tokens, ms=ms, speedup=base / ms,
                         tflops=flops(tokens) / ms / 1e9, rel_error=rel_error(out.float(), ref)))
        print(json.dumps(rows[-1]), flush=True)
    best = getattr(fp8_attention._attention_kernel, "best_config", None)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["1024x1024", "512x512"])
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    results = {"env": environment(), "rows": []}
    for size in args.sizes:
        width, height = map(int, size.split("x"))
        tokens = width * height // 256 + TEXT_TOKENS
        for rows in (quantize_rows, attention_rows):
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
            err = r.get("rel_error", 1 - r.get("bytes_equal", 1))
            print(f"{r['size']:10} {r['kernel'][:18]:18} {r['variant'][:34]:34} {r['ms']:8.3f} {r['speedup']:9.2f} {err:9.2e}")
        else:
            print(f"{r['size']:10} {r['kernel'][:18]:18} {r.get('variant', ''):34} {r.get('config') or r.get('error')}")


if __name__ == "__main__":
    main()
