"""FP8 for the compiled blocks: quantizing with torchao. Whether the card runs it, and at which granularity, is the
plan's decision (plan.py)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, Float8Tensor, PerRow, PerTensor, quantize_


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
