"""The app under spaces' real ZeroGPU mode on a GPU machine: start to serving, what a request pays, peak GPU memory.

    python -m bench.bench_zerogpu --model flux-dev --full-pipeline --memory-cap-gb 48 --lora-rank 16 --no-weight-checks \
        --sizes 1024x1024:4 2048x2048:4 --fresh 1 --reused 1 --starts 1 --time-budget-s 420 --json OUT.json
                                   # does the default setup fit ZeroGPU's `large` (48 GB) with 10% to spare?
    python -m bench.bench_zerogpu --model embedded --json OUT.json
    python -m bench.bench_zerogpu --model flux-dev --json OUT.json   # FLUX.1-dev's transformer, random weights

Serves app.py through tests/zerogpu (the device-API stand-in and the observing probes) twice: from
an empty program cache, then again from the cache the first start filled. Each start serves requests
in fresh workers (the stand-in answers idle=false and kills the previous worker, as ZeroGPU takes
the GPU back), then in the reused last one. Per request: the client's latency beside the generation
itself (the GPU function's own timing), the tracked tensors' move into the worker, and the rest
(fork, CUDA init, runner load, CUDA-graph capture). `--requantize` also times what the main process
paid before the GPU function returned its FP8 weights: quantizing its own bf16 copy on the CPU.
`--lora-rank R` also sends each request with a random LoRA of rank R (bench_lora's) and records the
fuse in the worker, whose masters come from the main process's host memory.

Memory: every GPU function's call records, in its worker, the peak of PyTorch's allocator (allocated and
reserved; the fresh worker's move in included) and what the device held beside the allocator (CUDA context,
modules): the startup compile's peak and each request's. `--memory-cap-gb 48` makes every worker see a 48 GB
card, as a ZeroGPU `large` slice (half an RTX Pro 6000): the allocator is capped there and `mem_get_info`
reports it (tests/zerogpu/serve_app.py), and the table marks the cap and its 90% line. GB = 10^9 bytes.
`--full-pipeline` builds every component at FLUX.1-dev's configuration (bench_pipeline's T5-XXL, CLIP-L,
VAE and transformer, random bf16 weights, 34 GB on disk) instead of tiny text encoders and VAE.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.zerogpu import harness

ROOT = Path(__file__).resolve().parents[1]

EMBEDDED = ROOT / "assets" / "tiny-flux"
GB = 1e9
# Bytes on disk of the built folder, and what spaces packs at launch (the FP8 transformer, the text encoders, the VAE).
FOOTPRINT = {"flux-dev": (23.9e9, 12.6e9), "full-pipeline": (33.9e9, 22.6e9)}


def build_flux_dev(folder: Path) -> Path:
    """A pipeline folder with FLUX.1-dev's transformer (random bf16 weights) and tiny text encoders and VAE."""
    import torch
    from diffusers import FluxTransformer2DModel

    from assets.build_tiny_flux import build
    from bench.bench_transformer import FLUX_DEV

    with torch.device("cuda"):  # random init of 11.9 B parameters: seconds on the GPU, minutes on the CPU
        transformer = FluxTransformer2DModel(**FLUX_DEV).to(torch.bfloat16)
    pipeline = build(transformer=transformer)
    for name in ("text_encoder", "text_encoder_2", "vae"):
        getattr(pipeline, name).to(torch.bfloat16)
    pipeline.save_pretrained(folder, safe_serialization=True)
    del pipeline, transformer
    torch.cuda.empty_cache()
    return folder


def build_full_pipeline(folder: Path) -> Path:
    """A pipeline folder with every component at FLUX.1-dev's configuration (random bf16 weights) and the embedded
    model's tokenizers: bench_pipeline's, as `FluxPipeline.from_pretrained` loads it."""
    import torch

    from bench.bench_pipeline import build_pipeline

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # else the transformer is first allocated in fp32 (48 GB), then cast
    try:
        pipeline = build_pipeline("flux-dev")
    finally:
        torch.set_default_dtype(previous)
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder


