import pytest
import torch

import config
from compile_options import _PersistentRows, compiler_options, persistent_rows
from optimization import compiled_options
from plan import Plan


def test_presets_follow_the_machine():
    assert config.from_env({}, cuda=True).model == config.HUB_MODEL
    cpu = config.from_env({}, cuda=False)
    assert (cpu.model, cpu.device, cpu.dtype, cpu.embedded) == (config.EMBEDDED_MODEL, "cpu", "float32", True)


def test_environment_overrides_single_fields():
    environ = {"FLUX_MODEL": "me/my-flux", "AOTI_FP8": "off", "AOTI_ATTENTION": "_native_cudnn", "FLUX_MAX_STEPS": "8"}
    loaded = config.from_env(environ, cuda=True)
    assert (loaded.model, loaded.max_steps) == ("me/my-flux", 8)
    assert (loaded.optimization.fp8, loaded.optimization.attention_backend) == (False, "_native_cudnn")
    assert loaded.optimization.dynamic and loaded.dtype == "bfloat16"  # untouched fields keep the preset


@pytest.mark.parametrize(
    "environ, message",
    [({"AOTI_FP8": "perhaps"}, "AOTI_FP8='perhaps'"), ({"FLUX_MAX_STEPS": "many"}, "expected int"),
     ({"AOTI_FP8_GRANULARITY": "block"}, "AOTI_FP8_GRANULARITY must be one of auto, row, tensor, got 'block'"),
     ({"AOTI_FP8_ATTENTION": "flash"}, "AOTI_FP8_ATTENTION must be one of auto, off, cudnn, cudnn_static_qk, got 'flash'"),
     ({"AOTI_STATIC_SIZES": "1024"}, "AOTI_STATIC_SIZES: '1024' is not WIDTHxHEIGHT"),
     ({"AOTI_STATIC_SIZES": "1000x1000"}, "AOTI_STATIC_SIZES: '1000x1000': sides must be multiples of 32"),
     ({"AOTI_PERSISTENT_REDUCTIONS_UP_TO": "0"}, "AOTI_PERSISTENT_REDUCTIONS_UP_TO must be at least 1, got 0"),
     ({"FLUX_LORA_CACHE_GB": "inf"}, "FLUX_LORA_CACHE_GB='inf': expected a finite number"),
     ({"SERVE_REQUEST_TIMEOUT_S": "nan"}, "SERVE_REQUEST_TIMEOUT_S='nan': expected a finite number"),
     ({"SERVE_TARGET_ONGOING_REQUESTS": "0"}, "SERVE_TARGET_ONGOING_REQUESTS must be positive, got 0.0"),
     ({"FLUX_MAX_STEPS": "0"}, "FLUX_MAX_STEPS must be at least 1, got 0"),
     ({"FLUX_QUEUE_SIZE": "-1"}, "FLUX_QUEUE_SIZE must be at least 1, got -1"),
     ({"FLUX_DTYPE": "load"}, "FLUX_DTYPE must be one of bfloat16, float16, float32, got 'load'"),
     ({"FLUX_DEVICE": "gpu"}, "FLUX_DEVICE must be cpu, cuda or cuda:N, got 'gpu'"),
     ({"FLUX_DEVICE": "cuda"}, "FLUX_DEVICE='cuda', but this machine's torch sees no CUDA GPU"),
     ({"FLUX_LORA_CACHE_GB": "0"}, "FLUX_LORA_CACHE_GB must be positive"),
     ({"FLUX_LORA_DOWNLOADS_GB": "-2"}, "FLUX_LORA_DOWNLOADS_GB must be positive"),
     ({"SERVE_REQUEST_TIMEOUT_S": "0"}, "SERVE_REQUEST_TIMEOUT_S must be positive")],
)
def test_bad_environment_values_are_named(environ, message):
    with pytest.raises(ValueError, match=message):
        config.from_env(environ, cuda=False)


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        config.PRESETS["gpu"].model = "x"
    with pytest.raises(TypeError):
        config.OptimizationConfig().inductor_configs["max_autotune"] = True


def test_per_tensor_fp8_compiles_with_split_reductions():
    """A per-tensor scale reduces a whole activation: unsplit, one thread block would do all of it."""
    options = config.OptimizationConfig()
    assert compiler_options(options, "row")["split_reductions"] is False  # per row: one kernel per row
    assert compiler_options(options, "tensor")["split_reductions"] is True
    assert compiler_options(options, None)["split_reductions"] is False  # bf16, e.g. a GPU without FP8
    assert compiler_options(options, "tensor")["conv_1x1_as_mm"]  # the other options as configured
    assert options.inductor_configs["split_reductions"] is False  # the configuration itself is left as it is


@pytest.mark.skipif(not torch.cuda.is_available(), reason="inductor's persistent reductions are Triton kernels")
def test_persistent_rows_reduce_wider_rows_in_one_pass():
    """A LayerNorm over 3072 channels: one persistent kernel within `persistent_rows`, inductor's looped one without."""
    from torch._inductor.utils import run_and_get_code

    x = torch.randn(4096, 3072, device="cuda", dtype=torch.bfloat16)

    def layer_norm(x):
        return torch.nn.functional.layer_norm(x, x.shape[-1:]) * 2

    expected = layer_norm(x)
    for up_to, kind in (1024, "triton_red_"), (4096, "triton_per_"):
        torch._dynamo.reset()
        with persistent_rows(config.OptimizationConfig(persistent_reductions_up_to=up_to), x.device, "row"):
            out, code = run_and_get_code(torch.compile(layer_norm), x)
        assert kind in "".join(code)
        torch.testing.assert_close(out, expected)


def test_wider_persistent_rows_are_for_per_row_scales_and_bf16_not_per_tensor():
    """With per-tensor FP8 the wider rows made the single blocks' amax one 25 ms kernel on an H100: inductor's own
    choice there (a card is not needed to install the choice, only to compile with it)."""
    from torch._inductor.virtualized import V

    options = config.OptimizationConfig(persistent_reductions_up_to=4096)
    for fp8, widened in ("row", True), (None, True), ("tensor", False):
        with persistent_rows(options, torch.device("cuda"), fp8):
            assert isinstance(V.choices, _PersistentRows) is widened, fp8
    with persistent_rows(options, torch.device("cpu"), "row"):
        assert not isinstance(V.choices, _PersistentRows)
    # The cache key records the rows as compiled: a per-tensor program built with the wider rows is not reused.
    key = {fp8: compiled_options(options, Plan.assumed(options, fp8))["persistent_reductions_up_to"] for fp8 in ("row", "tensor")}
    assert key == {"row": 4096, "tensor": config.INDUCTOR_PERSISTENT_ROWS}


def test_the_zerogpu_size_is_a_setting():
    assert config.from_env({}, cuda=True).zerogpu_size == ""  # ZeroGPU's default: large unless the weights are too big
    assert config.from_env({"FLUX_ZEROGPU_SIZE": "xlarge"}, cuda=True).zerogpu_size == "xlarge"
    with pytest.raises(ValueError, match="FLUX_ZEROGPU_SIZE must be 'large' or 'xlarge', got 'huge'"):
        config.from_env({"FLUX_ZEROGPU_SIZE": "huge"}, cuda=True)
