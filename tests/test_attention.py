"""Attention backend selection: the order, and the fallback when FA3 cannot be fetched (offline here)."""

import logging

import pytest

import attention
from conftest import load_transformer


def test_auto_tries_fa3_first_only_where_the_plan_says_so():
    """FA3's kernels are Hopper-only, and FP8 attention replaces SDPA's calls: plan.py decides (test_plan.py)."""
    assert attention.candidates("auto", flash_attention_3=True) == ("_flash_3_hub", "native")
    assert attention.candidates("auto") == ("native",)


def test_an_explicit_backend_is_tried_alone():
    assert attention.candidates("_native_flash", flash_attention_3=True) == ("_native_flash",)
    assert attention.candidates("_flash_3_hub") == ("_flash_3_hub",)  # asked for by name


def test_fa3_from_the_hub_falls_back_to_sdpa_when_it_cannot_be_fetched(caplog):
    transformer = load_transformer()
    with caplog.at_level(logging.INFO, logger="attention"):
        chosen = attention.set_attention_backend(transformer, "auto", flash_attention_3=True)  # offline: no download
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
