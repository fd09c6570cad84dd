"""The flat weights of a module, as a compiled program names and binds them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch._functorch._aot_autograd.subclass_parametrization import unwrap_tensor_subclass_parameters
from torch.nn.utils import parametrize
from torch.utils._python_dispatch import is_traceable_wrapper_subclass


@contextlib.contextmanager
def unwrapped_subclasses(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Show tensor-subclass parameters (torchao FP8) as their plain inner tensors.

    Export and binding then see `lin.parametrizations.weight.original0` (data) and `...original1`
    (scale) instead of one `lin.weight` subclass. On exit the subclass parameters are rebuilt
    around the same inner tensors: no copy, and the module looks as it did.
    """
    wrapped = [
        (sub, name, param)
        for sub in module.modules()
        for name, param in sub.named_parameters(recurse=False)
        if is_traceable_wrapper_subclass(param)
    ]
    unwrap_tensor_subclass_parameters(module)
    try:
        yield module
    finally:
        for sub, name, param in wrapped:
            parametrize.remove_parametrizations(sub, name, leave_parametrized=True)
            # That re-registers a rebuilt tensor (as a buffer when it needs no grad): put the
            # original Parameter back instead.
            sub._buffers.pop(name, None)
            sub._parameters[name] = param


def named_weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers by fully qualified name: the constants of an exported module."""
    return {**dict(module.named_parameters(remove_duplicate=False)), **dict(module.named_buffers(remove_duplicate=False))}


def drop_weights(module: torch.nn.Module) -> None:
    """Replace every parameter and buffer with an empty tensor of the same dtype and device.

    What reads them for metadata (diffusers' `module.dtype`, `module.device`) keeps working,
    and the module stops holding the storage, which the compiled program now owns.
    """
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is not None:
                sub._parameters[name] = torch.nn.Parameter(_empty_like(param), requires_grad=False)
        for name, buffer in list(sub._buffers.items()):
            if buffer is not None:
                sub._buffers[name] = _empty_like(buffer)


def _empty_like(tensor: torch.Tensor) -> torch.Tensor:
    return torch.empty(0, dtype=tensor.dtype, device=tensor.device)
