"""Kernels for the FP8 blocks, as torch.library ops: torch.export keeps each as one op, and AOTInductor
compiles a Triton op's kernel into the program or calls a custom op from it. Each op's CPU path is the
same math in torch ops, so export, compile and tests run on machines without a GPU.

- `quantize`: the single blocks' GELU + concat + per-row FP8 quantization in one pass (Triton), and the
  double blocks' feed-forward GELU + quantization;
- `cudnn_attention`: attention through cuDNN's FP8 flash attention, per-tensor scales (static ones for q
  and k by default);
- `flux_attention`: diffusers' FLUX attention processor with q and k cast to FP8 under static scales;
- `rope_pairs`: q and k's channels reordered once so that RoPE's pairs lie half a head apart, the layout
  the compiled graph rotates fastest;
- `attention`: the export-time swap of SDPA for cuDNN's FP8 attention;
- `blocks`: how FLUX's blocks use them.
"""

from .attention import scaled_dot_product_attention_fp8, sdpa_as_fp8
from .blocks import fuse_feed_forward_quantization_, fuse_single_block_quantization_
from .cudnn_attention import cudnn_fp8_attention
from .quantize import gelu_cat_quantize, gelu_quantize

__all__ = [
    "cudnn_fp8_attention", "fuse_feed_forward_quantization_", "fuse_single_block_quantization_",
    "gelu_cat_quantize", "gelu_quantize",
    "scaled_dot_product_attention_fp8", "sdpa_as_fp8",
]
