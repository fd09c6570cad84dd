"""The flat weights of a module, as a compiled program names and binds them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch._functorch._aot_autograd.subclass_parametrization import unwrap_tensor_subclass_parameters
from torch.nn.utils import parametrize
from torch.utils._python_dispatch import is_traceable_wrapper_subclass
from torch.utils._pytree import tree_map_only


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


class HostShared:
    """Tensors (in any pytree) that cross a process boundary through host shared memory.

    torch pickles a CUDA tensor as a CUDA IPC handle, which only a process that initialises CUDA can
    open; ZeroGPU's main process must never do that (there, "cuda" tensors are emulated on the CPU).
    Pickled, each tensor is copied once into shared host memory, and the receiver maps it without
    another copy; `to(device)` then puts the tensors where the receiver keeps them. Not pickled
    (a GPU function run in-process), the tensors are the sender's own.
    """

    def __init__(self, tree: Any):
        self.tree = tree

    def to(self, device: torch.device | str) -> Any:
        return tree_map_only(torch.Tensor, lambda t: t.to(device), self.tree)

    def __reduce__(self) -> tuple[Any, ...]:
        return HostShared, (tree_map_only(torch.Tensor, _shared_host_copy, self.tree),)


def _shared_host_copy(tensor: torch.Tensor) -> torch.Tensor:
    tensor = tensor.detach()  # a parameter's autograd state cannot cross processes, and is not needed
    return torch.empty_like(tensor, device="cpu").share_memory_().copy_(tensor)
