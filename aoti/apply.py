"""Stage 4: patch compiled programs into modules, keeping one copy of their weights."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .dispatch import CompiledForward, Runners
from .program import CompiledProgram
from .weights import drop_weights, named_weights, unwrapped_subclasses


def apply(
    module: torch.nn.Module | Sequence[torch.nn.Module],
    programs: CompiledProgram | Sequence[CompiledProgram],
    method: str = "forward",
) -> CompiledForward | list[CompiledForward]:
    """Make `module.<method>` run the compiled programs, bound to the module's own weights.

    The weights move from the module to the returned `CompiledForward` (no copy); the module
    keeps empty placeholders of the same dtype and device, so `module.dtype`, `.device` and
    `.config` still read as before. The programs load lazily, on the first call.

    Given a list of modules of one structure (FLUX's repeated blocks), programs compiled with
    weights as inputs are loaded once and shared; each module calls them with its own weights.
    """
    programs = [programs] if isinstance(programs, CompiledProgram) else list(programs)
    if isinstance(module, torch.nn.Module):
        weights = _take_weights(module, programs, method)
        return _bind(module, CompiledForward(Runners(programs, weights), weights), method)
    if not all(p.weights_as_inputs for p in programs):
        raise ValueError("several modules can share only programs compiled with weights_as_inputs=True")
    runners = Runners(programs)
    taken = [_take_weights(m, programs, method) for m in module]  # check every module before changing any
    return [_bind(m, CompiledForward(runners, weights), method) for m, weights in zip(module, taken)]


def _take_weights(module: torch.nn.Module, programs: list[CompiledProgram], method: str) -> dict[str, torch.Tensor]:
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
    return {name: weights[name] for name in needed}


def _bind(module: torch.nn.Module, compiled: CompiledForward, method: str) -> CompiledForward:
    drop_weights(module)
    setattr(module, method, compiled)
    return compiled