def build_in_subprocess(builder: str, folder: Path) -> dict:
    """`builder(folder)` in a child process, so that this one never holds CUDA memory or a CUDA context while the
    app's workers run; an existing folder (a rerun with the same --work) is kept."""
    if (folder / "model_index.json").exists():
        return {"builder": builder, "folder": str(folder), "reused": True}
    code = (f"import time; from pathlib import Path; from bench.bench_zerogpu import {builder}; t = time.perf_counter(); "
            f"{builder}(Path({str(folder)!r})); print('build_and_save_s', time.perf_counter() - t)")
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    if result.returncode:
        shutil.rmtree(folder, ignore_errors=True)
        raise SystemExit(f"{builder} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    timed = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("build_and_save_s ")]
    return {"builder": builder, "folder": str(folder), "reused": False, "seconds": time.perf_counter() - start,
            "build_and_save_s": float(timed[-1]) if timed else None,
            "bytes": sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())}


def model_parent(work: Path, model_bytes: float, packed_bytes: float) -> Path:
    """Where the built folder goes: beside the packed tensors in `work` if its disk holds both, else in /dev/shm
    (RAM) if that holds it with room for the FP8 weights the startup worker hands back through shared memory."""
    slack = 1.5e9  # program caches, extracted programs, Gradio's files
    free = shutil.disk_usage(work).free
    if free >= model_bytes + packed_bytes + slack:
        return work
    shm = Path("/dev/shm")
    shm_free = shutil.disk_usage(shm).free if shm.is_dir() else 0
    if free >= packed_bytes + slack and shm_free >= model_bytes + packed_bytes / 2 + slack:
        print(f"{work}: {free / GB:.1f} GB free, too little for the model and the packed tensors: model in {shm}", flush=True)
        folder = Path(tempfile.mkdtemp(prefix="bench-zerogpu-model-", dir=shm))
        return folder
    raise SystemExit(
        f"Not enough room: the model needs {model_bytes / GB:.1f} GB and spaces packs {packed_bytes / GB:.1f} GB at launch; "
        f"{work} has {free / GB:.1f} GB free, {shm} {shm_free / GB:.1f} GB. Pass --work on a larger disk."
    )


def card() -> dict:
    """The GPU, from nvidia-smi: this process never initialises CUDA (its context would sit on the workers' card)."""
    if shutil.which("nvidia-smi"):
        result = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True)
        if result.returncode == 0 and result.stdout.strip():
            name, memory, driver = (field.strip() for field in result.stdout.splitlines()[0].split(","))
            return {"card": name, "card_memory": memory, "driver": driver}
    return {"card": platform.processor() or "CPU"}


def random_lora_folder(model: Path, rank: int, folder: Path) -> Path:
    """A folder with one random LoRA of `rank` over the model's attention and MLP linears (bench_lora's)."""
    import torch
    from diffusers import FluxTransformer2DModel
    from safetensors.torch import save_file

    from bench.bench_lora import random_lora

    config = FluxTransformer2DModel.load_config(model, subfolder="transformer")
    with torch.device("meta"):  # only the layers' shapes are read
        transformer = FluxTransformer2DModel.from_config(config)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(random_lora(transformer, rank, seed=rank), folder / f"random-rank{rank}.safetensors")
    return folder


