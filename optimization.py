"""AoT-compile a FLUX pipeline's transformer at startup. Read this first; `aoti/` does the work.

    optimize_pipeline_(pipe, OptimizationConfig(), prompt="a cat", width=1024, height=1024)

1. decide the hardware plan on the card (plan.py): its architecture's fast paths, each probed there first (probes.py),
   and the attention: cuDNN's FP8 attention where the plan has it (Hopper), else FA3 where it can be fetched, else
   PyTorch's SDPA;
2. capture the transformer's arguments from one real pipeline call (the transformer does not run),
   and, for regional compilation, those of the first block of each repeated kind;
3. prepare the blocks as the plan says: FP8 (torchao) per row or per tensor, the fused quantization kernels
   (fp8_kernels/), SDPA recorded as the FP8 attention op at export, q and k's RoPE layout for it;
4. export with one dynamic image-sequence axis covering every UI resolution (plus, optionally,
   static graphs for chosen sizes);
5. compile with AOTInductor into small packages without weights;
6. patch them into the pipeline, bound to the weights as the GPU function prepared them (one copy in
   memory): the whole transformer, or every block of a kind sharing that kind's program; on the GPU,
   each resolution's step is then replayed as one CUDA graph.
Steps 1-5 run inside a `@spaces.GPU` function: on ZeroGPU that is the only place with a real GPU, a
forked worker. Its plan and prepared (FP8) weights come back through shared memory rather than being quantized
again on the main process's CPU, and the attention backend it chose is set up in the main process too.
The VAE decoder is compiled in the same function, one static program per size (vae.py).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import diffusers
import spaces
import torch
import torchao
from diffusers import FluxPipeline

import aoti
import plan as hardware
from attention import set_attention_backend
from compile_options import code_version, compiler_options, persistent_rows, persistent_rows_up_to
from config import MAX_SIZE, MIN_SIZE, PIXELS_PER_TOKEN, SIZE_STEP, OptimizationConfig
from fp8 import is_fp8, quantize_fp8_
from fp8_kernels import fuse_feed_forward_quantization_, fuse_single_block_quantization_, sdpa_as_fp8
from fp8_kernels.quantize import OPS
from fp8_kernels.rope_pairs import mark_split_, split_rope_pairs_
from startup import stage
from vae import apply_decoder_, compile_decoder, decoder_sizes
from vae import fingerprint as decoder_fingerprint

log = logging.getLogger(__name__)

# FLUX's image tokens: the only axes that change with the resolution. Always a multiple of
# (SIZE_STEP / PIXELS_PER_TOKEN)^2 = 4: kernels over a multiple of 4 tokens then need no bounds masks
# (the single blocks' FP8 cast: 0.16 -> 0.14 ms at 1024x1024, as fast as in a static graph).
IMAGE_SEQ = aoti.Dim(
    "image_seq", (MIN_SIZE // PIXELS_PER_TOKEN) ** 2, (MAX_SIZE // PIXELS_PER_TOKEN) ** 2,
    multiple=(SIZE_STEP // PIXELS_PER_TOKEN) ** 2,
)
DYNAMIC_AXES = {"hidden_states": {1: IMAGE_SEQ}, "img_ids": {0: IMAGE_SEQ}}


def block_axes(text_tokens: int) -> dict:
    """A block's dynamic axes: its rotary table spans the (static) text tokens and the image tokens."""
    return {"hidden_states": {1: IMAGE_SEQ}, "image_rotary_emb": {0: IMAGE_SEQ + text_tokens}}


@dataclass(frozen=True)
class Compiled:
    """What the GPU function hands back; on ZeroGPU it is pickled from the worker to the main process."""

    programs: dict[str, list[aoti.CompiledProgram]]  # per compiled module kind
    weights: aoti.HostShared  # per kind, per module: the prepared tensors the programs read
    plan: hardware.Plan  # what the card runs, as decided there
    decoder: list[aoti.CompiledProgram] | None  # the VAE decoder's programs, one per size (vae.py)
    cached: bool  # loaded from the program cache instead of compiled
    stages: dict[str, float]  # seconds of each stage it ran


