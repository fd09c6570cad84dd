"""The app under spaces' real ZeroGPU mode on a GPU machine: start to serving, and what a request pays.

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
transformer = FluxTransformer2DModel.from_pretrained({str(model)!r}, subfolder="transformer", dtype=torch.bfloat16).to("cuda")
start = time.perf_counter()
prepare_transformer_(transformer, OptimizationConfig(), fp8=True)
print(json.dumps({{"seconds": time.perf_counter() - start, "parameters": sum(p.numel() for p in transformer.parameters()),
                   "cpu_threads": torch.get_num_threads()}}))
"""
    env = {**os.environ, "SPACES_ZERO_GPU": "true", "SPACES_ZERO_DEVICE_API_URL": device_api + "/"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode:
        return {"error": result.stderr[-2000:]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def one_start(label: str, folder: Path, api: harness.DeviceAPI, env: dict, requests: list[dict], fresh: int, reused: int) -> dict:
    first_call = len(api.calls())
    server = harness.serve(folder, zerogpu=True, env=env)
    calls = api.calls()[first_call:]
    (startup,) = server.events("startup")
    schedule, allow, release = (next(c for c in calls if c["call"] == name) for name in ("schedule", "allow", "release"))
    probes = startup["time"] - startup["imported"]  # the harness's own checks between import and launch
    result = {
        "start": label,
        "start_to_serving_s": server.serving - server.started - probes,
        "import_app_s": startup["seconds"],
        "startup_worker_s": release["time"] - allow["time"],  # move in, compile or cache load, quantize, hand back
        "main_after_worker_s": startup["imported"] - release["time"],  # bind the programs, build the UI
        "pack_and_launch_s": server.serving - startup["time"],  # spaces packs the tracked tensors to disk
        "harness_probes_s": probes,  # not part of the app's start: excluded above
        "compiles": len(server.events("compile")),
        "status": startup["status"],
        "requests": [],
    }
    print(json.dumps({k: v for k, v in result.items() if k != "requests"}), flush=True)
    client = server.client()
    for kind, count in (("fresh", fresh), ("reused", reused)):
        for request in requests:
            for _ in range(count):
                api.set_idle(kind == "reused")
                before = len(api.calls())
                start = time.perf_counter()
                client.predict("a photo of an astronaut riding a horse", 1, False, request["width"], request["height"],
                               3.5, request["steps"], request.get("lora", ""), 1.0, api_name="/infer")
                latency = time.perf_counter() - start
                timing = server.events("request")[-1]
                worker = [w for w in server.events("worker") if w["time"] > timing["time"] - latency]
                probe = worker[0]["probe_seconds"] if worker else 0.0  # the harness's check in the worker
                row = {
                    "worker": kind, **request, "latency_s": latency, "generation_s": timing["seconds"],
                    "seconds_per_step": timing["seconds_per_step"], "lora_s": timing["lora_seconds"],
                    "overhead_s": latency - timing["seconds"] - probe,  # fork, CUDA init, move, runner load, graph capture
                    "move_s": worker[0]["move_seconds"] if worker else 0.0, "harness_probe_s": probe,
                    "weights_moved": f"{worker[0]['moved']}/{worker[0]['weights']}" if worker else "",
                    "allowed": any(c["call"] == "allow" for c in api.calls()[before:]),
                }
                result["requests"].append(row)
                print(json.dumps(row), flush=True)
    result["workers_killed_at_stop"] = harness.stop(server)
    extracted = ("aoti-pid-", "aotinductor_")
    result["tmp_leftovers_after_stop"] = [p.name for p in server.tmp.iterdir() if p.name.startswith(extracted)]
    return result


def table(results: dict) -> str:
    lines = [f"{results['card']} · torch {results['torch']} · {results['command']}", "",
             "| start | start to serving | startup worker | main after worker | pack + launch | compiles |",
             "|---|---:|---:|---:|---:|---:|"]
    for s in results["starts"]:
        lines.append(f"| {s['start']} | {s['start_to_serving_s']:.1f} s | {s['startup_worker_s']:.1f} s | "
                     f"{s['main_after_worker_s']:.1f} s | {s['pack_and_launch_s']:.1f} s | {s['compiles']} |")
    lines += ["", "| start | worker | size, steps | LoRA | latency | generation | of it LoRA fuse | s/step | overhead | move |",
              "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for s in results["starts"]:
        for r in s["requests"]:
            lines.append(
                f"| {s['start']} | {r['worker']} | {r['width']}x{r['height']}, {r['steps']} | {r.get('lora') or 'none'} | "
                f"{r['latency_s']:.2f} s | {r['generation_s']:.2f} s | {r.get('lora_s', 0):.2f} s | "
                f"{r['seconds_per_step']:.3f} | {r['overhead_s']:.2f} s | {r['move_s']:.2f} s |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["embedded", "flux-dev"], default="embedded")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--fresh", type=int, default=2, help="requests per size in fresh workers")
    parser.add_argument("--reused", type=int, default=2, help="requests per size in the reused worker")
    parser.add_argument("--sizes", nargs="+", default=["1024x1024:28"], help="WIDTHxHEIGHT:STEPS")
    parser.add_argument("--starts", type=int, default=2, choices=[0, 1, 2], help="from an empty cache, then a warm one")
    parser.add_argument("--requantize", action="store_true")
    parser.add_argument("--lora-rank", type=int, default=0, help="also send each request with a random LoRA of this rank")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()

    import torch

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-zerogpu-"))
    work.mkdir(parents=True, exist_ok=True)
    model = EMBEDDED if args.model == "embedded" else build_flux_dev(work / "flux-dev-random")
    results = {
        "card": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "CPU",
        "torch": torch.__version__, "python": platform.python_version(), "model": args.model,
        "command": " ".join(["bench_zerogpu.py", *sys.argv[1:]]), "starts": [],
    }
    requests = [dict(zip(("width", "height", "steps"), map(int, s.replace(":", "x").split("x")))) for s in args.sizes]
    api = harness.start_device_api(work)
    env = {"SPACES_ZERO_DEVICE_API_URL": api.url + "/", "AOTI_CACHE_DIR": str(work / "aoti-cache"), "FLUX_MODEL": str(model)}
    if args.lora_rank:
        env["FLUX_LORA_DIR"] = str(random_lora_folder(model, args.lora_rank, work / "loras"))
        requests = [{**r, "lora": lora} for r in requests for lora in ("", f"random-rank{args.lora_rank}")]
    try:
        for label in ("empty cache", "warm cache")[: args.starts]:
            folder = work / label.replace(" ", "-")
            results["starts"].append(one_start(label, folder, api, env, requests, args.fresh, args.reused))
            shutil.rmtree(folder / "offload", ignore_errors=True)  # the packed tensors: GBs of disk
            args.json.write_text(json.dumps(results, indent=1))
        if args.requantize:
            results["requantize_on_main_cpu"] = requantize_seconds(model, api.url)
            print(json.dumps(results["requantize_on_main_cpu"]), flush=True)
            args.json.write_text(json.dumps(results, indent=1))
    finally:
        api.process.kill()
    print(table(results))


if __name__ == "__main__":
    main()
