"""Seconds per image: the whole FluxPipeline with FLUX.1-dev's configuration for every component, on one GPU.

    python -m bench.bench_pipeline --json bench/results/NAME.json [--variants eager aot torch_compile_fp8]
    python -m bench.bench_pipeline --model tiny --json OUT.json    # the embedded model on the CPU: the code path only

T5-XXL, CLIP-L, FLUX's VAE and the FLUX.1-dev transformer, each built from its config with random
bf16 weights (nothing can be downloaded; speed does not depend on weight values), and the tiny
tokenizers of the embedded model (every prompt is padded to 512 T5 tokens anyway). Each variant
starts from a freshly built pipeline in the same process:
  eager              diffusers as a user runs it (bf16, PyTorch SDPA);
  aot                this template: `optimization.optimize_pipeline_` with the app's defaults (the VAE
                     decoder AoT-compiled too);
  torch_compile_fp8  the best a user does by hand: torchao FP8 per row with its defaults, then
                     `transformer.compile(fullgraph=True)` (its compile is in the first image);
  aot_eager_vae      `aot` with the VAE decoder left eager (AOTI_VAE=0). Results named `aot_vae` are
                     older: the decoder compiled by torch.compile on top of `aot`;
  aot_sm120          `aot` with the probes of per-row FP8 and of the FP8 attention made to fail
                     (AOTI_FAIL_PROBES): the plan a Blackwell card (sm_100, sm_120) runs, per-tensor FP8 GEMMs
                     and bf16 SDPA, measured on this card;
  aot_safest         `aot` with every probe failing: no FP8, the rung of a card the plan does not know.
Per workload (28 steps at 1024x1024, 4 steps at 512x512): the median of --images images, split into
text encoders, denoising and VAE decode, and the output's error against eager's image (same seed).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

import optimization
from assets.build_tiny_flux import clip_tokenizer, t5_tokenizer
from bench.bench_transformer import FLUX_DEV, environment, quantize_fp8_like_a_user_, rel_error, sync
from config import EMBEDDED_MODEL, MAX_SEQUENCE_LENGTH, OptimizationConfig

# google/t5-v1_1-xxl's encoder, openai/clip-vit-large-patch14's text model, FLUX.1-dev's VAE and scheduler.
T5_XXL = dict(d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24, vocab_size=32128,
              feed_forward_proj="gated-gelu", is_encoder_decoder=False, tie_word_embeddings=False)
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              max_position_embeddings=77, vocab_size=49408, hidden_act="quick_gelu", projection_dim=768)
FLUX_VAE = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                layers_per_block=2, norm_num_groups=32, scaling_factor=0.3611, shift_factor=0.1159,
                use_quant_conv=False, use_post_quant_conv=False)
FLUX_SCHEDULER = dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                      base_image_seq_len=256, max_image_seq_len=4096)
WORKLOADS = {"1024x1024x28": (1024, 1024, 28), "512x512x4": (512, 512, 4)}
PROMPT = "a tiny astronaut hatching from an egg on the moon"
VARIANTS = ("eager", "aot", "torch_compile_fp8", "aot_eager_vae", "aot_sm120", "aot_safest")
FAILING_PROBES = {"aot_sm120": "fp8_row,fp8_attention", "aot_safest": "all"}


def build_pipeline(model: str) -> FluxPipeline:
    if model == "tiny":
        pipe = FluxPipeline.from_pretrained(EMBEDDED_MODEL, dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        return pipe
    clip_tok, t5_tok = clip_tokenizer(), t5_tokenizer()
    torch.manual_seed(0)
    with torch.device("cuda"):  # random init of 17 B parameters: seconds on the GPU
        transformer = FluxTransformer2DModel(**FLUX_DEV)
        text_encoder_2 = T5EncoderModel(T5Config(**T5_XXL, pad_token_id=t5_tok.pad_token_id, eos_token_id=t5_tok.eos_token_id))
        text_encoder = CLIPTextModel(CLIPTextConfig(**CLIP_L, bos_token_id=clip_tok.bos_token_id,
                                                    eos_token_id=clip_tok.eos_token_id, pad_token_id=clip_tok.pad_token_id))
        vae = AutoencoderKL(**FLUX_VAE)
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER), vae=vae, text_encoder=text_encoder,
                        tokenizer=clip_tok, text_encoder_2=text_encoder_2, tokenizer_2=t5_tok, transformer=transformer)
    for module in (transformer, vae, text_encoder, text_encoder_2):
        module.to(torch.bfloat16).eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class Split:
    """Seconds spent in the text encoders, the denoising loop and the VAE decode of one pipeline call."""

    def __init__(self, pipe: FluxPipeline):
        self.pipe, self.marks = pipe, {}
        for encoder in (pipe.text_encoder, pipe.text_encoder_2):
            encoder.register_forward_pre_hook(lambda *_: self.mark("text_start"))
            encoder.register_forward_hook(lambda *_: self.mark("text_end"))
        decode = pipe.vae.decode

        def timed_decode(*args, **kwargs):
            self.mark("decode_start")
            out = decode(*args, **kwargs)
            self.mark("decode_end")
            return out

        pipe.vae.decode = timed_decode

    def mark(self, name: str) -> None:
        sync()
        self.marks.setdefault(name + "_all", []).append(time.perf_counter())

    def run(self, width: int, height: int, steps: int, seed: int) -> tuple[dict, torch.Tensor]:
        self.marks = {}
        sync()
        start = time.perf_counter()
        image = self.pipe(PROMPT, width=width, height=height, num_inference_steps=steps, guidance_scale=3.5,
                          max_sequence_length=MAX_SEQUENCE_LENGTH, generator=torch.Generator().manual_seed(seed),
                          output_type="pt").images[0]
        sync()
        end = time.perf_counter()
        m = {k: v for k, v in self.marks.items()}
        text = m["text_end_all"][-1] - m["text_start_all"][0]
        decode = m["decode_end_all"][-1] - m["decode_start_all"][0]
        denoise = m["decode_start_all"][0] - m["text_end_all"][-1]  # latents prepared, then every step
        return dict(seconds=end - start, text_s=text, denoise_s=denoise, decode_s=decode,
                    other_s=end - start - text - denoise - decode), image.float().cpu()


def optimize(pipe: FluxPipeline, variant: str, width: int, height: int) -> dict:
    start = time.perf_counter()
    info: dict = {}
    if variant.startswith("aot"):
        # The program cache is on: a second AoT variant in the same run loads what the first compiled.
        config = OptimizationConfig(vae_decoder=variant != "aot_eager_vae", fail_probes=FAILING_PROBES.get(variant, ""))
        report = optimization.optimize_pipeline_(pipe, config, prompt="example", width=width, height=height,
                                                 num_inference_steps=1, max_sequence_length=MAX_SEQUENCE_LENGTH)
        info.update(report=report.summary(), stages=report.stages, plan=report.plan.summary(),
                    probe_seconds=report.plan.probe_seconds)
    if variant == "torch_compile_fp8":
        quantize_fp8_like_a_user_(pipe.transformer, "row")
        pipe.transformer.compile(fullgraph=True)
    info["optimize_s"] = time.perf_counter() - start
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["flux-dev", "tiny"], default="flux-dev")
    parser.add_argument("--variants", nargs="+", default=["eager", "aot"], choices=VARIANTS)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    parser.add_argument("--images", type=int, default=3, help="timed images per workload, after one warm-up image")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    results: dict = {"env": environment(), "model": args.model, "prompt": PROMPT, "rows": [], "variants": {}}
    reference: dict[str, torch.Tensor] = {}

    def save() -> None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))

    for variant in args.variants:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        pipe = build_pipeline(args.model)
        split = Split(pipe)
        first = WORKLOADS[args.workloads[0]]
        results["variants"][variant] = optimize(pipe, variant, first[0], first[1])
        for name in args.workloads:
            width, height, steps = WORKLOADS[name]
            start = time.perf_counter()
            _, image = split.run(width, height, steps, seed=0)  # warm-up: compiles, CUDA graph capture
            warmup_s = time.perf_counter() - start
            runs = [split.run(width, height, steps, seed=0) for _ in range(args.images)]
            timings = [t for t, _ in runs]
            row = dict(variant=variant, workload=name, steps=steps, first_image_s=warmup_s,
                       **{key: statistics.median(t[key] for t in timings) for key in timings[0]})
            row["images_per_minute"] = 60 / row["seconds"]
            row["seconds_per_step"] = row["denoise_s"] / steps
            if torch.cuda.is_available():
                row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            if variant == "eager":
                reference[name] = runs[-1][1]
            elif name in reference:
                row["rel_error_vs_eager"] = rel_error(runs[-1][1], reference[name])
            results["rows"].append(row)
            print(json.dumps(row), flush=True)
            save()
        del pipe, split
        gc.collect()  # Split's hooks close over the pipeline: a cycle that only the collector frees
        torch._dynamo.reset()
    print_table(results)


def print_table(results: dict) -> None:
    print(f"\n{results['env']}")
    eager = {r["workload"]: r["seconds"] for r in results["rows"] if r["variant"] == "eager"}
    print(f"{'variant':18} {'workload':14} {'s/image':>8} {'vs eager':>9} {'img/min':>8} {'text s':>7} {'denoise s':>9} "
          f"{'decode s':>9} {'err':>8}")
    for r in results["rows"]:
        ratio = eager.get(r["workload"], float("nan")) / r["seconds"]
        print(f"{r['variant']:18} {r['workload']:14} {r['seconds']:8.3f} {ratio:8.2f}x {r['images_per_minute']:8.1f} "
              f"{r['text_s']:7.3f} {r['denoise_s']:9.3f} {r['decode_s']:9.3f} {r.get('rel_error_vs_eager', 0):8.1e}")


if __name__ == "__main__":
    main()
