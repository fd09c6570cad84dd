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
  startup checksum there (real data on the worker's device, not an emulated fake), how long the move took,
  and the memory cap it applied;
- "worker_peak": a GPU function returned (or raised) in its worker: the peak of PyTorch's allocator during the
  call (allocated and reserved), before it (the move, in a fresh worker), and what the whole device held at the
  end; `call` is "startup" (the compile at import) or "request".

ZEROGPU_TEST_MEMORY_GB=48 caps every worker's GPU at 48 GB (10^9 bytes), as a ZeroGPU `large` slice (half an
RTX Pro 6000): before the tracked tensors move in, `torch.cuda.set_per_process_memory_fraction(cap / total)`
limits PyTorch's allocator, and `torch.cuda.mem_get_info` reports that card (total = cap, free = what is left of
it), so the app's own memory decisions see it. Only where CUDA is real; on the CPU shims it is a no-op.
ZEROGPU_TEST_CHECKSUMS=0 skips the weights' checksums (about 30 s of a FLUX.1-dev start on the CPU): the
"worker" events then report `moved` as null.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
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
MEMORY_CAP_GB = os.environ.get("ZEROGPU_TEST_MEMORY_GB", "")  # unset or empty: the worker gets the whole card
CHECKSUMS = os.environ.get("ZEROGPU_TEST_CHECKSUMS", "1") != "0"
CPU_BUILD = torch.version.cuda is None
SHIMMED = ZEROGPU and CPU_BUILD
if CPU_BUILD:
    from tests.zerogpu import cpu_shims
if SHIMMED:
    cpu_shims.before_import()
import spaces  # noqa: E402  (ZeroGPU mode: before anything touches CUDA)

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
_mem_get_info = torch.cuda.mem_get_info  # the real one: spaces does not emulate it
STARTED = False  # set once `import app` has returned: workers forked after it serve requests


def cap_memory() -> dict:
    """In a worker, before the tracked tensors move in: the GPU capped at ZEROGPU_TEST_MEMORY_GB, for PyTorch's
    allocator and for whoever asks `torch.cuda.mem_get_info`. Returns what was applied, for the "worker" event."""
    if not torch.cuda.is_initialized():  # the CPU shims: nothing to cap
        return {"memory_cap_bytes": None, **({"memory_cap": "not applied: no CUDA in this worker"} if MEMORY_CAP_GB else {})}
    _, total = _mem_get_info()
    device = {"device_name": torch.cuda.get_device_name(), "cuda_total_bytes": total}
    if not MEMORY_CAP_GB:
        return {"memory_cap_bytes": None, **device}
    cap = min(int(float(MEMORY_CAP_GB) * 1e9), total)
    torch.cuda.set_per_process_memory_fraction(cap / total)

    def capped_mem_get_info(device=None) -> tuple[int, int]:
        free, _ = _mem_get_info(device)
        return max(0, min(free, cap - torch.cuda.memory_reserved(device))), cap

    torch.cuda.mem_get_info = torch.cuda.memory.mem_get_info = capped_mem_get_info
    return {"memory_cap_bytes": cap, **device}


def memory(prefix: str = "") -> dict:
    """PyTorch's allocator now and at its peak since the last reset, and what the whole device holds."""
    if not torch.cuda.is_initialized():
        return {}
    try:
        free, total = _mem_get_info()
        return {
            f"{prefix}max_allocated_bytes": torch.cuda.max_memory_allocated(),
            f"{prefix}max_reserved_bytes": torch.cuda.max_memory_reserved(),
            f"{prefix}allocated_bytes": torch.cuda.memory_allocated(),
            f"{prefix}reserved_bytes": torch.cuda.memory_reserved(),
            f"{prefix}device_used_bytes": total - free,  # every process's memory on the card, CUDA contexts included
            # whether the allocator grows its segments (PYTORCH_CUDA_ALLOC_CONF, set by app.py) or keeps fixed ones
            f"{prefix}expandable_segments": any(s.get("is_expandable") for s in torch.cuda.memory_snapshot()),
        }
    except RuntimeError as error:  # a CUDA error left sticky by the call: report that instead of failing here
        return {f"{prefix}memory_error": str(error)[:500]}


