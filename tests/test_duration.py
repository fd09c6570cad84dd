"""ZeroGPU's reservation (duration.py): FLOPs per step, the prior, and what it learns from measured requests.

CPU only, no pipeline: measurements are made-up numbers, and wall times come from a fake clock as `infer` takes them.
"""

import logging
import math
import threading

import pytest

import duration
from duration import Reservation, step_flops

FLUX_DEV = dict(num_layers=19, num_single_layers=38, num_attention_heads=24, attention_head_dim=128,
                joint_attention_dim=4096, in_channels=64, out_channels=None, guidance_embeds=True)
# FLUX.1-dev at 1024x1024 (4096 image + 512 text tokens): one forward's FLOPs, counted independently (bench notes)
LINEAR_TFLOP, ATTENTION_TFLOP = 59.5, 14.9


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def reservation(**options) -> Reservation:
    return Reservation(FLUX_DEV, 512, clock=Clock(), **options)


def call(r: Reservation, width=1024, height=1024, steps=28, lora="", *, per_step=0.4, lora_seconds=0.0, fixed=3.0,
         timing=True):
    """A `generate` call as `infer` times it: the fake clock advances by what the call took (`fixed` outside the
    LoRA switch and the steps), and the call's timing is recorded."""
    started = r.clock()
    r.clock.now += fixed + lora_seconds + steps * per_step
    measured = {"steps": steps, "seconds_per_step": per_step, "lora_seconds": lora_seconds} if timing else None
    r.record(width, height, steps, lora, r.clock() - started, measured)


def test_flops_per_step_of_flux1_dev_match_the_independent_count():
    linear, attention = step_flops(FLUX_DEV, 4096, 512)
    assert linear / 1e12 == pytest.approx(LINEAR_TFLOP, rel=0.02)
    assert attention / 1e12 == pytest.approx(ATTENTION_TFLOP, rel=0.02)
    # linear in the tokens, attention in their square: twice the tokens, twice and four times
    linear2, attention2 = step_flops(FLUX_DEV, 2 * 4096 + 512, 512)
    assert linear2 / linear == pytest.approx(2, rel=0.01) and attention2 / attention == pytest.approx(4, rel=0.01)


def test_the_prior_reserves_before_any_request_is_measured():
    r = reservation()
    first = r.estimate(1024, 1024, 28, "")
    assert first.measured == (False, False, False)
    # the prior: 0.6 s per 1024x1024 step and 20 s fixed, with the 1.25 margin
    assert first.seconds == math.ceil(1.25 * (20 + 28 * 0.6)) == 46
    # never under the H200 constants it replaces (10 s + 0.3 s per 1024x1024 step, growing as megapixels^1.2)
    for width, height, steps in [(512, 512, 4), (1024, 1024, 28), (1344, 768, 28), (2048, 2048, 20)]:
        h200 = 10 + steps * 0.3 * (max(width * height, 1024**2) / 1024**2) ** 1.2
        assert r.seconds(width, height, steps, "") >= h200
    assert r.estimate(1024, 1024, 28, "").seconds == 46  # asking records nothing


