"""Stage 4: patch compiled programs into a module, keeping one copy of its weights."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .dispatch import CompiledForward
from .program import CompiledProgram
from .weights import drop_weights, named_weights, unwrapped_subclasses


def apply(
    module: torch.nn.Module, programs: CompiledProgram | Sequence[CompiledProgram], method: str = "forward"
) -> CompiledForward:
    """Make `module.<method>` run the compiled programs, bound to the module's own weights.

    The weights move from the module to the returned `CompiledForward` (no copy); the module
    keeps empty placeholders of the same dtype and device, so `module.dtype`, `.device` and
    `.config` still read as before. The programs load lazily, on the first call.
    """
    programs = [programs] if isinstance(programs, CompiledProgram) else list(programs)
    if isinstance(getattr(module, method, None), CompiledForward):
        raise ValueError(f"{type(module).__name__}.{method} is already compiled")
    with unwrapped_subclasses(module):
        weights = named_weights(module)
    needed = {name for program in programs for name in program.weight_names}
    missing = sorted(needed - set(weights))
    if missing:
        raise ValueError(
            f"the module lacks {len(missing)} weights the program was compiled with, e.g. {missing[:3]} "
            "(was it compiled from a differently quantized or configured model?)"
        )
    compiled = CompiledForward(programs, {name: weights[name] for name in needed})
    drop_weights(module)
    setattr(module, method, compiled)
    return compiled
