"""The whole tiny pipeline through optimization.py: compiled image == eager image."""

import logging

import numpy as np
import pytest
import torch

from config import MAX_SEQUENCE_LENGTH, OptimizationConfig
from conftest import load_pipeline
from optimization import optimize_pipeline_

pytestmark = pytest.mark.slow  # whole pipelines compiled

SIZES = [(512, 512), (768, 384), (384, 640)]  # the example's size, a static graph's, and one neither saw


def generate(pipe, width, height):
    return pipe(
        "a red fox in the snow", width=width, height=height, num_inference_steps=3, guidance_scale=3.5,
        max_sequence_length=MAX_SEQUENCE_LENGTH, generator=torch.Generator().manual_seed(1), output_type="np",
    ).images[0]


@pytest.fixture(scope="module")
def eager_images():
    pipe = load_pipeline()
    return {size: generate(pipe, *size) for size in SIZES}


def test_compiled_pipeline_gives_the_eager_image(eager_images, caplog):
    """Through optimize_pipeline_ with one static graph beside the dynamic one."""
    pipe = load_pipeline()
    with caplog.at_level(logging.INFO, logger="plan"):
        report = optimize_pipeline_(
            pipe, OptimizationConfig(static_sizes="768x384", cache=False), prompt="example", width=512, height=512,
            num_inference_steps=1, max_sequence_length=MAX_SEQUENCE_LENGTH,
        )
    # On CPU, FP8 (on by default) falls back to the model's dtype, saying so once.
    assert (report.aot, report.fp8, report.dtype, report.graphs) == (True, False, "float32", 2)
    assert report.vae_decoder and "transformer and VAE decoder AoT-compiled" in report.summary()
    assert "FP8 off: no CUDA GPU" in caplog.text
    assert 0 < report.package_mb < 30  # code only: 4 block and 2 VAE decoder programs of 2-4 MB each (wrapper at -O0)
    for size, ref in eager_images.items():
        image = generate(pipe, *size)
        assert image.shape == ref.shape == (size[1], size[0], 3)
        assert np.abs(image - ref).max() < 1e-4  # pixel values in [0, 1]


def test_aot_switched_off_leaves_the_pipeline_eager(eager_images):
    pipe = load_pipeline()
    forward = pipe.transformer.forward
    report = optimize_pipeline_(pipe, OptimizationConfig(aot=False, cache=False), prompt="unused")
    assert not report.aot and "eagerly" in report.summary()
    assert pipe.transformer.forward == forward
    assert np.array_equal(generate(pipe, 512, 512), eager_images[(512, 512)])
