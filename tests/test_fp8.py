"""FP8: the quantize -> export -> compile -> apply wiring on CPU (the hardware decision: test_plan.py).

torchao refuses FP8 without a GPU of compute capability >= 8.9; the wiring test bypasses that
check (in this test only) and pretends a Hopper card for the plan, so the real code path runs on CPU.
Speed and GPU accuracy are measured by the benchmark on the GPU machine, not here.
"""

import numpy as np
import pytest
import torch

import fp8
import optimization
from config import MAX_SEQUENCE_LENGTH
from conftest import allow_fp8_on_cpu, load_pipeline, pretend_gpu, tiny_config

pytestmark = pytest.mark.slow  # whole pipelines compiled


def generate(pipe):
    return pipe(
        "a lighthouse at dusk", width=512, height=256, num_inference_steps=2, max_sequence_length=MAX_SEQUENCE_LENGTH,
        generator=torch.Generator().manual_seed(3), output_type="np",
    ).images[0]


@pytest.fixture(scope="module")
def bf16_image():
    return generate(load_pipeline(torch.bfloat16))


@pytest.mark.parametrize("regional", [True, False])
def test_fp8_quantize_export_compile_apply(monkeypatch, bf16_image, regional):
    pretend_gpu(monkeypatch, (9, 0))
    reference = bf16_image
    pipe = load_pipeline(torch.bfloat16)
    report = optimization.optimize_pipeline_(
        pipe, tiny_config(fp8_granularity="row", regional=regional), prompt="example", width=512,
        height=512, num_inference_steps=1, max_sequence_length=MAX_SEQUENCE_LENGTH,
    )
    assert report.fp8 and "FP8" in report.summary()
    if regional:  # the blocks run FP8; the embedders and the final projection stay bf16 and eager
        weights = pipe.transformer.single_transformer_blocks[0].forward.weights
        assert pipe.transformer.proj_out.weight.dtype == torch.bfloat16
        assert weights["proj_out.parametrizations.weight.original1"].shape == (32, 1)  # one scale per row
    else:
        weights = pipe.transformer.forward.weights
        assert weights["proj_out.parametrizations.weight.original1"].shape == (64, 1)
    assert weights["proj_out.parametrizations.weight.original0"].dtype == torch.float8_e4m3fn
    assert pipe.transformer.dtype == torch.bfloat16  # what the pipeline reads is unchanged
    image = generate(pipe)
    error = np.linalg.norm(image - reference) / np.linalg.norm(reference)
    assert error < 0.05, f"FP8 image differs from bf16 by {error:.3f}"


def test_the_text_stream_can_stay_bf16(monkeypatch, bf16_image):
    pretend_gpu(monkeypatch, (9, 0))
    pipe = load_pipeline(torch.bfloat16)
    optimization.optimize_pipeline_(
        pipe, tiny_config(fp8_granularity="row", fp8_text_stream=False), prompt="example", width=512,
        height=512, num_inference_steps=1, max_sequence_length=MAX_SEQUENCE_LENGTH,
    )
    weights = pipe.transformer.transformer_blocks[0].forward.weights
    for name in ("attn.add_q_proj", "attn.to_add_out", "ff_context.net.2"):  # the text tokens' layers: bf16
        assert weights[f"{name}.weight"].dtype == torch.bfloat16, name
    for name in ("attn.to_q", "ff.net.2", "norm1_context.linear"):  # the rest, modulation included: FP8
        assert weights[f"{name}.parametrizations.weight.original0"].dtype == torch.float8_e4m3fn, name
    image = generate(pipe)
    error = np.linalg.norm(image - bf16_image) / np.linalg.norm(bf16_image)
    assert error < 0.05, f"image differs from bf16 by {error:.3f}"


def test_unwrapping_fp8_parameters_is_undone_exactly(monkeypatch):
    from torchao.quantization import Float8Tensor

    from aoti.weights import named_weights, unwrapped_subclasses

    allow_fp8_on_cpu(monkeypatch)
    module = torch.nn.Sequential(torch.nn.Linear(32, 16)).to(torch.bfloat16)  # FP8 needs sizes divisible by 16
    fp8.quantize_fp8_(module, "row")
    weight = module[0].weight
    with unwrapped_subclasses(module):
        flat = named_weights(module)
    assert set(flat) == {"0.bias", "0.parametrizations.weight.original0", "0.parametrizations.weight.original1"}
    assert flat["0.parametrizations.weight.original0"].data_ptr() == weight.qdata.data_ptr()  # no copy
    assert module[0].weight is weight and type(module[0]) is torch.nn.Linear
    assert any(p is weight for p in module.parameters()) and isinstance(weight, Float8Tensor)


def test_quantizing_leaves_inductors_settings_alone(monkeypatch):
    """torchao's FP8 config switches on coordinate-descent tuning process-wide by default: a compile
    several times longer, with options the program cache's key does not record."""
    import torch._inductor.config as inductor_config

    allow_fp8_on_cpu(monkeypatch)
    before = inductor_config.get_config_copy()
    fp8.quantize_fp8_(torch.nn.Sequential(torch.nn.Linear(32, 16)).to(torch.bfloat16), "row")
    assert inductor_config.get_config_copy() == before
