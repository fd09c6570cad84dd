"""A local stand-in for ZeroGPU's device API, run as its own process (forked GPU workers inherit the app's sockets).

    python tests/zerogpu/device_api.py PORT_FILE

Answers what the `spaces` package asks (`/startup-report`, `/schedule`, `/allow`, `/release`) and
records every call, in order, for the test to read at `GET /events`. `POST /idle?value=true|false` sets
what `/schedule` answers next: idle=false makes spaces fork a fresh worker, and, as the real
scheduler takes the GPU back, the previous worker is killed (SIGKILL: ZeroGPU workers never end
gracefully); idle=true lets spaces reuse the worker it has.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse


def gpu_uuid() -> str:
    """What the worker puts in CUDA_VISIBLE_DEVICES: the first GPU's UUID, as ZeroGPU sends, else "0"."""
    if shutil.which("nvidia-smi"):
        result = subprocess.run(["nvidia-smi", "--query-gpu=uuid", "--format=csv,noheader"], capture_output=True, text=True)
        if result.returncode == 0 and result.stdout.strip():
            return result.stdout.split()[0]
    return "0"


class State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[dict] = []
        self.idle = False
        self.worker_pid: int | None = None  # the last pid that posted /allow
        self.uuid = gpu_uuid()


STATE = State()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep the test's output readable
        pass

    def _reply(self, status: int, body: dict | list | None = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if urlparse(self.path).path == "/events":
            with STATE.lock:
                return self._reply(200, STATE.events)
        self._reply(404)

    def do_POST(self) -> None:
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with STATE.lock:
            if url.path == "/idle":
                STATE.idle = query["value"] == "true"
                return self._reply(200, {"idle": STATE.idle})
            if url.path not in ("/startup-report", "/schedule", "/allow", "/release"):
                return self._reply(404)
            STATE.events.append({"call": url.path.lstrip("/"), "time": time.time(), **query})
            if url.path == "/schedule":
                if not STATE.idle and STATE.worker_pid is not None:
                    _kill(STATE.worker_pid)
                    STATE.worker_pid = None
                token = uuid.uuid4().hex
                return self._reply(200, {"idle": STATE.idle, "nvidiaIndex": 0, "nvidiaUUID": STATE.uuid, "allowToken": token})
            if url.path == "/allow":
                STATE.worker_pid = int(query["pid"])
            self._reply(200, {})


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    Path(sys.argv[1]).write_text(str(server.server_address[1]))  # the test waits for this file
    server.serve_forever()


if __name__ == "__main__":
    main()
