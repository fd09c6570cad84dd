"""A compiled program: the AOTInductor package plus the contract it was compiled for.

It holds no weights, pickles small (it is what crosses process boundaries) and is turned into
a callable runner by `load`. The weights are either bound by pointer at load time (constants)
or passed in at every call (`weights_as_inputs`, one program for many modules).
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.utils._pytree as pytree

from .signature import Signature
from .toolchain import check_package


@dataclass(frozen=True)
class CompiledProgram:
    package: bytes  # the .pt2 archive: compiled library and metadata, no weights
    signature: Signature
    weight_names: tuple[str, ...]  # constants to bind, by fully qualified name
    compile_seconds: float = 0.0
    weights_as_inputs: bool = False  # the weights are its leading inputs at every call; nothing bound at load

    def load(self, weights: Mapping[str, torch.Tensor] | None = None) -> Runner:
        """Load the package in this process and bind `weights` without copying them.

        The caller must keep the tensors alive as long as the runner is used. A program that
        takes its weights as inputs binds nothing: pass no weights.
        """
        if self.weights_as_inputs != (weights is None):
            raise ValueError("pass weights to load exactly when the program binds them as constants")
        missing = sorted(set(self.weight_names) - set(weights)) if weights is not None else []
        if missing:
            raise ValueError(f"{len(missing)} weights the program needs are missing, e.g. {missing[:3]}")
        check_package(self.package)
        with tempfile.TemporaryDirectory(prefix="aoti-load-") as tmp:
            path = Path(tmp) / "program.pt2"
            path.write_bytes(self.package)
            # The C++ loader itself: `aoti_load_package` probes the CPU's vector ISA (tens of seconds
            # in a fresh process on some machines) only to warn about a device mismatch that the
            # cache fingerprint already rules out, and its Python wrapper moves between releases.
            # Single-threaded: the default mode waits for the previous call's GPU work before
            # starting the next (an event sync per call), which stalls FLUX's 57 per-block calls;
            # Runner serializes calls instead.
            loader = torch._C._aoti.AOTIModelPackageLoader(str(path), "model", True, 1, -1)
        if weights is not None:
            bound = {name: weights[name] for name in loader.get_constant_fqns()}
            loader.load_constants(bound, False, True, True)  # active buffer, check full update, user-managed
        return Runner(loader)


class Runner:
    """A loaded program, called with its flat input tensors; returns the output tree."""

    def __init__(self, loader: torch._C._aoti.AOTIModelPackageLoader):
        self.loader = loader
        self._out_spec = pytree.treespec_loads(self.loader.get_call_spec()[1])  # parsed once, not per call
        self._lock = threading.Lock()

    def __call__(self, flat_inputs: list[torch.Tensor]) -> Any:
        with self._lock:  # loaded single-threaded: one call at a time
            outputs = self.loader.boxed_run(flat_inputs)
        return pytree.tree_unflatten(outputs, self._out_spec)
