"""What spaces' ZeroGPU mode needs from a CPU-only torch wheel; test code only, never loaded on a GPU machine.

spaces assumes a CUDA build: at import it reads `torch.version.cuda`, `torch._C._cuda_init` and pickles
`torch.cuda._is_in_bad_fork` (a lambda in CPU builds); in a worker it initialises CUDA and moves the
tracked tensors there. Here the worker "moves" them to the CPU instead, doing the same bookkeeping:
every fake tensor gets its real data, from memory before `launch()` and from the packed file after.
"""

from __future__ import annotations

import os

import torch


def _never_in_bad_fork() -> bool:  # picklable, unlike the CPU build's lambda
    return False


def before_import() -> None:
    torch.version.cuda = "13.0"  # read once by spaces.zero.torch.static; restored in after_import
    torch._C._cuda_init = lambda: None
    torch.cuda._is_in_bad_fork = _never_in_bad_fork


def after_import() -> None:
    torch.version.cuda = None  # inductor and the app must see the CPU build as it is
    from spaces.zero import torch as zero_torch
    from spaces.zero.torch import patching

    zero_torch.init = lambda nvidia_uuid: os.environ.__setitem__("CUDA_VISIBLE_DEVICES", nvidia_uuid)
    zero_torch.move = lambda callback=None: _move_to_cpu(patching)


def _move_to_cpu(patching) -> None:
    for fake, original in patching.cuda_aliases.items():
        if original is not None:  # not yet packed: the CPU original is the data
            fake.data = torch.Tensor(original)
    for pack in patching.tensor_packs:
        _unpack(pack)


def _unpack(pack) -> None:
    # The file holds the batches, then the big tensors, each tensor's bytes padded to a page.
    with open(pack.path(), "rb") as file:
        for batch in pack.batches:
            data = torch.frombuffer(bytearray(file.read(sum(aligned for *_, aligned in batch))), dtype=torch.uint8)
            offset = 0
            for meta, size, aligned in batch:
                _assign(pack, meta, data[offset : offset + size])
                offset += aligned
        for meta, size, aligned in pack.big_tensors:
            _assign(pack, meta, torch.frombuffer(bytearray(file.read(aligned)), dtype=torch.uint8)[:size])


def _assign(pack, meta: torch.Tensor, data: torch.Tensor) -> None:
    tensor = torch.tensor([], dtype=meta.dtype).set_(data.clone().untyped_storage(), 0, meta.shape, meta.stride())
    for fake in pack.fakes[meta]:
        fake.data = tensor


def aligned_weights_on_load() -> None:
    """For the spaces-off reference on CPU: weights in fresh memory, as the ZeroGPU worker gets them.

    Loaded weights are mmapped from safetensors at 8-byte-aligned offsets; spaces moves copies into
    the worker (64-byte aligned or better). MKL picks code paths by alignment, which changes a few
    pixels by one level; on a GPU both copy the weights to the device and no shim is needed.
    """
    from diffusers import FluxPipeline

    load = FluxPipeline.from_pretrained.__func__

    def from_pretrained(cls, *args, **kwargs):
        pipeline = load(cls, *args, **kwargs)
        for component in pipeline.components.values():
            if isinstance(component, torch.nn.Module):
                for tensor in [*component.parameters(), *component.buffers()]:
                    tensor.data = tensor.data.clone()
        return pipeline

    FluxPipeline.from_pretrained = classmethod(from_pretrained)
