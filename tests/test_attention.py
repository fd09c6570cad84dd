"""Attention backend selection: the order, and the fallback when FA3 cannot be fetched (offline here)."""

import logging

import pytest
import torch

import attention
from conftest import load_transformer


def pretend_gpu(monkeypatch, capability):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: capability is not None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)


@pytest.mark.parametrize(
    "capability, expected",
    [(None, ("native",)), ((8, 0), ("native",)), ((9, 0), ("_flash_3_hub", "native")),
     ((10, 0), ("native",))],  # FA3 is Hopper-specific
)
def test_auto_order_depends_on_the_card(monkeypatch, capability, expected):
    pretend_gpu(monkeypatch, capability)
    assert attention.candidates("auto") == expected


def test_sdpa_comes_first_on_hopper_when_its_calls_run_in_fp8(monkeypatch):
    """cuDNN's FP8 attention replaces SDPA's calls; FA3 from the Hub would run in bf16."""
    pretend_gpu(monkeypatch, (9, 0))
    assert attention.candidates("auto", fp8_sdpa=True) == ("native",)
    assert attention.candidates("_flash_3_hub", fp8_sdpa=True) == ("_flash_3_hub",)  # asked for by name


def test_an_explicit_backend_is_tried_alone(monkeypatch):
    pretend_gpu(monkeypatch, (9, 0))
    assert attention.candidates("_native_flash") == ("_native_flash",)


def test_fa3_from_the_hub_falls_back_to_sdpa_when_it_cannot_be_fetched(monkeypatch, caplog):
    pretend_gpu(monkeypatch, (9, 0))
    transformer = load_transformer()
    with caplog.at_level(logging.INFO, logger="attention"):
        chosen = attention.set_attention_backend(transformer, "auto")  # HF_HUB_OFFLINE=1: the download fails
    assert chosen == "native"
    assert "_flash_3_hub unavailable" in caplog.text
    processor = transformer.transformer_blocks[0].attn.processor
    assert processor._attention_backend == "native"


def test_cpu_keeps_sdpa():
    transformer = load_transformer()
    assert attention.set_attention_backend(transformer, "auto") == "native"


def test_an_unknown_backend_is_an_error_naming_it():
    with pytest.raises(RuntimeError, match="no_such_backend"):
        attention.set_attention_backend(load_transformer(), "no_such_backend")
