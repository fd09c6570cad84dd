"""Runtime: pick the compiled program that accepts a call, load it lazily, run it."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from .program import CompiledProgram


class Runners:
    """The loaded runners of some programs, made on first use in each process.

    A runner must not cross a fork (ZeroGPU runs requests in forked workers), so it is reloaded
    when the process id changes and dropped when pickled. Programs that bind their weights as
    constants bind `constants`; programs that take their weights as inputs load once and serve
    every module that shares this object (pickling keeps the sharing within one pickle).
    """

    def __init__(self, programs: Sequence[CompiledProgram], constants: Mapping[str, torch.Tensor] | None = None):
        if not programs:
            raise ValueError("no compiled program given")
        if constants is None and not all(p.weights_as_inputs for p in programs):
            raise ValueError("programs that bind their weights as constants need the weights to bind")
        self.programs = tuple(programs)
        self.constants = constants
        self._loaded: dict[int, Any] = {}
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def __getitem__(self, index: int) -> Any:
        with self._lock:
            if self._pid != os.getpid():
                self._loaded, self._pid = {}, os.getpid()
            if index not in self._loaded:
                program = self.programs[index]
                self._loaded[index] = program.load(None if program.weights_as_inputs else self.constants)
            return self._loaded[index]

    def __getstate__(self) -> dict[str, Any]:
        return {"programs": self.programs, "constants": self.constants}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["programs"], state["constants"])


class CompiledForward:
    """Callable that replaces a module's forward with one or more compiled programs.

    Programs are tried in order (put static, per-shape programs before a dynamic one); the first
    whose signature accepts the call runs, with this module's weights: the only copy in memory.
    A call none accepts raises their ValueError, or with `fallback` (the module's own forward) runs that.
    """

    def __init__(self, runners: Runners, weights: Mapping[str, torch.Tensor], fallback: Callable[..., Any] | None = None):
        self.runners = runners
        self.weights = dict(weights)
        self.fallback = fallback
        # Per program: the leading weight inputs, in the order it was exported with ([]: bound at load).
        self._inputs = [[self.weights[n] for n in p.weight_names] if p.weights_as_inputs else [] for p in runners.programs]

    @property
    def programs(self) -> tuple[CompiledProgram, ...]:
        return self.runners.programs

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            index, tensors = self.select(args, kwargs)
        except ValueError:
            if self.fallback is None:
                raise
            return self.fallback(*args, **kwargs)
        return self.runners[index]([*self._inputs[index], *tensors])

    def accepts(self, *args: Any, **kwargs: Any) -> bool:
        """Whether one of the programs accepts this call."""
        try:
            self.select(args, kwargs)
        except ValueError:
            return False
        return True

    def select(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> tuple[int, list[torch.Tensor]]:
        """The first program that accepts the call and the call's tensors in its order; else the last ValueError."""
        for index, program in enumerate(self.programs):
            try:
                return index, program.signature.check(args, kwargs)
            except ValueError as error:
                rejection = error
        raise rejection

    def __getstate__(self) -> dict[str, Any]:
        return {"runners": self.runners, "weights": self.weights, "fallback": self.fallback}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["runners"], state["weights"], state["fallback"])
