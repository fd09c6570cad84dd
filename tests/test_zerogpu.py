"""The real app.py under spaces' own ZeroGPU mode, as a Space runs it, called through gradio_client.

A local stand-in for ZeroGPU's device API runs as its own process (tests/zerogpu/device_api.py);
the app runs with SPACES_ZERO_GPU=true, so its main process only emulates CUDA, the startup compile
and every request run in forked workers, and the tracked tensors are packed to disk at launch.
The reference is the same app with spaces off. On a CPU-only torch the few shims in
tests/zerogpu/cpu_shims.py stand in for CUDA; on a GPU machine (`python -m pytest
tests/test_zerogpu.py` with FLUX_MODEL pointing at the embedded model) nothing is shimmed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from gradio_client import Client

from conftest import ROOT
from test_app import BAD_REQUESTS

HARNESS = ROOT / "tests" / "zerogpu"
STARTUP_TIMEOUT = 600  # an empty program cache: the compile runs in the startup worker


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    report: Path
    tmp: Path
    log: Path

    def events(self, kind: str | None = None) -> list[dict]:
        events = [json.loads(line) for line in self.report.read_text().splitlines()]
        return [e for e in events if kind is None or e["event"] == kind]

    def client(self) -> Client:
        return Client(self.url, verbose=False, download_files=str(self.tmp / "client"))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(folder: Path, zerogpu: bool, env: dict[str, str]) -> Server:
    """Start tests/zerogpu/serve_app.py in its own process; return once it serves."""
    folder.mkdir(parents=True)
    (folder / "tmp").mkdir()
    port = free_port()
    env = {
        **os.environ, **env,
        "TMPDIR": str(folder / "tmp"),  # where the extracted programs would pile up
        "GRADIO_TEMP_DIR": str(folder / "gradio"),
        "GRADIO_EXAMPLES_CACHE": str(folder / "examples"),
        "TORCHINDUCTOR_CACHE_DIR": str(folder / "inductor"),
        "GRADIO_SERVER_PORT": str(port),
        "ZEROGPU_TEST_REPORT": str(folder / "report.jsonl"),
        "ZEROGPU_OFFLOAD_DIR": str(folder / "offload"),
        "SPACES_ZERO_GPU": "true" if zerogpu else "false",
        "PYTHONUNBUFFERED": "1",
    }
    log = folder / "app.log"
    process = subprocess.Popen([sys.executable, str(HARNESS / "serve_app.py")], cwd=ROOT, env=env,
                               stdout=log.open("w"), stderr=subprocess.STDOUT)
    server = Server(process, f"http://127.0.0.1:{port}/", folder / "report.jsonl", folder / "tmp", log)
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the app exited with {process.returncode}:\n{log.read_text()[-5000:]}")
        try:
            if httpx.get(server.url, timeout=5).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(1)
    process.kill()
    pytest.fail(f"the app did not serve within {STARTUP_TIMEOUT} s:\n{log.read_text()[-5000:]}")


def stop(server: Server) -> None:
    server.process.send_signal(signal.SIGINT)  # as Ctrl-C: Gradio closes, exit handlers run
    try:
        server.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.process.kill()


@pytest.fixture(scope="module")
def device_api(tmp_path_factory):
    port_file = tmp_path_factory.mktemp("device-api") / "port"
    process = subprocess.Popen([sys.executable, str(HARNESS / "device_api.py"), str(port_file)])
    deadline = time.monotonic() + 30
    while not port_file.exists() or not port_file.read_text():
        assert time.monotonic() < deadline and process.poll() is None, "the device API stand-in did not start"
        time.sleep(0.1)
    url = f"http://127.0.0.1:{port_file.read_text()}"
    yield url
    process.kill()


@pytest.fixture(scope="module")
def servers(device_api, tmp_path_factory):
    """The app on ZeroGPU (started first, so it compiles in its worker) and the same app with spaces off."""
    root = tmp_path_factory.mktemp("zerogpu")
    shared = {
        "SPACES_ZERO_DEVICE_API_URL": device_api + "/",
        "AOTI_CACHE_DIR": str(root / "aoti-cache"),  # empty: the ZeroGPU app compiles, the reference loads
        "FLUX_MODEL": os.environ.get("FLUX_MODEL") or str(ROOT / "assets" / "tiny-flux"),
    }
    if not gpu():  # ZeroGPU's emulated CUDA picks the GPU preset (bf16): run both as the CPU preset does
        shared["FLUX_DTYPE"] = "float32"
    zerogpu = serve(root / "on", zerogpu=True, env=shared)
    reference = serve(root / "off", zerogpu=False, env=shared)
    yield zerogpu, reference
    stop(zerogpu)
    stop(reference)


def gpu() -> bool:
    import torch

    return torch.version.cuda is not None and torch.cuda.is_available()


def calls(device_api: str) -> list[dict]:
    return httpx.get(device_api + "/events").json()


def set_idle(device_api: str, idle: bool) -> None:
    httpx.post(device_api + "/idle", params={"value": str(idle).lower()}).raise_for_status()


def infer(client: Client, seed: int, width: int = 512, height: int = 256, steps: int = 2) -> bytes:
    path, returned = client.predict("a red bicycle", seed, False, width, height, 3.5, steps, api_name="/infer")
    assert returned == seed
    return Path(path).read_bytes()


def test_startup_compiles_in_a_worker_and_hands_every_weight_to_spaces(servers, device_api):
    zerogpu, _ = servers
    (main,) = zerogpu.events("main")
    (startup,) = zerogpu.events("startup")
    compiles = zerogpu.events("compile")
    startup_calls = [c for c in calls(device_api) if c["call"] != "startup-report"][:3]
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
    before = len(calls(device_api))
    sizes = [(512, 256), (256, 384), (512, 256), (384, 256)]
    for i, (idle, (width, height)) in enumerate(zip([False, False, True, True], sizes)):
        set_idle(device_api, idle)  # idle=false: a fresh worker (the stand-in kills the last one, as ZeroGPU does)
        assert infer(on, seed=20 + i, width=width, height=height) == infer(off, seed=20 + i, width=width, height=height)
    requests = calls(device_api)[before:]
    assert [c["call"] for c in requests] == ["schedule", "allow", "release"] * 2 + ["schedule", "release"] * 2
    assert all(c["fail"] == "false" for c in requests if c["call"] == "release")
    allowed = [int(c["pid"]) for c in requests if c["call"] == "allow"]
    assert len(set(allowed)) == 2  # one fresh worker each, then the last one reused twice
    workers = {w["pid"]: w for w in zerogpu.events("worker")}
    for pid in allowed:  # every weight the programs read arrived in the worker with its values
        assert workers[pid]["weights"] == zerogpu.events("startup")[0]["weights"] == workers[pid]["moved"]


def test_bad_requests_are_refused_before_a_gpu_is_scheduled(servers, device_api):
    client = servers[0].client()
    before = len(calls(device_api))
    for change, message in BAD_REQUESTS:
        request = {"prompt": "a red bicycle", "seed": 1, "randomize_seed": False, "width": 512, "height": 256,
                   "guidance": 3.5, "steps": 2, **change}
        with pytest.raises(Exception, match=message):
            client.predict(*request.values(), api_name="/infer")
    assert calls(device_api)[before:] == []  # no schedule: no quota spent, no worker forked
    assert infer(client, seed=3)  # and the next request is served


def test_killed_workers_leave_no_extracted_programs(servers, device_api):
    zerogpu, _ = servers
    set_idle(device_api, False)
    infer(zerogpu.client(), seed=4)  # a fresh worker; the stand-in killed the previous one
    live = int([c for c in calls(device_api) if c["call"] == "allow"][-1]["pid"])
    leftovers = sorted(p.name for p in zerogpu.tmp.iterdir() if p.name.startswith(("aoti-pid-", "aotinductor_")))
    assert leftovers == [f"aoti-pid-{live}"]  # the killed workers before it had theirs removed
    stop(zerogpu)  # a worker that ends with the app removes its own folder
    assert not [p for p in zerogpu.tmp.iterdir() if p.name.startswith(("aoti-pid-", "aotinductor_"))]
