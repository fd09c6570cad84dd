"""FLUX's q and k into FP8 in one pass: RMSNorm, rotary embedding and the cast with a static scale.

In diffusers' FLUX attention, q and k each go through an RMSNorm per head, the text stream's and the image
stream's are concatenated, then rotated (RoPE). With the scale known ahead (`flux_attention.qk_bounds`),
the FP8 cast needs no reduction over the tensor, so one kernel reads each bf16 row once and writes it in
FP8: inductor's kernels for the same graph ran at a quarter of the H200's memory bandwidth (a reduction
over 128 channels fused with RoPE's pair swap; bench/NOTES.md, session 15). Intermediate values are
rounded to bf16 where eager rounds them, so the kernel gives eager's bytes but for the norm's sum order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import apply_rotary_emb

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the op runs its torch path
    triton = None

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max


def quantize_bounded(x: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
    """x as FP8 with the scale bound / FP8_MAX (the attention op's): no reduction over x."""
    scale = (bound / FP8_MAX).clamp(min=1e-12)
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)


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

    # A program takes TOKENS whole tokens, all heads: the rotary table's row for a token is read once for its heads
    # (per (token, head) row, the fp32 table was 4x the bytes of the row itself, and the kernel ran at 0.5 TB/s).
    @triton.autotune(
        configs=[triton.Config({"TOKENS": t}, num_warps=w) for t, w in [(1, 4), (1, 8), (2, 8), (4, 16)]],
        key=["HEAD_DIM", "HEADS", "HAS_TEXT"],
    )
    @triton.jit
    def _norm_rope_quantize_kernel(
        image, text, image_weight, text_weight, cos, sin, bound, out, batch_tokens, text_tokens, tokens,
        si_b, si_s, si_h, st_b, st_s, st_h, s_rope, eps,
        HEADS: tl.constexpr, HEADS_POW2: tl.constexpr, HEAD_DIM: tl.constexpr, HAS_TEXT: tl.constexpr,
        FP8_MAX: tl.constexpr, TOKENS: tl.constexpr,
    ):
        t = (tl.program_id(0).to(tl.int64) * TOKENS + tl.arange(0, TOKENS))[:, None, None]  # over batch x tokens
        h = tl.arange(0, HEADS_POW2)[None, :, None]
        d = tl.arange(0, HEAD_DIM)[None, None, :]
        pair = d ^ 1  # the channel RoPE rotates each one with
        b = t // tokens
        s = t % tokens
        live = (t < batch_tokens) & (h < HEADS)
        if HAS_TEXT:
            is_text = s < text_tokens
        else:
            is_text = s < 0
        in_image = live & ~is_text
        image_row = image + b * si_b + (s - text_tokens) * si_s + h * si_h
        x = tl.load(image_row + d, mask=in_image, other=0.0).to(tl.float32)
        xp = tl.load(image_row + pair, mask=in_image, other=0.0).to(tl.float32)
        w = tl.load(image_weight + d).to(tl.float32)
        wp = tl.load(image_weight + pair).to(tl.float32)
        if HAS_TEXT:
            in_text = live & is_text
            text_row = text + b * st_b + s * st_s + h * st_h
            x += tl.load(text_row + d, mask=in_text, other=0.0).to(tl.float32)
            xp += tl.load(text_row + pair, mask=in_text, other=0.0).to(tl.float32)
            w = tl.where(is_text, tl.load(text_weight + d).to(tl.float32), w)
            wp = tl.where(is_text, tl.load(text_weight + pair).to(tl.float32), wp)
        rstd = tl.math.rsqrt(tl.sum(x * x, axis=2) / HEAD_DIM + eps)[:, :, None]
        # As eager: the norm's output in bf16, RoPE in fp32 on it, its output in bf16.
        n = (x * rstd * w).to(tl.bfloat16).to(tl.float32)
        np_ = (xp * rstd * wp).to(tl.bfloat16).to(tl.float32)
        rotated = tl.where(d % 2 == 0, -np_, np_)  # diffusers' stack([-odd, even])
        token_live = t < batch_tokens
        c = tl.load(cos + s * s_rope + d, mask=token_live, other=0.0)
        sn = tl.load(sin + s * s_rope + d, mask=token_live, other=0.0)
        y = (n * c + rotated * sn).to(tl.bfloat16).to(tl.float32)
        scale = tl.maximum(tl.load(bound) / FP8_MAX, 1e-12)  # as the attention op computes it
        q8 = tl.clamp(tl.math.div_rn(y, scale), -FP8_MAX, FP8_MAX).to(tl.float8e4nv)
        tl.store(out + (t * HEADS + h) * HEAD_DIM + d, q8, mask=live)


@torch.library.triton_op("flux_fast::norm_rope_quantize", mutates_args=())
def norm_rope_quantize(
    image: torch.Tensor, text: torch.Tensor | None, image_weight: torch.Tensor, text_weight: torch.Tensor | None,
    cos: torch.Tensor, sin: torch.Tensor, bound: torch.Tensor, eps: float,
) -> torch.Tensor:
    """RMSNorm(text) ++ RMSNorm(image) along tokens, rotated by (cos, sin) [S, D] fp32 and cast to FP8 with the
    scale bound / FP8_MAX (bound: a 0-d fp32 tensor). image, text [B, S, H, D] bf16; FP8 [B, S_text + S, H, D]."""
    usable = image.stride(-1) == 1 and (text is None or text.stride(-1) == 1) and cos.is_contiguous() and sin.is_contiguous()
    if not (image.is_cuda and triton is not None and usable):
        return reference(image, text, image_weight, text_weight, cos, sin, bound, eps)
    batch, image_tokens, heads, head_dim = image.shape
    text_tokens = 0 if text is None else text.shape[1]
    tokens = text_tokens + image_tokens
    out = torch.empty(batch, tokens, heads, head_dim, dtype=FP8, device=image.device)
    text_strides = (0, 0, 0) if text is None else (text.stride(0), text.stride(1), text.stride(2))

    def grid(meta):
        return (triton.cdiv(batch * tokens, meta["TOKENS"]),)

    torch.library.wrap_triton(_norm_rope_quantize_kernel)[grid](
        image, image if text is None else text, image_weight, image_weight if text_weight is None else text_weight,
        cos, sin, bound, out, batch * tokens, text_tokens, tokens, image.stride(0), image.stride(1), image.stride(2),
        *text_strides, cos.stride(0), eps, HEADS=heads, HEADS_POW2=triton.next_power_of_2(heads), HEAD_DIM=head_dim,
        HAS_TEXT=text is not None, FP8_MAX=FP8_MAX,
    )
    return out
