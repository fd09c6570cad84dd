"""The hardware plan on every architecture of its table, and each probe's fallback, on the CPU.

No Blackwell card is available here: the card is mocked (`pretend_gpu`), and the probes either run for real on the
CPU (torchao's FP8 runs there once its hardware check is bypassed; cuDNN's FP8 attention does not: no CUDA) or are
made to pass, raise, or return wrong values.
"""

import logging
import pickle

import numpy as np
import pytest
import torch

import optimization
import plan as hardware
import probes
from config import MAX_SEQUENCE_LENGTH, MAX_SIZE, OptimizationConfig
from conftest import load_pipeline, load_transformer, pretend_gpu, tiny_config
from lora import LoraFuser, LoraLibrary, keep_masters
from lora.masters import master_device


@pytest.fixture(scope="module")
def transformer():
    return load_transformer(torch.bfloat16)


def decide(monkeypatch, transformer, capability, config=OptimizationConfig(), failing=(), wrong=()):
    """The plan for a mocked card of `capability`, probes passing except those in `failing` (they fail with a reason)."""
    pretend_gpu(monkeypatch, capability)
    verdicts = lambda name, device, **kw: f"{name} broken" if name in failing else None  # noqa: E731
    return hardware.decide(config, transformer, probe=verdicts)


# capability: (FP8 GEMMs, fused quantization kernels, FP8 attention, FA3 tried), all probes passing.
TABLE = {
    (8, 0): (None, False, "off", False),
    (8, 6): (None, False, "off", False),
    (8, 9): ("tensor", False, "off", False),
    (9, 0): ("row", True, "cudnn_static_qk", False),  # FA3 would run bf16: FP8 attention comes first
    (10, 0): ("tensor", False, "cudnn_static_qk", False),  # only because its probe passes
    (12, 0): ("tensor", False, "cudnn_static_qk", False),
    (12, 1): (None, False, "off", False),  # not in the table: the safest rung
    (7, 5): (None, False, "off", False),
}


@pytest.mark.parametrize("capability", list(TABLE))
def test_the_plan_follows_the_table(monkeypatch, transformer, capability):
    tried = []
    def set_attention_backend(module, requested, flash_attention_3):
        tried.append(flash_attention_3)
        return "native"

    monkeypatch.setattr(hardware, "set_attention_backend", set_attention_backend)
    plan = decide(monkeypatch, transformer, capability)
    fp8, fused, fp8_attention, fa3 = TABLE[capability]
    assert (plan.fp8, plan.fused_quantization, plan.fused_ff_quantization) == (fp8, fused, fused)
    assert plan.fp8_attention == fp8_attention
    assert plan.rope_pairs_split == (fp8_attention == "cudnn_static_qk") and tried == [fa3]
    assert plan.capability == capability and plan.device == "Test GPU" and plan.memory_bytes == 80e9
    assert plan.architecture == hardware.ARCHITECTURES.get(capability, hardware.SAFEST).name
    assert bool(plan.steps_down) == (fp8 is None)  # "no FP8: ..." says why


def test_a_card_without_fp8_says_why_in_the_log_and_the_status(monkeypatch, transformer, caplog):
    """The table's reason, not a generic one: Ampere's rows and a card the table does not know (Turing, sm_75)."""
    for capability in [c for c, arch in hardware.ARCHITECTURES.items() if arch.fp8 is None] + [(7, 5)]:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="plan"):
            plan = decide(monkeypatch, transformer, capability)
        why = hardware.architecture(capability).why
        assert plan.fp8 is None and why and f"FP8 off: no FP8: {why}" in caplog.text
        assert why in plan.summary()


def test_hopper_tries_fa3_when_attention_stays_bf16(monkeypatch, transformer, caplog):
    """Its FP8 attention failing, Hopper's attention is bf16: FA3 from the Hub first (offline here: SDPA)."""
    with caplog.at_level(logging.INFO):
        plan = decide(monkeypatch, transformer, (9, 0), failing={"fp8_attention"})
    assert plan.fp8 == "row" and plan.fp8_attention == "off" and not plan.rope_pairs_split
    assert plan.attention == "native" and "_flash_3_hub unavailable" in caplog.text


@pytest.mark.parametrize(
    "failing, expected",
    [
        ({"fp8_row"}, ("tensor", False, "cudnn_static_qk")),  # per tensor: no per-row kernels to fuse
        ({"fp8_row", "fp8_tensor"}, (None, False, "off")),  # no FP8 at all: no FP8 attention either
        ({"fused_quantization"}, ("row", False, "cudnn_static_qk")),
        ({"fp8_attention"}, ("row", True, "off")),
    ],
)
def test_a_failing_probe_steps_down_to_the_next_rung_and_says_why(monkeypatch, transformer, caplog, failing, expected):
    with caplog.at_level(logging.WARNING, logger="plan"):
        plan = decide(monkeypatch, transformer, (9, 0), failing=failing)
    assert (plan.fp8, plan.fused_quantization, plan.fp8_attention) == expected
    for name in failing:
        assert f"stepped down: {name} failed ({name} broken)" in caplog.text
        assert any(name in line for line in plan.steps_down) and name in plan.summary()


