"""How long a ZeroGPU call reserves the GPU: estimated from this Space's own requests, on the card it runs on.

ZeroGPU calls `@spaces.GPU(duration=...)` in the main process before it schedules a GPU. A smaller reservation
ranks higher in its queue and passes the visitor's quota check sooner; one too small aborts the request
mid-image. Constants measured on one card are wrong on the next, in both directions (ZeroGPU moved from H200
slices to the RTX Pro 6000 Blackwell in May 2026), so the reservation starts from a conservative prior and
then follows what each finished request measured:

    seconds = ceil(margin * (fixed + lora_switch + steps * step_seconds(image_tokens))), within [MIN_SECONDS, MAX_SECONDS]

- step_seconds: one measured step time carried to another size by FLUX's FLOPs per step (`step_flops`): the
  linear layers grow with the tokens, attention with their square, so a 2048x2048 step of FLUX.1-dev costs
  5.6 of its 1024x1024 steps, not the 4 its pixels say;
- fixed: the rest of a call, outside the GPU function (queue to the worker, fork, the weights' move into a
  fresh worker) and inside it (text encoding, a new size's CUDA-graph capture, decoding): the main process's
  wall time less the LoRA switch and the steps;
- lora_switch: fusing the requested LoRA into the weights (lora/), only when a LoRA is requested.

Each is the largest of the recent measurements, not their mean: an estimate right on average would abort
every request slower than average. A call that fails after its reservation ran out (ZeroGPU's abort) counts
whole as fixed cost, so the next reservation is longer instead of failing the same way.

    RESERVATION = Reservation(pipe.transformer.config, text_tokens=512)
    RESERVATION.seconds(1024, 1024, 28, lora="")   # the duration callable; logs what it reserved, and from what
    RESERVATION.record(1024, 1024, 28, "", wall_seconds, timing)   # after the call: generate's own timing
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from config import PIXELS_PER_TOKEN

log = logging.getLogger("duration")

MLP_RATIO = 4  # FLUX's feed-forward width over its hidden size, in both kinds of block (not in the config)

# ZeroGPU refuses a longer reservation outright ("illegal duration"), before any GPU work, so a longer estimate
# is clamped and may abort instead. The cap is undocumented and depends on the visitor's tier; 5 minutes is
# the one its maintainers have stated (zero-gpu-explorers/README, discussion 7).
MAX_SECONDS = 300
# A floor against a broken measurement (a clock that jumped back, a stand-in for `generate`). The fixed costs'
# floor (FRESH_WORKER_SECONDS) keeps every estimate above it: it binds only where that floor is lowered.
MIN_SECONDS = 5
# Over the largest recent measurements: a step at a size not measured yet runs at another efficiency than the
# FLOP ratio says (a 512x512 step of FLUX.1-dev on an H200 takes 1.2x what 1024x1024's FLOPs predict).
MARGIN = 1.25

# Until a request is measured: the H200 constants this replaces (10 s + 0.3 s per 1024x1024 step, itself 3x
# the 0.09 s an H200 takes) doubled for a card not measured yet: ZeroGPU's first request must not be aborted.
PRIOR_STEP = (4096, 0.6)  # (image tokens, seconds per step): a 1024x1024 step
PRIOR_FIXED = 20.0
PRIOR_LORA_SWITCH = 5.0  # 6x the slowest switch measured on an H200 (rank 128 over every linear, FP8: 0.82 s)
# A fresh worker's fixed costs: 13.0-16.6 s of FLUX.1-dev requests on an H100 under a 48 GB cap, 11.6-15.3 s of it
# moving the whole pipeline's 22 GB into the worker (bench/results/zerogpu-memory-h100/fixed-segments.json). ZeroGPU may
# fork a fresh worker for any request (after an idle spell, on another GPU): a run of reused workers (0.3 s) must not
# teach the estimate that it never will.
FRESH_WORKER_SECONDS = 17.0
# Requests the largest is taken over. Steps: the card is fixed for the process, so a few show its rate. Fixed
# costs: long enough to hold a fresh worker's among reused ones; an outlier (a long wait in ZeroGPU's queue,
# counted in the wall time) is forgotten after as many requests.
STEP_WINDOW = 8
FIXED_WINDOW = 32
LORA_WINDOW = 16


def step_flops(config: Mapping[str, Any], image_tokens: int, text_tokens: int) -> tuple[float, float]:
    """FLOPs of one transformer forward (one step), as (linear layers, attention), from the transformer's config.

    In multiply-adds (2 FLOPs each), with d the hidden size and n the image + text tokens: per token, a double
    block's stream has q, k, v and out (4 d^2) and its MLP (2 * 4 d^2); a single block has q, k, v and the MLP's
    input (3 d^2 + 4 d^2) and one output layer over both (5 d^2): 12 d^2 in either kind. Attention is q k^T and
    the weighted sum of v, n^2 d each. FLUX.1-dev at 1024x1024 (4096 + 512 tokens): 59.5 + 14.9 TFLOP.
    """
    hidden = config["num_attention_heads"] * config["attention_head_dim"]
    blocks = config["num_layers"] + config["num_single_layers"]
    tokens = image_tokens + text_tokens
    per_token = (4 + 2 * MLP_RATIO) * hidden**2
    # T5's features into the hidden size, and the latents in and out: under 0.1% of FLUX.1-dev, all of a tiny model
    patch_channels = config.get("in_channels", 64) + (config.get("out_channels") or config.get("in_channels", 64))
    embedders = text_tokens * config["joint_attention_dim"] * hidden + image_tokens * patch_channels * hidden
    linear = 2 * (blocks * per_token * tokens + embedders)
    attention = 2 * blocks * 2 * tokens**2 * hidden
    return float(linear), float(attention)


def zerogpu_duration_factor(size: str | None) -> float:
    """What ZeroGPU multiplies a call's requested duration by: spaces scales a `large` call by its card's factor (1.5
    on the RTX Pro 6000 Blackwell, 1.0 on the H200: spaces/zero/configs.json, `get_duration_seconds` in
    spaces/zero/client.py), meant for durations written for an H200. Ours are measured on the card itself, so they
    are divided by it. 1.0 off ZeroGPU, for `xlarge`, or where spaces' internals are not as read."""
    try:
        from spaces.config import Config

        if not Config.zero_gpu or size == "xlarge":
            return 1.0
        from spaces.zero import config as zero_config

        return float(zero_config.get_config()["duration_factor"])
    except Exception:  # another spaces version: reserve what was measured, unscaled
        return 1.0


