"""The hardware plan: every decision that depends on the GPU, made once, on the GPU, and read everywhere after.

    plan = decide(config, pipe.transformer)   # inside the @spaces.GPU function: the real card is visible only there

On ZeroGPU the main process only emulates CUDA (it reports an H200, capability 9.0, whatever the card), so the card
is read in the GPU function. `decide` looks its compute capability up in ARCHITECTURES (what each generation runs
fast, with a line of why), applies the config's switches, then runs each chosen fast path once on the card
(probes.py): a path whose probe raises or is off by more than its tolerance steps down to the next rung, and one log
line says why. The plan travels back to the main process with the compiled programs, keys the program cache, and is
shown in the status line.

The ladder, fastest first: FP8 GEMMs per row (with the fused quantization kernels) -> per tensor -> the weights' own
dtype; cuDNN's FP8 attention (with q and k's RoPE pairs split) -> PyTorch's SDPA; FlashAttention-3 from the Hub
where the card is Hopper and attention stays bf16.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

import probes
from attention import DEFAULT as SDPA
from attention import set_attention_backend
from config import OptimizationConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Architecture:
    name: str
    fp8: str | None  # FP8 GEMMs to try first: "row", "tensor", or None (no FP8 tensor cores)
    fp8_attention: bool  # try cuDNN's FP8 attention (only where its probe passes)
    flash_attention_3: bool  # FA3 from the Hub for bf16 attention: its kernels are Hopper-only
    why: str


ARCHITECTURES = {
    (8, 0): Architecture("Ampere (A100)", None, False, False, "no FP8 tensor cores: bf16"),
    (8, 6): Architecture("Ampere (A10G, RTX 30)", None, False, False, "no FP8 tensor cores: bf16"),
    (8, 9): Architecture("Ada (L4, L40S, RTX 40)", "tensor", False, False,
                         "FP8 tensor cores, but cuBLAS's row-wise scaled matmul needs sm_90: per-tensor FP8 GEMMs"),
    (9, 0): Architecture("Hopper (H100, H200)", "row", True, True,
                         "measured here: per-row FP8 GEMMs with the fused quantization kernels, cuDNN's FP8 attention "
                         "(bench/README.md)"),
    (10, 0): Architecture("Blackwell (B200)", "tensor", True, False,
                          "cuBLAS has no row-wise scaled matmul on sm_100 (pytorch PRs #160693, #161236): per-tensor FP8 "
                          "GEMMs; FA3 is Hopper-only; not measured here"),
    (12, 0): Architecture("Blackwell (RTX Pro 6000, ZeroGPU)", "tensor", True, False,
                          "no row-wise scaled matmul on sm_120 either (pytorch issue #192707: CUBLAS_STATUS_NOT_SUPPORTED): "
                          "per-tensor FP8 GEMMs; cuDNN's FP8 attention for sm_120 needs a newer cudnn-frontend than "
                          "ours, so it is on only where its probe passes; not measured here"),
}
# A card not in the table (older, newer, or a variant such as Jetson's sm_87): nothing that could fail to run on it.
SAFEST = Architecture("not in the table", None, False, False, "unknown to this template: bf16, PyTorch's SDPA")
CPU = Architecture("CPU", None, False, False, "no CUDA GPU")
SPARE = 0.10  # of the card's memory left free at every size the UI offers
# Peak memory of a request beyond the weights, per output pixel: the VAE decoder's activations dominate. FLUX.1-dev
# at 2048x2048 under a 48 GB cap: up to 32.8 GB allocated over the worker's 22.0 GB of weights, 2,575 bytes a pixel
# (H100, bench/results/zerogpu-memory-h100/fixed-segments.json).
REQUEST_BYTES_PER_PIXEL = 2_600


@dataclass(frozen=True)
class Plan:
    """What this card runs. Frozen; pickled from a ZeroGPU worker to the main process."""

    device: str  # the card's name, or "CPU"
    capability: tuple[int, int] | None
    architecture: str  # its ARCHITECTURES entry
    fp8: str | None  # FP8 GEMMs: "row", "tensor", or None (the weights' own dtype)
    fused_quantization: bool  # single blocks: GELU + concat + per-row FP8 quantization in one kernel (fp8_kernels/)
    fused_ff_quantization: bool  # double blocks' feed-forwards: GELU + per-row FP8 quantization in one kernel
    fp8_attention: str  # the FP8 op SDPA's calls become (config.FP8_ATTENTION), or "off"
    rope_pairs_split: bool  # q and k's RoPE pairs half a head apart (with "cudnn_static_qk")
    attention: str  # the diffusers attention backend
    memory_bytes: int = 0  # the card's memory as this process sees it (ZeroGPU's `large`: half a card)
    weights_bytes: int = 0  # on the card once the transformer is prepared, every other component included
    steps_down: tuple[str, ...] = ()  # one line per fast path left out, and why
    probe_seconds: dict[str, float] | None = None

    @classmethod
    def assumed(cls, config: OptimizationConfig, fp8: str | None, attention: str = SDPA) -> Plan:
        """What `decide` makes of `config` when FP8 is `fp8`, the backend `attention` and every probe passes: for
        benchmarks and tests that state what they compare, and for `decide` itself."""
        fp8_attention = config.fp8_attention if fp8 and attention == SDPA else "off"
        if fp8_attention == "auto":
            fp8_attention = "cudnn_static_qk"
        return cls(
            device="assumed", capability=None, architecture="assumed", fp8=fp8,
            fused_quantization=fp8 == "row" and config.fp8_fused_quantization,
            fused_ff_quantization=fp8 == "row" and config.fp8_fused_ff_quantization,
            fp8_attention=fp8_attention, rope_pairs_split=config.rope_pairs_split and fp8_attention == "cudnn_static_qk",
            attention=attention,
        )

    def fits_beside(self, extra_bytes: int, largest_pixels: int) -> bool:
        """Whether `extra_bytes` more can stay on the card with a request of `largest_pixels` running and SPARE free."""
        if not self.memory_bytes:
            return False
        request = REQUEST_BYTES_PER_PIXEL * largest_pixels
        return self.weights_bytes + extra_bytes + request <= (1 - SPARE) * self.memory_bytes

    def summary(self) -> str:
        precision = f"FP8 per {self.fp8}" if self.fp8 else "no FP8"
        attention = self.attention + (f" in FP8 ({self.fp8_attention})" if self.fp8_attention != "off" else "")
        where = f"{self.device} ({self.architecture})" if self.capability else self.device
        text = f"{where}: {precision}, attention {attention}"
        if self.steps_down:
            text += "; stepped down: " + "; ".join(self.steps_down)
        return text

    def as_key(self) -> dict:
        """What the compiled programs depend on: the card's identity is in the cache key's environment already."""
        return dict(fp8=self.fp8, fused_quantization=self.fused_quantization, fused_ff_quantization=self.fused_ff_quantization,
                    fp8_attention=self.fp8_attention, rope_pairs_split=self.rope_pairs_split, attention=self.attention)


def gpu_of(device: torch.device) -> tuple[str, tuple[int, int], int] | None:
    """(name, compute capability, memory in bytes) of the CUDA card `device` is on, or None off CUDA."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(device), tuple(torch.cuda.get_device_capability(device)), torch.cuda.mem_get_info(device)[1]


