"""Every setting of the Space, in one place.

Two presets: `gpu` (FLUX.1-dev in bf16, the real Space) and `cpu` (the embedded tiny model in
float32, for running and testing anywhere). Environment variables override single fields; each
field's variable is named next to it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

ROOT = Path(__file__).resolve().parent
EMBEDDED_MODEL = str(ROOT / "assets" / "tiny-flux")
EMBEDDED_LORAS = str(ROOT / "assets" / "loras")  # made for the embedded model by assets/build_loras.py
HUB_MODEL = "black-forest-labs/FLUX.1-dev"

# Resolution range of the UI and of the one compiled graph, per side (the official FLUX.1-dev
# Space's range and step). FLUX turns 16x16 pixels into one transformer token (8x VAE, 2x2 packing),
# so sides in steps of 32 make the image tokens a multiple of 4, which the compiled graph relies on.
MIN_SIZE, MAX_SIZE, SIZE_STEP = 256, 2048, 32
PIXELS_PER_LATENT = 8  # per side: FLUX's VAE downsamples 8x
PIXELS_PER_TOKEN = 2 * PIXELS_PER_LATENT  # the transformer packs 2x2 latents into a token
MAX_SEED = 2**31 - 1
GUIDANCE_RANGE = (1.0, 15.0)  # of the UI and the API
DTYPES = ("bfloat16", "float16", "float32")  # the pipeline's weights: FLUX_DTYPE
FP8_ATTENTION = ("auto", "off", "cudnn", "cudnn_static_qk")  # OptimizationConfig.fp8_attention's choices
FP8_GRANULARITY = ("auto", "row", "tensor")
INDUCTOR_PERSISTENT_ROWS = 1024  # inductor's own limit for rows reduced in one pass (its InductorChoices)


@dataclass(frozen=True)
class ModelDefaults:
    """What a FLUX checkpoint was distilled for, read from its transformer config (`model_defaults`)."""

    guidance: bool  # guidance is a transformer input (FLUX.1-dev); a timestep-distilled model ignores it
    steps: int
    max_sequence_length: int  # T5 tokens it was trained with; the compiled graph's static text length


FLUX_DEV = ModelDefaults(guidance=True, steps=28, max_sequence_length=512)
FLUX_SCHNELL = ModelDefaults(guidance=False, steps=4, max_sequence_length=256)
MAX_SEQUENCE_LENGTH = FLUX_DEV.max_sequence_length


def model_defaults(transformer_config: Mapping[str, Any]) -> ModelDefaults:
    """From the architecture, not the name: fine-tunes (Krea-dev and others) keep their base's guidance embedding."""
    return FLUX_DEV if transformer_config.get("guidance_embeds", False) else FLUX_SCHNELL


def env(name: str) -> dict[str, str]:
    return {"env": name}


