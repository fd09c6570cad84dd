"""Shared fixtures: the embedded tiny FLUX, a captured transformer call, one compiled program.

Everything runs offline on CPU. Temporary files (inductor cache, Gradio uploads) go under
.cache/tests in the repository, one folder per pytest-xdist worker, emptied at the start of each run.
Tests run on every core (pytest.ini): a module's tests stay on one worker, so its fixtures are built
once, and the tests of an expensive session fixture (`SHARED`) share one worker too.
"""

import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")
TEST_DIR = ROOT / ".cache" / "tests" / WORKER
# Once per run: the processes tests spawn import this module too, and inherit the variable.
if os.environ.get("FLUX_TEST_DIR") != str(TEST_DIR):
    shutil.rmtree(TEST_DIR, ignore_errors=True)
    os.environ["FLUX_TEST_DIR"] = str(TEST_DIR)
# Before torch, gradio or huggingface_hub are imported: they read these once.
for name, sub in {
    "TMPDIR": "tmp", "GRADIO_TEMP_DIR": "gradio", "TORCHINDUCTOR_CACHE_DIR": "inductor", "AOTI_CACHE_DIR": "aoti-cache"
}.items():
    (TEST_DIR / sub).mkdir(parents=True, exist_ok=True)
    os.environ[name] = str(TEST_DIR / sub)
tempfile.tempdir = None  # an xdist worker has used the controller's TMPDIR already: read it again
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402
import torch  # noqa: E402
from diffusers import FluxPipeline, FluxTransformer2DModel  # noqa: E402

import aoti  # noqa: E402
from config import EMBEDDED_MODEL, MAX_SEQUENCE_LENGTH, OptimizationConfig  # noqa: E402
from optimization import DYNAMIC_AXES  # noqa: E402

CAPTURE_SIZE = (512, 512)  # width, height of the captured call: 1024 image tokens
SHARED = ("app", "compiled_program")  # session fixtures that compile: their tests go to one worker

if "PYTEST_XDIST_WORKER_COUNT" in os.environ:  # workers share the cores instead of each taking all of them
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test's pytest-xdist group (`--dist loadgroup`): the first of SHARED it uses, else its module. A test of
    the app started in this process is a `servers` test."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        shared = next((name for name in SHARED if name in fixtures), None)
        item.add_marker(pytest.mark.xdist_group(shared or item.module.__name__))
        if "app" in fixtures:
            item.add_marker(pytest.mark.servers)


def tiny_config(**changes) -> OptimizationConfig:
    """The tests' optimization settings: no program cache and no VAE decoder compile (each about 20 s on two cores)
    unless a test is about them, with `changes` on top."""
    return OptimizationConfig(**{"cache": False, "vae_decoder": False, **changes})


def load_pipeline(dtype=torch.float32) -> FluxPipeline:
    return FluxPipeline.from_pretrained(EMBEDDED_MODEL, dtype=dtype, local_files_only=True)


def load_transformer(dtype=torch.float32) -> FluxTransformer2DModel:
    return FluxTransformer2DModel.from_pretrained(EMBEDDED_MODEL, subfolder="transformer", dtype=dtype).eval()


def allow_fp8_on_cpu(patch: pytest.MonkeyPatch) -> None:
    """torchao refuses FP8 without an FP8 GPU; on CPU its FP8 runs, which is what the wiring tests need."""
    from torchao.quantization import quant_api

    patch.setattr(quant_api, "_check_hardware_support", lambda *args, **kwargs: None)


def pretend_gpu(patch: pytest.MonkeyPatch, capability=(9, 0), memory_gb: float = 80, passing=None) -> None:
    """plan.decide sees a CUDA card of `capability` (the model stays on the CPU, where torchao's FP8 then runs). The
    probes run for real on the CPU (cuDNN's FP8 attention fails there: no CUDA device), except those named in
    `passing`, which pass."""
    import plan
    import probes

    allow_fp8_on_cpu(patch)
    patch.setattr(plan, "gpu_of", lambda device: ("Test GPU", capability, int(memory_gb * 1e9)))
    if passing:
        real = probes.run
        patch.setattr(probes, "run", lambda name, device, **kw: None if name in passing else real(name, device, **kw))


@pytest.fixture
def fp8_on_cpu(monkeypatch):
    allow_fp8_on_cpu(monkeypatch)


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = torch.as_tensor(out).double(), torch.as_tensor(ref).double()
    return ((out - ref).norm() / ref.norm()).item()


@pytest.fixture(scope="session")
def captured_call() -> aoti.CapturedCall:
    """The transformer call of a real pipeline call at CAPTURE_SIZE (float32)."""
    pipe = load_pipeline()
    width, height = CAPTURE_SIZE
    with aoti.capture(pipe.transformer) as call:
        pipe("a cat", width=width, height=height, num_inference_steps=1, max_sequence_length=MAX_SEQUENCE_LENGTH)
    return call


@pytest.fixture(scope="session")
def call_for(captured_call):
    """kwargs for the transformer at another resolution, with fresh random latents."""

    def make(width: int, height: int, seed: int = 0, **changes) -> dict:
        generator = torch.Generator().manual_seed(seed)
        h, w = height // 16, width // 16
        ids = torch.zeros(h, w, 3)
        ids[..., 1] = torch.arange(h)[:, None]
        ids[..., 2] = torch.arange(w)[None, :]
        kwargs = dict(captured_call.kwargs)
        kwargs["hidden_states"] = torch.randn(1, h * w, 64, generator=generator)
        kwargs["img_ids"] = ids.reshape(h * w, 3)
        kwargs.update(changes)
        return kwargs

    return make


@pytest.fixture(scope="session")
def compiled_program(captured_call) -> aoti.CompiledProgram:
    """The tiny transformer exported with FLUX's dynamic axes and compiled (float32, CPU)."""
    return aoti.compile(aoti.export(load_transformer(), captured_call, DYNAMIC_AXES))


@pytest.fixture(scope="session")
def app():
    """The app started in this process, as `python app.py` would (its program cache starts empty)."""
    import app as app_module  # loads the embedded model and AoT-compiles it

    app_module.demo.launch(prevent_thread_lock=True, quiet=True, css=app_module.CSS, mcp_server=True)
    yield app_module
    app_module.demo.close()