@dataclass(frozen=True)
class OptimizationReport:
    aot: bool
    plan: hardware.Plan | None  # None with AOTI=0
    dtype: str
    attention: str
    regional: bool  # one program per repeated block kind instead of one for the transformer
    vae_decoder: bool  # the VAE decoder compiled too
    graphs: int  # graphs per compiled module: static ones plus the dynamic one
    cuda_graphs: bool  # each resolution's step replayed as one CUDA graph
    cached: bool  # loaded from the program cache instead of compiled
    seconds: float  # capture + quantize + export + compile, or the cache load
    package_mb: float
    stages: dict[str, float]  # seconds per stage: capture, quantize, export, compile (or cache lookup), apply

    @property
    def fp8(self) -> bool:
        return bool(self.plan and self.plan.fp8)

    def summary(self) -> str:
        if not self.aot:
            return f"transformer runs eagerly ({self.dtype}, attention: {self.attention})"
        precision = f"FP8 per {self.plan.fp8}" if self.fp8 else self.dtype
        graphs = f"{self.graphs} graphs" if self.graphs > 1 else "one graph for all sizes"
        scope = "per repeated block" if self.regional else "whole transformer"
        replay = ", CUDA graphs" if self.cuda_graphs else ""
        decoder = " and VAE decoder" if self.vae_decoder else ""
        return (
            f"transformer{decoder} AoT-compiled ({precision}, attention: {self.attention}, {scope}, {graphs}{replay}), "
            f"{'loaded from cache' if self.cached else 'compiled'} in {self.seconds:.1f} s, "
            f"package {self.package_mb:.1f} MB"
            + (f"; stepped down: {'; '.join(self.plan.steps_down)}" if self.plan.steps_down else "")
        )


def fuse_qkv_(transformer: torch.nn.Module) -> None:
    """One projection for q, k and v (and one for the text stream's) instead of three; frees the unfused ones.

    Calling it again changes nothing: diffusers skips attention modules that are already fused.
    """
    transformer.fuse_qkv_projections()
    for module in transformer.modules():
        if getattr(module, "fused_projections", False):
            for name in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj"):
                if isinstance(getattr(module, name, None), torch.nn.Module):
                    setattr(module, name, None)  # the fused attention path never reads them
            for name in ("to_qkv", "to_added_qkv"):
                if isinstance(getattr(module, name, None), torch.nn.Module):
                    getattr(module, name).requires_grad_(False)  # inference only, like the loaded weights


def compiled_modules(transformer: torch.nn.Module, regional: bool) -> dict[str, list[torch.nn.Module]]:
    """What gets compiled, by kind: the transformer, or each kind of repeated block (FLUX: 19 + 38).

    In regional mode the rest (embedders, final norm) stays eager and in bf16: under 1% of the
    FLOPs, and eager FP8 would be slower than bf16 there.
    """
    if not regional:
        return {"transformer": [transformer]}
    kinds = getattr(transformer, "_repeated_blocks", None)
    if not kinds:
        raise ValueError(f"{type(transformer).__name__} declares no _repeated_blocks: use regional=False")
    return {kind: [m for m in transformer.modules() if type(m).__name__ == kind] for kind in kinds}


# The double blocks' linear layers that only see the text tokens (512 rows): cuBLAS's FP8 GEMMs are slow at that size.
TEXT_STREAM = frozenset({"add_q_proj", "add_k_proj", "add_v_proj", "to_added_qkv", "to_add_out"})


def text_stream(name: str) -> bool:
    """Whether the linear layer `name` (a qualified name) belongs to a double block's text stream."""
    parts = name.split(".")
    return parts[-1] in TEXT_STREAM or "ff_context" in parts


# Options that leave the transformer's programs as they are (how they are served or stored, and whether the
# VAE decoder is compiled, which has its own cache key): left out of the transformer's cache key.
SERVING_OPTIONS = frozenset({"aot", "cuda_graphs", "cache", "cache_dir", "hub_repo", "hub_revision", "hub_public_key",
                             "vae_decoder"})


# Options that the plan decides (plan.py): the cache key records the plan's decisions instead of what was asked for.
PLANNED_OPTIONS = frozenset({
    "fp8", "fp8_granularity", "fp8_fused_quantization", "fp8_fused_ff_quantization", "fp8_attention", "rope_pairs_split",
    "attention_backend", "fail_probes",
})


