"""One FLUX.1-dev double and single block, FP8 per row: where does the single blocks' quantization time go?

    python -m bench.block_variants --json bench/results/NAME.json [VARIANT ...]

Times each variant's compiled blocks at three sizes, one fresh model per variant, with a kernel
profile at 1024x1024 (per-kernel times: whole-block times move by up to 8% between variants whose
kernels are the same). It made `results/h200-blocks-session7/blocks.json` (session 7 in
bench/NOTES.md), when the defaults were an image-token axis without a multiple and inductor's
split reductions: "dynamic" still is that axis, but the runs on it now use the project's current
inductor options. On a CPU it runs the embedded tiny model in bf16 without FP8: the code path only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import aoti
import optimization
from bench.bench_transformer import FLUX_DEV, build, inputs, kernel_profile, median_ms, model_config, quantize_fp8_like_a_user_
from config import MAX_SEQUENCE_LENGTH, MAX_SIZE, MIN_SIZE, PIXELS_PER_TOKEN, OptimizationConfig
from plan import Plan

SIZES = [(1024, 1024), (1344, 768), (512, 512)]
# The image-token axis as it was before session 7: any token count, so kernels keep their bounds masks.
SEQ = aoti.Dim("image_seq", (MIN_SIZE // PIXELS_PER_TOKEN) ** 2, (MAX_SIZE // PIXELS_PER_TOKEN) ** 2)
ANY_TOKENS = {"hidden_states": {1: SEQ}, "image_rotary_emb": {0: SEQ + MAX_SEQUENCE_LENGTH}}


class Experiment:
    def __init__(self, out: Path):
        self.out = out
        self.smoke = not torch.cuda.is_available()
        self.device, self.fp8 = ("cpu", False) if self.smoke else ("cuda", True)
        widths = model_config("tiny", (1, 1)) if self.smoke else FLUX_DEV
        self.config = dict(widths, num_layers=1, num_single_layers=1)
        self.calls = {s: inputs(self.config, *s, self.device, torch.bfloat16, seed=i) for i, s in enumerate(SIZES)}
        card = "cpu" if self.smoke else torch.cuda.get_device_name()
        self.results = {"env": {"torch": torch.__version__, "card": card}, "rows": []}
        self.reference = {}  # the first variant's outputs: how far each other variant is from them

    def block_calls(self, model) -> dict:
        out = {}
        for name, block in (("double", model.transformer_blocks[0]), ("single", model.single_transformer_blocks[0])):
            for size, kwargs in self.calls.items():
                with aoti.capture(block) as captured, torch.inference_mode():
                    model(**kwargs)
                out[name, size] = captured
        return out

    def run(self, name: str, prepare) -> None:
        if not self.smoke:
            torch.cuda.empty_cache()
        model = build(self.config, self.device, torch.bfloat16)
        calls = self.block_calls(model)  # captured before compiling: the compiled blocks get the eager arguments
        begin = time.perf_counter()
        blocks = prepare(self, model)
        compile_s = time.perf_counter() - begin
        for (kind, size), call in calls.items():
            if name == "torch_compile_fp8" and size != (1024, 1024):
                continue  # one static compile (with CD) per size: only the size that matters most

            def fn(block=blocks[kind], call=call):
                return block(*call.args, **call.kwargs)

            with torch.inference_mode():
                begin = time.perf_counter()
                try:
                    out = fn()
                except ValueError as e:  # a static graph: other sizes are not its
                    print(f"{name} {kind} {size}: {e}"[:200])
                    continue
                if not self.smoke:
                    torch.cuda.synchronize()
                first = time.perf_counter() - begin
                ms = median_ms(fn, 5, 3 if self.smoke else 40)
                profile = kernel_profile(fn, steps=3, top=10) if size == (1024, 1024) and not self.smoke else None
            flat = torch.cat([o.float().flatten() for o in (out if isinstance(out, tuple) else (out,))])
            ref = self.reference.setdefault((kind, size), flat)
            row = dict(variant=name, block=kind, size=f"{size[0]}x{size[1]}", ms=ms, compile_s=compile_s, first_call_s=first,
                       diff_vs_first_variant=((flat - ref).norm() / ref.norm()).item(), profile=profile)
            self.results["rows"].append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "profile"}), flush=True)
            for kernel, kernel_ms, count in profile["top"][:6] if profile else ():
                print(f"    {kernel_ms:7.3f} ms x{count:4.0f}  {kernel[:110]}", flush=True)
        self.save()

    def save(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(self.results, indent=1))


def aot(dynamic=True, axes=None, **inductor):
    def prepare(experiment: Experiment, model) -> dict:
        # The block axes come from optimization.block_axes: swapped for this compile only.
        default = optimization.block_axes
        optimization.block_axes = (lambda text_tokens: axes) if axes else default
        try:
            options = {**OptimizationConfig().inductor_configs, **inductor}
            config = OptimizationConfig(cache=False, dynamic=dynamic, inductor_configs=options)
            call = aoti.CapturedCall((), experiment.calls[1024, 1024])
            plan = Plan.assumed(config, "row" if experiment.fp8 else None)
            programs = optimization.compile_transformer(model, [call], config, plan)
            optimization.apply_programs_(model, programs, config, plan)
        finally:
            optimization.block_axes = default
        return {"double": model.transformer_blocks[0], "single": model.single_transformer_blocks[0]}

    return prepare


def torch_compile_fp8(experiment: Experiment, model) -> dict:
    quantize_fp8_like_a_user_(model, "row")
    return {"double": torch.compile(model.transformer_blocks[0], fullgraph=True),
            "single": torch.compile(model.single_transformer_blocks[0], fullgraph=True)}


VARIANTS = {
    "dynamic": aot(axes=ANY_TOKENS, split_reductions=True),
    "dynamic_x4": aot(split_reductions=True),
    "static_1024": aot(dynamic=False, split_reductions=True),
    "dynamic_x4_nosplit": aot(),
    "dynamic_x4_cd": aot(split_reductions=True, coordinate_descent_tuning=True),
    "dynamic_cd": aot(axes=ANY_TOKENS, split_reductions=True, coordinate_descent_tuning=True),
    "torch_compile_fp8": torch_compile_fp8,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("variants", nargs="*", help=f"some of {', '.join(VARIANTS)} (default: all)")
    args = parser.parse_args()
    if unknown := set(args.variants) - set(VARIANTS):
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    experiment = Experiment(args.json)
    for name in args.variants or VARIANTS:
        try:
            experiment.run(name, VARIANTS[name])
        except Exception as e:  # one broken variant should not lose the others' rows
            print(f"VARIANT {name} FAILED: {e!r}"[:3000], file=sys.stderr, flush=True)
            experiment.results.setdefault("failures", {})[name] = repr(e)[:2000]
        torch._dynamo.reset()
    experiment.save()


if __name__ == "__main__":
    main()
