"""LoRAs per request on the compiled FLUX.1-dev transformer: switch time, step time, memory and error.

    python -m bench.bench_lora --json bench/results/NAME.json [--ranks 16 64 128] [--precisions fp8 bf16]
    python -m bench.bench_lora --model tiny --precisions bf16 --json OUT.json   # the code path on the CPU

FLUX.1-dev's transformer with random bf16 weights, compiled per block as the app does (FP8 per row,
or bf16), CUDA graphs on the GPU. Random LoRAs (one per rank, alpha = rank) over every attention
and MLP linear of every block are written to disk in diffusers' format, then for each:
  load     reading and converting the file (`LoraLibrary.load`, from local disk);
  switch   fusing it into the weights the programs read (`LoraFuser.activate`), from no LoRA;
  again    the same LoRA and scale once more (nothing to write);
  step     one 1024x1024 step with it fused, against the same step without a LoRA;
  error    the fused output against fp32 eager with the LoRA applied unfused (x @ A^T @ B^T added to
           each layer's output), beside the base's error against fp32 eager without a LoRA.
Switching between two LoRAs and back to none is timed too. Same process, same card, for every row.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

import aoti
import optimization
from bench.bench_transformer import build, environment, fp32_reference, inputs, median_ms, model_config, rel_error, sync
from config import OptimizationConfig
from lora import LoraFuser, LoraLibrary, keep_masters
from plan import Plan

# What FLUX LoRA trainers target by default: every attention projection and MLP linear of both block kinds.
TARGETS = {
    "transformer_blocks": ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                           "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
                           "ff_context.net.2"),
    "single_transformer_blocks": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp", "proj_out"),
}
RELATIVE_CHANGE = 0.1  # ||B @ A|| / ||W|| per layer: a strong LoRA, so its error is not lost in the base's


def random_lora(model: torch.nn.Module, rank: int, seed: int) -> dict[str, torch.Tensor]:
    """A diffusers-format LoRA state dict of `rank` over TARGETS, changing each weight by about RELATIVE_CHANGE."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for kind, layers in TARGETS.items():
        for i, block in enumerate(getattr(model, kind)):
            for layer in layers:
                linear = block.get_submodule(layer)
                out, inp = linear.out_features, linear.in_features
                # W ~ U(+-1/sqrt(in)) has entries of variance 1/(3 in); B @ A's are rank * s^2 / in.
                s = (RELATIVE_CHANGE**2 / (3 * rank)) ** 0.5
                key = f"transformer.{kind}.{i}.{layer}"
                state[f"{key}.lora_A.weight"] = (torch.randn(rank, inp, generator=g) / inp**0.5).to(torch.bfloat16)
                state[f"{key}.lora_B.weight"] = (torch.randn(out, rank, generator=g) * s).to(torch.bfloat16)
    return state


def unfused_lora_hooks(model: torch.nn.Module, state: dict[str, torch.Tensor], device: str) -> list:
    """Forward hooks adding each layer's LoRA to its output, unfused (scaling 1: alpha = rank)."""
    hooks = []
    for name, module in model.named_modules():
        down = state.get(f"transformer.{name}.lora_A.weight")
        if down is None:
            continue
        down, up = down.to(device), state[f"transformer.{name}.lora_B.weight"].to(device)

        def add(module, args, out, down=down, up=up):
            x = args[0]
            return out + torch.nn.functional.linear(torch.nn.functional.linear(x, down.to(x.dtype)), up.to(x.dtype))

        hooks.append(module.register_forward_hook(add))
    return hooks