def zerogpu_size_at_launch(requested: str | None) -> str | None:
    """Which ZeroGPU size this Space's calls will get, from the weights spaces packs at launch, as one log line; None
    off ZeroGPU. spaces moves a Space whose packed weights pass its card's threshold to `xlarge` by itself
    (`startup` in spaces/zero/__init__.py; 42 GiB on the RTX Pro 6000), and an `xlarge` call costs twice the quota."""
    try:
        from spaces.config import Config

        if not Config.zero_gpu:
            return None
        from spaces.zero import config as zero_config
        from spaces.zero import torch as zero_torch

        packed, threshold = zero_torch.size(), zero_config.get_config()["xlarge_threshold"]
    except Exception:  # another spaces version: nothing to say
        return None
    weights = f"{packed / 1e9:.1f} GB of weights to pack"
    if requested:
        return f"ZeroGPU: {weights}; every call asks for `{requested}` (FLUX_ZEROGPU_SIZE)"
    if threshold is None:
        return f"ZeroGPU: {weights}; this card has one size"
    if packed > threshold:
        return (f"ZeroGPU: {weights}, over the {threshold / 1e9:.1f} GB that fit `large`: spaces runs every call on `xlarge`, "
                "at twice the quota")
    return f"ZeroGPU: {weights}, within the {threshold / 1e9:.1f} GB that fit `large`: calls run on `large`"


