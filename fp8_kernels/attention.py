"""Attention with FP8 q, k and v in place of bf16 SDPA: the export-time swap, and a Triton kernel.

Hopper's FP8 tensor cores do twice the bf16 rate, and attention is a quarter of a FLUX step.
`sdpa_as_fp8` records every SDPA call of the transformer as an FP8 op: cuDNN's FP8 flash attention
(`cudnn_attention.py`), either with q and k cast by the compiled graph with static scales from their
RMSNorms' weights (`flux_attention.py`, the default) or with per-tensor scales of q, k and v found in the op,
or this file's Triton kernel, after the fused-attention tutorial of Triton (triton-lang/triton,
`python/tutorials/06-fused-attention.py`, MIT). PyTorch's and
torchao's own FP8 routes need a FlashAttention-3 build (`flash_attn_interface`), which PyPI does not
carry (the name there is an empty placeholder).

The Triton kernel is not the default: on an H200 it is 1.07x cuDNN's bf16 attention alone, slower
once q, k and v are quantized (bench/README.md, "FP8 kernels").

The Triton kernel's scales: q and k per head (FLUX's q and k come out of an RMSNorm, so their magnitudes
are even across tokens), v per head and channel (applied once to the output). Softmax probabilities are
stored as FP8 times 256 so that small ones keep their precision; the sum they are divided by stays
in fp32.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F

from .cudnn_attention import cudnn_fp8_attention, scale_of
from .flux_attention import FluxAttnProcessorFP8, swappable

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the op runs its torch path
    triton = None

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max
P_LOG2_SCALE = 8.0  # probabilities times 2^8 in FP8: in [0, 256], clear of e4m3's subnormals
_sdpa = F.scaled_dot_product_attention  # the original, also while `sdpa_as_fp8` has replaced it
KERNELS = ("cudnn", "cudnn_static_qk", "triton")


def quantize_per_head(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, H, S, D] as FP8 with one fp32 scale per (batch, head): (data, scale [B, H])."""
    amax = x.abs().amax(dim=(-2, -1), keepdim=True).float()
    scale = scale_of(amax)
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale.flatten(-3)


