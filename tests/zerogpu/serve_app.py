"""Serve the real app.py under spaces' ZeroGPU mode, with probes that report what happened where.

    SPACES_ZERO_GPU=true SPACES_ZERO_DEVICE_API_URL=... ZEROGPU_TEST_REPORT=report.jsonl python tests/zerogpu/serve_app.py

Without SPACES_ZERO_GPU=true the same app is served with spaces off (the reference). On a CPU-only
torch build the shims of cpu_shims.py stand in for CUDA; on a GPU machine nothing is shimmed.
The probes only observe, one JSON line per event in ZEROGPU_TEST_REPORT:
- "compile": a program was compiled, and in which process;
- "startup": in the main process before launch, whether every such weight is tracked by spaces
  (so it moves into the workers), a checksum of each, and whether CUDA was initialised there;
- "request": a generation's timing, as the GPU function returned it;
- "worker": a forked worker received the tracked tensors: how many of those weights hold their
  startup checksum there (real data on the worker's device, not an emulated fake) and how long the move took.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
ZEROGPU = os.environ.get("SPACES_ZERO_GPU") == "true"  # off: the same app and probes, spaces a no-op
CPU_BUILD = torch.version.cuda is None
SHIMMED = ZEROGPU and CPU_BUILD
if CPU_BUILD:
    from tests.zerogpu import cpu_shims
if SHIMMED:
    cpu_shims.before_import()
import spaces  # noqa: E402,F401  (ZeroGPU mode: before anything touches CUDA)

if SHIMMED:
    cpu_shims.after_import()
elif CPU_BUILD:
    cpu_shims.aligned_weights_on_load()

import aoti  # noqa: E402


def report(event: str, **fields) -> None:
    with open(os.environ["ZEROGPU_TEST_REPORT"], "a") as f:
        f.write(json.dumps({"event": event, "pid": os.getpid(), "time": time.time(), **fields}) + "\n")


def compiled_weights(module: torch.nn.Module) -> list[torch.Tensor]:
    """Every tensor the compiled programs patched into `module` read."""
    forwards = [m.forward for m in module.modules() if isinstance(vars(m).get("forward"), aoti.CompiledForward)]
    forwards += [getattr(m.forward, "fn", None) for m in module.modules()]  # under CUDAGraphs
    return [w for f in forwards if isinstance(f, aoti.CompiledForward) for w in f.weights.values()]


def checksum(tensor: torch.Tensor) -> float:
    return tensor.to(torch.float32).abs().sum(dtype=torch.float64).item()


_compile = aoti.compile


def probed_compile(*args, **kwargs):
    report("compile")
    return _compile(*args, **kwargs)


aoti.compile = probed_compile
if ZEROGPU:
    from spaces.zero import torch as zero_torch
    from spaces.zero.torch import patching

    _move = zero_torch.move

    def probed_move(*args, **kwargs):
        start = time.perf_counter()
        _move(*args, **kwargs)
        seconds = time.perf_counter() - start
        startup = [e for e in map(json.loads, open(os.environ["ZEROGPU_TEST_REPORT"])) if e["event"] == "startup"]
        if not startup:  # the startup compile's worker: nothing is compiled yet
            return report("worker", weights=0, moved=0, move_seconds=seconds)
        checking = time.perf_counter()
        weights = compiled_weights(sys.modules["app"].pipe.transformer)
        device = "cpu" if SHIMMED else "cuda"
        moved = sum(
            w.device.type == device and math.isclose(checksum(w), expected, rel_tol=1e-5)
            for w, expected in zip(weights, startup[0]["checksums"], strict=True)
        )
        report("worker", weights=len(weights), moved=moved, move_seconds=seconds, probe_seconds=time.perf_counter() - checking)

    zero_torch.move = probed_move


report("main")
start = time.perf_counter()
import app  # noqa: E402  loads, optimizes (compiling in a worker) and builds the UI

imported = time.time()
weights = compiled_weights(app.pipe.transformer)
report(
    "startup",
    seconds=time.perf_counter() - start,
    imported=imported,
    weights=len(weights),
    tracked=sum(w in patching.cuda_aliases for w in weights) if ZEROGPU else 0,
    checksums=[checksum(w) for w in weights],
    cuda_initialized=torch.cuda.is_initialized(),
    status=app.STATUS,
)
_generate = app.generate


def probed_generate(*args):
    image, timing = _generate(*args)
    report("request", **timing)
    return image, timing


app.generate = probed_generate
app.demo.launch(css=app.CSS)
