"""diffusers' FLUX attention with q and k in FP8 under static scales, and attention through cuDNN's FP8 kernel.

FLUX's q and k leave an RMSNorm per head, so their magnitude is bounded by the norms' weights (`qk_bounds`):
they are cast to FP8 with that bound's scale right after RoPE, and the attention op quantizes only v
(`cudnn_attention.cudnn_fp8_attention_static_qk`). `FluxAttnProcessorFP8` is diffusers' `FluxAttnProcessor`
with that swapped in; it stands in for it while a program is exported (`attention.sdpa_as_fp8`). The compiled
graph casts q and k in the kernel that normalizes and rotates them (three hand-written Triton kernels for
that step were slower than inductor's: bench/NOTES.md, sessions 15-16). Where `rope_pairs.split_rope_pairs_` has
put RoPE's pairs half a head apart (`SPLIT`), it rotates them in that layout (`rotate_split`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor, _get_qkv_projections

from .cudnn_attention import FP8, FP8_MAX, cudnn_fp8_attention_static_qk, scale_of

SPLIT = "rope_pairs_split"  # set on an attention module whose q and k have RoPE's pairs half a head apart (rope_pairs.py)


def swappable(module: torch.nn.Module) -> bool:
    """Whether `module` is diffusers' FLUX attention with its own processor (another may scale q and k after
    their norms) and RMSNorms with weights: what `FluxAttnProcessorFP8` can stand in for."""
    return type(getattr(module, "processor", None)) is FluxAttnProcessor and qk_norms(module) is not None


def qk_norms(attn: torch.nn.Module) -> list[list[torch.nn.RMSNorm]] | None:
    """The RMSNorms q and k leave in FLUX's attention ([[norm_q, norm_added_q], [norm_k, norm_added_k]], the text
    stream's where there is one), or None where they are not all RMSNorms with weights."""
    names = ("norm_q", "norm_added_q"), ("norm_k", "norm_added_k")
    norms = [[getattr(attn, n) for n in pair if getattr(attn, n, None) is not None] for pair in names]
    if not all(isinstance(norm, torch.nn.RMSNorm) and norm.weight is not None for pair in norms for norm in pair):
        return None
    return norms


def rotate_split(x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """RoPE of x [B, S, H, D] with its pairs at channels (j, j + D/2), from tables of one angle per pair [S, D/2]
    (rope_pairs.PairAngles) or of FLUX's own [S, D]."""
    cos, sin = rotary
    if cos.shape[-1] == x.shape[-1]:  # FLUX's tables: a pair's angle at both of its channels
        cos, sin = cos[..., 0::2], sin[..., 0::2]
    cos, sin = (torch.cat([t, t], dim=-1)[None, :, None] for t in (cos, sin))
    real, imag = x.chunk(2, dim=-1)
    rotated = torch.cat([-imag, real], dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


def quantize_bounded(x: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
    """x as FP8 with the scale bound / FP8_MAX (the attention op's): no reduction, so the compiled graph casts x in
    the kernel that computes it and writes half the bytes."""
    return (x.float() / scale_of(bound)).clamp(-FP8_MAX, FP8_MAX).to(FP8)


def qk_bounds(norms: list[list[torch.nn.RMSNorm]]) -> torch.Tensor:
    """Bounds of |q| and |k| at the SDPA call, [2] fp32, from `qk_norms`' weights.

    An RMSNorm's output n over D channels has sum(n^2) <= D, so each channel pair that RoPE rotates keeps
    a norm of at most sqrt(D) * max|weight|, and so does each value. FP8 keeps its relative precision far
    below its largest value, so a bound serves as well as the amax, and costs no pass over q and k.
    """
    head_dim = norms[0][0].normalized_shape[-1]
    weights = torch.stack([norm.weight.detach() for pair in norms for norm in pair])  # one reduction kernel for all
    largest = weights.abs().amax(dim=-1).float().view(2, -1).amax(dim=-1)
    return largest * (math.sqrt(head_dim) * 1.02)  # 2% for bf16's roundings of norm, weight and RoPE


class FluxAttnProcessorFP8:
    """`FluxAttnProcessor` with q and k cast to FP8 by their bounds' scales after RoPE, and attention in FP8."""

    def __call__(
        self, attn: torch.nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None, image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if attention_mask is not None or image_rotary_emb is None:  # not FLUX's call: diffusers' own path
            if getattr(attn, SPLIT, False) and image_rotary_emb is not None:
                raise NotImplementedError("attention masks with q and k in the split RoPE layout (rope_pairs.py)")
            return FluxAttnProcessor()(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        query, key, value, text_query, text_key, text_value = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        query, key, value = (x.unflatten(-1, (-1, attn.head_dim)) for x in (query, key, value))
        norms = qk_norms(attn)
        bounds = qk_bounds(norms)
        if attn.added_kv_proj_dim is not None:
            text_query, text_key, text_value = (x.unflatten(-1, (-1, attn.head_dim)) for x in (text_query, text_key, text_value))
            value = torch.cat([text_value, value], dim=1)
        else:
            text_query = text_key = None
        rotate = partial(rotate_split, rotary=image_rotary_emb) if getattr(attn, SPLIT, False) else partial(
            apply_rotary_emb, freqs_cis=image_rotary_emb, sequence_dim=1)
        q8, k8 = (
            self._cast(image, text, pair, bound, rotate)
            for image, text, pair, bound in zip((query, key), (text_query, text_key), norms, bounds)
        )
        hidden_states = cudnn_fp8_attention_static_qk(
            q8.transpose(1, 2), k8.transpose(1, 2), value.transpose(1, 2), bounds, 1 / math.sqrt(attn.head_dim)
        )
        hidden_states = hidden_states.transpose(1, 2).flatten(2, 3).to(query.dtype)
        if encoder_hidden_states is None:
            return hidden_states
        encoder_hidden_states, hidden_states = hidden_states.split_with_sizes(
            [encoder_hidden_states.shape[1], hidden_states.shape[1] - encoder_hidden_states.shape[1]], dim=1
        )
        hidden_states = attn.to_out[0](hidden_states.contiguous())
        hidden_states = attn.to_out[1](hidden_states)
        return hidden_states, attn.to_add_out(encoder_hidden_states.contiguous())

    @staticmethod
    def _cast(image: torch.Tensor, text: torch.Tensor | None, norms: list[torch.nn.RMSNorm], bound: torch.Tensor,
              rotate: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """One of q, k: RMSNorm per stream (text first), RoPE, FP8 cast; [B, S, H, D] in and out."""
        x = norms[0](image)
        if text is not None:
            x = torch.cat([norms[1](text), x], dim=1)
        return quantize_bounded(rotate(x), bound)