def test_the_feed_forward_kernel_steps_down_alone(monkeypatch, transformer):
    plan = decide(monkeypatch, transformer, (9, 0), failing={"fused_ff_quantization"})
    assert plan.fused_quantization and not plan.fused_ff_quantization


def test_probes_run_for_real_and_fail_on_raising_or_wrong_kernels(monkeypatch):
    """The probes' own checks, on the CPU: torchao's FP8 GEMMs and the fused kernels' torch path pass; a matmul that
    returns wrong values, one that raises, or NaN fails with the reason; cuDNN's FP8 attention needs CUDA."""
    pretend_gpu(monkeypatch, (9, 0))
    cpu = torch.device("cpu")
    for name in ("fp8_row", "fp8_tensor", "fused_quantization", "fused_ff_quantization"):
        assert probes.run(name, cpu) is None, name
    assert "no CUDA device" in probes.run("fp8_attention", cpu, kernel="cudnn_static_qk")
    real = torch._scaled_mm
    monkeypatch.setattr(torch, "_scaled_mm", lambda *a, **k: real(*a, **k) * 0.5)  # wrong scales
    assert "off by 0.5" in probes.run("fp8_row", cpu) and "off by 0.5" in probes.run("fused_quantization", cpu)
    monkeypatch.setattr(torch, "_scaled_mm", lambda *a, **k: real(*a, **k) * float("nan"))
    assert "off by nan" in probes.run("fp8_tensor", cpu)

    def unsupported(*args, **kwargs):
        raise RuntimeError("CUBLAS_STATUS_NOT_SUPPORTED\nwhen calling cublasLtMatmul")

    monkeypatch.setattr(torch, "_scaled_mm", unsupported)
    assert probes.run("fp8_row", cpu) == "RuntimeError: CUBLAS_STATUS_NOT_SUPPORTED"


def test_a_real_probe_failure_steps_down_without_mocked_verdicts(monkeypatch, transformer):
    """sm_90 with row-wise FP8 GEMMs raising in cuBLAS, as on sm_120 (pytorch issue #192707): per tensor."""
    pretend_gpu(monkeypatch, (9, 0))
    real = torch._scaled_mm

    def no_rowwise(a, b, scale_a, scale_b, *args, **kwargs):
        if scale_a.numel() > 1:
            raise RuntimeError("CUBLAS_STATUS_NOT_SUPPORTED")
        return real(a, b, scale_a, scale_b, *args, **kwargs)

    monkeypatch.setattr(torch, "_scaled_mm", no_rowwise)
    plan = hardware.decide(OptimizationConfig(), transformer)
    assert plan.fp8 == "tensor" and "fp8_row failed (RuntimeError: CUBLAS_STATUS_NOT_SUPPORTED)" in plan.steps_down
    assert "fp8_attention failed (RuntimeError: no CUDA device)" in plan.steps_down  # its real probe, on the CPU
    assert set(plan.probe_seconds) == {"fp8_row", "fp8_tensor", "fp8_attention"}


def test_the_config_can_ask_and_switch_off(monkeypatch, transformer):
    assert decide(monkeypatch, transformer, (9, 0), OptimizationConfig(fp8=False)).fp8 is None
    assert decide(monkeypatch, transformer, (9, 0), OptimizationConfig(fp8_granularity="tensor")).fp8 == "tensor"
    asked = decide(monkeypatch, transformer, (8, 9), OptimizationConfig(fp8_granularity="row"), failing={"fp8_row"})
    assert asked.fp8 == "tensor"  # asked for, probed, stepped down
    assert decide(monkeypatch, transformer, (9, 0), OptimizationConfig(fp8_attention="off")).fp8_attention == "off"
    assert decide(monkeypatch, transformer, (12, 0), OptimizationConfig(fp8_attention="cudnn")).fp8_attention == "cudnn"


def test_forced_failures_rehearse_another_card(monkeypatch, transformer):
    forced = OptimizationConfig(fail_probes="fp8_row, fp8_attention")
    plan = decide(monkeypatch, transformer, (9, 0), forced)
    assert (plan.fp8, plan.fp8_attention) == ("tensor", "off")  # what sm_120 runs
    assert "fp8_row failed (forced by AOTI_FAIL_PROBES)" in plan.steps_down
    assert decide(monkeypatch, transformer, (9, 0), OptimizationConfig(fail_probes="all")).fp8 is None
    with pytest.raises(ValueError, match="AOTI_FAIL_PROBES names unknown probes \\['fp9'\\]"):
        decide(monkeypatch, transformer, (9, 0), OptimizationConfig(fail_probes="fp9"))


def test_weights_fp8_cannot_take_are_said(monkeypatch):
    float32 = load_transformer(torch.float32)
    plan = decide(monkeypatch, float32, (9, 0))
    assert plan.fp8 is None and "torchao quantizes bf16 or fp16 weights" in plan.summary()
    half = load_transformer(torch.float16)
    assert decide(monkeypatch, half, (9, 0)).fp8 == "tensor"  # per-row FP8 quantizes bf16 only


