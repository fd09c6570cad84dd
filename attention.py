"""Pick the fastest attention backend that works here, inside the GPU function (plan.py says which to try).

Order on Hopper: FlashAttention-3 from the Hub's `kernels` (diffusers' `_flash_3_hub`; its kernels
are registered torch ops, so torch.export keeps each call as one op), then PyTorch's SDPA, which
on Hopper runs cuDNN's attention kernel (the fastest built-in there). Not diffusers'
`_native_cudnn`: it forces the same kernel but first copies q, k and v to contiguous memory, and
in the compiled graph that copy slows the fused FP8 quantization after attention (0.3-0.8% per
step on an H200, bench/NOTES.md). Elsewhere PyTorch's SDPA too. A backend that cannot be set up
(no network for the Hub download, no `kernels` package) falls through to the next.

Where the compiled transformer runs attention in FP8 through cuDNN (optimization.py decides), PyTorch's
SDPA comes first on Hopper too: those calls become cuDNN's FP8 kernel, 900 TFLOP/s on an H200
(bench/README.md), above what FA3 reaches in bf16 (up to 740 TFLOP/s on an H100, in its paper).
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

AUTO = "auto"
DEFAULT = "native"  # diffusers' name for torch's scaled_dot_product_attention
HOPPER_CHOICES = ("_flash_3_hub",)


def candidates(requested: str, flash_attention_3: bool = False) -> tuple[str, ...]:
    """Backends to try, best first; an explicit request is tried alone. `flash_attention_3`: the card runs FA3's
    kernels and attention stays bf16 (plan.ARCHITECTURES)."""
    if requested != AUTO:
        return (requested,)
    if flash_attention_3:
        return (*HOPPER_CHOICES, DEFAULT)
    return (DEFAULT,)


def set_attention_backend(module: torch.nn.Module, requested: str, flash_attention_3: bool = False) -> str:
    """Set the first working backend of `candidates(...)` on a diffusers model; return its name."""
    errors = []
    for backend in candidates(requested, flash_attention_3):
        try:
            module.set_attention_backend(backend)
            if errors:
                log.info("attention: %s (%s)", backend, "; ".join(errors))
            return backend
        except Exception as error:  # ImportError, download failure, unknown name: try the next one
            errors.append(f"{backend} unavailable: {type(error).__name__}: {error}")
    raise RuntimeError(f"no attention backend could be set: {'; '.join(errors)}")
