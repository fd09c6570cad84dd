"""Ahead-of-time compilation of a module inside a pipeline, in four stages.

    with capture(pipe.transformer) as call:       # 1. record the transformer's call
        pipe(prompt="...", num_inference_steps=1)
    exported = export(pipe.transformer, call, dynamic={"hidden_states": {1: seq}})  # 2.
    program = compile(exported)                    # 3. AOTInductor package, weights left out
    apply(pipe.transformer, program)               # 4. bind the live weights, drop the eager copy

For many modules of one structure (FLUX's 57 blocks), `export(block, call, dims, weights_as_inputs=True)`
and `apply(list_of_blocks, program)` load one program and call it with each block's own weights.
`CUDAGraphs(module.forward)` replays each input shape's call as one CUDA graph.
`program_weights` and `HostShared` carry weights prepared in one process (a GPU worker) to another.
`save`/`load` keep a program on disk, `ProgramCache` reuses programs across starts; nothing here depends
on ZeroGPU, and all of it runs on CPU and CUDA.
"""

from .apply import apply, program_weights
from .artifact import ArtifactError, load, save
from .cache import ProgramCache
from .capture import CapturedCall, CaptureError, capture
from .compile import compile
from .cudagraphs import CUDAGraphs
from .dispatch import CompiledForward
from .export import Exported, export
from .program import CompiledProgram
from .signature import Dim, Signature
from .toolchain import ToolchainError
from .weights import HostShared

__all__ = [
    "ArtifactError", "CaptureError", "CapturedCall", "CUDAGraphs", "CompiledForward", "CompiledProgram", "Dim",
    "Exported", "HostShared", "ProgramCache", "Signature", "ToolchainError", "apply", "capture", "compile", "export",
    "load", "program_weights", "save",
]