def test_a_step_measured_at_1024_is_scaled_to_2048_by_flops_not_pixels():
    r = reservation(margin=1.0)
    call(r, 1024, 1024, 28, per_step=0.4, fixed=20.0)
    tokens = (1024 // 16) ** 2, (2048 // 16) ** 2
    # from the independent count: linear in (image + 512 text) tokens, attention in their square
    scale = (tokens[1] + 512) / (tokens[0] + 512)
    ratio = (LINEAR_TFLOP * scale + ATTENTION_TFLOP * scale**2) / (LINEAR_TFLOP + ATTENTION_TFLOP)
    assert ratio > 5.5  # not the 4x of the pixels
    assert r.step_seconds(tokens[1]) == pytest.approx(0.4 * ratio, rel=0.02)
    assert r.step_seconds(tokens[0]) == pytest.approx(0.4)
    need = 20.0 + 50 * 0.4 * ratio  # fixed + steps
    assert r.seconds(2048, 2048, 50, "") == pytest.approx(need, abs=2)
    assert r.seconds(1024, 1024, 28, "") == math.ceil(20.0 + 28 * 0.4 - 1e-9)


def test_the_slowest_recent_step_rate_is_kept():
    r = reservation(margin=1.0)
    call(r, per_step=0.5)
    call(r, per_step=0.3)
    assert r.step_seconds(4096) == pytest.approx(0.5)
    for _ in range(duration.STEP_WINDOW):
        call(r, per_step=0.3)
    assert r.step_seconds(4096) == pytest.approx(0.3)  # the slow one has left the window
    # measured at 512x512 (1024 tokens), carried to 1024x1024 by FLOPs
    r = reservation(margin=1.0)
    call(r, 512, 512, 28, per_step=0.1)
    expected = 0.1 * sum(step_flops(FLUX_DEV, 4096, 512)) / sum(step_flops(FLUX_DEV, 1024, 512))
    assert r.step_seconds(4096) == pytest.approx(expected) and expected > 0.3


def test_a_lora_request_reserves_more_than_the_same_request_without():
    r = reservation(margin=1.0)
    assert r.seconds(1024, 1024, 28, "some/lora") > r.seconds(1024, 1024, 28, "")  # by the prior's switch
    call(r, fixed=12.0)
    call(r, lora="some/lora", lora_seconds=2.6, fixed=12.0)
    without, with_lora = r.seconds(1024, 1024, 28, ""), r.seconds(1024, 1024, 28, "some/lora")
    assert with_lora - without == pytest.approx(2.6, abs=1)
    call(r, lora="other/lora", lora_seconds=0.5, fixed=12.0)
    assert r.seconds(1024, 1024, 28, "some/lora") == with_lora  # the largest recent switch


def test_fixed_costs_follow_the_wall_times_measured_around_the_call():
    r = reservation(margin=1.0)
    call(r, steps=10, per_step=0.5, fixed=25.0)  # a fresh worker: fork, the weights' move, CUDA-graph capture
    assert r.estimate(1024, 1024, 10, "").fixed == pytest.approx(25.0)
    assert r.seconds(1024, 1024, 10, "") == 30  # 25 + 10 * 0.5
    call(r, steps=10, per_step=0.5, fixed=18.0)  # a cheaper call: the fresh one's cost is kept
    assert r.estimate(1024, 1024, 10, "").fixed == pytest.approx(25.0)
    for _ in range(duration.FIXED_WINDOW):
        call(r, steps=10, per_step=0.5, fixed=18.0)
    assert r.estimate(1024, 1024, 10, "").fixed == pytest.approx(18.0)
    reused = reservation(margin=1.0)
    for _ in range(3):
        call(reused, steps=10, per_step=0.5, fixed=0.3)  # reused workers only: a fresh one may still come
    assert reused.estimate(1024, 1024, 10, "").fixed == duration.FRESH_WORKER_SECONDS  # a fresh worker's, measured


def test_the_reservation_stays_within_zerogpus_limits():
    r = reservation(min_fixed=0.0)
    call(r, 256, 256, 2, per_step=0.001, fixed=0.01)
    assert r.seconds(256, 256, 1, "") == duration.MIN_SECONDS > 0
    call(r, 256, 256, 2, per_step=5.0, fixed=0.01)  # 5 s at 256 tokens: 2048x2048 would take hours
    assert r.seconds(2048, 2048, 50, "") == duration.MAX_SECONDS
    assert duration.MIN_SECONDS < r.seconds(256, 256, 4, "") < duration.MAX_SECONDS


def test_a_one_step_request_teaches_the_fixed_costs_but_not_the_step_time():
    r = reservation(margin=1.0)
    call(r, steps=28, per_step=0.4, fixed=12.0)
    # its "step" includes the text encoding (and, at a new size, the first step's extras)
    call(r, steps=1, per_step=3.0, fixed=20.0)
    assert r.step_seconds(4096) == pytest.approx(0.4)
    assert r.estimate(1024, 1024, 28, "").fixed == pytest.approx(20.0)
    only_one_step = reservation()
    call(only_one_step, steps=1, per_step=3.0)
    assert only_one_step.estimate(1024, 1024, 28, "").measured == (False, True, False)  # still the prior's step


def test_a_call_that_failed_past_its_reservation_lengthens_the_next():
    r = reservation()
    call(r, fixed=12.0)
    reserved = r.seconds(1024, 1024, 28, "")
    call(r, fixed=1.0, per_step=0.1, timing=False)  # failed early (an error, not a time-out): nothing learnt
    assert r.seconds(1024, 1024, 28, "") == reserved
    started = r.clock()
    r.clock.now += reserved + 0.5  # aborted by ZeroGPU at its reservation
    r.record(1024, 1024, 28, "", r.clock() - started, None)
    assert r.seconds(1024, 1024, 28, "") > 1.2 * reserved
    r.record(1024, 1024, 28, "", 5.0, {})  # a stand-in for generate that times nothing
    assert r.seconds(1024, 1024, 28, "") > 1.2 * reserved


def test_one_log_line_per_reservation_and_a_warning_when_a_call_outlasted_it(caplog):
    r = reservation()
    call(r, per_step=0.41, fixed=20.0)
    with caplog.at_level(logging.INFO, logger="duration"):
        seconds = r.seconds(1024, 1024, 28, "")
    [line] = [record.getMessage() for record in caplog.records]
    assert line == f"reserved {seconds} s for 1024x1024, 28 steps (0.41 s/step measured at 4096 tokens, 20.0 s fixed)"
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="duration"):
        call(r, per_step=0.41, fixed=12.0)
        call(r, per_step=0.41, fixed=seconds)  # longer than its reservation
    assert [record.levelno for record in caplog.records] == [logging.WARNING]
    assert f"more than the {seconds} s reserved" in caplog.records[0].getMessage()