@dataclass(frozen=True)
class OptimizationConfig:
    """What `optimization.optimize_pipeline_` does; every step can be switched off."""

    aot: bool = field(default=True, metadata=env("AOTI"))  # off: serve the eager transformer
    fp8: bool = field(default=True, metadata=env("AOTI_FP8"))  # only where the GPU has FP8 units
    # "auto": the card's row of plan.ARCHITECTURES (per row on Hopper, per tensor on Ada and Blackwell); "row" or
    # "tensor" to ask for one (still probed on the card: a failing one steps down).
    fp8_granularity: str = field(default="auto", metadata=env("AOTI_FP8_GRANULARITY"))
    dynamic: bool = field(default=True, metadata=env("AOTI_DYNAMIC"))  # off: only the example's resolution
    # Compile one block of each repeated kind and share it (minutes less compile); off: the whole transformer.
    regional: bool = field(default=True, metadata=env("AOTI_REGIONAL"))
    fuse_qkv: bool = field(default=False, metadata=env("AOTI_FUSE_QKV"))  # one matmul for q, k and v
    # Replay each resolution's step as one CUDA graph: the CPU stops setting the pace (GPU only).
    cuda_graphs: bool = field(default=True, metadata=env("AOTI_CUDA_GRAPHS"))
    attention_backend: str = field(default="auto", metadata=env("AOTI_ATTENTION"))  # "auto" or a diffusers backend name
    # FP8 only: the single blocks' GELU + concat + FP8 quantization as one Triton kernel (fp8_kernels/):
    # the same step time, and 40% less compile (fewer kernels to tune).
    fp8_fused_quantization: bool = field(default=True, metadata=env("AOTI_FP8_FUSED_QUANT"))
    # FP8 only: likewise the double blocks' feed-forward GELU + FP8 quantization of the output layer's input.
    fp8_fused_ff_quantization: bool = field(default=True, metadata=env("AOTI_FP8_FUSED_FF_QUANT"))
    # FP8 only. Off: the double blocks' text-stream linears (512 rows) stay bf16, where cuBLAS's FP8 is slow.
    fp8_text_stream: bool = field(default=True, metadata=env("AOTI_FP8_TEXT_STREAM"))
    # FP8 only, where the backend is PyTorch's SDPA: attention in FP8 too, through cuDNN's FP8 flash attention, where
    # its probe passes on the card. "auto": "cudnn_static_qk" where plan.ARCHITECTURES tries it, else "off";
    # "cudnn_static_qk": q and k scaled by bounds from their RMSNorms' weights and cast by the compiled graph (7 ms
    # less per 1024x1024 step on an H200, same error); "cudnn": per-tensor amax scales of q, k and v in the op (2 ms
    # slower); "off".
    fp8_attention: str = field(default="auto", metadata=env("AOTI_FP8_ATTENTION"))
    # With "cudnn_static_qk": q and k's channels reordered once so that RoPE's pairs lie half a head apart
    # (fp8_kernels/rope_pairs.py); the compiled kernel that normalizes, rotates and casts them reads whole vectors.
    rope_pairs_split: bool = field(default=True, metadata=env("AOTI_ROPE_PAIRS_SPLIT"))
    # The VAE decoder compiled too (vae.py), for the default size and static_sizes: 85 -> 38 ms at 1024x1024 (H200).
    vae_decoder: bool = field(default=True, metadata=env("AOTI_VAE"))
    # Extra static graphs for these sizes ("1024x1024,1344x768"), sharing the weights with the dynamic graph;
    # the VAE decoder gets a program for each too (else only the default size's; 4-step Spaces: "512x512").
    static_sizes: str = field(default="", metadata=env("AOTI_STATIC_SIZES"))
    cache: bool = field(default=True, metadata=env("AOTI_CACHE"))  # reuse compiled programs across starts
    cache_dir: str = field(default="", metadata=env("AOTI_CACHE_DIR"))  # "": /data/aoti-cache on Spaces, else ~/.cache
    # Also pull programs from this Hub repo (HF_TOKEN reads a private one), and push them there with the secret
    # AOTI_HUB_TOKEN, signed with the secret AOTI_HUB_SIGNING_KEY (aoti/signing.py). Programs are native code: they are
    # loaded from the repo only at the commit AOTI_HUB_REVISION pins, or signed by AOTI_HUB_PUBLIC_KEY's key.
    hub_repo: str = field(default="", metadata=env("AOTI_HUB_REPO"))
    hub_revision: str = field(default="", metadata=env("AOTI_HUB_REVISION"))
    hub_public_key: str = field(default="", metadata=env("AOTI_HUB_PUBLIC_KEY"))
    # Identical computations in an exported graph run once (aoti/export.py): torchao quantizes a shared input per layer.
    merge_duplicates: bool = field(default=True, metadata=env("AOTI_MERGE_DUPLICATES"))
    # The transformer's row reductions (LayerNorm, per-row FP8 scales over 3072 channels) of up to this many elements as
    # one pass with the row held in registers (GPU); inductor's own limit, 1024, loops over the row (compile_options.py).
    # 4096: 85.3 against 86.0 ms per 1024x1024 step, 0.5-2 ms less at every size (H200).
    persistent_reductions_up_to: int = field(default=4096, metadata=env("AOTI_PERSISTENT_REDUCTIONS_UP_TO"))
    # Fast paths to treat as failing on this card ("fp8_row,fp8_attention", or "all"; names: probes.PROBES): rehearses
    # on a card where they run what a card where they don't will do (plan.py steps down, the log says why).
    fail_probes: str = field(default="", metadata=env("AOTI_FAIL_PROBES"))
    # torch._inductor.config options for every compile; why each one: compile_options.py.
    inductor_configs: Mapping[str, Any] = field(
        default_factory=lambda: MappingProxyType({
            "conv_1x1_as_mm": True, "epilogue_fusion": False, "split_reductions": False,
            "aot_inductor.compile_wrapper_opt_level": "O0",
        })
    )

    def __post_init__(self) -> None:
        if self.fp8_granularity not in FP8_GRANULARITY:
            raise ValueError(f"AOTI_FP8_GRANULARITY must be one of {', '.join(FP8_GRANULARITY)}, got {self.fp8_granularity!r}")
        if self.fp8_attention not in FP8_ATTENTION:
            raise ValueError(f"AOTI_FP8_ATTENTION must be one of {', '.join(FP8_ATTENTION)}, got {self.fp8_attention!r}")
        if self.persistent_reductions_up_to < 1:
            raise ValueError(f"AOTI_PERSISTENT_REDUCTIONS_UP_TO must be at least 1, got {self.persistent_reductions_up_to}")
        self.static_resolutions  # validates

    @property
    def cache_folder(self) -> Path:
        if self.cache_dir:
            return Path(self.cache_dir)
        persistent = Path("/data")  # a Space's persistent storage, when it has some
        if persistent.is_dir() and os.access(persistent, os.W_OK):
            return persistent / "aoti-cache"
        return Path.home() / ".cache" / "aoti"

    @property
    def static_resolutions(self) -> tuple[tuple[int, int], ...]:
        """`static_sizes` as (width, height) pairs."""
        sizes = []
        for item in filter(None, self.static_sizes.replace(" ", "").split(",")):
            try:
                width, height = map(int, item.lower().split("x"))
            except ValueError:
                raise ValueError(f"AOTI_STATIC_SIZES: {item!r} is not WIDTHxHEIGHT") from None
            for side in (width, height):
                if not MIN_SIZE <= side <= MAX_SIZE or side % SIZE_STEP:
                    raise ValueError(f"AOTI_STATIC_SIZES: {item!r}: sides must be multiples of {SIZE_STEP} in "
                                     f"{MIN_SIZE}..{MAX_SIZE}")
            sizes.append((width, height))
        return tuple(sizes)


