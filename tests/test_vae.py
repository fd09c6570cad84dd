"""vae.py: the VAE decoder compiled ahead of time, with the embedded tiny model's VAE."""

import pytest
import torch
from diffusers import AutoencoderKL

import optimization
import vae
from aoti import CompiledForward
from config import EMBEDDED_MODEL, OptimizationConfig


def load_vae() -> AutoencoderKL:
    return AutoencoderKL.from_pretrained(EMBEDDED_MODEL, subfolder="vae").eval()


def latents(height: int, width: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 16, height // vae.PIXELS_PER_LATENT, width // vae.PIXELS_PER_LATENT, generator=g)


@pytest.fixture(scope="module")
def compiled_program():
    return vae.compile_decoder(load_vae(), OptimizationConfig(cache=False), width=256, height=256)


def test_compiled_decoder_gives_the_eager_image_at_every_size(compiled_program):
    """One graph: the example's size, a non-square one and the range's ends."""
    eager, compiled = load_vae(), load_vae()
    vae.apply_decoder_(compiled, compiled_program)
    assert isinstance(vars(compiled.decoder)["forward"], CompiledForward)
    for index, (height, width) in enumerate([(256, 256), (320, 448), (2048, 256)]):
        z = latents(height, width, seed=index)
        with torch.no_grad():
            expected, out = eager.decode(z).sample, compiled.decode(z).sample
        assert out.shape == expected.shape == (1, 3, height, width)
        torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


def test_a_size_outside_the_range_is_refused(compiled_program):
    compiled = load_vae()
    vae.apply_decoder_(compiled, compiled_program)
    with pytest.raises(ValueError, match="latent_width"):
        compiled.decode(latents(256, 2080, seed=0))  # 2080 pixels: beyond MAX_SIZE


def test_a_second_start_loads_the_decoder_from_the_cache(tmp_path, compiled_program):
    config = OptimizationConfig(cache_dir=str(tmp_path))

    def load_or_compile(width, height):
        model = load_vae()
        build = lambda: {"decoder": [vae.compile_decoder(model, config, width, height)]}  # noqa: E731
        programs, cached = optimization.load_or_build(config, vae.fingerprint(model, config, width, height), build)
        return programs["decoder"][0], cached

    first, cached = load_or_compile(256, 256)
    assert not cached
    again, cached = load_or_compile(512, 384)  # the example's size is not in the key
    assert cached and again.package == first.package


def test_switching_the_decoder_off_keeps_the_transformers_programs():
    """AOTI_VAE is not part of the transformer's cache key: its programs stay valid either way."""
    on, off = OptimizationConfig(), OptimizationConfig(vae_decoder=False)
    assert optimization.compiled_options(on, True, "native") == optimization.compiled_options(off, True, "native")


def test_a_static_decoder_serves_its_size_and_is_keyed_by_it():
    """AOTI_DYNAMIC=0: one program for the example's size; another size is refused, not silently decoded."""
    config = OptimizationConfig(dynamic=False, cache=False)
    model, eager = load_vae(), load_vae()
    vae.apply_decoder_(model, vae.compile_decoder(model, config, 256, 256))
    z = latents(256, 256, seed=0)
    with torch.no_grad():
        torch.testing.assert_close(model.decode(z).sample, eager.decode(z).sample, atol=1e-4, rtol=1e-4)
        with pytest.raises(ValueError):
            model.decode(latents(256, 320, seed=0))
    assert vae.fingerprint(model, config, 256, 256) != vae.fingerprint(model, config, 320, 256)
    dynamic = OptimizationConfig()
    assert vae.fingerprint(model, dynamic, 256, 256) == vae.fingerprint(model, dynamic, 320, 256)