def compiled_options(config: OptimizationConfig, plan: hardware.Plan) -> dict[str, Any]:
    """Every other option of `config`, with the plan's decisions in place of what was asked for.

    Derived from the dataclass, so an option added later is part of the cache key unless it is
    listed in SERVING_OPTIONS or PLANNED_OPTIONS.
    """
    decided = {
        "fp8_text_stream": config.fp8_text_stream if plan.fp8 else None,
        "dynamic": asdict(IMAGE_SEQ) if config.dynamic else None,  # range and step of the image tokens
        "static_sizes": config.static_resolutions,
        "inductor_configs": compiler_options(config, plan.fp8),
        "persistent_reductions_up_to": persistent_rows_up_to(config, plan.fp8),
    }
    options = [f.name for f in fields(config) if f.name not in SERVING_OPTIONS | PLANNED_OPTIONS]
    return {"plan": plan.as_key(), **{name: decided.get(name, getattr(config, name)) for name in options}}


def fingerprint(transformer: torch.nn.Module, config: OptimizationConfig, example_call: dict, plan: hardware.Plan) -> dict:
    """Everything a compiled transformer depends on; its weights' values are not among them."""
    return {
        "model": transformer.config.get("_name_or_path", ""),  # hub snapshot path: id and revision
        "transformer": {k: v for k, v in transformer.config.items() if not k.startswith("_")},
        "dtype": str(transformer.dtype),
        "options": compiled_options(config, plan),
        "example_call": {k: v for k, v in example_call.items() if isinstance(v, (int, float, str, bool))},
        "diffusers": diffusers.__version__,
        "torchao": torchao.__version__,
        "ops": OPS,  # the programs call fp8_kernels' ops by this name
        "code": code_version(),
        **aoti.cache.environment(transformer.device.type),
    }


def capture_module(transformer: torch.nn.Module, module: torch.nn.Module, call: aoti.CapturedCall) -> aoti.CapturedCall:
    """The call `module` gets when `transformer` is called like `call`."""
    if module is transformer:
        return call
    with aoti.capture(module) as inner, torch.no_grad():
        transformer(*call.args, **call.kwargs)  # runs eagerly up to the module's first call
    return inner


def prepare_transformer_(
    transformer: torch.nn.Module, config: OptimizationConfig, plan: hardware.Plan, times: dict[str, float] | None = None
) -> None:
    """Put the compiled modules in the form the programs were compiled for: fused QKV, q and k's RoPE layout, FP8.
    Idempotent."""
    if config.fuse_qkv:
        fuse_qkv_(transformer)
    if plan.rope_pairs_split:  # before FP8: it permutes bf16 rows
        split_rope_pairs_(transformer)
    if plan.fp8:
        with stage("quantize", times):
            for modules in compiled_modules(transformer, config.regional).values():
                for module in modules:
                    if not is_fp8(module):
                        quantize_fp8_(module, plan.fp8, keep=None if config.fp8_text_stream else text_stream)
            if plan.fused_quantization:
                fuse_single_block_quantization_(transformer)
            if plan.fused_ff_quantization:
                fuse_feed_forward_quantization_(transformer)


def compile_transformer(
    transformer: torch.nn.Module, calls: Iterable[aoti.CapturedCall], config: OptimizationConfig, plan: hardware.Plan,
    times: dict[str, float] | None = None,
) -> dict[str, list[aoti.CompiledProgram]]:
    """Steps 2-5 for transformer calls: one per static size first, the dynamic one last.

    Each stage is logged with its time (and recorded in `times`); lazy `calls` are captured in the capture stage.
    """
    targets = compiled_modules(transformer, config.regional)
    prepare_transformer_(transformer, config, plan, times)  # first: it may change the blocks' rotary tables
    with stage("capture", times):
        calls = list(calls)
        module_calls = {
            kind: [capture_module(transformer, modules[0], call) for call in calls] for kind, modules in targets.items()
        }
    text_tokens = calls[0].kwargs["encoder_hidden_states"].shape[1]  # the model's max_sequence_length
    axes = block_axes(text_tokens) if config.regional else DYNAMIC_AXES
    dynamic = [None] * (len(calls) - 1) + [axes if config.dynamic else None]
    # FP8 attention is recorded into the programs: export sees diffusers' SDPA calls run in FP8.
    modules = [kind_modules[0] for kind_modules in targets.values()]
    fp8_sdpa = sdpa_as_fp8(plan.fp8_attention, modules) if plan.fp8_attention != "off" else nullcontext()
    with stage("export", times), fp8_sdpa:
        exported = {
            kind: [aoti.export(targets[kind][0], call, dims, weights_as_inputs=config.regional, merge=config.merge_duplicates)
                   for call, dims in zip(kind_calls, dynamic)]
            for kind, kind_calls in module_calls.items()
        }
    options = compiler_options(config, plan.fp8)
    with stage("compile", times), persistent_rows(config, transformer.device, plan.fp8):
        return {kind: [aoti.compile(program, options) for program in programs] for kind, programs in exported.items()}