@dataclass(frozen=True)
class ServeConfig:
    """Ray Serve replicas of the pipeline (serve.py): each runs one generation at a time on its own GPU.

    Autoscaled on ongoing requests, a replica's running one plus those waiting for it: above the target on
    average, replicas are added up to `max_replicas`; below it, removed down to `min_replicas`.
    """

    min_replicas: int = field(default=1, metadata=env("SERVE_MIN_REPLICAS"))
    max_replicas: int = field(default=4, metadata=env("SERVE_MAX_REPLICAS"))
    target_ongoing_requests: float = field(default=1.0, metadata=env("SERVE_TARGET_ONGOING_REQUESTS"))
    num_gpus: float = 1.0  # per replica; 0 in the cpu preset
    num_cpus: float = 1.0  # per replica; on CPU also its torch threads (Ray sets OMP_NUM_THREADS)
    # A request's wait for a replica with room plus its generation (a 2048x2048, 50-step image: under a minute on an H100)
    request_timeout_s: float = field(default=300.0, metadata=env("SERVE_REQUEST_TIMEOUT_S"))

    def __post_init__(self) -> None:
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ValueError(f"need 1 <= SERVE_MIN_REPLICAS <= SERVE_MAX_REPLICAS, got {self.min_replicas}, {self.max_replicas}")
        if not self.target_ongoing_requests > 0:
            raise ValueError(f"SERVE_TARGET_ONGOING_REQUESTS must be positive, got {self.target_ongoing_requests}")
        if not self.request_timeout_s > 0:
            raise ValueError(f"SERVE_REQUEST_TIMEOUT_S must be positive, got {self.request_timeout_s}")


