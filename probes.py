"""Each fast path run once on the card, on small shapes, before it is compiled in (plan.py steps down where one fails).

A probe runs what the compiled program will call, with the same op, dtypes and layouts: torchao's FP8 linear
(`torch._scaled_mm` with row-wise or per-tensor scales), the fused quantization kernels of fp8_kernels/ feeding that
matmul, cuDNN's FP8 attention on q, k and v laid out as diffusers passes them. Each result is compared with float32
math on the same inputs. Why probe rather than trust a table: whether row-wise FP8 runs on sm_120 depends on the
torch build (pytorch PR #155991 added a CUTLASS kernel for sm12x; issue #192707 still failed with torch 2.10), and
cuDNN's FP8 attention on sm_120 on the cudnn-frontend release; a kernel that raises inside a compiled program would
fail every request instead.

    probes.run("fp8_row", device)   # None where it passes, else why not
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from fp8 import quantize_fp8_

# Relative error (Frobenius) against float32 that a working kernel stays under on the probes' random inputs. FP8
# e4m3 keeps 3 mantissa bits: on these inputs per-row GEMMs measure 2-3%, per-tensor 3-4% and the FP8 attention
# 2-5% (CPU, the same math); a broken kernel (wrong scales, garbage, zeros) is off by 30% or more.
TOLERANCE = 0.1


def _inputs(device: torch.device, *shape: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)  # on the CPU: the same values on any card
    return torch.randn(*shape, generator=generator).to(device, torch.bfloat16)


def _fp8_linear(device: torch.device, granularity: str, features: int) -> tuple[torch.nn.Linear, torch.Tensor]:
    """A bf16 linear layer quantized as the compiled blocks' are, and its weight in float32."""
    layer = torch.nn.Linear(features, 128, bias=True, device=device, dtype=torch.bfloat16)
    with torch.no_grad():
        layer.weight.copy_(_inputs(device, 128, features, seed=1) / math.sqrt(features))
        layer.bias.copy_(_inputs(device, 128, seed=2))
    weight, bias = layer.weight.detach().float().clone(), layer.bias.detach().float().clone()
    holder = torch.nn.Sequential(layer)
    quantize_fp8_(holder, granularity)
    return holder[0], (weight, bias)


def fp8_gemm(device: torch.device, granularity: str) -> float:
    x = _inputs(device, 64, 256, seed=0)
    layer, (weight, bias) = _fp8_linear(device, granularity, 256)
    with torch.no_grad():
        return rel_error(layer(x), F.linear(x.float(), weight, bias))


def fused_quantization(device: torch.device, feed_forward: bool = False) -> float:
    """The single blocks' GELU + concat + per-row quantization kernel (or the feed-forwards' GELU + quantization)
    feeding the per-row FP8 matmul, as fp8_kernels/blocks.py calls them."""
    from fp8_kernels.blocks import _fp8_linear as fp8_matmul
    from fp8_kernels.quantize import gelu_cat_quantize, gelu_quantize

    attn = _inputs(device, 64, 0 if feed_forward else 128, seed=3)
    mlp = _inputs(device, 64, 512, seed=4)
    layer, (weight, bias) = _fp8_linear(device, "row", attn.shape[1] + mlp.shape[1])
    with torch.no_grad():
        quantized = gelu_quantize(mlp) if feed_forward else gelu_cat_quantize(attn, mlp)
        out = fp8_matmul(layer, *quantized, torch.bfloat16)
    rows = torch.cat([attn.float(), F.gelu(mlp.float(), approximate="tanh")], dim=-1)
    return rel_error(out, F.linear(rows, weight, bias))


def fp8_attention(device: torch.device, kernel: str) -> float:
    """`kernel`'s FP8 attention (config.FP8_ATTENTION) on q, k, v as diffusers passes them to SDPA: [B, H, S, D]
    views of [B, S, H, D], FLUX's head size. Its own fallback to bf16 SDPA is what the probe must not see."""
    from fp8_kernels import cudnn_attention, flux_attention

    if reason := cudnn_attention.unavailable(device):
        raise RuntimeError(reason)
    q, k, v = (_inputs(device, 1, 256, 2, 128, seed=5 + i) for i in range(3))
    scale = 1 / math.sqrt(128)
    expected = F.scaled_dot_product_attention(*(x.float().transpose(1, 2) for x in (q, k, v)), scale=scale)
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    with torch.no_grad():
        if kernel == "cudnn_static_qk":
            bounds = torch.stack([x.abs().amax().float() for x in (q, k)])
            q8, k8 = (flux_attention.quantize_bounded(x, bound) for x, bound in zip((q, k), bounds))
            out = cudnn_attention.cudnn_fp8_attention_static_qk(q8, k8, v, bounds, scale)
        else:
            out = cudnn_attention.attention_fp8(q, k, v, scale)  # the FP8 path at any token count
    return rel_error(out, expected)


PROBES: dict[str, Callable[..., float]] = {
    "fp8_row": lambda device: fp8_gemm(device, "row"),
    "fp8_tensor": lambda device: fp8_gemm(device, "tensor"),
    "fused_quantization": fused_quantization,
    "fused_ff_quantization": lambda device: fused_quantization(device, feed_forward=True),
    "fp8_attention": fp8_attention,
}


def rel_error(out: torch.Tensor, expected: torch.Tensor) -> float:
    out, expected = out.float(), expected.float()
    return ((out - expected).norm() / expected.norm()).item()


def run(name: str, device: torch.device, **kwargs) -> str | None:
    """None where probe `name` runs within TOLERANCE on `device`, else why not (one line)."""
    try:
        error = PROBES[name](device, **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # an asynchronous kernel failure surfaces here, not in a later request
    except Exception as failure:  # the kernel is missing for this card, unsupported, or crashes: step down
        message = str(failure).strip().splitlines()
        return f"{type(failure).__name__}: {message[0] if message else ''}"[:300]
    if not error <= TOLERANCE:  # NaN included
        return f"off by {error:.3g} against float32 (tolerance {TOLERANCE})"
    return None
