"""Triton kernels for the FP8 blocks, as `torch.library.triton_op`s: torch.export keeps each as one op
and AOTInductor compiles the kernel into the program. Each op's CPU path is the same math in torch
ops, so export, compile and tests run on machines without a GPU.

- `quantize`: the single blocks' GELU + concat + per-row FP8 quantization in one pass;
- `attention`: attention with FP8 q, k, v (per-head scales) in place of bf16 SDPA;
- `blocks`: how FLUX's blocks use them.
"""

from .attention import fp8_attention, scaled_dot_product_attention_fp8, sdpa_as_fp8
from .blocks import fuse_single_block_quantization_
from .quantize import gelu_cat_quantize

__all__ = [
    "fp8_attention", "fuse_single_block_quantization_", "gelu_cat_quantize", "scaled_dot_product_attention_fp8",
    "sdpa_as_fp8",
]
