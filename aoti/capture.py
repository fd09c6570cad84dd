"""Stage 1: record the arguments of a module's next call, without running it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch


class CaptureError(RuntimeError):
    """The captured method was never called."""


class _Captured(BaseException):
    # BaseException, so that a pipeline's own `except Exception` cannot swallow the stop.
    pass


@dataclass
class CapturedCall:
    """The positional and keyword arguments of one call, exactly as passed."""

    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] | None = None

    @property
    def captured(self) -> bool:
        return self.kwargs is not None


@contextlib.contextmanager
def capture(module: torch.nn.Module, method: str = "forward") -> Iterator[CapturedCall]:
    """Intercept the next `module.<method>(...)` call inside the block.

    The call is recorded and the surrounding code (a whole pipeline call) is stopped right
    there, so the module never runs. The method is restored on exit, also on error.

        with capture(pipe.transformer) as call:
            pipe(prompt="a cat", num_inference_steps=1)
        call.args, call.kwargs
    """
    call = CapturedCall()
    shadowed = method in vars(module)  # an instance attribute we must put back, not delete
    original = vars(module).get(method)

    def intercept(*args: Any, **kwargs: Any) -> Any:
        call.args, call.kwargs = args, kwargs
        raise _Captured

    setattr(module, method, intercept)
    try:
        yield call
    except _Captured:
        pass
    finally:
        if shadowed:
            setattr(module, method, original)
        else:
            delattr(module, method)
    if not call.captured:
        raise CaptureError(
            f"{type(module).__name__}.{method} was not called inside the capture block: "
            "run the code that calls it (e.g. one pipeline call) inside `with capture(...)`."
        )
