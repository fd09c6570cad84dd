"""FLUX text-to-image with an ahead-of-time compiled transformer: load, optimize, infer, UI, launch."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import threading
import time
import unicodedata
from collections import OrderedDict
from pathlib import Path
from typing import Any

import startup

startup.configure_logging()  # first: some of the libraries below log while they are imported
# Before CUDA starts: the VAE decoder at 2048x2048 frees and allocates GB-sized activations of changing sizes, and in
# fixed-size segments the caching allocator held 43 GB for a 32 GB peak (bench/results/zerogpu-memory-h100), more than
# ZeroGPU's `large` can spare. Segments that grow keep what the card holds near what is used. An author's own setting wins.
if not (os.environ.get("PYTORCH_ALLOC_CONF") or os.environ.get("PYTORCH_CUDA_ALLOC_CONF")):
    os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
startup_seconds: dict[str, float] = {}  # per stage, for the "ready" line
with startup.stage("import", startup_seconds):
    import gradio as gr
    import spaces
    import torch
    from diffusers import FluxPipeline

    import config as cfg
    from duration import Reservation, zerogpu_duration_factor, zerogpu_size_at_launch
    from lora import SCALE_RANGE, LoraError, LoraFuser, LoraLibrary, check_scale, keep_masters, local_names
    from optimization import optimize_pipeline_

log = logging.getLogger("app")
CONFIG = cfg.from_env()

# Load --------------------------------------------------------------------------------------------


def load_pipeline(config: cfg.AppConfig) -> FluxPipeline:
    """The pipeline named by FLUX_MODEL, in host memory; SystemExit with the fix if it cannot load.

    In front of Ray Serve replicas (serve.py), only its tokenizers: the replicas hold the models.
    """
    models = dict.fromkeys(["transformer", "text_encoder", "text_encoder_2", "vae"]) if config.ray_serve else {}
    try:
        pipeline = FluxPipeline.from_pretrained(
            config.model, dtype=getattr(torch, config.dtype), token=os.environ.get("HF_TOKEN") or None, **models
        )
    except Exception as error:  # missing folder, no network, gated repo without a token, ...
        raise SystemExit(
            f"Could not load the model FLUX_MODEL={config.model!r}: {type(error).__name__}: {error}\n"
            f"- for {cfg.HUB_MODEL} (gated), accept its license on the Hub and set HF_TOKEN to a read token;\n"
            f"- or set FLUX_MODEL to a local folder saved with save_pretrained;\n"
            f"- or run without a GPU (or with FLUX_MODEL={cfg.EMBEDDED_MODEL}) to use the embedded tiny model."
        ) from error
    pipeline.set_progress_bar_config(desc="denoising")
    return pipeline


log.info("loading %s on %s", CONFIG.model, "Ray Serve replicas" if CONFIG.ray_serve else CONFIG.device)
with startup.stage("load", startup_seconds):
    pipe = load_pipeline(CONFIG)
    # LoRAs are fused into the weights the compiled programs read, from unquantized masters: the loaded weights,
    # kept in host memory before the pipeline moves (lora/masters.py). In front of Ray Serve replicas, each replica
    # does this; here LoRAs are only checked.
    masters = keep_masters(pipe.transformer) if CONFIG.lora and not CONFIG.ray_serve else None
    if CONFIG.ray_serve:
        from serve import Replicas  # Ray is imported only here: it is not a dependency of the Space

        REPLICAS = Replicas.connect(CONFIG.serve)  # once a replica has loaded and optimized the pipeline
    else:
        pipe.to(CONFIG.device)
TRANSFORMER_CONFIG = REPLICAS.transformer_config if CONFIG.ray_serve else pipe.transformer.config
MODEL = cfg.model_defaults(TRANSFORMER_CONFIG)  # FLUX.1-dev-like (guidance input) or schnell-like
STEPS = CONFIG.steps_for(MODEL)

# Optimize ----------------------------------------------------------------------------------------

report = REPLICAS.report if CONFIG.ray_serve else optimize_pipeline_(
    pipe,
    CONFIG.optimization,
    gpu_size=CONFIG.zerogpu_size or None,
    prompt="a photo of an astronaut riding a horse",
    width=CONFIG.default_size,
    height=CONFIG.default_size,
    num_inference_steps=1,
    max_sequence_length=MODEL.max_sequence_length,
)
if not CONFIG.ray_serve:  # else a replica optimized, not this process
    startup_seconds["optimize"] = report.seconds
LORAS = LoraLibrary(CONFIG.lora_dir, CONFIG.lora_cache_bytes, trusted=CONFIG.hub_lora_names,
                    download_max_bytes=CONFIG.lora_downloads_bytes) if CONFIG.lora else None
FUSER = LoraFuser(
    {"transformer": pipe.transformer, "text_encoder": pipe.text_encoder}, masters, report.plan and report.plan.fp8,
    masters_on_gpu=bool(report.plan) and report.plan.fits_beside(
        sum(m.nbytes for m in masters.values()), cfg.MAX_SIZE**2),  # the largest request the UI offers
) if masters is not None else None
del masters  # the fuser holds what it needs
if CONFIG.ray_serve:
    device_name = f"Ray Serve replicas ({REPLICAS.device_name})"
elif report.plan:  # the card the GPU function saw: on ZeroGPU this process only emulates one
    device_name = report.plan.device
else:
    device_name = torch.cuda.get_device_name() if CONFIG.device.startswith("cuda") else "CPU"
MODEL_NAME = "embedded tiny FLUX (random weights)" if CONFIG.embedded else CONFIG.model
STATUS = f"**{MODEL_NAME}** on {device_name} · {report.summary()}"

# Infer -------------------------------------------------------------------------------------------


def rejection(message: str) -> gr.Error:
    # The caller gets the message; the log gets one line from `infer`, not Gradio's traceback.
    return gr.Error(message, print_exception=False)


def _shown(value: Any, limit: int = 40) -> str:
    """`value` as a message quotes it, cut at `limit` characters: an error never echoes a huge input."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _number(name: str, value: Any) -> float:
    # As the API describes it (view_api, the MCP schema): a JSON number. Not true (float(True) is 1.0: one step), not
    # text ("42"), which float() would take.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise rejection(f"{name} must be a number, got {_shown(value)}.")
    try:
        return float(value)
    except OverflowError:  # an integer beyond any float (10**400)
        raise rejection(f"{name} must be a number in range, got {_shown(value)}.") from None