def test_off_cuda_the_plan_is_the_weights_own_dtype(transformer):
    plan = hardware.decide(OptimizationConfig(), transformer)
    assert (plan.device, plan.capability, plan.fp8, plan.fp8_attention, plan.steps_down) == ("CPU", None, None, "off", ())


def test_the_plan_crosses_the_process_boundary(monkeypatch, transformer):
    plan = decide(monkeypatch, transformer, (12, 0), failing={"fp8_attention"})
    assert pickle.loads(pickle.dumps(plan)) == plan  # a ZeroGPU worker pickles it to the main process


GB = 1e9


@pytest.mark.parametrize(
    "memory_gb, weights_gb, masters_gb, fits",
    [(48, 22, 24, False),  # ZeroGPU's `large`: FLUX.1-dev's masters stay in host memory
     (80, 22, 24, True), (96, 22, 24, True),  # an H100, ZeroGPU's `xlarge`
     (48, 22, 8, True), (48, 22, 13, False)],  # room for a request at the largest size and 10% to spare
)
def test_masters_stay_on_the_card_only_with_room_for_the_largest_request(memory_gb, weights_gb, masters_gb, fits):
    plan = hardware.Plan.assumed(OptimizationConfig(), "tensor")
    plan = hardware.Plan(**{**plan.__dict__, "memory_bytes": int(memory_gb * GB), "weights_bytes": int(weights_gb * GB)})
    assert plan.fits_beside(int(masters_gb * GB), MAX_SIZE**2) == fits


def test_masters_are_kept_in_host_memory_unless_the_plan_has_room():
    assert master_device(torch.device("cuda"), on_gpu=False) == torch.device("cpu")
    assert master_device(torch.device("cpu"), on_gpu=True) == torch.device("cpu")
    if not torch.cuda.is_initialized():  # ZeroGPU's main process: CUDA only emulated
        assert master_device(torch.device("cuda"), on_gpu=True) == torch.device("cpu")


def generate(pipe):
    return pipe(
        "a lighthouse at dusk", width=512, height=256, num_inference_steps=2, max_sequence_length=MAX_SEQUENCE_LENGTH,
        generator=torch.Generator().manual_seed(3), output_type="np",
    ).images[0]


@pytest.mark.slow
def test_the_blackwell_plan_compiles_serves_and_takes_loras(monkeypatch, caplog):
    """sm_120's rung as the probes leave it on this CPU (no cuDNN): per-tensor FP8 GEMMs, bf16 SDPA. The compiled
    pipeline's image is within FP8's error of bf16's, the log and the status say why, and a LoRA is fused into the
    per-tensor FP8 weights and taken out again bit for bit."""
    reference = generate(load_pipeline(torch.bfloat16))
    pretend_gpu(monkeypatch, (12, 0), memory_gb=48)
    pipe = load_pipeline(torch.bfloat16)
    masters = keep_masters(pipe.transformer)
    with caplog.at_level(logging.WARNING, logger="plan"):
        report = optimization.optimize_pipeline_(
            pipe, tiny_config(), prompt="example", width=512, height=512, num_inference_steps=1,
            max_sequence_length=MAX_SEQUENCE_LENGTH,
        )
    assert report.plan.fp8 == "tensor" and report.plan.attention == "native" and report.plan.fp8_attention == "off"
    assert "stepped down: fp8_attention failed (RuntimeError: no CUDA device)" in caplog.text
    assert "FP8 per tensor" in report.summary() and "stepped down: fp8_attention failed" in report.summary()
    weights = pipe.transformer.single_transformer_blocks[0].forward.weights
    assert weights["proj_out.parametrizations.weight.original1"].numel() == 1  # one scale per tensor
    image = generate(pipe)
    error = np.linalg.norm(image - reference) / np.linalg.norm(reference)
    assert error < 0.05, f"per-tensor FP8 image differs from bf16 by {error:.3f}"
    fuser = LoraFuser({"transformer": pipe.transformer, "text_encoder": pipe.text_encoder}, masters, report.plan.fp8)
    from conftest import ROOT

    style = LoraLibrary(ROOT / "assets" / "loras").load("tiny-style")
    with fuser.applied(style, 0.9):
        assert np.abs(generate(pipe) - image).max() > 0.01
    with fuser.applied(None):
        assert np.array_equal(generate(pipe), image)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the probes on a real card")
def test_on_this_card_its_rows_fast_paths_pass_their_probes():
    transformer = load_transformer(torch.bfloat16).cuda()
    plan = hardware.decide(OptimizationConfig(), transformer)
    arch = hardware.architecture(torch.cuda.get_device_capability())
    assert plan.fp8 == arch.fp8 and not [line for line in plan.steps_down if "failed" in line], plan.steps_down
    print(plan.summary(), plan.probe_seconds)
