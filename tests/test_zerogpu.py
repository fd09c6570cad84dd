"""The real app.py under spaces' own ZeroGPU mode, as a Space runs it, called through gradio_client.

A local stand-in for ZeroGPU's device API runs as its own process (tests/zerogpu/device_api.py);
the app runs with SPACES_ZERO_GPU=true, so its main process only emulates CUDA, the startup compile
and every request run in forked workers, and the tracked tensors are packed to disk at launch.
The reference is the same app with spaces off. On a CPU-only torch the few shims in
tests/zerogpu/cpu_shims.py stand in for CUDA; on a GPU machine nothing is shimmed (the embedded
model in bf16 on CUDA, FP8 where the card has it; bench/results/zerogpu-h200/ holds that run).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from gradio_client import Client

import aoti
from conftest import ROOT
from test_app import BAD_REQUESTS
from zerogpu import harness

pytestmark = pytest.mark.servers  # two app servers and a device API


@pytest.fixture(scope="module")
def device_api(tmp_path_factory):
    api = harness.start_device_api(tmp_path_factory.mktemp("device-api"))
    yield api
    api.process.kill()


@pytest.fixture(scope="module")
def servers(device_api, tmp_path_factory):
    """The app on ZeroGPU (started first, so it compiles in its worker) and the same app with spaces off."""
    root = tmp_path_factory.mktemp("zerogpu")
    shared = {
        "SPACES_ZERO_DEVICE_API_URL": device_api.url + "/",
        "AOTI_CACHE_DIR": str(root / "aoti-cache"),  # empty: the ZeroGPU app compiles, the reference loads
        "FLUX_MODEL": os.environ.get("FLUX_MODEL") or str(ROOT / "assets" / "tiny-flux"),
        "FLUX_LORA_DIR": str(ROOT / "assets" / "loras"),  # the GPU preset's folder is the Space's own (empty here)
        "AOTI_VAE": "0",  # the VAE decoder's compile is test_vae's
    }
    if torch.version.cuda is None:  # ZeroGPU's emulated CUDA picks the GPU preset (bf16): run both as the CPU preset
        shared["FLUX_DTYPE"] = "float32"
    try:
        zerogpu = harness.serve(root / "on", zerogpu=True, env=shared, timeout=600)
        reference = harness.serve(root / "off", zerogpu=False, env=shared, timeout=600)
    except harness.HarnessError as error:
        pytest.fail(str(error))
    yield zerogpu, reference
    for server in (zerogpu, reference):
        harness.stop(server)
        shutil.rmtree(server.tmp, ignore_errors=True)


def infer(client: Client, seed: int, width: int = 512, height: int = 256, steps: int = 2, *lora) -> bytes:
    path, returned = client.predict("a red bicycle", seed, False, width, height, 3.5, steps, *lora, api_name="/infer")
    assert returned == seed
    return Path(path).read_bytes()


def test_startup_compiles_in_a_worker_and_hands_every_weight_to_spaces(servers, device_api):
    zerogpu, _ = servers
    (main,) = zerogpu.events("main")
    (startup,) = zerogpu.events("startup")
    compiles = zerogpu.events("compile")
    startup_calls = [c for c in device_api.calls() if c["call"] != "startup-report"][:3]
    assert [c["call"] for c in startup_calls] == ["schedule", "allow", "release"]
    assert startup_calls[0]["durationSeconds"] == "1500" and startup_calls[2]["fail"] == "false"
    worker = int(startup_calls[1]["pid"])
    assert compiles and {c["pid"] for c in compiles} == {worker} and worker != main["pid"]
    assert startup["pid"] == main["pid"] and not startup["cuda_initialized"]
    assert startup["weights"] > 0 and startup["tracked"] == startup["weights"]  # all moved into each worker
    assert "AoT-compiled" in startup["status"]
    (reference_startup,) = servers[1].events("startup")
    assert not servers[1].events("compile") and "loaded from cache" in reference_startup["status"]


def test_fresh_and_reused_workers_give_the_images_of_spaces_off(servers, device_api):
    zerogpu, reference = servers
    on, off = zerogpu.client(), reference.client()
    before = len(device_api.calls())
    sizes = [(512, 256), (256, 384), (512, 256), (384, 256)]
    for i, (idle, (width, height)) in enumerate(zip([False, False, True, True], sizes)):
        device_api.set_idle(idle)  # idle=false: a fresh worker (the stand-in kills the last one, as ZeroGPU does)
        assert infer(on, seed=20 + i, width=width, height=height) == infer(off, seed=20 + i, width=width, height=height)
    requests = device_api.calls()[before:]
    assert [c["call"] for c in requests] == ["schedule", "allow", "release"] * 2 + ["schedule", "release"] * 2
    assert all(c["fail"] == "false" for c in requests if c["call"] == "release")
    allowed = [int(c["pid"]) for c in requests if c["call"] == "allow"]
    assert len(set(allowed)) == 2  # one fresh worker each, then the last one reused twice
    workers = {w["pid"]: w for w in zerogpu.events("worker")}
    for pid in allowed:  # every weight the programs read arrived in the worker with its values
        assert workers[pid]["weights"] == zerogpu.events("startup")[0]["weights"] == workers[pid]["moved"]


def test_each_request_gets_its_lora_fused_in_its_worker(servers, device_api):
    """A fresh worker starts from the base weights, a reused one from what it fused last: either way the
    image is the one spaces off makes for the same request."""
    zerogpu, reference = servers
    on, off = zerogpu.client(), reference.client()
    plan = [(False, "tiny-style", 1.0), (True, "tiny-style", 1.0), (True, "", 1.0), (True, "tiny-detail", 0.5),
            (False, "", 1.0), (True, "tiny-text", 1.0), (False, "tiny-kohya", 1.5)]
    for i, (idle, lora, scale) in enumerate(plan):
        device_api.set_idle(idle)  # idle=false: a fresh worker
        request = (40 + i, 512, 256, 2, lora, scale)
        assert infer(on, *request) == infer(off, *request), (idle, lora, scale)
    served = zerogpu.events("request")[-len(plan):]  # as the GPU function saw them, in the workers
    assert [(r["lora"], r["lora_scale"]) for r in served] == [(lora, scale) for _, lora, scale in plan]


def test_bad_requests_are_refused_before_a_gpu_is_scheduled(servers, device_api):
    client = servers[0].client()
    before = len(device_api.calls())
    for change, message in BAD_REQUESTS:
        request = {"prompt": "a red bicycle", "seed": 1, "randomize_seed": False, "width": 512, "height": 256,
                   "guidance": 3.5, "steps": 2, **change}
        with pytest.raises(Exception, match=message):
            client.predict(*request.values(), api_name="/infer")
    assert device_api.calls()[before:] == []  # no schedule: no quota spent, no worker forked
    assert infer(client, seed=3)  # and the next request is served


def test_killed_workers_leave_no_extracted_programs(servers, device_api):
    zerogpu, _ = servers
    device_api.set_idle(False)
    infer(zerogpu.client(), seed=4)  # a fresh worker; the stand-in killed the previous one
    live = int([c for c in device_api.calls() if c["call"] == "allow"][-1]["pid"])
    leftovers = sorted(p.name for p in zerogpu.tmp.iterdir() if p.name.startswith(("aoti-pid-", "aotinductor_")))
    assert [name.rsplit("-", 1)[0] for name in leftovers] == [f"aoti-pid-{live}"]  # the killed workers' were removed
    killed = harness.stop(zerogpu)  # a worker that ends with the app removes its own folder
    if live in killed:  # it did not end by itself: what the next process to load a program does
        aoti.program.remove_dead_process_folders(zerogpu.tmp)
    assert not [p for p in zerogpu.tmp.iterdir() if p.name.startswith(("aoti-pid-", "aotinductor_"))]
