"""The inductor options a compile uses, and why each default is what it is.

The defaults (`OptimizationConfig.inductor_configs`) are flux-fast's recipe minus its coordinate-descent
tuning: on the H200 that made the FP8 compile 249 s instead of 29 s for no faster steps (bench/NOTES.md).
- `conv_1x1_as_mm` on, `epilogue_fusion` off: flux-fast's settings.
- `split_reductions` off: one kernel finds each row's FP8 scale and casts the row, instead of a
  reduction in 30 chunks and a separate cast (per-tensor scales keep the split, see below).
- `aot_inductor.compile_wrapper_opt_level` "O0": the host wrapper that launches the kernels built at -O0,
  not -O1: the FP8 compile took 6-15% less on the H200 for the same step time, for a package of 5 MB
  instead of 2.4 (bench/NOTES.md, session 9).

`persistent_rows` widens inductor's persistent reductions (one program holds a whole row) from rows of 1024
elements to `OptimizationConfig.persistent_reductions_up_to`: inductor's choices handler is its documented
place for such heuristics. Above its limit inductor loops over each row two or three times; FLUX's LayerNorms
and per-row FP8 scales run over 3072 channels. Not with per-tensor FP8 scales: there the handler turned the
single blocks' whole-activation amax into one persistent kernel of 25 ms per block on an H100, against 0.2 ms
looped (bench/NOTES.md).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch._inductor import config as inductor_config
from torch._inductor.choices import InductorChoices
from torch._inductor.runtime.hints import ReductionHint
from torch._inductor.virtualized import V

import aoti
from config import INDUCTOR_PERSISTENT_ROWS, OptimizationConfig


def compiler_options(config: OptimizationConfig, fp8: str | None) -> dict[str, Any]:
    """`config.inductor_configs` as compiled for FP8 GEMMs `fp8` ("row", "tensor" or None: the plan's, plan.py).

    A per-tensor FP8 scale reduces a whole activation: unsplit, that would run in one thread block.
    """
    if fp8 == "tensor":
        return {**config.inductor_configs, "split_reductions": True}
    return dict(config.inductor_configs)


class _PersistentRows(InductorChoices):
    def __init__(self, up_to: int):
        super().__init__()
        self.up_to = up_to

    def should_use_persistent_reduction(self, features, cooperative_reduction: bool) -> bool:
        if (not cooperative_reduction and features.get_reduction_hint() == ReductionHint.INNER
                and V.graph.sizevars.statically_known_leq(features.reduction_numel, self.up_to)):
            return True
        return super().should_use_persistent_reduction(features, cooperative_reduction)


def persistent_rows_up_to(config: OptimizationConfig, fp8: str | None) -> int:
    """The widest rows reduced in one pass with FP8 GEMMs `fp8` (the plan's): inductor's own limit per tensor."""
    return INDUCTOR_PERSISTENT_ROWS if fp8 == "tensor" else config.persistent_reductions_up_to


@contextmanager
def persistent_rows(config: OptimizationConfig, device: torch.device, fp8: str | None) -> Iterator[None]:
    """Within: inductor reduces rows of up to `persistent_rows_up_to` elements in one pass on `device` (GPUs: its
    C++ kernels for the CPU have no persistent reductions, and keep the FX graph cache)."""
    up_to = persistent_rows_up_to(config, fp8)
    if up_to <= INDUCTOR_PERSISTENT_ROWS or device.type != "cuda":
        yield
        return
    # Inductor's FX graph cache keys on its config, not on the choices handler: off, so that a graph compiled
    # earlier in this process without the handler is not reused.
    with V.set_choices_handler(_PersistentRows(up_to)), inductor_config.patch(fx_graph_cache=False):
        yield


# The code that decides what a compiled program holds (what is exported, how it is prepared and compiled): its digest
# is in every program's cache key, so an edit to it is compiled again rather than served a stale program.
COMPILED_CODE = ("aoti", "fp8_kernels", "fp8.py", "attention.py", "compile_options.py", "optimization.py", "vae.py")


@functools.cache
def code_version() -> str:
    return aoti.cache.source_digest(Path(__file__).resolve().parent, COMPILED_CODE)
