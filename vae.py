"""The VAE decoder, compiled ahead of time: one static program per size, its eager forward for the rest.

Decoding is 3% of a 28-step 1024x1024 image on an H200 but 11% of a 4-step 512x512 one. A static
program decodes 1024x1024 in 38 ms against eager's 85 and compiles in 17 s; one dynamic program for
every size took 64 ms and 40 s of compile (the sides known, inductor picks better kernels;
bench/README.md, "The VAE decoder alone"). So the decoder is compiled for the example call's size (the UI's default)
and the `AOTI_STATIC_SIZES`, and any other size runs the eager decoder on the same weights.
Its weights are not changed (no FP8: convolutions), so the programs bind the module's own, in every
process, and only the programs travel back from the GPU function. optimization.py caches them under
`fingerprint`.
"""

from __future__ import annotations

from collections.abc import Sequence

import diffusers
import torch

import aoti
from compile_options import code_version, compiler_options
from config import PIXELS_PER_LATENT, OptimizationConfig
from startup import stage


def capture_decoder(vae: torch.nn.Module, width: int, height: int) -> aoti.CapturedCall:
    """The decoder's call when `vae.decode` decodes latents of a `width` x `height` image (the decoder does not run)."""
    latents = torch.zeros(1, vae.config.latent_channels, height // PIXELS_PER_LATENT, width // PIXELS_PER_LATENT,
                          dtype=vae.dtype, device=vae.device)
    with aoti.capture(vae.decoder) as call, torch.no_grad():
        vae.decode(latents)
    return call


def decoder_sizes(width: int, height: int, config: OptimizationConfig) -> list[tuple[int, int]]:
    """The (width, height) sizes the decoder is compiled for: the example's, then `config.static_resolutions`."""
    return list(dict.fromkeys([(width, height), *config.static_resolutions]))


def compile_decoder(vae: torch.nn.Module, config: OptimizationConfig, sizes: Sequence[tuple[int, int]],
                    times: dict[str, float] | None = None) -> list[aoti.CompiledProgram]:
    """Capture, export (static, weights as inputs) and compile `vae.decoder` for each (width, height)."""
    with stage("VAE decoder capture", times):
        calls = [capture_decoder(vae, width, height) for width, height in sizes]
    with stage("VAE decoder export", times):
        exported = [aoti.export(vae.decoder, call, weights_as_inputs=True, merge=config.merge_duplicates) for call in calls]
    with stage("VAE decoder compile", times):
        return [aoti.compile(program, compiler_options(config, fp8=None)) for program in exported]


def fingerprint(vae: torch.nn.Module, config: OptimizationConfig, sizes: Sequence[tuple[int, int]]) -> dict:
    """Everything the decoder's programs depend on; its weights' values are not among them."""
    return {
        "module": "vae.decoder",
        "model": vae.config.get("_name_or_path", ""),
        "vae": {k: v for k, v in vae.config.items() if not k.startswith("_")},
        "dtype": str(vae.dtype),
        "sizes": [list(size) for size in sizes],
        "inductor_configs": compiler_options(config, fp8=None),
        "merge_duplicates": config.merge_duplicates,
        "diffusers": diffusers.__version__,
        "code": code_version(),
        **aoti.cache.environment(vae.device.type),
    }


def apply_decoder_(vae: torch.nn.Module, programs: Sequence[aoti.CompiledProgram]) -> None:
    """`vae.decoder` runs `programs` from now on where one accepts the latents' size, eagerly elsewhere; both
    read the module's own weights (no copy)."""
    aoti.apply(vae.decoder, programs, eager_fallback=True)
