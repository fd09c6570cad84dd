"""Unquantized copies of the layers a LoRA may change: what every fused weight is computed from.

A LoRA is always fused into these, never into live weights: FP8 weights cannot take a LoRA
without losing precision at every switch, and restoring the base must give it back exactly.

`keep_masters` holds on to the loaded weights (no copy) before the pipeline moves to the GPU and before
`optimize_pipeline_` quantizes: they stay in host memory, so the GPU never holds the unquantized weights
beside the FP8 ones (FLUX.1-dev: 24 GB beside 12; on a 48 GB card that would not fit). The plan says whether
the card has room to keep them after startup (`Plan.fits_beside`): then they move to the GPU once and a LoRA
switch copies nothing from the host; else each switch copies the layers it writes, one at a time.
Without FP8 the compiled programs read the original weights themselves, so a layer's master is
copied from it the first time a LoRA targets it (`LoraFuser` does that).
"""

from __future__ import annotations

import logging

import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

log = logging.getLogger(__name__)


def keep_masters(transformer: torch.nn.Module, root: str = "transformer") -> dict[str, torch.Tensor]:
    """References to every linear layer's weight, by prefixed layer name: call before the pipeline moves to the GPU
    and before `optimize_pipeline_`."""
    masters = {}
    for name, module in transformer.named_modules():
        if isinstance(module, torch.nn.Linear):
            weight = module.weight
            if is_traceable_wrapper_subclass(weight) or weight.numel() == 0:
                raise ValueError(
                    f"{root}.{name} is already quantized or compiled: keep the masters before optimize_pipeline_"
                )
            masters[f"{root}.{name}"] = weight.detach()
    return masters


def master_device(device: torch.device, on_gpu: bool) -> torch.device:
    """Where masters of weights on `device` are kept: that GPU where the plan leaves room for them (`on_gpu`) and this
    process really holds it (ZeroGPU's main process only emulates CUDA), else host memory."""
    if on_gpu and device.type == "cuda" and torch.cuda.is_initialized():
        return device
    return torch.device("cpu")


def settle(masters: dict[str, torch.Tensor], device: torch.device, on_gpu: bool) -> dict[str, torch.Tensor]:
    """`masters` moved to `master_device(device, on_gpu)`."""
    target = master_device(device, on_gpu)
    moving = sum(t.nbytes for t in masters.values() if t.device != target)
    if moving:
        log.info("LoRA masters: %.1f GB moved to %s memory", moving / 1e9, "GPU" if target.type == "cuda" else "host")
    return {name: t.to(target) for name, t in masters.items()}
