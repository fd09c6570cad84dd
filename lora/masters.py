"""Unquantized copies of the layers a LoRA may change: what every fused weight is computed from.

A LoRA is always fused into these, never into live weights: FP8 weights cannot take a LoRA
without losing precision at every switch, and restoring the base must give it back exactly.

With FP8 the masters must be taken before the transformer is quantized: `keep_masters` holds on
to the original weights (no copy) before `optimize_pipeline_`, and they outlive the swap to FP8.
Without FP8 the compiled programs read the original weights themselves, so a layer's master is
copied from it the first time a LoRA targets it (`LoraFuser` does that).
"""

from __future__ import annotations

import logging

import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

log = logging.getLogger(__name__)

GPU_RESERVE = 4 << 30  # bytes of GPU memory left free for activations when masters stay on the GPU


def keep_masters(transformer: torch.nn.Module, root: str = "transformer") -> dict[str, torch.Tensor]:
    """References to every linear layer's weight, by prefixed layer name: call before `optimize_pipeline_`."""
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


def master_device(tensor: torch.device | torch.Tensor, nbytes: int) -> torch.device:
    """Where to keep `nbytes` of masters for weights on `tensor`'s device: that GPU while it has room, else host."""
    device = tensor.device if isinstance(tensor, torch.Tensor) else torch.device(tensor)
    if device.type != "cuda" or not torch.cuda.is_initialized():  # ZeroGPU's main process only emulates CUDA
        return torch.device("cpu")
    free, _ = torch.cuda.mem_get_info(device)
    return device if free > nbytes + GPU_RESERVE else torch.device("cpu")


def settle(masters: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`masters` moved to host memory when the GPU they are on lacks room for them (or is only emulated, as in
    ZeroGPU's main process)."""
    on_gpu = [t for t in masters.values() if t.device.type == "cuda"]
    if not on_gpu:
        return masters
    # They are already on the GPU: what is free now is what is left beside them, so they need no more.
    if master_device(on_gpu[0], 0) != on_gpu[0].device:
        log.info("LoRA masters: %.1f GB moved to host memory", sum(t.nbytes for t in on_gpu) / 1e9)
        return {name: t.to("cpu") for name, t in masters.items()}
    return masters