def test_concurrent_requests_record_and_reserve_at_once():
    r = reservation()
    errors = []

    def worker(fixed: float):
        try:
            for _ in range(300):
                r.record(1024, 1024, 28, "", fixed + 28 * 0.4, {"seconds_per_step": 0.4, "lora_seconds": 0.0})
                r.seconds(1024, 1024, 28, "")
        except Exception as error:  # a deque read while another thread appends to it
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(10.0 + i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    fixed = r.estimate(1024, 1024, 28, "").fixed
    assert any(fixed == pytest.approx(10.0 + i) for i in range(8))


def test_zerogpus_own_scaling_is_divided_out_and_its_maximum_kept():
    """spaces multiplies a `large` call's duration by its card's factor (1.5 on the RTX Pro 6000): what is asked
    for is the measured need over that factor, and the factor times it stays within ZeroGPU's maximum."""
    plain, scaled = Reservation(FLUX_DEV, 512), Reservation(FLUX_DEV, 512, platform_factor=1.5)
    assert scaled.seconds(1024, 1024, 28, "") == pytest.approx(plain.seconds(1024, 1024, 28, "") / 1.5, abs=1)
    assert scaled.seconds(2048, 2048, 50, "") * 1.5 <= duration.MAX_SECONDS < plain.seconds(2048, 2048, 50, "") * 1.5


def test_the_factor_is_read_from_spaces_only_on_zerogpu(monkeypatch):
    from spaces.config import Config
    from spaces.zero import config as zero_config

    assert duration.zerogpu_duration_factor(None) == 1.0  # spaces off: nothing scales the request
    monkeypatch.setattr(Config, "zero_gpu", True)
    monkeypatch.setattr(zero_config, "get_config", lambda: {"duration_factor": 1.5})
    assert duration.zerogpu_duration_factor(None) == 1.5 and duration.zerogpu_duration_factor("large") == 1.5
    assert duration.zerogpu_duration_factor("xlarge") == 1.0  # spaces scales `large` calls only
    monkeypatch.setattr(zero_config, "get_config", lambda: {})  # another spaces: the measured need, unscaled
    assert duration.zerogpu_duration_factor(None) == 1.0


def test_the_log_says_which_zerogpu_size_the_weights_get(monkeypatch):
    """spaces moves a Space to `xlarge` (twice the quota) by itself when its packed weights pass the card's threshold."""
    import types

    import spaces.zero
    from spaces.config import Config
    from spaces.zero import config as zero_config

    assert duration.zerogpu_size_at_launch(None) is None  # spaces off
    monkeypatch.setattr(Config, "zero_gpu", True)
    monkeypatch.setattr(zero_config, "get_config", lambda: {"xlarge_threshold": 45_097_156_608})  # the RTX Pro 6000's
    packed = types.SimpleNamespace(size=lambda: 22_600_000_000)  # spaces.zero.torch, which needs a CUDA torch to import
    monkeypatch.setattr(spaces.zero, "torch", packed, raising=False)
    assert duration.zerogpu_size_at_launch(None).endswith("within the 45.1 GB that fit `large`: calls run on `large`")
    packed.size = lambda: 46_000_000_000
    assert "spaces runs every call on `xlarge`, at twice the quota" in duration.zerogpu_size_at_launch(None)
    assert duration.zerogpu_size_at_launch("large").endswith("every call asks for `large` (FLUX_ZEROGPU_SIZE)")
