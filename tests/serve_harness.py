"""Start `python serve.py` in its own process, with its own local Ray, and read what its replicas did from their
log lines (Ray forwards them to that process's output); used by tests/test_serve.py and bench/bench_serve.py."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from tests.zerogpu.harness import free_port

ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT = 1500  # FLUX.1-dev from an empty program cache; two tiny replicas on two shared cores: minutes
# A replica's "optimization: ... compiled in 12.0 s" or "... loaded from cache in 1.1 s" line, prefixed by Ray.
STARTED = re.compile(
    r"ServeReplica:flux:Pipeline pid=(\d+)\).*optimization: transformer.* AoT-compiled .*, (compiled|loaded from cache) in"
)
SERVED = re.compile(r"ServeReplica:flux:Pipeline pid=(\d+)\).*CALL generate ")


class Served:
    """`python serve.py` with `replicas` replicas (min = max) and an empty program cache in `folder`."""

    def __init__(self, folder: Path, replicas: int = 2, env: dict[str, str] | None = None):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.log = folder / "serve.log"
        self.cache = folder / "aoti-cache"
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # Ray's socket paths must fit in 107 bytes
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/"
        env = {
            **os.environ, "AOTI_CACHE_DIR": str(self.cache), "GRADIO_SERVER_PORT": str(port),
            "GRADIO_EXAMPLES_CACHE": str(folder / "examples"), "SERVE_MIN_REPLICAS": str(replicas),
            "SERVE_MAX_REPLICAS": str(replicas),
            "RAY_TMPDIR": str(self.ray_tmp), "RAY_DEDUP_LOGS": "0", "PYTHONUNBUFFERED": "1",  # every replica line, in full
            **(env or {}),
        }
        env.pop("RAY_ADDRESS", None)  # a local Ray of its own
        self.process = subprocess.Popen([sys.executable, "serve.py"], cwd=ROOT, env=env,
                                        stdout=self.log.open("w"), stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_until_serving(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve.py exited with {self.process.returncode}:\n{self.output()[-5000:]}")
            try:
                if httpx.get(self.url, timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise TimeoutError(f"serve.py did not serve within {STARTUP_TIMEOUT} s:\n{self.output()[-5000:]}")

    def started(self, count: int, timeout: float = 120) -> dict[int, str]:
        """Replica pid -> "compiled" or "loaded from cache", once `count` replicas have logged their startup."""
        return eventually(lambda: {int(pid): how for pid, how in STARTED.findall(self.output())}, lambda s: len(s) >= count,
                          timeout)

    def served_by(self, count: int = 0, timeout: float = 30) -> list[int]:
        """The pid of the replica of each generation, once `count` of them are in the log."""
        return eventually(lambda: [int(pid) for pid in SERVED.findall(self.output())], lambda s: len(s) >= count, timeout)

    def client(self):
        from gradio_client import Client

        return Client(self.url, verbose=False, download_files=str(self.folder / "client"))

    def stop(self) -> None:
        """Ctrl-C, as a person would: serve.py's Ray shuts down with it. Whatever it leaves is killed by pid."""
        children = psutil.Process(self.process.pid).children(recursive=True)
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        _, alive = psutil.wait_procs(children, timeout=30)
        for process in alive:
            process.kill()
        psutil.wait_procs(alive, timeout=10)
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


def eventually(read, done, timeout: float):
    """`read()` once `done` with it, or when `timeout` has passed: Ray forwards a replica's log lines within a second or so."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.5)

