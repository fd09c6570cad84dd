"""A compiled program: the AOTInductor package plus the contract it was compiled for.

It holds no weights, pickles small (it is what crosses process boundaries) and is turned into
a callable runner by `load`, which binds live weight tensors by pointer.
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

    def load(self, weights: Mapping[str, torch.Tensor]) -> torch._inductor.package.package.AOTICompiledModel:
        """Load the package in this process and bind `weights` without copying them.

        The caller must keep the tensors alive as long as the runner is used.
        """
        missing = sorted(set(self.weight_names) - set(weights))
        if missing:
            raise ValueError(f"{len(missing)} weights the program needs are missing, e.g. {missing[:3]}")
        check_package(self.package)
        with tempfile.TemporaryDirectory(prefix="aoti-load-") as tmp:
            path = Path(tmp) / "program.pt2"
            path.write_bytes(self.package)
            runner = torch._inductor.aoti_load_package(str(path))
        runner.load_constants(
            {name: weights[name] for name in runner.get_constant_fqns()}, check_full_update=True, user_managed=True
        )
        return runner
