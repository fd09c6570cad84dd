"""Ray Serve (serve.py) against the plain app: latency per request, images per minute, a new replica's start.

    python -m bench.bench_serve --json bench/results/serve-h200.json --replicas 1         # overhead on one GPU
    python -m bench.bench_serve --json out/serve.json --replicas 1 --model flux-dev      # the same, without the Hub
    python -m bench.bench_serve --json bench/results/serve-h200x4.json --replicas 4       # throughput on four
    python -m bench.bench_serve --json out/serve-cpu.json --model embedded --size 256 --steps 2   # CPU smoke run

Each server is started cold in its own process, as a user starts it, and called through gradio_client:
`--requests` requests one after another (latency: what Ray Serve adds to each), then the same number at
once (images per minute: what the replicas add). The plain app compiles into its own cache, and serve.py's
replicas into theirs (one compiles, the others load). Then one replica is killed: "replacement_s" is the time
from the kill until its replacement, which loads the program from the cache, is ready to serve.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.bench_zerogpu import build_flux_dev
from config import EMBEDDED_MODEL
from tests.serve_harness import Served
from tests.zerogpu import harness


def request(seed: int, args: argparse.Namespace) -> list:
    return ["a tiny astronaut hatching from an egg on the moon", seed, False, args.size, args.size, 3.5, args.steps]


def measure(client, args: argparse.Namespace) -> dict:
    """Latency of requests one at a time, then the throughput of as many at once."""
    client.predict(*request(0, args), api_name="/infer")  # warm-up: the first image at this size
    latencies = []
    for seed in range(args.requests):
        start = time.perf_counter()
        client.predict(*request(seed, args), api_name="/infer")
        latencies.append(time.perf_counter() - start)
    start = time.perf_counter()
    jobs = [client.submit(*request(seed, args), api_name="/infer") for seed in range(args.requests)]
    for job in jobs:
        job.result(timeout=1800)
    together = time.perf_counter() - start
    return {"latency_s": latencies, "median_latency_s": statistics.median(latencies),
            "concurrent_s": together, "images_per_minute": 60 * args.requests / together}


def plain_app(folder: Path, env: dict[str, str], args: argparse.Namespace) -> dict:
    server = harness.serve(folder, zerogpu=False, env={**env, "AOTI_CACHE_DIR": str(folder / "aoti-cache")})
    try:
        return {"startup_s": server.serving - server.started, **measure(server.client(), args)}
    finally:
        harness.stop(server)


def ray_serve(folder: Path, env: dict[str, str], args: argparse.Namespace) -> dict:
    started = time.time()
    served = Served(folder, replicas=args.replicas, env=env)
    try:
        served.wait_until_serving()
        result = {"startup_s": time.time() - started, "replicas": served.started(args.replicas), **measure(served.client(), args)}
        victim = next(iter(result["replicas"]))
        killed = time.perf_counter()
        os.kill(victim, signal.SIGKILL)
        replicas = served.started(args.replicas + 1, timeout=1800)  # the replacement logs once it can serve
        (replacement,) = set(replicas) - set(result["replicas"])
        result.update(replacement_s=time.perf_counter() - killed, replacement=replicas[replacement])
        return result
    finally:
        served.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["default", "embedded", "flux-dev"], default="default",
                        help="default: the preset's (FLUX.1-dev with a GPU); embedded: the tiny model, for a CPU smoke run; "
                             "flux-dev: FLUX.1-dev's transformer with random weights (a GPU machine without the Hub)")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    env = {"FLUX_MODEL": EMBEDDED_MODEL} if args.model == "embedded" else {}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as folder:
        if args.model == "flux-dev":
            env = {"FLUX_MODEL": str(build_flux_dev(Path(folder) / "flux-dev-random"))}
        plain = plain_app(Path(folder) / "plain", env, args)
        served = ray_serve(Path(folder) / "serve", env, args)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    result = {
        "device": device, "gpus": torch.cuda.device_count(), "torch": torch.__version__, "python": platform.python_version(),
        "command": " ".join(["bench_serve.py", *sys.argv[1:]]),
        "plain": plain, "ray_serve": served,
        "latency_ratio": served["median_latency_s"] / plain["median_latency_s"],  # above 1: what Ray Serve adds
        "throughput_ratio": served["images_per_minute"] / plain["images_per_minute"],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(f"{device}, {args.replicas} replicas, {args.size}x{args.size}, {args.steps} steps")
    for name, row in (("plain app", plain), ("Ray Serve", served)):
        print(f"{name:10} median latency {row['median_latency_s']:.2f} s, {row['images_per_minute']:.1f} images/min")
    print(f"latency x{result['latency_ratio']:.2f}, throughput x{result['throughput_ratio']:.2f}, "
          f"new replica serving {served['replacement_s']:.1f} s after a kill")


if __name__ == "__main__":
    main()
