"""Runtime: pick the compiled program that accepts a call, load it lazily, run it."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .program import CompiledProgram


class CompiledForward:
    """Callable that replaces a module's forward with one or more compiled programs.

    Programs are tried in order (put static, per-shape programs before a dynamic one); the first
    whose signature accepts the call runs. All of them bind the same weight tensors, the only
    copy in memory. Runners load on first use in each process: a runner must not cross a fork
    (ZeroGPU runs requests in forked workers), so it is reloaded when the process id changes
    and dropped when pickled.
    """

    def __init__(self, programs: Sequence[CompiledProgram], weights: Mapping[str, torch.Tensor]):
        if not programs:
            raise ValueError("no compiled program given")
        self.programs = tuple(programs)
        self.weights = dict(weights)
        self._runners: dict[int, Any] = {}
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        index = self.select(args, kwargs)
        return self._runner(index)(*args, **kwargs)

    def select(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> int:
        """Index of the first program that accepts the call; the last program's ValueError otherwise."""
        for index, program in enumerate(self.programs):
            try:
                program.signature.check(args, kwargs)
                return index
            except ValueError as error:
                rejection = error
        raise rejection

    def _runner(self, index: int) -> Any:
        with self._lock:
            if self._pid != os.getpid():
                self._runners, self._pid = {}, os.getpid()
            if index not in self._runners:
                self._runners[index] = self.programs[index].load(self.weights)
            return self._runners[index]

    def __getstate__(self) -> dict[str, Any]:
        return {"programs": self.programs, "weights": self.weights}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["programs"], state["weights"])
