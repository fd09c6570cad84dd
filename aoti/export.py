"""Stage 2: torch.export of a captured call, with named dynamic axes."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from .capture import CapturedCall
from .signature import DynamicAxes, Signature
from .weights import unwrapped_subclasses


@dataclass(frozen=True)
class Exported:
    program: torch.export.ExportedProgram
    signature: Signature


def export(module: torch.nn.Module, call: CapturedCall, dynamic: DynamicAxes | None = None) -> Exported:
    """Export `module.forward` for calls like `call`, with `dynamic` axes free within their range.

    Every non-tensor argument (flags, None, empty dicts) is frozen into the graph; the returned
    signature makes a later call with another value fail instead of silently running this one.
    """
    if not call.captured:
        raise ValueError("the call has not been captured yet")
    signature = Signature.from_call(call, dynamic)
    arg_shapes, kwarg_shapes = signature.export_dynamic_shapes(call.args, call.kwargs)
    # torch.export wants the specs keyed by parameter name, positional arguments included.
    names = list(inspect.signature(module.forward).parameters)
    dynamic_shapes = {**dict(zip(names, arg_shapes)), **kwarg_shapes}
    with unwrapped_subclasses(module):
        program = torch.export.export(
            module, tuple(call.args), dict(call.kwargs), dynamic_shapes=dynamic_shapes, strict=False
        )
    lifted = program.graph_signature.lifted_tensor_constants
    if lifted:
        # Such tensors are neither parameters nor buffers, so nothing could bind them later.
        raise ValueError(
            f"{type(module).__name__}.forward creates tensor constants {lifted[:3]}: register them as buffers"
        )
    return Exported(program, signature)
