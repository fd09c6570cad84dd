"""Stage 2: torch.export of a captured call, with named dynamic axes, and identical computations merged."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._pytree import tree_flatten

from .capture import CapturedCall
from .signature import DynamicAxes, Signature
from .weights import named_weights, unwrapped_subclasses


@dataclass(frozen=True)
class Exported:
    program: torch.export.ExportedProgram
    signature: Signature
    weight_names: tuple[str, ...]  # the constants to bind, or the keys of the weights argument
    weights_as_inputs: bool = False  # the program's first argument is the weights, by name


class _Stateless(torch.nn.Module):
    """`module` with its weights passed in at every call instead of owned.

    One such program serves many modules of the same structure (FLUX's 57 blocks), each
    calling it with its own weights.
    """

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self._module = [module]  # in a list: not a submodule, so export lifts no parameters

    def forward(self, weights: dict[str, torch.Tensor], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return torch.func.functional_call(self._module[0], weights, args, kwargs, strict=True)


def export(
    module: torch.nn.Module, call: CapturedCall, dynamic: DynamicAxes | None = None, *, weights_as_inputs: bool = False,
    merge: bool = True,
) -> Exported:
    """Export `module.forward` for calls like `call`, with `dynamic` axes free within their range.

    Every non-tensor argument (flags, None, empty dicts) is frozen into the graph; the returned
    signature makes a later call with another value fail instead of silently running this one.
    With `weights_as_inputs`, the weights become the program's first argument instead of
    constants bound at load time (see `_Stateless`). With `merge`, repeated pure calls run once
    (`merge_duplicates`).
    """
    if not call.captured:
        raise ValueError("the call has not been captured yet")
    signature = Signature.from_call(call, dynamic)
    arg_shapes, kwarg_shapes = signature.export_dynamic_shapes(call.args, call.kwargs)
    with unwrapped_subclasses(module):
        if weights_as_inputs:
            weights = named_weights(module)
            weight_names = tuple(weights)
            program = torch.export.export(
                _Stateless(module), (weights, tuple(call.args), dict(call.kwargs)), strict=False,
                dynamic_shapes={"weights": {name: None for name in weights}, "args": arg_shapes, "kwargs": kwarg_shapes},
            )
        else:
            # torch.export wants the specs keyed by parameter name, positional arguments included.
            names = list(inspect.signature(module.forward).parameters)
            program = torch.export.export(
                module, tuple(call.args), dict(call.kwargs), strict=False,
                dynamic_shapes={**dict(zip(names, arg_shapes)), **kwarg_shapes},
            )
            weight_names = tuple(program.graph_signature.parameters) + tuple(program.graph_signature.buffers)
    lifted = program.graph_signature.lifted_tensor_constants
    if lifted:
        # Such tensors are neither parameters nor buffers, so nothing could bind them later.
        raise ValueError(
            f"{type(module).__name__}.forward creates tensor constants {lifted[:3]}: register them as buffers"
        )
    if merge:
        merge_duplicates(program.graph_module)
    return Exported(program, signature, weight_names, weights_as_inputs)


def merge_duplicates(graph_module: torch.fx.GraphModule) -> int:
    """Compute each repeated pure call once; return how many calls were merged.

    Inductor does not merge them itself. torchao quantizes a linear layer's input inside each layer: q, k, v and
    a FLUX single block's MLP quantized the same activation four times, each written out as its own FP8 copy.
    """
    seen: dict[tuple, torch.fx.Node] = {}
    merged = 0
    for node in list(graph_module.graph.nodes):
        if node.op != "call_function" or node.is_impure():  # random draws count as impure too
            continue
        if any(user.op == "output" for user in node.users):  # the output's names are in the program's signature
            continue
        args, spec = tree_flatten((node.args, node.kwargs))
        key = (node.target, str(spec), *(arg if isinstance(arg, torch.fx.Node) else repr(arg) for arg in args))
        if key in seen:
            node.replace_all_uses_with(seen[key])
            graph_module.graph.erase_node(node)
            merged += 1
        else:
            seen[key] = node
    if merged:
        graph_module.recompile()
    return merged