def image_tokens(width: int, height: int) -> int:
    return (width // PIXELS_PER_TOKEN) * (height // PIXELS_PER_TOKEN)


@dataclass(frozen=True)
class Estimate:
    """A reservation and what it was computed from, as the log line says it."""

    seconds: int
    width: int
    height: int
    steps: int
    lora: bool
    step_seconds: float  # at `step_tokens` image tokens, as measured (or the prior)
    step_tokens: int
    fixed: float
    lora_switch: float  # counted only if `lora`
    measured: tuple[bool, bool, bool]  # step, fixed, LoRA switch: measured, or still the prior

    def __str__(self) -> str:
        step, fixed, switch = ("" if measured else " (prior)" for measured in self.measured)
        parts = [
            f"{self.step_seconds:.2f} s/step {'measured ' if not step else ''}at {self.step_tokens} tokens{step}",
            f"{self.fixed:.1f} s fixed{fixed}",
        ]
        if self.lora:
            parts.append(f"{self.lora_switch:.1f} s LoRA switch{switch}")
        lora = ", a LoRA" if self.lora else ""
        return f"{self.seconds} s for {self.width}x{self.height}, {self.steps} steps{lora} ({', '.join(parts)})"


class Reservation:
    """Seconds to reserve for a `generate` call, learnt from the calls before it. Thread-safe: Gradio runs
    requests in worker threads (and several at once in front of Ray Serve replicas)."""

    def __init__(
        self,
        transformer_config: Mapping[str, Any],
        text_tokens: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        margin: float = MARGIN,
        min_fixed: float = FRESH_WORKER_SECONDS,
        min_seconds: int = MIN_SECONDS,
        max_seconds: int = MAX_SECONDS,
        platform_factor: float = 1.0,
    ):
        self.config = dict(transformer_config)
        self.text_tokens = text_tokens  # the model's max_sequence_length: prompts are padded to it
        self.clock = clock  # the caller times `generate` with it
        self.margin, self.min_fixed, self.min_seconds, self.max_seconds = margin, min_fixed, min_seconds, max_seconds
        self.platform_factor = platform_factor  # ZeroGPU's scaling of what is asked for (`zerogpu_duration_factor`)
        self._lock = threading.Lock()
        self._steps: deque[tuple[int, float]] = deque(maxlen=STEP_WINDOW)  # (image tokens, seconds per step)
        self._fixed: deque[float] = deque(maxlen=FIXED_WINDOW)
        self._lora_switches: deque[float] = deque(maxlen=LORA_WINDOW)

    def flops(self, tokens: int) -> float:
        """One step's FLOPs at `tokens` image tokens."""
        return sum(step_flops(self.config, tokens, self.text_tokens))

    def _step(self) -> tuple[int, float]:
        # The slowest recent step per FLOP: small sizes use the GPU less well, so their rate errs long elsewhere.
        return max(self._steps, key=lambda sample: sample[1] / self.flops(sample[0]), default=PRIOR_STEP)

    def step_seconds(self, tokens: int) -> float:
        """Seconds per step at `tokens` image tokens: the reference step scaled by the ratio of FLOPs."""
        with self._lock:
            measured_tokens, seconds = self._step()
        return seconds * self.flops(tokens) / self.flops(measured_tokens)

    def estimate(self, width: int, height: int, steps: int, lora: str | bool) -> Estimate:
        with self._lock:
            (step_tokens, step), fixed, switch = self._step(), self._fixed_cost(), self._lora_switch()
            measured = (bool(self._steps), bool(self._fixed), bool(self._lora_switches))
        per_step = step * self.flops(image_tokens(width, height)) / self.flops(step_tokens)
        need = fixed + (switch if lora else 0.0) + steps * per_step
        # The platform scales what is asked for, and its maximum holds for the scaled duration.
        factor = self.platform_factor
        seconds = min(max(math.ceil(self.margin * need / factor), self.min_seconds), math.floor(self.max_seconds / factor))
        return Estimate(seconds, width, height, steps, bool(lora), step, step_tokens, fixed, switch, measured)

    def seconds(self, width: int, height: int, steps: int, lora: str | bool) -> int:
        """The reservation for one `generate` call (ZeroGPU's duration callable); logs it with its inputs."""
        estimate = self.estimate(width, height, steps, lora)
        log.info("reserved %s", estimate)
        return estimate.seconds

    def _fixed_cost(self) -> float:
        return max(max(self._fixed), self.min_fixed) if self._fixed else PRIOR_FIXED

    def _lora_switch(self) -> float:
        return max(self._lora_switches, default=PRIOR_LORA_SWITCH)

    def record(self, width: int, height: int, steps: int, lora: str | bool, wall_seconds: float,
               timing: Mapping[str, Any] | None) -> None:
        """Learn from one finished `generate` call: `wall_seconds` as the caller timed it (with `clock`), `timing`
        as `generate` returned it, or None if the call raised."""
        reserved = self.estimate(width, height, steps, lora).seconds
        if timing is None:
            # Raised within its reservation: not a time-out, nothing learnt. Past it: most likely ZeroGPU's abort,
            # and the steps' share of it is unknown: all of it counts as fixed, so the next one is longer.
            if wall_seconds >= reserved:
                with self._lock:
                    self._fixed.append(wall_seconds)
                log.warning("%dx%d, %d steps failed after %.1f s, past the %d s reserved: the same request now reserves %d s",
                            width, height, steps, wall_seconds, reserved, self.estimate(width, height, steps, lora).seconds)
            return
        per_step, lora_seconds = timing.get("seconds_per_step"), timing.get("lora_seconds", 0.0)
        if per_step is None:  # a stand-in for `generate` that times nothing
            return
        with self._lock:
            # A one-step call's step includes the text encoding and the first step's extras: no steady step time.
            # It still tells the fixed costs (those extras land in its step, not in them: they err short by as much).
            if steps > 1:
                self._steps.append((image_tokens(width, height), per_step))
            if lora:
                self._lora_switches.append(lora_seconds)
            self._fixed.append(max(wall_seconds - lora_seconds - steps * per_step, 0.0))
        if wall_seconds > reserved:
            log.warning("%dx%d, %d steps took %.1f s, more than the %d s reserved for it: the same request now reserves %d s",
                        width, height, steps, wall_seconds, reserved, self.estimate(width, height, steps, lora).seconds)