def timed(fn):
    sync()
    start = time.perf_counter()
    result = fn()
    sync()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["flux-dev", "tiny"], default="flux-dev")
    parser.add_argument("--ranks", type=int, nargs="+", default=[16, 64, 128])
    parser.add_argument("--precisions", nargs="+", default=["fp8", "bf16"], choices=["fp8", "bf16"])
    parser.add_argument("--size", default="1024x1024")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = model_config(args.model, None)
    width, height = map(int, args.size.split("x"))
    call = inputs(config, width, height, device, torch.bfloat16)
    results: dict = {"env": environment(), "model": args.model, "size": args.size, "rows": []}
    folder = Path(tempfile.mkdtemp(prefix="bench-lora-"))

    def save() -> None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))

    # The LoRA files and the fp32 references (base, and each LoRA unfused), from one bf16 model.
    model = build(config, device, torch.bfloat16)
    states, refs = {}, {"base": fp32_reference(model, {"call": call})["call"]}
    for rank in args.ranks:
        states[rank] = random_lora(model, rank, seed=rank)
        save_file(states[rank], folder / f"rank{rank}.safetensors")
        hooks = unfused_lora_hooks(model, states[rank], device)
        refs[rank] = fp32_reference(model, {"call": call})["call"]
        for hook in hooks:
            hook.remove()
    results["lora_file_mb"] = {rank: (folder / f"rank{rank}.safetensors").stat().st_size / 1e6 for rank in args.ranks}
    del model
    library = LoraLibrary(folder, max_bytes=1 << 40)  # every rank stays read

    for precision in args.precisions:
        fp8 = precision == "fp8"
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        model = build(config, device, torch.bfloat16)
        masters = keep_masters(model)
        options = OptimizationConfig(cache=False)
        plan = Plan.assumed(options, "row" if fp8 else None)
        programs, compile_s = timed(lambda: optimization.compile_transformer(model, [aoti.CapturedCall((), call)], options, plan))
        optimization.apply_programs_(model, programs, options, plan)
        step = aoti.CUDAGraphs(model.forward) if device == "cuda" else model.forward
        fuser = LoraFuser({"transformer": model}, masters, plan.fp8, masters_on_gpu=device == "cuda")
        del masters

        def measure() -> tuple[float, torch.Tensor]:
            with torch.inference_mode():
                out = step(**call)[0].float()
                return median_ms(lambda: step(**call), 3, args.iters), out

        base_ms, base_output = measure()
        memory = (lambda: torch.cuda.memory_allocated() / 2**30) if device == "cuda" else (lambda: 0.0)
        base = dict(precision=precision, lora="none", ms=base_ms, rel_error=rel_error(base_output, refs["base"]),
                    compile_s=compile_s, allocated_gib=memory())
        results["rows"].append(base)
        print(json.dumps(base), flush=True)
        for rank in args.ranks:
            lora, load_s = timed(lambda: library.load(f"rank{rank}"))
            _, switch_s = timed(lambda: fuser.activate(lora, 1.0))
            _, again_s = timed(lambda: fuser.activate(library.load(f"rank{rank}"), 1.0))
            ms, out = measure()
            row = dict(precision=precision, lora=f"rank {rank}", ms=ms, step_vs_base=ms / base_ms - 1,
                       rel_error=rel_error(out, refs[rank]), load_s=load_s, switch_s=switch_s, same_again_s=again_s,
                       layers=len(lora.factors), allocated_gib=memory())
            _, row["to_none_s"] = timed(lambda: fuser.activate(None))
            if device == "cuda":
                row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            results["rows"].append(row)
            print(json.dumps(row), flush=True)
            save()
        if len(args.ranks) > 1:  # from one LoRA to another: the layers of both are rewritten
            first, second = (library.load(f"rank{r}") for r in args.ranks[:2])
            fuser.activate(first)
            _, results.setdefault("lora_to_lora_s", {})[precision] = timed(lambda: fuser.activate(second))
            fuser.activate(None)
        with torch.inference_mode():  # every LoRA unfused again: the base's output, exactly
            restored = torch.equal(step(**call)[0].float(), base_output)
        results.setdefault("base_restored_bit_for_bit", {})[precision] = restored
        model = fuser = step = programs = None  # freed before the next precision's model is built
        save()
    print_table(results)


def print_table(results: dict) -> None:
    print(f"\n{results['env']}\n{results['model']} transformer, {results['size']}, LoRA files {results['lora_file_mb']} MB")
    print(f"{'precision':9} {'lora':9} {'ms/step':>8} {'vs base':>8} {'rel err':>8} {'load s':>7} {'switch s':>8} "
          f"{'again s':>8} {'to none s':>9}")
    for r in results["rows"]:
        print(f"{r['precision']:9} {r['lora']:9} {r['ms']:8.2f} {r.get('step_vs_base', 0):+8.2%} {r['rel_error']:8.1e} "
              f"{r.get('load_s', 0):7.2f} {r.get('switch_s', 0):8.3f} {r.get('same_again_s', 0):8.4f} "
              f"{r.get('to_none_s', 0):9.3f}")
    print(f"LoRA to LoRA: {results.get('lora_to_lora_s')}; base restored bit for bit: {results.get('base_restored_bit_for_bit')}")


if __name__ == "__main__":
    main()
