"""Stage 4: patch compiled programs into modules, keeping one copy of their weights."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial

import torch

from .dispatch import CompiledForward, Runners
from .program import CompiledProgram
from .weights import drop_weights, named_weights, unwrapped_subclasses


def apply(
    module: torch.nn.Module | Sequence[torch.nn.Module],
    programs: CompiledProgram | Sequence[CompiledProgram],
    method: str = "forward",
    weights: Mapping[str, torch.Tensor] | Sequence[Mapping[str, torch.Tensor]] | None = None,
    eager_fallback: bool = False,
) -> CompiledForward | list[CompiledForward]:
    """Make `module.<method>` run the compiled programs, bound to the module's own weights.

    The weights move from the module to the returned `CompiledForward` (no copy); the module
    keeps empty placeholders of the same dtype and device, so `module.dtype`, `.device` and
    `.config` still read as before. The programs load lazily, on the first call.

    Given a list of modules of one structure (FLUX's repeated blocks), programs compiled with
    weights as inputs are loaded once and shared; each module calls them with its own weights.

    `weights` (one mapping per module, as `program_weights` returns them) binds those tensors
    instead: the module's own are dropped. For weights prepared in another process, such as a
    transformer quantized in ZeroGPU's GPU worker, so this process need not prepare its own copy.

    `eager_fallback=True` runs the module's own `method` for calls no program accepts, instead of
    raising; the module then keeps its weights too (the same tensors, still no copy).
    """
    programs = [programs] if isinstance(programs, CompiledProgram) else list(programs)
    single = isinstance(module, torch.nn.Module)
    modules = [module] if single else list(module)
    given = [weights] if single and weights is not None else weights
    if given is not None and len(given) != len(modules):
        raise ValueError(f"{len(given)} weight mappings given for {len(modules)} modules")
    if not single and not all(p.weights_as_inputs for p in programs):
        raise ValueError("several modules can share only programs compiled with weights_as_inputs=True")
    for m in modules:
        if isinstance(getattr(m, method, None), CompiledForward):
            raise ValueError(f"{type(m).__name__}.{method} is already compiled")
    # Every module is checked before any is changed.
    taken = [_needed(programs, w) for w in given] if given is not None else [program_weights(m, programs) for m in modules]
    if single:
        return _bind(module, Runners(programs, taken[0]), taken[0], method, eager_fallback)
    runners = Runners(programs)
    return [_bind(m, runners, w, method, eager_fallback) for m, w in zip(modules, taken)]


def program_weights(module: torch.nn.Module, programs: Sequence[CompiledProgram]) -> dict[str, torch.Tensor]:
    """The tensors of `module` that `programs` read, by the names they were compiled with (no copy)."""
    with unwrapped_subclasses(module):
        return _needed(programs, named_weights(module))


def _needed(programs: Sequence[CompiledProgram], weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    needed = {name for program in programs for name in program.weight_names}
    missing = sorted(needed - set(weights))
    if missing:
        raise ValueError(
            f"the module lacks {len(missing)} weights the program was compiled with, e.g. {missing[:3]} "
            "(was it compiled from a differently quantized or configured model?)"
        )
    return {name: weights[name] for name in needed}


def _bind(
    module: torch.nn.Module, runners: Runners, weights: Mapping[str, torch.Tensor], method: str, eager_fallback: bool
) -> CompiledForward:
    fallback = partial(getattr(type(module), method), module) if eager_fallback else None
    if not eager_fallback:
        drop_weights(module)
    compiled = CompiledForward(runners, weights, fallback)
    setattr(module, method, compiled)
    return compiled
