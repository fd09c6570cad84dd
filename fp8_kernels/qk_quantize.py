"""FLUX's q and k into FP8 in one pass: RMSNorm per head, rotary embedding (RoPE) and the cast with a static scale.

With the scale known ahead (`flux_attention.qk_bounds`), the cast needs no reduction over q or k, so one
program reads a token's bf16 heads once and writes them in FP8. Inductor's kernel for the same graph in the
single blocks is a looped reduction over each head's 128 channels fused with RoPE's pair swap, and runs at a
third of the memory bandwidth (bench/NOTES.md, session 15). Here the rotated channel pairs are loaded as
pairs and split in registers (`tl.split`): loading the partner channel by a computed index (`d ^ 1`) made an
earlier version 3x slower. Values are rounded to bf16 where eager rounds them, so the kernel gives eager's
bytes but for the norm's sum order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import apply_rotary_emb

from .cudnn_attention import FP8, FP8_MAX, scale_of

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the op runs its torch path
    triton = None


def quantize_bounded(x: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
    """x as FP8 with the scale bound / FP8_MAX (the attention op's): no reduction, so the compiled graph casts x in
    the kernel that computes it and writes half the bytes."""
    return (x.float() / scale_of(bound)).clamp(-FP8_MAX, FP8_MAX).to(FP8)


def reference(
    image: torch.Tensor, text: torch.Tensor | None, image_weight: torch.Tensor, text_weight: torch.Tensor | None,
    cos: torch.Tensor, sin: torch.Tensor, bound: torch.Tensor, eps: float,
) -> torch.Tensor:
    """diffusers' path: RMSNorm per stream, concat (text first), RoPE, then the cast. [B, S, H, D] in, FP8 out."""
    x = F.rms_norm(image, image.shape[-1:], image_weight, eps)
    if text is not None:
        x = torch.cat([F.rms_norm(text, text.shape[-1:], text_weight, eps), x], dim=1)
    return quantize_bounded(apply_rotary_emb(x, (cos, sin), sequence_dim=1), bound)


if triton is not None:

    @triton.autotune(
        configs=[triton.Config({"TOKENS": t}, num_warps=w) for t, w in [(1, 4), (1, 8), (2, 4), (2, 8), (4, 8)]],
        key=["HEADS", "HEAD_DIM"],
    )
    @triton.jit
    def _norm_rope_quantize_kernel(
        x, weight, cos, sin, bound, out, batch_tokens, tokens, out_tokens, out_offset, s_b, s_s, s_h, s_rope, eps,
        HEADS: tl.constexpr, HEADS_POW2: tl.constexpr, HEAD_DIM: tl.constexpr, FP8_MAX: tl.constexpr,
        TOKENS: tl.constexpr,
    ):
        # A program takes TOKENS whole tokens, all heads: [tokens, heads, channel pairs, 2]. A token's rotary row
        # is read once for its heads, and each pair RoPE rotates sits in one thread's registers.
        t = (tl.program_id(0).to(tl.int64) * TOKENS + tl.arange(0, TOKENS))[:, None, None, None]
        h = tl.arange(0, HEADS_POW2)[None, :, None, None]
        d = (2 * tl.arange(0, HEAD_DIM // 2)[:, None] + tl.arange(0, 2)[None, :])[None, None, :, :]
        b = t // tokens
        s = t % tokens
        live = (t < batch_tokens) & (h < HEADS)
        x0, x1 = tl.split(tl.load(x + b * s_b + s * s_s + h * s_h + d, mask=live, other=0.0).to(tl.float32))
        w0, w1 = tl.split(tl.load(weight + d).to(tl.float32))
        rope_row = (out_offset + s) * s_rope + d
        c0, c1 = tl.split(tl.load(cos + rope_row, mask=t < batch_tokens, other=0.0).to(tl.float32))
        s0, s1 = tl.split(tl.load(sin + rope_row, mask=t < batch_tokens, other=0.0).to(tl.float32))
        rstd = tl.math.rsqrt(tl.sum(x0 * x0 + x1 * x1, axis=2) / HEAD_DIM + eps)[:, :, None]
        # As eager: the norm's output in bf16, RoPE in fp32 on it (pairs (n0, n1) -> (n0 c - n1 s, n1 c + n0 s)),
        # its output in bf16, then IEEE division by the scale, as torch's x / scale.
        n0 = (x0 * rstd * w0).to(tl.bfloat16).to(tl.float32)
        n1 = (x1 * rstd * w1).to(tl.bfloat16).to(tl.float32)
        y0 = (n0 * c0 - n1 * s0).to(tl.bfloat16).to(tl.float32)
        y1 = (n1 * c1 + n0 * s1).to(tl.bfloat16).to(tl.float32)
        scale = tl.maximum(tl.load(bound) / FP8_MAX, 1e-12)  # as `scale_of`
        y = tl.join(tl.math.div_rn(y0, scale), tl.math.div_rn(y1, scale))
        row = b * out_tokens + out_offset + s
        tl.store(out + (row * HEADS + h) * HEAD_DIM + d, tl.clamp(y, -FP8_MAX, FP8_MAX).to(tl.float8e4nv), mask=live)


@torch.library.triton_op("flux_fast::norm_rope_quantize", mutates_args=())
def norm_rope_quantize(
    image: torch.Tensor, text: torch.Tensor | None, image_weight: torch.Tensor, text_weight: torch.Tensor | None,
    cos: torch.Tensor, sin: torch.Tensor, bound: torch.Tensor, eps: float,
) -> torch.Tensor:
    """RMSNorm(text) ++ RMSNorm(image) along tokens, rotated by (cos, sin) [S, D] fp32 and cast to FP8 with the
    scale bound / FP8_MAX (bound: a 0-d fp32 tensor). image, text [B, S, H, D] bf16; FP8 [B, S_text + S, H, D]."""
    streams = [(text, text_weight), (image, image_weight)] if text is not None else [(image, image_weight)]
    usable = all(x.stride(-1) == 1 for x, _ in streams) and cos.stride(-1) == 1 and sin.stride() == cos.stride()
    if not (image.is_cuda and triton is not None and usable and image.shape[-1] % 2 == 0):
        return reference(image, text, image_weight, text_weight, cos, sin, bound, eps)
    batch, _, heads, head_dim = image.shape
    out_tokens = sum(x.shape[1] for x, _ in streams)
    out = torch.empty(batch, out_tokens, heads, head_dim, dtype=FP8, device=image.device)
    offset = 0
    for x, weight in streams:  # the text stream first, as diffusers concatenates them
        tokens = x.shape[1]

        def grid(meta, rows=batch * tokens):
            return (triton.cdiv(rows, meta["TOKENS"]),)

        torch.library.wrap_triton(_norm_rope_quantize_kernel)[grid](
            x, weight, cos, sin, bound, out, batch * tokens, tokens, out_tokens, offset,
            x.stride(0), x.stride(1), x.stride(2), cos.stride(0), eps,
            HEADS=heads, HEADS_POW2=triton.next_power_of_2(heads), HEAD_DIM=head_dim, FP8_MAX=FP8_MAX,
        )
        offset += tokens
    return out
