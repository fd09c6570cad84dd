"""Start the device API stand-in and the app (serve_app.py) as processes; used by tests/test_zerogpu.py and
bench/bench_zerogpu.py."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
STARTUP_TIMEOUT = 1500  # FLUX.1-dev from an empty program cache: load, move, compile, pack


class HarnessError(RuntimeError):
    pass


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    report: Path
    tmp: Path
    log: Path
    started: float  # time.time() when the process was started
    serving: float = 0.0  # ... and when it first answered

    def events(self, kind: str | None = None) -> list[dict]:
        events = [json.loads(line) for line in self.report.read_text().splitlines()]
        return [e for e in events if kind is None or e["event"] == kind]

    def client(self):
        from gradio_client import Client

        return Client(self.url, verbose=False, download_files=str(self.tmp / "client"))


@dataclass
class DeviceAPI:
    process: subprocess.Popen
    url: str

    def calls(self) -> list[dict]:
        return httpx.get(self.url + "/events").json()

    def set_idle(self, idle: bool) -> None:
        httpx.post(self.url + "/idle", params={"value": str(idle).lower()}).raise_for_status()


def start_device_api(folder: Path) -> DeviceAPI:
    port_file = folder / "device-api-port"
    process = subprocess.Popen([sys.executable, str(HERE / "device_api.py"), str(port_file)])
    deadline = time.monotonic() + 30
    while not port_file.exists() or not port_file.read_text():
        if time.monotonic() > deadline or process.poll() is not None:
            raise HarnessError("the device API stand-in did not start")
        time.sleep(0.1)
    return DeviceAPI(process, f"http://127.0.0.1:{port_file.read_text()}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(folder: Path, zerogpu: bool, env: dict[str, str], timeout: float = STARTUP_TIMEOUT) -> Server:
    """Start serve_app.py in its own process (with spaces' ZeroGPU mode or without); return once it serves."""
    folder.mkdir(parents=True, exist_ok=True)
    # Where extracted programs would pile up; short, as multiprocessing's socket paths in it must fit in 107 bytes.
    tmp = Path(tempfile.mkdtemp(prefix="zerogpu-", dir="/tmp"))
    port = free_port()
    env = {
        **os.environ, **env,
        "TMPDIR": str(tmp),
        "GRADIO_TEMP_DIR": str(folder / "gradio"),
        "GRADIO_EXAMPLES_CACHE": str(folder / "examples"),
        "GRADIO_SERVER_PORT": str(port),
        "ZEROGPU_TEST_REPORT": str(folder / "report.jsonl"),
        "ZEROGPU_OFFLOAD_DIR": str(folder / "offload"),
        "SPACES_ZERO_GPU": "true" if zerogpu else "false",
        "TORCHINDUCTOR_CACHE_DIR": str(folder / "inductor"),  # its own: a compile here starts cold
        "PYTHONUNBUFFERED": "1",
    }
    log = folder / "app.log"
    started = time.time()
    process = subprocess.Popen([sys.executable, str(HERE / "serve_app.py")], cwd=ROOT, env=env,
                               stdout=log.open("w"), stderr=subprocess.STDOUT)
    server = Server(process, f"http://127.0.0.1:{port}/", folder / "report.jsonl", tmp, log, started)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise HarnessError(f"the app exited with {process.returncode}:\n{log.read_text()[-5000:]}")
        try:
            if httpx.get(server.url, timeout=5).status_code == 200:
                server.serving = time.time()
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise HarnessError(f"the app did not serve within {timeout} s:\n{log.read_text()[-5000:]}")


def stop(server: Server) -> list[int]:
    """Ctrl-C the app, as a person would; return the pids of its workers that had to be killed.

    Gradio closes and the exit handlers end the daemon workers with SIGTERM, on which spaces'
    worker closes its queue and exits. A worker that does not end within seconds (seen on the GPU)
    is killed, as ZeroGPU ends its workers.
    """
    import psutil

    if server.process.poll() is not None:
        return []
    children = psutil.Process(server.process.pid).children(recursive=True)
    server.process.send_signal(signal.SIGINT)
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    _, alive = psutil.wait_procs(children, timeout=10)
    for process in alive:
        process.kill()
    psutil.wait_procs(alive, timeout=10)
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
    return [p.pid for p in alive]
