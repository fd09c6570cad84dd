"""The FLUX family: what the app offers is read from the model's config, and other shapes compile the same way."""

import importlib.util
import sys

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline

import config as cfg
from conftest import ROOT, tiny_config
from optimization import optimize_pipeline_

sys.path.insert(0, str(ROOT / "assets"))
from build_tiny_flux import build  # noqa: E402

pytestmark = pytest.mark.slow  # other models compiled


def test_model_defaults_come_from_the_architecture_not_the_name():
    assert cfg.model_defaults({"guidance_embeds": True, "_name_or_path": "someone/flux-schnell-style-finetune"}) == cfg.FLUX_DEV
    assert cfg.model_defaults({"guidance_embeds": False, "_name_or_path": "black-forest-labs/FLUX.1-dev"}) == cfg.FLUX_SCHNELL
    assert (cfg.FLUX_SCHNELL.steps, cfg.FLUX_SCHNELL.max_sequence_length, cfg.FLUX_SCHNELL.guidance) == (4, 256, False)
    assert cfg.AppConfig().steps_for(cfg.FLUX_SCHNELL) == 4 and cfg.AppConfig().steps_for(cfg.FLUX_DEV) == 28
    assert cfg.AppConfig(default_steps=6).steps_for(cfg.FLUX_SCHNELL) == 6  # the preset's choice wins


@pytest.fixture(scope="module")
def schnell_app(tmp_path_factory):
    """The app on a tiny schnell-like model of another depth (2 double, 3 single blocks), as FLUX_MODEL names it."""
    folder = tmp_path_factory.mktemp("tiny-schnell")
    build(seed=1, schnell=True, num_layers=2, num_single_layers=3).save_pretrained(folder)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FLUX_MODEL", str(folder))
        env.setenv("AOTI_VAE", "0")  # not what this model changes
        env.setenv("GRADIO_EXAMPLES_CACHE", str(folder / "examples"))
        spec = importlib.util.spec_from_file_location("app_schnell", ROOT / "app.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # loads, compiles, builds the UI; not launched
    return module, folder


def test_a_schnell_like_model_gets_schnell_defaults_and_hides_guidance(schnell_app):
    app, _ = schnell_app
    assert app.MODEL == cfg.FLUX_SCHNELL and app.report.aot
    sliders = {c.label: c for c in app.demo.blocks.values() if getattr(c, "label", None) in ("Guidance scale", "Steps")}
    assert sliders["Guidance scale"].visible is False
    # The app's CPU preset asks for 4 steps; the API's default is the app's step count either way.
    assert sliders["Steps"].value == app.STEPS == app.infer.__defaults__[5]


def test_a_schnell_like_model_ignores_guidance_and_matches_eager(schnell_app):
    app, folder = schnell_app
    low, *_ = app.infer("a red fox in the snow", 3, False, 384, 256, 1.0, 2)
    high, *_ = app.infer("a red fox in the snow", 3, False, 384, 256, 15.0, 2)
    assert np.array_equal(np.asarray(low), np.asarray(high))  # no guidance input: documented as ignored
    assert "guidance_scale" not in low.info and low.info["num_inference_steps"] == "2"
    eager = FluxPipeline.from_pretrained(folder, dtype=torch.float32)(
        "a red fox in the snow", width=384, height=256, num_inference_steps=2, max_sequence_length=256,
        generator=torch.Generator().manual_seed(3),
    ).images[0]
    assert np.abs(np.asarray(low, dtype=float) - np.asarray(eager, dtype=float)).max() <= 1  # 8-bit pixels, 1e-4 before rounding


def test_a_schnell_like_model_reads_256_prompt_tokens(schnell_app, monkeypatch):
    app, _ = schnell_app
    warnings = []
    monkeypatch.setattr(app.gr, "Warning", warnings.append)
    image, *_ = app.infer("word " * 80, 1, False, 256, 256, 3.5, 1)  # about 300 T5 tokens: over 256, under 512
    assert len(warnings) == 1 and "only the first 256 were used" in warnings[0]
    assert image.info["warning"] == warnings[0]


def test_other_shapes_compile_and_match_eager():
    """More heads of another width, and other block counts: nothing in the compile assumes the tiny model's shape."""
    shape = dict(num_layers=3, num_single_layers=2, num_attention_heads=3, attention_head_dim=32, axes_dims_rope=(8, 12, 12))

    def generate(pipe):
        return pipe("a lighthouse", width=320, height=448, num_inference_steps=2, max_sequence_length=cfg.MAX_SEQUENCE_LENGTH,
                    generator=torch.Generator().manual_seed(2), output_type="np").images[0]

    eager = generate(build(seed=2, **shape))
    pipe = build(seed=2, **shape)
    report = optimize_pipeline_(pipe, tiny_config(), prompt="example", width=512, height=512,
                                num_inference_steps=1, max_sequence_length=cfg.MAX_SEQUENCE_LENGTH)
    assert report.aot and report.regional
    assert np.abs(generate(pipe) - eager).max() < 1e-4
