"""The VAE decoder alone: eager against its AoT programs, in one process.

    python -m bench.bench_vae --json bench/results/NAME.json          # FLUX.1-dev's VAE, random weights (GPU)
    python -m bench.bench_vae --model tiny --json OUT.json             # the embedded model on the CPU: code path only

Each variant compiles the decoder as the app does (vae.compile_decoder: a static program for the first
size, then one per `static_sizes`; other sizes run the eager decoder) and decodes the same latents at every
size; ms is the median decode (`vae.decode`), error is against the eager bf16 decoder.
  default          the app's default: a program for 1024x1024, the other sizes eager
  all_static       a program for every size (AOTI_STATIC_SIZES=1344x768,512x512)
Results from before the decoder was static compare option sets for one dynamic program.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL

import vae
from bench.bench_pipeline import FLUX_VAE
from bench.bench_transformer import environment, median_ms, rel_error
from config import EMBEDDED_MODEL, PIXELS_PER_LATENT, OptimizationConfig

SIZES = ((1024, 1024), (1344, 768), (512, 512))
CONFIGS = {
    "default": OptimizationConfig(),
    "all_static": OptimizationConfig(static_sizes=",".join("%dx%d" % size for size in SIZES[1:])),
}


def build(model: str) -> AutoencoderKL:
    if model == "tiny":
        return AutoencoderKL.from_pretrained(EMBEDDED_MODEL, subfolder="vae").eval()
    torch.manual_seed(0)
    with torch.device("cuda"):
        return AutoencoderKL(**FLUX_VAE).to(torch.bfloat16).eval().requires_grad_(False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["flux-dev", "tiny"], default="flux-dev")
    parser.add_argument("--options", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    eager = build(args.model)
    g = torch.Generator().manual_seed(0)
    latents = {(w, h): torch.randn(1, eager.config.latent_channels, h // PIXELS_PER_LATENT,
                                   w // PIXELS_PER_LATENT, generator=g).to(eager.device, eager.dtype)
               for w, h in SIZES}
    results: dict = {"env": environment(), "model": args.model, "rows": [],
                     "options": {k: dict(CONFIGS[k].inductor_configs) for k in args.options}}
    reference = {}
    with torch.no_grad():
        for name in ["eager", *args.options]:
            model, compile_s = eager, 0.0
            if name != "eager":
                model = copy.deepcopy(eager)
                start = time.perf_counter()
                sizes = vae.decoder_sizes(*SIZES[0], CONFIGS[name])
                vae.apply_decoder_(model, vae.compile_decoder(model, CONFIGS[name], sizes))
                compile_s = time.perf_counter() - start
            for size in SIZES:
                z = latents[size]
                out = model.decode(z).sample
                reference.setdefault(size, out)
                compiled = name != "eager" and model.decoder.forward.accepts(z)
                row = dict(options=name, size="%dx%d" % size, compiled=compiled, compile_s=compile_s,
                           ms=median_ms(lambda: model.decode(z), warmup=3, iters=args.iters),
                           rel_error_vs_eager=rel_error(out.float(), reference[size].float()))
                results["rows"].append(row)
                print(json.dumps(row), flush=True)
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=1))
    print_table(results)


def print_table(results: dict) -> None:
    print(f"\n{results['env']}")
    eager = {r["size"]: r["ms"] for r in results["rows"] if r["options"] == "eager"}
    print(f"{'options':12} {'size':10} {'ms':>8} {'vs eager':>9} {'compile s':>10} {'err':>8}")
    for r in results["rows"]:
        print(f"{r['options']:12} {r['size']:10} {r['ms']:8.2f} {eager[r['size']] / r['ms']:8.2f}x "
              f"{r['compile_s']:10.1f} {r['rel_error_vs_eager']:8.1e}")


if __name__ == "__main__":
    main()