def _integer(name: str, value: Any, low: int, high: int) -> int:
    number = _number(name, value)
    if not number.is_integer():
        raise rejection(f"{name} must be a whole number, got {_shown(value)}.")
    if not low <= number <= high:
        raise rejection(f"{name} must be between {low} and {high}, got {_shown(int(number))}.")
    return int(number)


def _size(name: str, value: Any) -> int:
    size = _integer(name, value, cfg.MIN_SIZE, cfg.MAX_SIZE)
    if size % cfg.SIZE_STEP:
        # Rejected, not snapped: the image a caller gets always has the size it asked for.
        raise rejection(f"{name} must be a multiple of {cfg.SIZE_STEP}, got {size}.")
    return size


def check_inputs(prompt, seed, randomize_seed, width, height, guidance_scale, num_inference_steps, lora="", lora_scale=1.0):
    """The request as typed values, or gr.Error naming the first bad field. Changes nothing but the LoRA cache."""
    if not isinstance(prompt, str):
        raise rejection(f"prompt must be text, got {type(prompt).__name__}.")
    if not prompt.strip():
        raise rejection("Enter a prompt.")
    if control := next((c for c in prompt if unicodedata.category(c) == "Cc" and c not in "\t\n\r"), None):
        raise rejection(f"prompt must not contain control characters, got U+{ord(control):04X}.")
    if not isinstance(randomize_seed, bool):
        raise rejection(f"randomize_seed must be true or false, got {randomize_seed!r}.")
    guidance = _number("guidance_scale", guidance_scale)
    low, high = cfg.GUIDANCE_RANGE
    if not (math.isfinite(guidance) and low <= guidance <= high):
        raise rejection(f"guidance_scale must be between {low} and {high}, got {guidance_scale!r}.")
    return (
        prompt.strip(),
        _integer("seed", seed, 0, cfg.MAX_SEED),
        randomize_seed,
        _size("width", width),
        _size("height", height),
        guidance,
        _integer("num_inference_steps", num_inference_steps, 1, CONFIG.max_steps),
        *_lora(lora, lora_scale),
    )


