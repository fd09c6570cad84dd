"""Where an AOTInductor compile spends its time: inclusive seconds in inductor's main stages.

    with compile_phases() as phases:
        optimization.compile_transformer(...)
    phases  # {"lowering": {"s": 12.3, "calls": 2}, ...}

Wraps a few inductor functions with timers for the duration of the block. Stages nest (the C++
build is inside the codegen pass), so the numbers do not add up to the total; a stage missing
from this torch version is skipped, not an error.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import time
from collections.abc import Iterator

# stage name: (module, attribute path) in torch._inductor
STAGES = {
    "torch.export": ("torch.export", "export"),
    "AOTInductor compile, total": ("torch._inductor", "aoti_compile_and_package"),
    "lowering (FX graph to inductor IR)": ("torch._inductor.graph", "GraphLowering.run"),
    "codegen, incl. the autotuning run": ("torch._inductor.graph", "GraphLowering.codegen_with_cpp_wrapper"),
    "scheduler (fusion decisions)": ("torch._inductor.scheduler", "Scheduler.__init__"),
    "waiting for Triton compiles": ("torch._inductor.async_compile", "AsyncCompile.wait"),
    "benchmarking kernel configs": ("torch._inductor.runtime.triton_heuristics", "CachingAutotuner.benchmark_all_configs"),
    "coordinate-descent tuning": ("torch._inductor.runtime.coordinate_descent_tuner", "CoordescTuner.autotune"),
    "C++ build of the library": ("torch._inductor.codecache", "AotCodeCompiler.compile"),
    "g++ runs": ("torch._inductor.cpp_builder", "CppBuilder.build"),
    "CPU vector-ISA probe": ("torch._inductor.cpu_vec_isa", "valid_vec_isa_list"),
    "packaging": ("torch._inductor.package", "package_aoti"),
}


@contextlib.contextmanager
def compile_phases() -> Iterator[dict[str, dict[str, float]]]:
    phases: dict[str, dict[str, float]] = {}
    patched = []
    for stage, (module_name, path) in STAGES.items():
        try:
            owner = importlib.import_module(module_name)
            *parents, name = path.split(".")
            for parent in parents:
                owner = getattr(owner, parent)
            original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        except (ImportError, AttributeError, KeyError):
            continue
        setattr(owner, name, _timed(original, phases.setdefault(stage, {"s": 0.0, "calls": 0})))
        patched.append((owner, name, original))
    try:
        yield phases
    finally:
        for owner, name, original in reversed(patched):
            setattr(owner, name, original)
        for stage in [s for s, p in phases.items() if not p["calls"]]:
            del phases[stage]


def _timed(original, record: dict[str, float]):
    unwrapped = original.__func__ if isinstance(original, (staticmethod, classmethod)) else original
    depth = [0]  # count a recursive or re-entrant call once

    @functools.wraps(unwrapped)
    def timed(*args, **kwargs):
        depth[0] += 1
        start = time.perf_counter()
        try:
            return unwrapped(*args, **kwargs)
        finally:
            depth[0] -= 1
            if not depth[0]:
                record["s"] += time.perf_counter() - start
                record["calls"] += 1

    if isinstance(original, staticmethod):
        return staticmethod(timed)
    if isinstance(original, classmethod):
        return classmethod(timed)
    return timed
