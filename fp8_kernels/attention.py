"""Attention with FP8 q, k and v in place of bf16 SDPA: the export-time swap.

Hopper's FP8 tensor cores do twice the bf16 rate, and attention is a quarter of a FLUX step.
`sdpa_as_fp8` records every SDPA call of the transformer as an FP8 op: cuDNN's FP8 flash attention
(`cudnn_attention.py`), either with q and k cast by the compiled graph with static scales from their
RMSNorms' weights (`flux_attention.py`, the default) or with per-tensor scales of q, k and v found in the op.
PyTorch's and torchao's own FP8 routes need a FlashAttention-3 build (`flash_attn_interface`), which PyPI does not
carry (the name there is an empty placeholder). A Triton kernel lost to cuDNN's: bench/experiments/.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F

from .cudnn_attention import cudnn_fp8_attention
from .flux_attention import FluxAttnProcessorFP8, swappable

_sdpa = F.scaled_dot_product_attention  # the original, also while `sdpa_as_fp8` has replaced it
KERNELS = ("cudnn", "cudnn_static_qk")


def scaled_dot_product_attention_fp8(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False,
    kernel: str = "cudnn",
) -> torch.Tensor:
    """`F.scaled_dot_product_attention` with FP8 q, k, v through `kernel` (one of KERNELS); calls
    they can't serve go to the original."""
    head_dim = query.shape[-1]
    if attn_mask is not None or dropout_p or is_causal or enable_gqa or head_dim not in (32, 64, 128, 256):
        return _sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa)
    return cudnn_fp8_attention(query, key, value, scale if scale is not None else 1.0 / math.sqrt(head_dim))


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
