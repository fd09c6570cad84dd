"""The VAE decoder, compiled ahead of time like the transformer: one graph for every UI resolution.

Decoding is 3% of a 28-step 1024x1024 image on an H200 but 11% of a 4-step 512x512 one; this program
decodes in 63 ms instead of eager's 85 at 1024x1024, 16 instead of 21 at 512x512 (bench/README.md, "The
VAE decoder alone"), compiled with the transformer's inductor options: split reductions made it slower.
Its weights are not changed (no FP8: convolutions), so the program binds the module's own, in every
process, and only the program travels back from the GPU function. optimization.py caches it under `fingerprint`.
"""

from __future__ import annotations

from dataclasses import asdict

import diffusers
import torch

import aoti
from compile_options import compiler_options
from config import MAX_SIZE, MIN_SIZE, SIZE_STEP, OptimizationConfig
from startup import stage

PIXELS_PER_LATENT = 8  # each side: FLUX's VAE downsamples 8x
# The decoder's input is the latent image; its sides are free within the UI's range, in its steps.
LATENT_HEIGHT, LATENT_WIDTH = (
    aoti.Dim(name, MIN_SIZE // PIXELS_PER_LATENT, MAX_SIZE // PIXELS_PER_LATENT, multiple=SIZE_STEP // PIXELS_PER_LATENT)
    for name in ("latent_height", "latent_width")
)
DYNAMIC_AXES = {0: {2: LATENT_HEIGHT, 3: LATENT_WIDTH}}  # Decoder.forward(sample): [B, C, H / 8, W / 8]


def capture_decoder(vae: torch.nn.Module, width: int, height: int) -> aoti.CapturedCall:
    """The decoder's call when `vae.decode` decodes latents of a `width` x `height` image (the decoder does not run)."""
    latents = torch.zeros(1, vae.config.latent_channels, height // PIXELS_PER_LATENT, width // PIXELS_PER_LATENT,
                          dtype=vae.dtype, device=vae.device)
    with aoti.capture(vae.decoder) as call, torch.no_grad():
        vae.decode(latents)
    return call


def compile_decoder(vae: torch.nn.Module, config: OptimizationConfig, width: int, height: int,
                    times: dict[str, float] | None = None) -> aoti.CompiledProgram:
    """Capture, export (latent sides dynamic unless `config.dynamic` is off; weights as inputs) and compile
    `vae.decoder`."""
    with stage("VAE decoder capture", times):
        call = capture_decoder(vae, width, height)
    with stage("VAE decoder export", times):
        exported = aoti.export(vae.decoder, call, DYNAMIC_AXES if config.dynamic else None, weights_as_inputs=True)
    with stage("VAE decoder compile", times):
        return aoti.compile(exported, compiler_options(config, fp8=False))


def fingerprint(vae: torch.nn.Module, config: OptimizationConfig, width: int, height: int) -> dict:
    """Everything the decoder's program depends on; its weights' values are not among them (nor, dynamic, the
    example's size)."""
    return {
        "module": "vae.decoder",
        "model": vae.config.get("_name_or_path", ""),
        "vae": {k: v for k, v in vae.config.items() if not k.startswith("_")},
        "dtype": str(vae.dtype),
        "dynamic": [asdict(dim) for dim in (LATENT_HEIGHT, LATENT_WIDTH)] if config.dynamic else None,
        "static_size": None if config.dynamic else [width, height],
        "inductor_configs": compiler_options(config, fp8=False),
        "diffusers": diffusers.__version__,
        **aoti.cache.environment(vae.device.type),
    }


def apply_decoder_(vae: torch.nn.Module, program: aoti.CompiledProgram) -> None:
    """`vae.decoder` runs `program` from now on, bound to its own weights (no copy)."""
    aoti.apply(vae.decoder, program)
