"""Where each linear layer's weight lives once a transformer is compiled: the tensors to write a LoRA into.

A compiled block's weights moved to its `CompiledForward.weights` (the module keeps empty
placeholders), as plain tensors or, with FP8, as the FP8 data and scales of torchao's
Float8Tensor; the programs, and the CUDA graphs that replay them, read those tensors by
address. Layers outside the compiled modules (embedders, final projection, text encoder) keep
their parameters. Writing into any of these in place changes what the next step computes,
with no recompilation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from aoti import CompiledForward
from fp8_kernels.rope_pairs import ROW_ORDER

FP8_DATA, FP8_SCALE = "parametrizations.weight.original0", "parametrizations.weight.original1"  # aoti/weights.py


@dataclass(frozen=True)
class Slot:
    """A linear layer's live weight: `weight`, or `qdata` and `scale` when it is FP8; and its bias."""

    layer: str  # "transformer.transformer_blocks.0.attn.to_q"
    shape: tuple[int, int]  # (out_features, in_features)
    weight: torch.Tensor | None = None
    qdata: torch.Tensor | None = None
    scale: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    rows: torch.Tensor | None = None  # stored row i is the layer's row rows[i] (fp8_kernels/rope_pairs.py); None: in order

    @property
    def fp8(self) -> bool:
        return self.qdata is not None

    @property
    def live(self) -> torch.Tensor:
        """The tensor a program reads for the weight (FP8: its data)."""
        return self.qdata if self.fp8 else self.weight


def compiled_forward(module: torch.nn.Module) -> CompiledForward | None:
    """The CompiledForward that replaced `module.forward` (possibly inside aoti.CUDAGraphs), or None."""
    forward = module.__dict__.get("forward")
    forward = getattr(forward, "fn", forward)  # CUDAGraphs keeps the function it replays as .fn
    return forward if isinstance(forward, CompiledForward) else None


def find_slots(roots: Mapping[str, torch.nn.Module]) -> dict[str, Slot]:
    """Every linear layer under `roots` (e.g. {"transformer": ..., "text_encoder": ...}), by prefixed name."""
    slots = {}
    for root_name, root in roots.items():
        compiled = []  # names of compiled modules: their layers are found in their CompiledForward
        for name, module in root.named_modules():
            prefix = f"{root_name}.{name}" if name else root_name
            if any(name == c or name.startswith(f"{c}.") or c == "" for c in compiled):
                continue
            forward = compiled_forward(module)
            if forward is not None:
                compiled.append(name)
                slots.update(_compiled_slots(prefix, module, forward.weights))
            elif isinstance(module, torch.nn.Linear):
                if is_traceable_wrapper_subclass(module.weight):
                    raise ValueError(f"{prefix} is quantized outside a compiled module: LoRA fusing does not handle it")
                slots[prefix] = Slot(prefix, (module.out_features, module.in_features), weight=module.weight, bias=module.bias,
                                     rows=getattr(module, ROW_ORDER, None))
    return slots


def _compiled_slots(prefix: str, module: torch.nn.Module, weights: Mapping[str, torch.Tensor]) -> dict[str, Slot]:
    slots = {}
    for name, layer in module.named_modules():
        if not isinstance(layer, torch.nn.Linear):
            continue
        layer_name = f"{prefix}.{name}" if name else prefix
        shape, bias, rows = (layer.out_features, layer.in_features), weights.get(f"{name}.bias"), getattr(layer, ROW_ORDER, None)
        if f"{name}.weight" in weights:
            slots[layer_name] = Slot(layer_name, shape, weight=weights[f"{name}.weight"], bias=bias, rows=rows)
        elif f"{name}.{FP8_DATA}" in weights:
            slots[layer_name] = Slot(
                layer_name, shape, qdata=weights[f"{name}.{FP8_DATA}"], scale=weights[f"{name}.{FP8_SCALE}"], bias=bias,
                rows=rows,
            )
    return slots
