"""A losing experiment, kept for the record: FP8 attention as one Triton kernel with per-head scales.

After the fused-attention tutorial of Triton (triton-lang/triton, `python/tutorials/06-fused-attention.py`, MIT).
On an H200 it is 1.07x cuDNN's bf16 attention alone and slower once q, k and v are quantized (bench/README.md, "FP8
kernels"); cuDNN's FP8 attention (fp8_kernels/cudnn_attention.py) is what the app uses. `bench_kernels` still times it.

Scales: q and k per head (FLUX's q and k come out of an RMSNorm, so their magnitudes are even across tokens), v per
head and channel (applied once to the output). Softmax probabilities are stored as FP8 times 256 so that small ones
keep their precision; the sum they are divided by stays in fp32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fp8_kernels.cudnn_attention import scale_of
from fp8_kernels.quantize import FP8, FP8_MAX

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the op runs its torch path
    triton = None

P_LOG2_SCALE = 8.0  # probabilities times 2^8 in FP8: in [0, 256], clear of e4m3's subnormals
_sdpa = F.scaled_dot_product_attention


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


@torch.library.triton_op("bench_experiments::fp8_attention", mutates_args=())
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


def sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """SDPA of bf16 q, k, v [B, H, S, D] through the kernel: per-head and per-channel quantization, then the op."""
    sm_scale = scale if scale is not None else 1.0 / math.sqrt(query.shape[-1])
    q8, q_scale = quantize_per_head(query)
    k8, k_scale = quantize_per_head(key)
    vt8, v_scale = quantize_value(value)
    return fp8_attention(q8, k8, vt8, q_scale, k_scale, v_scale, sm_scale).to(query.dtype)