def _lora(name: Any, scale: Any) -> tuple[str, float]:
    """The LoRA's canonical name ("" for none) and scale; its file is read here, before any GPU is reserved."""
    try:
        scale = check_scale(scale)
        if LORAS is None:
            if name not in ("", None):
                raise LoraError("LoRAs are switched off on this Space (FLUX_LORA=0)")
            return "", scale
        lora = LORAS.load(name)
    except LoraError as error:
        raise rejection(str(error)) from None
    return (lora.name if lora else ""), scale


# Learns from each request (`infer`); ZeroGPU scales what is asked for by its card's factor.
RESERVATION = Reservation(TRANSFORMER_CONFIG, MODEL.max_sequence_length,
                          platform_factor=zerogpu_duration_factor(CONFIG.zerogpu_size or None))


def gpu_seconds(
    prompt: str, seed: int, width: int, height: int, guidance: float, steps: int, lora: str, lora_scale: float
) -> int:
    """ZeroGPU time to reserve: from the steps, fixed costs and LoRA switches measured on this card so far, from a
    conservative prior before the first request (duration.py); one log line says which."""
    return RESERVATION.seconds(width, height, steps, lora)


@spaces.GPU(duration=gpu_seconds, size=CONFIG.zerogpu_size or None)
def generate(
    prompt: str, seed: int, width: int, height: int, guidance: float, steps: int, lora: str, lora_scale: float
) -> tuple[Any, dict]:
    """The image and its timing, for checked values; on ZeroGPU it runs in a worker with the GPU."""
    step_ends = []

    def on_step_end(pipeline, step, timestep, tensors):
        if tensors["latents"].is_cuda:
            torch.cuda.synchronize()  # time the GPU's work, not the CPU running ahead of it
        step_ends.append(time.perf_counter())
        return tensors

    start = time.perf_counter()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()
    # Held until the image is made: no other request's LoRA can be fused in between.
    with FUSER.applied(LORAS.load(lora), lora_scale) if FUSER else contextlib.nullcontext():
        fused = time.perf_counter()
        image = pipe(
            prompt=prompt,
            width=width,
            height=height,
            guidance_scale=guidance,
            num_inference_steps=steps,
            max_sequence_length=MODEL.max_sequence_length,
            generator=torch.Generator().manual_seed(seed),  # CPU generator: same image for a seed on any device
            callback_on_step_end=on_step_end,
        ).images[0]
    # The first step also pays for text encoding; later steps are the transformer's steady state.
    per_step = (step_ends[-1] - step_ends[0]) / (steps - 1) if steps > 1 else step_ends[0] - fused
    timing = {"steps": steps, "seconds_per_step": per_step, "seconds": time.perf_counter() - start, "size": f"{width}x{height}",
              "lora": lora, "lora_scale": lora_scale, "lora_seconds": fused - start,
              "gpu_peak_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_initialized() else 0}
    return image, timing


if CONFIG.ray_serve:
    generate = REPLICAS.generate  # the function above, run by a replica


def infer(
    prompt: str,
    seed: int = 0,
    randomize_seed: bool = True,
    width: int = CONFIG.default_size,
    height: int = CONFIG.default_size,
    guidance_scale: float = CONFIG.default_guidance,
    num_inference_steps: int = STEPS,
    lora: str = "",
    lora_scale: float = 1.0,
    progress: gr.Progress = gr.Progress(track_tqdm=True),
    request: gr.Request = None,
):
    """Generate an image from a text prompt with FLUX (transformer AoT-compiled).

    Args:
        prompt: What to draw, not empty. T5 reads 512 tokens (schnell: 256), CLIP 77; a cut prompt is noted in the image.
        seed: Random seed, an integer from 0 to 2147483647. The same seed and settings give the same image.
        randomize_seed: If true, ignore `seed` and draw a new one (returned as the second output).
        width: Image width in pixels: a multiple of 32 from 256 to 2048. Other values are rejected.
        height: Image height in pixels: a multiple of 32 from 256 to 2048. Other values are rejected.
        guidance_scale: How closely to follow the prompt, from 1 to 15 (FLUX.1-dev: 3.5); schnell-like models ignore it.
        num_inference_steps: Denoising steps, from 1 to the Space's maximum (50 by default); FLUX.1-dev uses 28, schnell 4.
        lora: A LoRA: "" for none, a name from the Space's list, or a Hub repo as owner/name[@revision][:file.safetensors].
        lora_scale: How strongly the LoRA applies, from 0 to 2 (1: as trained, 0: not at all).

    Returns:
        The generated image (PNG, with its prompt, seed and settings as text fields) and the seed that produced it.
    """
    # Checked here, before any GPU is reserved: on ZeroGPU a rejected request costs no quota.
    try:
        prompt, seed, randomize_seed, width, height, guidance, steps, lora, lora_scale = check_inputs(
            prompt, seed, randomize_seed, width, height, guidance_scale, num_inference_steps, lora, lora_scale
        )
    except gr.Error as error:
        log.info("rejected request: %s", error.message)
        raise
    warning = truncation_warning(prompt)
    if warning:
        gr.Warning(warning)  # the UI shows it; API callers find it in the image's text fields
        log.info("%s", warning)
    if randomize_seed:
        seed = random.randint(0, cfg.MAX_SEED)
    started = RESERVATION.clock()
    try:
        image, timing = generate(prompt, seed, width, height, guidance, steps, lora, lora_scale)
    except Exception:  # on ZeroGPU, perhaps aborted at its reservation: the next one must not be as short
        RESERVATION.record(width, height, steps, lora, RESERVATION.clock() - started, timing=None)
        raise
    RESERVATION.record(width, height, steps, lora, RESERVATION.clock() - started, timing)
    # One line per image for whoever runs the Space (the prompt stays out of the log).
    log.info("served %dx%d, %d steps%s in %.1f s", width, height, steps, f", LoRA {lora} at {lora_scale:g}" if lora else "",
             RESERVATION.clock() - started)
    settings = settings_of(prompt, seed, width, height, guidance, steps, lora, lora_scale, warning)
    image.info.update(settings)  # Gradio keeps them in the PNG
    remember_timing(request, timing)
    return image, seed


# The status line's last timing, per browser session: not an output of the API event, whose outputs are what API and
# MCP callers get (Gradio's MCP tool fails on an event with a gr.State among its outputs).
TIMINGS: OrderedDict[str, dict] = OrderedDict()
MAX_SESSIONS = 1000  # the oldest sessions' timings go first
_timings_lock = threading.Lock()


def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or ""  # "": a direct call, without Gradio's request


def remember_timing(request: gr.Request | None, timing: dict) -> None:
    session = _session(request)
    with _timings_lock:
        TIMINGS[session] = timing
        TIMINGS.move_to_end(session)
        while len(TIMINGS) > MAX_SESSIONS:
            TIMINGS.popitem(last=False)


def last_timing(request: gr.Request | None = None) -> dict | None:
    """The timing of the last image made for `request`'s session (without a request: by a direct call)."""
    with _timings_lock:
        return TIMINGS.get(_session(request))


def session_status(request: gr.Request) -> str:
    return generation_status(last_timing(request))


def truncation_warning(prompt: str) -> str | None:
    tokens = len(pipe.tokenizer_2(prompt, verbose=False).input_ids)  # verbose: no tokenizer warning for a long prompt
    limit = MODEL.max_sequence_length
    return f"The prompt is {tokens} T5 tokens long; only the first {limit} were used." if tokens > limit else None


def settings_of(
    prompt: str, seed: int, width: int, height: int, guidance: float, steps: int, lora: str, lora_scale: float,
    warning: str | None,
) -> dict:
    """What made an image, as PNG text fields: anyone holding the file can reproduce or audit it."""
    settings = dict(prompt=prompt, model=MODEL_NAME, seed=seed, width=width, height=height, num_inference_steps=steps)
    if MODEL.guidance:
        settings["guidance_scale"] = guidance
    if lora:
        settings.update(lora=lora, lora_scale=lora_scale)
    if warning:
        settings["warning"] = warning
    return {key: str(value) for key, value in settings.items()}


def generation_status(timing: dict | None) -> str:
    """The status line, with the last generation's speed once there is one."""
    if not timing:
        return STATUS
    lora = timing["lora"] and f"LoRA {timing['lora']} at {timing['lora_scale']:g} ({timing['lora_seconds']:.2f} s to fuse), "
    return (
        f"{STATUS}  \nLast image: {timing['size']}, {timing['steps']} steps, {lora}"
        f"{timing['seconds_per_step']:.2f} s/step, {timing['seconds']:.1f} s in total"
    )


# UI ----------------------------------------------------------------------------------------------

def whole_number(slider: gr.Slider) -> gr.Slider:
    """`slider` as API and MCP clients should see it: an integer with its range (a Slider says "float")."""
    step = f" in steps of {slider.step}" if slider.step != 1 else ""
    slider.api_info = lambda: {"type": "integer", "description": f"whole number from {slider.minimum} to {slider.maximum}{step}"}
    return slider


# Each example carries its settings: a fixed seed (reproducible) and a size that suits the prompt.
EXAMPLES = [
    ["a tiny astronaut hatching from an egg on the moon", 42, False, 1024, 1024],
    ["a cat holding a sign that says hello world", 7, False, 1024, 768],
    ["a lighthouse on a cliff at dusk, tall vertical poster", 3, False, 768, 1344],
]
EXAMPLE_ROWS = [row + [CONFIG.default_guidance, STEPS, "", 1.0] for row in EXAMPLES]
# (label, value) pairs: "none", the Space's own LoRAs, then the curated Hub ones.
LORA_CHOICES = [("none", "")] + [(name, name) for name in local_names(CONFIG.lora_dir) + CONFIG.hub_lora_names]
EXAMPLES_CACHE = Path(os.environ.get("GRADIO_EXAMPLES_CACHE", ".gradio/cached_examples"))  # Gradio's default


def example_cache_folder() -> str:
    """Gradio's example cache, one folder per model and setup: Gradio keys cached images by example index only,
    so after a change of FLUX_MODEL (or of what else changes the image) a click would serve a stale image."""
    makes_the_image = [
        TRANSFORMER_CONFIG.get("_name_or_path", ""), CONFIG.model, CONFIG.dtype, CONFIG.device,  # model and snapshot
        report.aot, report.fp8, report.attention, EXAMPLE_ROWS,
    ]
    digest = hashlib.sha256(json.dumps(makes_the_image).encode()).hexdigest()[:16]
    return str(EXAMPLES_CACHE / digest)


os.environ["GRADIO_EXAMPLES_CACHE"] = example_cache_folder()  # read by gr.Examples below
CSS = "#col-container { margin: 0 auto; max-width: 640px; }"
# On a Space, its own README (SPACE_ID is set there); elsewhere the blog post this template follows.
HOW_IT_WORKS = (
    f"https://huggingface.co/spaces/{os.environ['SPACE_ID']}/blob/main/README.md#how-it-works"
    if os.environ.get("SPACE_ID")
    else "https://huggingface.co/blog/zerogpu-aoti"
)

# Gradio keeps every upload and generated image on disk until the server stops: 2-3 GB an hour at full speed. An API
# client has an hour to fetch its image; the cached examples are kept.
DELETE_FILES = (600, 3600)  # (every, older than) in seconds

with gr.Blocks(title="FLUX, AoT-compiled", delete_cache=DELETE_FILES) as demo:
    with gr.Column(elem_id="col-container"):
        gr.Markdown(
            "# FLUX, ahead-of-time compiled\n"
            "Text-to-image with the FLUX transformer exported and compiled by AOTInductor at startup "
            f"(one graph for every resolution, FP8 where the GPU has it). [How it works]({HOW_IT_WORKS})"
        )
        with gr.Row():
            prompt = gr.Text(label="Prompt", show_label=False, max_lines=1, placeholder="Enter your prompt", container=False)
            run_button = gr.Button("Run", scale=0, variant="primary")
        result = gr.Image(label="Result", show_label=False, format="png", type="pil", elem_id="result")
        status = gr.Markdown(STATUS, elem_id="status")
        with gr.Accordion("Advanced Settings", open=False):
            seed = whole_number(gr.Slider(label="Seed", minimum=0, maximum=cfg.MAX_SEED, step=1, value=0))
            randomize_seed = gr.Checkbox(label="Randomize seed", value=True)
            with gr.Row():
                sides = dict(minimum=cfg.MIN_SIZE, maximum=cfg.MAX_SIZE, step=cfg.SIZE_STEP, value=CONFIG.default_size)
                width = whole_number(gr.Slider(label="Width", **sides))
                height = whole_number(gr.Slider(label="Height", **sides))
            with gr.Row():
                guidance_scale = gr.Slider(
                    label="Guidance scale", minimum=cfg.GUIDANCE_RANGE[0], maximum=cfg.GUIDANCE_RANGE[1], step=0.1,
                    value=CONFIG.default_guidance, visible=MODEL.guidance,  # a schnell-like model has no guidance input
                )
                num_inference_steps = whole_number(gr.Slider(
                    label="Steps", minimum=1, maximum=CONFIG.max_steps, step=1, value=STEPS
                ))
            with gr.Row(visible=CONFIG.lora):
                lora = gr.Dropdown(
                    label="LoRA", choices=LORA_CHOICES, value="", allow_custom_value=True, scale=2,
                    info="From the list, or any Hub LoRA as owner/name",
                )
                # Any text, not only the listed choices (a Dropdown tells API clients "one of these").
                listed = ", ".join(repr(value) for _, value in LORA_CHOICES)
                lora.api_info = lambda: {"type": "string", "description": f"one of {listed}, or a Hub LoRA as owner/name"}
                lora_scale = gr.Slider(label="LoRA scale", minimum=SCALE_RANGE[0], maximum=SCALE_RANGE[1], step=0.05, value=1.0)
        request = [prompt, seed, randomize_seed, width, height, guidance_scale, num_inference_steps, lora, lora_scale]  # infer's
        generated = [result, seed]
        gr.Examples(
            examples=EXAMPLE_ROWS,
            fn=infer,
            inputs=request,
            outputs=generated,
            example_labels=[row[0] for row in EXAMPLES],  # show the prompts; the settings come along
            cache_examples=True,
            cache_mode="lazy",  # generated on first click, never at startup
        )
    gr.on(
        triggers=[run_button.click, prompt.submit],
        fn=infer,
        inputs=request,
        outputs=generated,
        api_name="infer",
        preprocess=False,  # `infer` validates raw values itself, with the same messages for UI and API
    ).success(session_status, outputs=status, api_visibility="private")

# Launch ------------------------------------------------------------------------------------------

# One generation at a time per GPU: here, or in each Ray Serve replica.
demo.queue(default_concurrency_limit=REPLICAS.capacity if CONFIG.ray_serve else 1, max_size=CONFIG.queue_size)

if __name__ == "__main__":
    if size := zerogpu_size_at_launch(CONFIG.zerogpu_size or None):
        log.info("%s", size)
    # 127.0.0.1 locally; Spaces set GRADIO_SERVER_NAME=0.0.0.0. On ZeroGPU, launch also packs the weights for the workers.
    with startup.stage("launch", startup_seconds):
        demo.launch(css=CSS, mcp_server=CONFIG.mcp_server, prevent_thread_lock=True)
    startup.ready(startup_seconds)  # the server answers from here on
    demo.block_thread()