@dataclass(frozen=True)
class AppConfig:
    model: str = field(default=HUB_MODEL, metadata=env("FLUX_MODEL"))  # hub id or local folder
    device: str = field(default="cuda", metadata=env("FLUX_DEVICE"))
    dtype: str = field(default="bfloat16", metadata=env("FLUX_DTYPE"))
    default_steps: int | None = None  # None: the model's (`ModelDefaults.steps`)
    max_steps: int = field(default=50, metadata=env("FLUX_MAX_STEPS"))
    default_guidance: float = 3.5
    default_size: int = 1024
    queue_size: int = field(default=20, metadata=env("FLUX_QUEUE_SIZE"))  # waiting requests beyond this get "busy"
    mcp_server: bool = field(default=False, metadata=env("FLUX_MCP_SERVER"))  # also serve /infer as an MCP tool
    # ZeroGPU's GPU size: "", its default: `large` (half an RTX Pro 6000, 48 GB) unless the weights spaces packs at
    # launch exceed its threshold (42 GiB), then `xlarge` (the whole card, 96 GB, twice the quota); or either by name.
    zerogpu_size: str = field(default="", metadata=env("FLUX_ZEROGPU_SIZE"))
    # LoRAs per request, fused into the compiled weights; keeps an unquantized copy of the transformer's linear layers.
    lora: bool = field(default=True, metadata=env("FLUX_LORA"))
    lora_dir: str = field(default=str(ROOT / "loras"), metadata=env("FLUX_LORA_DIR"))  # the Space's own LoRAs
    # Host memory for the LoRAs kept read (20 MB to 1.3 GB each): a visitor's choice of LoRA must not grow it unbounded.
    lora_cache_gb: float = field(default=4.0, metadata=env("FLUX_LORA_CACHE_GB"))
    # Disk for Hub LoRAs downloaded (under HF_HOME/loras), least recently used deleted first.
    lora_downloads_gb: float = field(default=20.0, metadata=env("FLUX_LORA_DOWNLOADS_GB"))
    # Hub LoRAs offered in the UI ("owner/name" or "owner/name:file.safetensors", comma-separated); any other
    # Hub LoRA can still be typed in or sent through the API.
    hub_loras: str = field(default="", metadata=env("FLUX_HUB_LORAS"))
    # Set by serve.py: the pipeline runs in Ray Serve replicas; this process checks requests and serves the UI.
    ray_serve: bool = field(default=False, metadata=env("FLUX_RAY_SERVE"))
    optimization: OptimizationConfig = OptimizationConfig()
    serve: ServeConfig = ServeConfig()

    def __post_init__(self) -> None:
        """Nonsense settings stop the start here, before anything loads, naming the variable."""
        checks = [
            (self.max_steps >= 1, f"FLUX_MAX_STEPS must be at least 1, got {self.max_steps}"),
            (self.queue_size >= 1, f"FLUX_QUEUE_SIZE must be at least 1, got {self.queue_size}"),
            (self.dtype in DTYPES, f"FLUX_DTYPE must be one of {', '.join(DTYPES)}, got {self.dtype!r}"),
            (self.device == "cpu" or re.fullmatch(r"cuda(:\d+)?", self.device) is not None,
             f"FLUX_DEVICE must be cpu, cuda or cuda:N, got {self.device!r}"),
            (self.lora_cache_gb > 0, f"FLUX_LORA_CACHE_GB must be positive, got {self.lora_cache_gb}"),
            (self.lora_downloads_gb > 0, f"FLUX_LORA_DOWNLOADS_GB must be positive, got {self.lora_downloads_gb}"),
            (self.zerogpu_size in ("", "large", "xlarge"),
             f"FLUX_ZEROGPU_SIZE must be 'large' or 'xlarge', got {self.zerogpu_size!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def embedded(self) -> bool:
        return self.model == EMBEDDED_MODEL

    def steps_for(self, model: ModelDefaults) -> int:
        return self.default_steps or model.steps

    @property
    def lora_cache_bytes(self) -> int:
        return int(self.lora_cache_gb * 1e9)

    @property
    def lora_downloads_bytes(self) -> int:
        return int(self.lora_downloads_gb * 1e9)

    @property
    def hub_lora_names(self) -> list[str]:
        return [name.strip() for name in self.hub_loras.split(",") if name.strip()]


# Popular FLUX.1-dev LoRAs in three formats (XLabs, diffusers, kohya), for the GPU Space's list.
HUB_LORAS = (
    "XLabs-AI/flux-RealismLora,alimama-creative/FLUX.1-Turbo-Alpha,ByteDance/Hyper-SD:Hyper-FLUX.1-dev-8steps-lora.safetensors"
)
PRESETS = {
    "gpu": AppConfig(hub_loras=HUB_LORAS),
    "cpu": AppConfig(model=EMBEDDED_MODEL, device="cpu", dtype="float32", default_steps=4, max_steps=50, lora_dir=EMBEDDED_LORAS,
                     serve=ServeConfig(num_gpus=0.0)),
}


def from_env(environ: Mapping[str, str] = os.environ, cuda: bool | None = None) -> AppConfig:
    """The preset for this machine (gpu when CUDA is there), with environment overrides applied."""
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    preset = PRESETS["gpu" if cuda else "cpu"]
    optimization, serve = _override(preset.optimization, environ), _override(preset.serve, environ)
    config = dataclasses.replace(_override(preset, environ), optimization=optimization, serve=serve)
    if config.device.startswith("cuda") and not cuda:
        raise ValueError(f"FLUX_DEVICE={config.device!r}, but this machine's torch sees no CUDA GPU")
    return config


def _override(config: Any, environ: Mapping[str, str]) -> Any:
    changes = {}
    for f in dataclasses.fields(config):
        name = f.metadata.get("env")
        if name and environ.get(name, "") != "":
            changes[f.name] = _parse(name, environ[name], type(getattr(config, f.name)))
    return dataclasses.replace(config, **changes)


def _parse(name: str, text: str, kind: type) -> Any:
    if kind is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{name}={text!r}: expected 1/0, true/false, yes/no or on/off")
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"{name}={text!r}: expected {kind.__name__}") from None
    if kind is float and not math.isfinite(value):  # "inf" and "nan" parse, and then overflow or compare false
        raise ValueError(f"{name}={text!r}: expected a finite number")
    return value