def requantize_seconds(model: Path, device_api: str) -> dict:
    """The main process's former startup step: FP8-quantize its own bf16 transformer under ZeroGPU's emulation."""
    code = f"""
import json, time, torch, spaces
from diffusers import FluxTransformer2DModel
from config import OptimizationConfig
from optimization import prepare_transformer_
from plan import Plan
transformer = FluxTransformer2DModel.from_pretrained({str(model)!r}, subfolder="transformer", dtype=torch.bfloat16).to("cuda")
start = time.perf_counter()
prepare_transformer_(transformer, OptimizationConfig(), Plan.assumed(OptimizationConfig(), "row"))
print(json.dumps({{"seconds": time.perf_counter() - start, "parameters": sum(p.numel() for p in transformer.parameters()),
                   "cpu_threads": torch.get_num_threads()}}))
"""
    env = {**os.environ, "SPACES_ZERO_GPU": "true", "SPACES_ZERO_DEVICE_API_URL": device_api + "/"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode:
        return {"error": result.stderr[-2000:]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def read_events(report: Path, kind: str) -> list[dict]:
    if not report.exists():
        return []
    events = [json.loads(line) for line in report.read_text().splitlines() if line.strip()]
    return [e for e in events if e["event"] == kind]


def peaks(event: dict | None) -> dict:
    """A "worker_peak" event in GB: the worker's peak over the call and what came before it in that worker (the
    move, in a fresh one), and the device's peak estimated as the allocator's reserved peak plus what the device
    held outside the allocator at the end of the call (CUDA context, loaded modules)."""
    if not event:
        return {}
    out = {"peak_function": event.get("function"), "peak_error": event.get("error")}
    if "max_allocated_bytes" not in event:  # no CUDA (the CPU shims), or a CUDA error
        return {**out, "peak_allocated_gb": None, "peak_reserved_gb": None, "device_peak_gb": None}
    allocated = max(event["max_allocated_bytes"], event.get("before_max_allocated_bytes", 0))
    reserved = max(event["max_reserved_bytes"], event.get("before_max_reserved_bytes", 0))
    outside = max(0, event["device_used_bytes"] - event["reserved_bytes"])
    return {
        **out,
        "peak_allocated_gb": allocated / GB, "peak_reserved_gb": reserved / GB,
        "call_peak_allocated_gb": event["max_allocated_bytes"] / GB,
        "before_call_peak_allocated_gb": event.get("before_max_allocated_bytes", 0) / GB,
        "outside_allocator_gb": outside / GB, "device_peak_gb": (reserved + outside) / GB,
        "allocated_at_end_gb": event["allocated_bytes"] / GB, "device_used_at_end_gb": event["device_used_bytes"] / GB,
        "expandable_segments": event.get("expandable_segments"),
    }


def startup_memory(report: Path) -> dict:
    """The startup worker's cap and peak (the compile at import), from the probes' report."""
    workers = read_events(report, "worker")
    startup_peaks = [e for e in read_events(report, "worker_peak") if e["call"] == "startup"]
    worst = max(startup_peaks, key=lambda e: e.get("max_reserved_bytes", 0), default=None)
    cap = workers[0] if workers else {}
    return {"startup_worker": {k: cap.get(k) for k in ("memory_cap_bytes", "memory_cap", "cuda_total_bytes",
                                                        "device_name", "allocated_bytes", "move_seconds") if k in cap},
            "startup_peak": peaks(worst), "startup_peak_events": startup_peaks}


def kill_workers(calls: list[dict]) -> list[int]:
    """Workers of a failed start that outlived its app (a killed app leaves its daemon workers holding the GPU)."""
    import psutil

    killed = []
    for pid in {int(c["pid"]) for c in calls if c["call"] == "allow"}:
        try:
            psutil.Process(pid).kill()
            killed.append(pid)
        except psutil.Error:
            pass
    return killed


def one_start(label: str, folder: Path, api: harness.DeviceAPI, env: dict, requests: list[dict], fresh: int, reused: int,
              save, deadline: float | None) -> dict:
    first_call = len(api.calls())
    result: dict = {"start": label, "requests": []}
    timeout = harness.STARTUP_TIMEOUT if deadline is None else max(60.0, deadline - time.monotonic())
    try:
        server = harness.serve(folder, zerogpu=True, env=env, timeout=timeout)
    except harness.HarnessError as error:  # e.g. out of memory under the cap, or past the time budget
        result.update(error=str(error)[-6000:], **startup_memory(folder / "report.jsonl"))
        result["workers_killed"] = kill_workers(api.calls()[first_call:])
        print(json.dumps({k: v for k, v in result.items() if k != "startup_peak_events"}), flush=True)
        return result
    calls = api.calls()[first_call:]
    (startup,) = server.events("startup")
    schedule, allow, release = (next(c for c in calls if c["call"] == name) for name in ("schedule", "allow", "release"))
    probes = startup["time"] - startup["imported"]  # the harness's own checks between import and launch
    result.update({
        "start_to_serving_s": server.serving - server.started - probes,
        "import_app_s": startup["seconds"],
        "startup_worker_s": release["time"] - allow["time"],  # move in, compile or cache load, quantize, hand back
        "main_after_worker_s": startup["imported"] - release["time"],  # bind the programs, build the UI
        "pack_and_launch_s": server.serving - startup["time"],  # spaces packs the tracked tensors to disk
        "harness_probes_s": probes,  # not part of the app's start: excluded above
        "compiles": len(server.events("compile")),
        "status": startup["status"],
        **startup_memory(server.report),
    })
    print(json.dumps({k: v for k, v in result.items() if k not in ("requests", "startup_peak_events")}), flush=True)
    save(result)
    client = server.client()
    for kind, count in (("fresh", fresh), ("reused", reused)):
        for request in requests:
            for _ in range(count):
                if deadline is not None and time.monotonic() > deadline:
                    result["requests"].append({"worker": kind, **request, "skipped": "past --time-budget-s"})
                    continue
                api.set_idle(kind == "reused")
                before = len(api.calls())
                seen = {name: len(server.events(name)) for name in ("request", "worker", "worker_peak")}
                start = time.perf_counter()
                try:
                    client.predict("a photo of an astronaut riding a horse", 1, False, request["width"], request["height"],
                                   3.5, request["steps"], request.get("lora", ""), 1.0, api_name="/infer")
                    error = None
                except Exception as exception:  # out of memory under the cap: recorded, and the next request goes on
                    error = f"{type(exception).__name__}: {exception}"[:2000]
                latency = time.perf_counter() - start
                timing = (server.events("request")[seen["request"]:] or [None])[-1]
                worker = server.events("worker")[seen["worker"]:]
                peak = [e for e in server.events("worker_peak")[seen["worker_peak"]:] if e["call"] == "request"]
                probe = worker[0].get("probe_seconds", 0.0) if worker else 0.0  # the harness's check in the worker
                row = {"worker": kind, **request, "latency_s": latency, "error": error,
                       "move_s": worker[0]["move_seconds"] if worker else 0.0, "harness_probe_s": probe,
                       "weights_moved": f"{'unchecked' if worker[0]['moved'] is None else worker[0]['moved']}/"
                                        f"{worker[0]['weights']}" if worker else "",
                       "allowed": any(c["call"] == "allow" for c in api.calls()[before:]), **peaks(peak[-1] if peak else None)}
                if error:  # spaces drops a worker whose call raised, but the stand-in does not end it as ZeroGPU does:
                    # ended here, so that its memory does not sit on the card beside the next worker's
                    row["workers_killed"] = kill_workers([c for c in api.calls() if c["call"] == "allow"][-1:])
                if worker:  # a fresh worker: the cap it applied before the move (None: uncapped, or no CUDA)
                    row["worker_memory_cap_gb"] = (worker[0].get("memory_cap_bytes") or 0) / GB or None
                if timing:
                    row.update({
                        "generation_s": timing["seconds"], "seconds_per_step": timing["seconds_per_step"],
                        "lora_s": timing["lora_seconds"],
                        "overhead_s": latency - timing["seconds"] - probe,  # fork, CUDA init, move, runner load, graph capture
                        "app_gpu_peak_gb": timing["gpu_peak_bytes"] / GB if timing.get("gpu_peak_bytes") else None,
                    })
                result["requests"].append(row)
                print(json.dumps(row), flush=True)
                save(result)
    result["workers_killed_at_stop"] = harness.stop(server)
    extracted = ("aoti-pid-", "aotinductor_")
    result["tmp_leftovers_after_stop"] = [p.name for p in server.tmp.iterdir() if p.name.startswith(extracted)]
    shutil.rmtree(server.tmp, ignore_errors=True)
    return result


def gb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} GB"


def verdict(device_peak: float | None, cap: float | None) -> str:
    if device_peak is None or not cap:
        return ""
    if device_peak > cap:
        return f"OVER THE CAP by {device_peak - cap:.1f} GB"
    if device_peak > 0.9 * cap:
        return f"over the 90% line by {device_peak - 0.9 * cap:.1f} GB"
    return f"fits, {0.9 * cap - device_peak:.1f} GB under the 90% line"


def memory_summary(results: dict) -> dict:
    """The largest peak of the run (startup or request) against the cap and its 90% line."""
    cap = results.get("memory_cap_gb")
    calls = [(f"startup ({s['start']})", s.get("startup_peak", {})) for s in results["starts"]]
    calls += [(f"request {r['worker']} {r['width']}x{r['height']} {r.get('lora') or 'no LoRA'}", r)
              for s in results["starts"] for r in s["requests"]]
    measured = [(name, c) for name, c in calls if c.get("device_peak_gb") is not None]
    failed = [name for name, c in calls if c.get("error") or c.get("peak_error")] + \
             [f"start ({s['start']})" for s in results["starts"] if s.get("error")]
    if not measured:
        return {"measured": False, "failed": failed}
    name, worst = max(measured, key=lambda item: item[1]["device_peak_gb"])
    summary = {"measured": True, "largest": name, "device_peak_gb": worst["device_peak_gb"],
               "peak_reserved_gb": worst["peak_reserved_gb"], "peak_allocated_gb": worst["peak_allocated_gb"],
               "failed": failed}
    if cap:
        summary.update(cap_gb=cap, line_90_gb=0.9 * cap, verdict=verdict(worst["device_peak_gb"], cap),
                       fits_with_10_percent_spare=worst["device_peak_gb"] <= 0.9 * cap and not failed)
    return summary


def table(results: dict) -> str:
    lines = [f"{results['card']} · torch {results['torch']} · {results['command']}", "",
             "| start | start to serving | startup worker | main after worker | pack + launch | compiles |",
             "|---|---:|---:|---:|---:|---:|"]
    for s in results["starts"]:
        if s.get("error"):
            lines.append(f"| {s['start']} | failed: {s['error'].splitlines()[0][:120]} | | | | |")
            continue
        lines.append(f"| {s['start']} | {s['start_to_serving_s']:.1f} s | {s['startup_worker_s']:.1f} s | "
                     f"{s['main_after_worker_s']:.1f} s | {s['pack_and_launch_s']:.1f} s | {s['compiles']} |")
    lines += ["", "| start | worker | size, steps | LoRA | latency | generation | of it LoRA fuse | s/step | overhead | move |",
              "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for s in results["starts"]:
        for r in s["requests"]:
            what = f"| {s['start']} | {r['worker']} | {r['width']}x{r['height']}, {r['steps']} | {r.get('lora') or 'none'} |"
            if r.get("skipped") or "generation_s" not in r:
                lines.append(f"{what} {r.get('skipped') or 'failed: ' + str(r.get('error'))[:100]} | | | | | |")
                continue
            lines.append(
                f"{what} {r['latency_s']:.2f} s | {r['generation_s']:.2f} s | {r.get('lora_s', 0):.2f} s | "
                f"{r['seconds_per_step']:.3f} | {r['overhead_s']:.2f} s | {r['move_s']:.2f} s |"
            )
    cap = results.get("memory_cap_gb")
    limits = f"cap {cap:g} GB, 90% line {0.9 * cap:.1f} GB" if cap else "no cap"
    lines += ["", f"Peak GPU memory per call, in its worker ({limits}; GB = 10^9 bytes; device = reserved + outside the "
                  "allocator, judged against the line):", "",
              "| call | worker | size | LoRA | allocated | reserved | outside allocator | device | of it before the call | "
              "app's own | against the cap |",
              "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    def memory_row(call: str, worker: str, size: str, lora: str, p: dict) -> str:
        judged = p.get("peak_error") or p.get("error") or verdict(p.get("device_peak_gb"), cap)
        columns = ("peak_allocated_gb", "peak_reserved_gb", "outside_allocator_gb", "device_peak_gb",
                   "before_call_peak_allocated_gb", "app_gpu_peak_gb")
        return f"| {call} | {worker} | {size} | {lora} | " + " | ".join(gb(p.get(c)) for c in columns) + f" | {judged[:120]} |"

    for s in results["starts"]:
        if s.get("startup_peak"):
            lines.append(memory_row(f"startup ({s['start']})", "compile", "", "", s["startup_peak"]))
        for r in s["requests"]:
            if not r.get("skipped"):
                lines.append(memory_row("request", r["worker"], f"{r['width']}x{r['height']}", r.get("lora") or "none", r))
    summary = results.get("memory")
    if summary and summary.get("measured"):
        lines += ["", f"Largest: {summary['largest']}, {gb(summary['device_peak_gb'])} on the device "
                      f"({gb(summary['peak_reserved_gb'])} reserved, {gb(summary['peak_allocated_gb'])} allocated)"
                      + (f": {summary['verdict']}" if cap else "") + "."]
    if summary and summary.get("failed"):
        lines.append(f"Failed: {', '.join(summary['failed'])}.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["embedded", "flux-dev"], default="embedded")
    parser.add_argument("--full-pipeline", action="store_true",
                        help="with --model flux-dev: every component at FLUX.1-dev's configuration (T5-XXL, CLIP-L, VAE)")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--fresh", type=int, default=2, help="requests per size in fresh workers")
    parser.add_argument("--reused", type=int, default=2, help="requests per size in the reused worker")
    parser.add_argument("--sizes", nargs="+", default=["1024x1024:28"], help="WIDTHxHEIGHT:STEPS")
    parser.add_argument("--starts", type=int, default=2, choices=[0, 1, 2], help="from an empty cache, then a warm one")
    parser.add_argument("--requantize", action="store_true")
    parser.add_argument("--lora-rank", type=int, default=0, help="also send each request with a random LoRA of this rank")
    parser.add_argument("--memory-cap-gb", type=float, default=None,
                        help="cap every worker's GPU at this many GB (10^9 bytes), as a ZeroGPU slice: 48 for `large`")
    parser.add_argument("--no-weight-checks", action="store_true",
                        help="skip the harness's weight checksums (about 30 s of a FLUX.1-dev start)")
    parser.add_argument("--time-budget-s", type=float, default=None,
                        help="seconds from this process's start after which no request is sent (a start gets what is left)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    if args.full_pipeline and args.model != "flux-dev":
        parser.error("--full-pipeline needs --model flux-dev")
    began = time.monotonic()
    deadline = began + args.time_budget_s if args.time_budget_s else None

    import torch  # not CUDA: the builds and the app's workers use the GPU, each in its own process

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-zerogpu-"))
    work.mkdir(parents=True, exist_ok=True)
    results = {
        **card(), "torch": torch.__version__, "python": platform.python_version(), "model": args.model,
        "full_pipeline": args.full_pipeline, "command": " ".join(["bench_zerogpu.py", *sys.argv[1:]]),
        "memory_cap_gb": args.memory_cap_gb, "line_90_gb": 0.9 * args.memory_cap_gb if args.memory_cap_gb else None,
        "gb": "10^9 bytes", "starts": [],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)

    def save(start: dict | None = None) -> None:
        if start is not None and not any(start is s for s in results["starts"]):
            results["starts"].append(start)
        results["elapsed_s"] = time.monotonic() - began
        results["memory"] = memory_summary(results)
        args.json.write_text(json.dumps(results, indent=1))

    model, in_ram = EMBEDDED, False
    if args.model == "flux-dev":
        name = "flux-dev-full-random" if args.full_pipeline else "flux-dev-random"
        built = (work / name / "model_index.json").exists()  # a rerun with the same --work: kept
        parent = work if built else model_parent(work, *FOOTPRINT["full-pipeline" if args.full_pipeline else "flux-dev"])
        in_ram = parent != work
        model = parent / name
        results["build"] = build_in_subprocess("build_full_pipeline" if args.full_pipeline else "build_flux_dev", model)
        results["build"]["free_disk_gb"] = shutil.disk_usage(work).free / GB
        print(json.dumps(results["build"]), flush=True)
        save()
    requests = [dict(zip(("width", "height", "steps"), map(int, s.replace(":", "x").split("x")))) for s in args.sizes]
    api = harness.start_device_api(work)
    env = {"SPACES_ZERO_DEVICE_API_URL": api.url + "/", "AOTI_CACHE_DIR": str(work / "aoti-cache"), "FLUX_MODEL": str(model)}
    if args.memory_cap_gb:
        env["ZEROGPU_TEST_MEMORY_GB"] = str(args.memory_cap_gb)
    if args.no_weight_checks:
        env["ZEROGPU_TEST_CHECKSUMS"] = "0"
    if args.lora_rank:
        env["FLUX_LORA_DIR"] = str(random_lora_folder(model, args.lora_rank, work / "loras"))
        requests = [{**r, "lora": lora} for r in requests for lora in ("", f"random-rank{args.lora_rank}")]
    try:
        for label in ("empty cache", "warm cache")[: args.starts]:
            folder = work / label.replace(" ", "-")
            start = one_start(label, folder, api, env, requests, args.fresh, args.reused, save, deadline)
            save(start)
            shutil.rmtree(folder / "offload", ignore_errors=True)  # the packed tensors: GBs of disk
            if start.get("error"):
                break  # the next start would fail alike
        if args.requantize:
            results["requantize_on_main_cpu"] = requantize_seconds(model, api.url)
            print(json.dumps(results["requantize_on_main_cpu"]), flush=True)
            save()
    finally:
        api.process.kill()
        if in_ram:
            shutil.rmtree(model.parent, ignore_errors=True)  # RAM
        save()
    print(table(results))
    if any(s.get("error") for s in results["starts"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