def load_or_compile(
    transformer: torch.nn.Module, config: OptimizationConfig, plan: hardware.Plan, example_call: dict,
    calls: Callable[[], Iterable[aoti.CapturedCall]], times: dict[str, float] | None = None,
) -> tuple[dict[str, list[aoti.CompiledProgram]], bool]:
    """The programs for this transformer, setup and plan from the program cache, else compiled from `calls()` and
    stored; and whether they came from the cache."""
    key = fingerprint(transformer, config, example_call, plan)
    return load_or_build(config, key, lambda: compile_transformer(transformer, calls(), config, plan, times), times)


def load_or_build(
    config: OptimizationConfig, key: dict, build: Callable[[], dict[str, list[aoti.CompiledProgram]]],
    times: dict[str, float] | None = None, name: str = "",
) -> tuple[dict[str, list[aoti.CompiledProgram]], bool]:
    """The programs cached under `key`, else `build()`'s, stored; and whether they came from the cache."""
    if not config.cache:
        return build(), False
    cache = aoti.ProgramCache(
        config.cache_folder, config.hub_repo, os.environ.get("HF_TOKEN"), hub_revision=config.hub_revision,
        public_key=config.hub_public_key, signing_key=os.environ.get("AOTI_HUB_SIGNING_KEY"),
        push_token=os.environ.get("AOTI_HUB_TOKEN"),
    )
    with stage(f"{name}cache lookup", times):
        programs = cache.load(key)
    if programs is not None:
        return programs, True
    # Processes sharing the cache folder (Ray Serve replicas, serve.py) compile a setup once between them.
    return cache.build_once(key, build)


def program_weights(
    transformer: torch.nn.Module, programs: dict[str, list[aoti.CompiledProgram]], config: OptimizationConfig
) -> dict[str, list[dict[str, torch.Tensor]]]:
    """Per compiled kind, per module: the (prepared) tensors its programs read."""
    return {
        kind: [aoti.program_weights(module, programs[kind]) for module in modules]
        for kind, modules in compiled_modules(transformer, config.regional).items()
    }


def apply_programs_(
    transformer: torch.nn.Module, programs: dict[str, list[aoti.CompiledProgram]], config: OptimizationConfig,
    plan: hardware.Plan, weights: dict[str, list[dict[str, torch.Tensor]]] | None = None,
) -> None:
    """Step 6: bind the programs to this process's transformer.

    To `weights` prepared elsewhere (`program_weights` of the transformer the GPU function
    prepared), or else to this transformer's own, prepared here the way they were compiled.
    """
    if weights is None:
        prepare_transformer_(transformer, config, plan)
    elif plan.rope_pairs_split:  # the weights come permuted; this process needs the layout's processor and tables
        mark_split_(transformer)
    for kind, modules in compiled_modules(transformer, config.regional).items():
        kind_weights = weights[kind] if weights is not None else None
        if config.regional:
            aoti.apply(modules, programs[kind], weights=kind_weights)
        else:
            aoti.apply(modules[0], programs[kind], weights=kind_weights[0] if kind_weights else None)


def packages(compiled: Compiled) -> list[aoti.CompiledProgram]:
    return [p for group in compiled.programs.values() for p in group] + (compiled.decoder or [])


