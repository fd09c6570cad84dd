"""vae.py: the VAE decoder compiled ahead of time, with the embedded tiny model's VAE."""

import pytest
import torch
from diffusers import AutoencoderKL

import optimization
import vae
from config import EMBEDDED_MODEL, PIXELS_PER_LATENT, OptimizationConfig
from plan import Plan

pytestmark = pytest.mark.slow  # VAE decoders compiled


def load_vae() -> AutoencoderKL:
    return AutoencoderKL.from_pretrained(EMBEDDED_MODEL, subfolder="vae").eval()


def latents(height: int, width: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 16, height // PIXELS_PER_LATENT, width // PIXELS_PER_LATENT, generator=g)


SIZES = [(256, 256), (320, 192)]  # (width, height): the example's and one static size


@pytest.fixture(scope="module")
def compiled_programs():
    return vae.compile_decoder(load_vae(), OptimizationConfig(cache=False), SIZES)


def test_compiled_sizes_run_their_program_and_others_the_eager_decoder(compiled_programs, monkeypatch):
    """Every size gives eager's image: the compiled ones through their program, any other through the
    module's own forward on the same weights."""
    eager, compiled = load_vae(), load_vae()
    ran_eagerly = []
    original = type(compiled.decoder).forward
    monkeypatch.setattr(type(compiled.decoder), "forward", lambda self, *a, **k: ran_eagerly.append(1) or original(self, *a, **k))
    vae.apply_decoder_(compiled, compiled_programs)  # after the patch: the fallback is the forward of that moment
    for index, (width, height) in enumerate([*SIZES, (448, 320)]):
        z = latents(height, width, seed=index)
        with torch.no_grad():
            expected, out = original(eager.decoder, z), compiled.decode(z).sample
        assert out.shape == expected.shape == (1, 3, height, width)
        torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
        assert len(ran_eagerly) == (index == 2), (width, height)


def test_the_programs_read_the_modules_own_weights(compiled_programs):
    compiled = load_vae()
    before = {name: p.data_ptr() for name, p in compiled.decoder.named_parameters()}
    vae.apply_decoder_(compiled, compiled_programs)
    bound = compiled.decoder.forward.weights
    assert {name: p.data_ptr() for name, p in compiled.decoder.named_parameters()} == before  # kept, not copied
    assert {bound[name].data_ptr() for name in bound} <= set(before.values())


def test_sizes_are_the_examples_then_the_static_ones_once():
    config = OptimizationConfig(static_sizes="1024x1024,768x1344")
    assert vae.decoder_sizes(1024, 1024, config) == [(1024, 1024), (768, 1344)]
    assert vae.decoder_sizes(512, 512, OptimizationConfig()) == [(512, 512)]


def test_a_second_start_loads_the_decoder_from_the_cache(tmp_path):
    config = OptimizationConfig(cache_dir=str(tmp_path))

    def load_or_compile(sizes):
        model = load_vae()
        build = lambda: {"decoder": vae.compile_decoder(model, config, sizes)}  # noqa: E731
        programs, cached = optimization.load_or_build(config, vae.fingerprint(model, config, sizes), build)
        return programs["decoder"], cached

    first, cached = load_or_compile(SIZES[:1])
    assert not cached
    again, cached = load_or_compile(SIZES[:1])
    assert cached and [p.package for p in again] == [p.package for p in first]
    _, cached = load_or_compile(SIZES[1:])  # another size: another key
    assert not cached


def test_switching_the_decoder_off_keeps_the_transformers_programs():
    """AOTI_VAE is not part of the transformer's cache key: its programs stay valid either way."""
    on, off = OptimizationConfig(), OptimizationConfig(vae_decoder=False)
    plan = Plan.assumed(on, "row")
    assert optimization.compiled_options(on, plan) == optimization.compiled_options(off, plan)
