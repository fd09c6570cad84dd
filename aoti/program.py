"""A compiled program: the AOTInductor package plus the contract it was compiled for.

It holds no weights, pickles small (it is what crosses process boundaries) and is turned into
a callable runner by `load`. The weights are either bound by pointer at load time (constants)
or passed in at every call (`weights_as_inputs`, one program for many modules).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from .signature import Signature
from .toolchain import check_package


@dataclass(frozen=True)
class CompiledProgram:
    package: bytes  # the .pt2 archive: compiled library and metadata, no weights
    signature: Signature
    weight_names: tuple[str, ...]  # constants to bind, by fully qualified name
    compile_seconds: float = 0.0
    weights_as_inputs: bool = False  # called as runner(weights, args, kwargs); nothing bound at load

    def load(self, weights: Mapping[str, torch.Tensor] | None = None) -> torch._inductor.package.package.AOTICompiledModel:
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
            runner = torch._inductor.aoti_load_package(str(path))
        if weights is None:
            return runner
        runner.load_constants(
            {name: weights[name] for name in runner.get_constant_fqns()}, check_full_update=True, user_managed=True
        )
        return runner