def quantize_value(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """v [B, H, S, D] as FP8 with one scale per (batch, head, channel), transposed to [B, H, D, S]:
    FP8 tensor cores want the summed-over axis (tokens, for P @ V) contiguous."""
    scale = scale_of(v.abs().amax(dim=-2, keepdim=True).float())
    data = (v.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return data.transpose(-1, -2).contiguous(), scale.squeeze(-2)


def reference(q8, k8, vt8, q_scale, k_scale, v_scale, sm_scale: float) -> torch.Tensor:
    """The op's math in torch (the CPU path): dequantize, then fp32 SDPA. Output bf16 [B, H, S, D]."""
    q = q8.float() * q_scale[..., None, None]
    k = k8.float() * k_scale[..., None, None]
    v = vt8.float().transpose(-1, -2) * v_scale[..., None, :]
    return _sdpa(q, k, v, scale=sm_scale).to(torch.bfloat16)


if triton is not None:

    @triton.jit
    def _attend_tile(q, k_tile_ptrs, v_tile_ptrs, kv_len, start_n, offs_n, m_i, l_i, acc, qk_scale,
                     MASKED: tl.constexpr):
        if MASKED:
            keep = (start_n + offs_n)[None, :] < kv_len
            k = tl.load(k_tile_ptrs, mask=keep, other=0.0)
            v = tl.load(v_tile_ptrs, mask=keep, other=0.0)
        else:
            k = tl.load(k_tile_ptrs)
            v = tl.load(v_tile_ptrs)
        s = tl.dot(q, k) * qk_scale  # log2 domain
        if MASKED:
            s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None] + 8.0)  # P_LOG2_SCALE
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(tl.float8e4nv), tl.trans(v), acc * alpha[:, None])
        return m_new, l_i, acc

    @triton.autotune(
        configs=[
            triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
            for m, n, w, s in [(128, 128, 8, 2), (128, 128, 8, 3), (128, 64, 4, 3), (128, 128, 4, 3), (64, 128, 4, 3)]
        ],
        key=["HEAD_DIM"],
    )
    @triton.jit
    def _attention_kernel(
        q, k, vt, out, qk_scale, v_scale, heads, q_len, kv_len,
        sq_b, sq_h, sq_s, sq_d, sk_b, sk_h, sk_s, sk_d, sv_b, sv_h, sv_d, sv_s, so_b, so_h, so_s, so_d,
        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        bh = tl.program_id(1)
        b = bh // heads
        h = bh % heads
        offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        rows = offs_m[:, None] < q_len
        q_tile = tl.load(q + b * sq_b + h * sq_h + offs_m[:, None] * sq_s + offs_d[None, :] * sq_d, mask=rows, other=0.0)
        k_ptrs = k + b * sk_b + h * sk_h + offs_n[None, :] * sk_s + offs_d[:, None] * sk_d  # [D, N]
        v_ptrs = vt + b * sv_b + h * sv_h + offs_n[None, :] * sv_s + offs_d[:, None] * sv_d  # [D, N]
        qk = tl.load(qk_scale + bh)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        full = kv_len // BLOCK_N * BLOCK_N
        for start_n in range(0, full, BLOCK_N):
            m_i, l_i, acc = _attend_tile(q_tile, k_ptrs + start_n * sk_s, v_ptrs + start_n * sv_s, kv_len, start_n,
                                         offs_n, m_i, l_i, acc, qk, MASKED=False)
        if full < kv_len:  # FLUX's token counts are multiples of 4, not of the tile
            m_i, l_i, acc = _attend_tile(q_tile, k_ptrs + full * sk_s, v_ptrs + full * sv_s, kv_len, full,
                                         offs_n, m_i, l_i, acc, qk, MASKED=True)
        o = acc * (tl.load(v_scale + bh * HEAD_DIM + offs_d)[None, :] / l_i[:, None])
        tl.store(out + b * so_b + h * so_h + offs_m[:, None] * so_s + offs_d[None, :] * so_d,
                 o.to(out.dtype.element_ty), mask=rows)


@torch.library.triton_op("flux_fast::fp8_attention", mutates_args=())
def fp8_attention(
    q8: torch.Tensor, k8: torch.Tensor, vt8: torch.Tensor, q_scale: torch.Tensor, k_scale: torch.Tensor,
    v_scale: torch.Tensor, sm_scale: float,
) -> torch.Tensor:
    """softmax(q k^T * sm_scale) v from FP8 q, k [B, H, S, D], v^T [B, H, D, S] and their scales; bf16 [B, H, S, D]."""
    if not (q8.is_cuda and triton is not None):
        return reference(q8, k8, vt8, q_scale, k_scale, v_scale, sm_scale)
    batch, heads, q_len, head_dim = q8.shape
    kv_len = k8.shape[2]
    # Stored as [B, S, H, D], returned as the [B, H, S, D] view SDPA returns: diffusers permutes it back
    # and flattens the heads without a copy.
    out = torch.empty(batch, q_len, heads, head_dim, dtype=torch.bfloat16, device=q8.device).transpose(1, 2)
    # One fp32 factor per head from q's and k's scales and the softmax scale, in the log2 domain of exp2.
    qk_scale = (q_scale * k_scale * (sm_scale * math.log2(math.e))).float().contiguous()

    def grid(meta):
        return (triton.cdiv(q_len, meta["BLOCK_M"]), batch * heads)

    torch.library.wrap_triton(_attention_kernel)[grid](
        q8, k8, vt8, out, qk_scale, v_scale.contiguous(), heads, q_len, kv_len,
        *q8.stride(), *k8.stride(), *vt8.stride(), *out.stride(), HEAD_DIM=head_dim,
    )
    return out


def scaled_dot_product_attention_fp8(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False,
    kernel: str = "triton",
) -> torch.Tensor:
    """`F.scaled_dot_product_attention` with FP8 q, k, v through `kernel` (one of KERNELS); calls
    they can't serve go to the original."""
    head_dim = query.shape[-1]
    if attn_mask is not None or dropout_p or is_causal or enable_gqa or head_dim not in (32, 64, 128, 256):
        return _sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa)
    sm_scale = scale if scale is not None else 1.0 / math.sqrt(head_dim)
    if kernel.startswith("cudnn"):
        return cudnn_fp8_attention(query, key, value, sm_scale)
    q8, q_scale = quantize_per_head(query)
    k8, k_scale = quantize_per_head(key)
    vt8, v_scale = quantize_value(value)
    return fp8_attention(q8, k8, vt8, q_scale, k_scale, v_scale, sm_scale).to(query.dtype)


@contextmanager
def sdpa_as_fp8(kernel: str, modules: Iterable[torch.nn.Module] = ()) -> Iterator[None]:
    """Within: every `F.scaled_dot_product_attention` call (diffusers' "native" backend) runs in FP8
    through `kernel` (one of KERNELS).

    Meant around torch.export, which records the FP8 op into the program; the same swap torchao's
    low-precision attention makes. For "cudnn_static_qk", diffusers' FLUX attention modules among `modules`
    and their submodules run `FluxAttnProcessorFP8` meanwhile (their other SDPA calls: "cudnn").
    """
    if kernel not in KERNELS:
        raise ValueError(f"FP8 attention kernel must be one of {KERNELS}, got {kernel!r}")
    flux = {m for module in modules for m in module.modules() if swappable(m)} if kernel == "cudnn_static_qk" else ()
    originals = {m: m.processor for m in flux}
    F.scaled_dot_product_attention = partial(scaled_dot_product_attention_fp8, kernel=kernel)
    try:
        for module in flux:
            module.processor = FluxAttnProcessorFP8()
        yield
    finally:
        F.scaled_dot_product_attention = _sdpa
        for module, processor in originals.items():
            module.processor = processor