def optimize_pipeline_(
    pipeline: FluxPipeline, config: OptimizationConfig, gpu_size: str | None = None, **example_call: Any
) -> OptimizationReport:
    """AoT-compile `pipeline.transformer` (and its VAE decoder) in place; `example_call` is one pipeline call's kwargs,
    `gpu_size` the ZeroGPU size to compile on (None: ZeroGPU's default)."""
    transformer = pipeline.transformer
    dtype = str(transformer.dtype).removeprefix("torch.")
    if not config.aot:
        gpu = hardware.gpu_of(transformer.device)
        flash_attention_3 = hardware.architecture(gpu[1] if gpu else None).flash_attention_3
        attention = set_attention_backend(transformer, config.attention_backend, flash_attention_3)
        log.info("AoT compilation is off (AOTI=0): the transformer runs eagerly")
        return OptimizationReport(
            aot=False, plan=None, dtype=dtype, attention=attention, regional=False, vae_decoder=False, graphs=0,
            cuda_graphs=False,
            cached=False, seconds=0.0, package_mb=0.0, stages={},
        )

    def capture(**size: int) -> aoti.CapturedCall:
        shown = dict(getattr(pipeline, "_progress_bar_config", {}))
        pipeline.set_progress_bar_config(**{**shown, "disable": True})  # the call stops before its first step
        try:
            with aoti.capture(transformer) as call:
                pipeline(**{**example_call, **size})
        finally:
            pipeline.set_progress_bar_config(**shown)
        return call

    def transformer_calls() -> Iterator[aoti.CapturedCall]:
        # Lazy: captured in compile_transformer's capture stage, and only when there is something to compile.
        for width, height in config.static_resolutions:
            yield capture(width=width, height=height)
        yield capture()  # the dynamic graph's, at the example's size

    @spaces.GPU(duration=1500, size=gpu_size)  # a full FLUX.1-dev compile takes minutes
    def compile_on_gpu() -> Compiled:
        times: dict[str, float] = {}
        with stage("plan", times):  # here, where the real card is visible
            plan = hardware.decide(config, transformer)
        programs, cached = load_or_compile(transformer, config, plan, example_call, transformer_calls, times)
        if cached:  # else the compile has prepared it
            prepare_transformer_(transformer, config, plan, times)
        if transformer.device.type == "cuda":  # what stays on the card: room left for LoRA masters (plan.fits_beside)
            plan = replace(plan, weights_bytes=torch.cuda.memory_allocated(transformer.device))
        weights = aoti.HostShared(program_weights(transformer, programs, config))
        decoder = None
        if config.vae_decoder:
            side = pipeline.default_sample_size * pipeline.vae_scale_factor  # the pipeline's own default size
            width, height = example_call.get("width") or side, example_call.get("height") or side
            sizes = decoder_sizes(width, height, config)
            build = lambda: {"decoder": compile_decoder(pipeline.vae, config, sizes, times)}  # noqa: E731
            key = decoder_fingerprint(pipeline.vae, config, sizes)
            decoders, decoder_cached = load_or_build(config, key, build, times, "VAE decoder ")
            decoder, cached = decoders["decoder"], cached and decoder_cached
        return Compiled(programs, weights, plan, decoder, cached, times)

    start = time.perf_counter()
    compiled = compile_on_gpu()
    stages = dict(compiled.stages)
    with stage("apply", stages):
        # Also here: on ZeroGPU that ran in a worker, and a backend's kernels (FA3 from the Hub) register
        # their ops only in the process that sets it up; every later worker is forked from this one.
        set_attention_backend(transformer, compiled.plan.attention)
        # The weights as the GPU function prepared them (FP8 on ZeroGPU: quantized there, on the GPU, not
        # again here on the CPU); on ZeroGPU this process keeps them as its emulated "cuda" tensors.
        weights = compiled.weights.to(transformer.device)
        apply_programs_(transformer, compiled.programs, config, compiled.plan, weights)
        cuda_graphs = config.cuda_graphs and transformer.device.type == "cuda"
        if cuda_graphs:  # captured per resolution on its second step, inside the request's GPU function
            transformer.forward = aoti.CUDAGraphs(transformer.forward)
        if compiled.decoder is not None:
            apply_decoder_(pipeline.vae, compiled.decoder)
    plan = compiled.plan
    report = OptimizationReport(
        aot=True, plan=plan, dtype=dtype,
        attention=plan.attention + (f" in FP8 ({plan.fp8_attention})" if plan.fp8_attention != "off" else ""),
        regional=config.regional, vae_decoder=compiled.decoder is not None,
        graphs=len(config.static_resolutions) + 1, cuda_graphs=cuda_graphs, cached=compiled.cached,
        seconds=time.perf_counter() - start,
        package_mb=sum(len(p.package) for p in packages(compiled)) / 1e6, stages=stages,
    )
    log.info("%s", report.summary())
    return report