def peak_probed(task):
    """`task` as its worker runs it (spaces' run_task calls it, then queues the result: wrappers.py:278-288),
    reporting the peak memory of the call in a "worker_peak" event, also when it raises (out of memory)."""
    if inspect.isgeneratorfunction(task):  # none in the app; spaces would treat a wrapper as a plain function
        return task

    @functools.wraps(task)
    def probed(*args, **kwargs):
        call = "request" if STARTED else "startup"
        before = memory("before_")  # a fresh worker: the move; a reused one: nothing since its last call
        if torch.cuda.is_initialized():
            torch.cuda.reset_peak_memory_stats()
        start, error = time.perf_counter(), None
        try:
            return task(*args, **kwargs)
        except BaseException as exception:
            error = f"{type(exception).__name__}: {exception}"[:2000]
            raise
        finally:
            with contextlib.suppress(RuntimeError):  # the allocator's peak needs no sync; a sticky error is reported below
                if torch.cuda.is_initialized():
                    torch.cuda.synchronize()
            report("worker_peak", call=call, function=task.__name__, seconds=time.perf_counter() - start,
                   error=error, cuda=torch.cuda.is_initialized(), **before, **memory())
            with contextlib.suppress(RuntimeError):
                if torch.cuda.is_initialized():
                    torch.cuda.reset_peak_memory_stats()  # the next call in this worker starts from here

    return probed


if ZEROGPU:
    from spaces.zero import torch as zero_torch
    from spaces.zero.torch import patching

    _move = zero_torch.move
    _gpu = spaces.GPU

    def probed_gpu(task=None, **kwargs):
        """spaces.GPU, with the decorated function wrapped by `peak_probed`: app.py and optimization.py read
        `spaces.GPU` when they decorate, after this module has replaced it."""
        if callable(task):
            return _gpu(peak_probed(task), **kwargs)
        decorate = _gpu(task, **kwargs)
        return lambda function: decorate(peak_probed(function))

    spaces.GPU = probed_gpu

    def probed_move(*args, **kwargs):
        cap = cap_memory()  # the worker has initialised CUDA (patching.py:415-417); nothing has moved in yet
        start = time.perf_counter()
        _move(*args, **kwargs)
        seconds = time.perf_counter() - start
        on_gpu = {"allocated_bytes": torch.cuda.memory_allocated()} if torch.cuda.is_initialized() else {}
        startup = [e for e in map(json.loads, open(os.environ["ZEROGPU_TEST_REPORT"])) if e["event"] == "startup"]
        if not startup:  # the startup compile's worker: nothing is compiled yet
            return report("worker", weights=0, moved=0, move_seconds=seconds, **cap, **on_gpu)
        checking = time.perf_counter()
        weights = compiled_weights(sys.modules["app"].pipe.transformer)
        device = "cpu" if SHIMMED else "cuda"
        moved = sum(
            w.device.type == device and math.isclose(checksum(w), expected, rel_tol=1e-5)
            for w, expected in zip(weights, startup[0]["checksums"], strict=True)
        ) if CHECKSUMS else None
        report("worker", weights=len(weights), moved=moved, move_seconds=seconds,
               probe_seconds=time.perf_counter() - checking, **cap, **on_gpu)

    zero_torch.move = probed_move


report("main")
start = time.perf_counter()
import app  # noqa: E402  loads, optimizes (compiling in a worker) and builds the UI

imported = time.time()
STARTED = True
weights = compiled_weights(app.pipe.transformer)
report(
    "startup",
    seconds=time.perf_counter() - start,
    imported=imported,
    weights=len(weights),
    tracked=sum(w in patching.cuda_aliases for w in weights) if ZEROGPU else 0,
    checksums=[checksum(w) for w in weights] if CHECKSUMS else [],
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
