"""FP8 for the compiled blocks: whether this GPU can run it, and quantizing with torchao.

Decided inside the GPU function: on ZeroGPU the main process sees an emulated card.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, Float8Tensor, PerRow, PerTensor, quantize_


def fp8_unavailable(granularity: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """Why FP8 cannot run for weights on `device` in `dtype`, or None.

    Call it on the GPU: ZeroGPU emulates CUDA elsewhere.
    """
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    if device.type != "cuda":
        return f"the transformer is on {device.type}"
    if granularity == "row" and dtype != torch.bfloat16:  # torchao's per-row FP8 quantizes bf16 weights only
        return f"FP8 per-row needs bfloat16 weights, the transformer has {dtype}"
    needed = (9, 0) if granularity == "row" else (8, 9)  # per-row scaled matmul needs Hopper
    capability = torch.cuda.get_device_capability()
    if capability < needed:
        name = torch.cuda.get_device_name()
        return f"{name} has compute capability {capability}, FP8 per-{granularity} needs {needed}"
    return None


def is_fp8(module: torch.nn.Module) -> bool:
    return any(isinstance(p, Float8Tensor) for p in module.parameters())


def quantize_fp8_(module: torch.nn.Module, granularity: str, keep: Callable[[str], bool] | None = None) -> None:
    """Dynamic FP8 activations and FP8 weights for every linear layer (torchao), except those whose
    qualified name `keep` accepts."""
    scale = PerRow() if granularity == "row" else PerTensor()

    def quantized(layer: torch.nn.Module, name: str) -> bool:
        return isinstance(layer, torch.nn.Linear) and not (keep and keep(name))

    # torchao's default would also switch on coordinate-descent tuning for the whole process: compiles
    # 8x longer on the H200 for no faster steps, and outside the options the cache key records.
    quantize_(module, Float8DynamicActivationFloat8WeightConfig(granularity=scale, set_inductor_config=False),
              filter_fn=quantized)


def quantized_weight(weight: torch.Tensor, granularity: str) -> Float8Tensor:
    """`weight` (out, in) quantized exactly as `quantize_fp8_` quantizes a linear layer's weight.

    The same torchao call on a layer holding `weight`, so that re-quantizing an unchanged weight
    gives the same FP8 data and scales bit for bit (LoRA fusing relies on it to restore the base).
    """
    holder = torch.nn.Sequential(torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta"))
    holder[0].weight = torch.nn.Parameter(weight, requires_grad=False)
    quantize_fp8_(holder, granularity)
    return holder[0].weight