def architecture(capability: tuple[int, int] | None) -> Architecture:
    return CPU if capability is None else ARCHITECTURES.get(tuple(capability), SAFEST)


def decide(
    config: OptimizationConfig, transformer: torch.nn.Module, probe: Callable[..., str | None] | None = None,
) -> Plan:
    """The plan for `transformer` on its device: the table's entry, the config's switches, the verdicts of `probe`
    (probes.run); sets the chosen attention backend on `transformer`. Call it on the GPU (ZeroGPU emulates CUDA
    elsewhere)."""
    probe = probe or probes.run
    device, dtype = transformer.device, transformer.dtype
    gpu = gpu_of(device)
    name, capability, memory = gpu if gpu else (device.type.upper(), None, 0)
    arch = architecture(capability)
    forced = {p.strip() for p in config.fail_probes.split(",") if p.strip()}
    if unknown := forced - {"all", *probes.PROBES}:
        raise ValueError(f"AOTI_FAIL_PROBES names unknown probes {sorted(unknown)}: use 'all' or {', '.join(probes.PROBES)}")
    steps_down: list[str] = []
    seconds: dict[str, float] = {}

    def passes(check: str, **kwargs) -> bool:
        start = time.perf_counter()
        reason = "forced by AOTI_FAIL_PROBES" if check in forced or "all" in forced else probe(check, device, **kwargs)
        seconds[check] = time.perf_counter() - start
        if reason:
            steps_down.append(f"{check} failed ({reason})")
        return reason is None

    fp8 = _wanted_fp8(config, arch, dtype, steps_down)
    if fp8 == "row" and not passes("fp8_row"):
        fp8 = "tensor"
    if fp8 == "tensor" and not passes("fp8_tensor"):
        fp8 = None
    fp8_attention = config.fp8_attention
    if fp8_attention == "auto":
        fp8_attention = "cudnn_static_qk" if arch.fp8_attention else "off"
    if fp8 and fp8_attention != "off" and not passes("fp8_attention", kernel=fp8_attention):
        fp8_attention = "off"
    attention = set_attention_backend(
        transformer, config.attention_backend, flash_attention_3=arch.flash_attention_3 and not (fp8 and fp8_attention != "off"),
    )
    plan = Plan.assumed(replace(config, fp8_attention=fp8_attention), fp8, attention)
    fused = plan.fused_quantization and passes("fused_quantization")
    fused_ff = plan.fused_ff_quantization and passes("fused_ff_quantization")
    plan = replace(plan, device=name, capability=capability, architecture=arch.name, fused_quantization=fused,
                   fused_ff_quantization=fused_ff, memory_bytes=memory, steps_down=tuple(steps_down), probe_seconds=seconds)
    for line in steps_down:
        log.warning("stepped down: %s", line)
    if not plan.fp8:
        why = "switched off (AOTI_FP8=0)" if not config.fp8 else steps_down[-1] if steps_down else arch.why
        log.info("FP8 off: %s; the transformer runs in %s", why, str(dtype).removeprefix("torch."))
    if seconds:
        log.info("probes %.2f s (%s)", sum(seconds.values()), ", ".join(f"{k} {v:.2f} s" for k, v in seconds.items()))
    log.info("plan: %s", plan.summary())
    return plan


def _wanted_fp8(config: OptimizationConfig, arch: Architecture, dtype: torch.dtype, steps_down: list[str]) -> str | None:
    """The FP8 rung to start from: the table's, or the config's where it names one; None where FP8 cannot apply."""
    if not config.fp8:
        return None
    if arch.fp8 is None:
        if arch is not CPU:
            steps_down.append(f"no FP8: {arch.why}")
        return None
    if dtype not in (torch.bfloat16, torch.float16):
        steps_down.append(f"no FP8: torchao quantizes bf16 or fp16 weights, the transformer has {dtype}")
        return None
    wanted = arch.fp8 if config.fp8_granularity == "auto" else config.fp8_granularity
    if wanted == "row" and dtype != torch.bfloat16:  # torchao's per-row FP8 quantizes bf16 weights only
        steps_down.append(f"fp8_row skipped (needs bfloat16 weights, the transformer has {dtype})")
        return "tensor"
    return wanted
