"""Stage 3: AOTInductor compile of an exported program into a package without weights."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .export import Exported
from .program import CompiledProgram
from .toolchain import check_package, clear_executable_stack

# The package must not carry the weights: they stay in the live module and are bound by
# pointer at load time (megabytes to ship instead of gigabytes, and no second copy).
REQUIRED_INDUCTOR_CONFIGS = {
    "aot_inductor.package_constants_in_so": False,
    # Inductor would otherwise inline small 1-D constants into the library, out of reach of binding.
    "always_keep_tensor_constants": True,
}
# A graph without CPU tensors has no CPU kernels, yet inductor still probes the CPU's vector ISA
# by building a test program per ISA: 52-60 s of a regional FP8 compile on the H200 machine.
WITHOUT_CPU_KERNELS = {"cpp.vec_isa_ok": False}


def _device_types(program: torch.export.ExportedProgram) -> set[str]:
    """The devices of the program's inputs (weights included)."""
    return {
        node.meta["val"].device.type
        for node in program.graph.nodes
        if node.op == "placeholder" and isinstance(node.meta.get("val"), torch.Tensor)
    }


def compile(exported: Exported, inductor_configs: Mapping[str, Any] | None = None) -> CompiledProgram:
    """Compile with AOTInductor; `inductor_configs` are torch._inductor.config options as data."""
    skips = WITHOUT_CPU_KERNELS if "cpu" not in _device_types(exported.program) else {}
    configs = {**skips, **(inductor_configs or {}), **REQUIRED_INDUCTOR_CONFIGS}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="aoti-") as tmp:
        path = torch._inductor.aoti_compile_and_package(
            exported.program, package_path=str(Path(tmp) / "program.pt2"), inductor_configs=configs
        )
        package = clear_executable_stack(Path(path).read_bytes())  # else glibc 2.41+ refuses to load it
    check_package(package)  # fail here, with the fix, rather than segfault at load time
    return CompiledProgram(
        package=package,
        signature=exported.signature,
        weight_names=exported.weight_names,
        compile_seconds=time.perf_counter() - start,
        weights_as_inputs=exported.weights_as_inputs,
    )
