"""What a newcomer sees: `python app.py` from an empty program cache, then one long-prompt request.

Each startup stage is one line with its time, and the libraries' known noise is not there.
"""

import logging
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from gradio_client import Client

import startup
from conftest import ROOT
from zerogpu.harness import free_port

pytestmark = pytest.mark.servers  # python app.py

STAGES = ["import", "load", "cache lookup", "capture", "export", "compile", "apply", "launch"]  # quantize: FP8 GPUs only
# Exactly as the libraries printed them before startup.py filtered them (or the app stopped causing them).
NOISE = [
    "Failed to load",  # torchao's optional C++ kernels
    "Detected no triton",  # torchao, on a CPU-only torch
    "is an Enum subclass and is now natively supported by torch.compile",  # torch's pytree, for torchao's enums
    "requires torchvision (not installed)",  # transformers' image processors
    "Unable to import `torchao` Tensor objects",  # diffusers
    "Attention backends are an experimental feature",  # diffusers
    "`isinstance(treespec, LeafSpec)` is deprecated",  # inductor, while compiling
    "Token indices sequence length is longer than the specified maximum sequence length",  # tokenizers, long prompt
    "truncated because CLIP can only handle sequences up to",  # FLUX's pipeline, long prompt
    "truncated because `max_sequence_length` is set to",  # FLUX's pipeline, quoting the cut part of the prompt
    "denoising:",  # the pipeline's progress bar, while its call is captured
    "httpx: HTTP Request",  # Gradio's requests to itself at launch
]


@pytest.fixture(scope="module")
def newcomer_log(tmp_path_factory):
    """The output of `python app.py` up to the ready line, and all of it after one long-prompt request."""
    folder = tmp_path_factory.mktemp("newcomer")
    port = free_port()
    env = {
        **os.environ, "AOTI_CACHE_DIR": str(folder / "aoti-cache"), "GRADIO_SERVER_PORT": str(port),
        "GRADIO_EXAMPLES_CACHE": str(folder / "examples"), "PYTHONUNBUFFERED": "1",
    }
    log = folder / "app.log"
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while "startup: ready" not in log.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-5000:]
            time.sleep(0.5)
        started = log.read_text()
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=str(folder / "client"))
        client.predict("a very long prompt " * 200, 1, False, 256, 256, 3.5, 1, api_name="/infer")
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    return started, log.read_text()


def test_each_startup_stage_is_one_line_with_its_time(newcomer_log):
    started, _ = newcomer_log
    for name in STAGES:
        assert len(re.findall(rf"startup: {name} \d+\.\d s\n", started)) == 1, name
    assert re.search(r"startup: ready in \d+\.\d s \(import \d+\.\d s, load \d+\.\d s, optimize \d+\.\d s, launch \d+\.\d s\)",
                     started)
    assert started.index("Running on local URL") < started.index("startup: ready")  # ready once the server answers


def test_no_library_noise_at_startup_or_for_a_long_prompt(newcomer_log):
    started, everything = newcomer_log
    assert "vector instruction set" in started  # the one slow step without a stage of its own is named
    for text in NOISE:
        assert text not in (started if text == "denoising:" else everything), text  # a request does show its bar
    assert re.search(r"app: The prompt is \d+ T5 tokens long; only the first 512 were used\.\n", everything)  # one line of ours


def test_stage_logs_and_records_its_time(caplog):
    times = {}
    with caplog.at_level(logging.INFO, logger="startup"), startup.stage("nap", times):
        time.sleep(0.05)
    assert 0.05 <= times["nap"] < 5
    assert caplog.messages == [f"nap {times['nap']:.1f} s"]


def test_a_failed_stage_is_neither_logged_nor_recorded(caplog):
    times = {}
    with caplog.at_level(logging.INFO, logger="startup"), pytest.raises(ValueError), startup.stage("broken", times):
        raise ValueError
    assert times == {} and caplog.messages == []


def test_ready_sums_up_the_stages(caplog, monkeypatch):
    monkeypatch.setattr(startup, "STARTED", time.perf_counter() - 12.34)
    with caplog.at_level(logging.INFO, logger="startup"):
        startup.ready({"load": 2.0, "optimize": 9.96})
    assert re.fullmatch(r"ready in 12\.\d s \(load 2\.0 s, optimize 10\.0 s\)", caplog.messages[0])
