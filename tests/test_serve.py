"""serve.py: two Ray Serve replicas of the embedded model behind app.py's front, called through gradio_client.

`python serve.py` runs in its own process with its own local Ray (two replicas of one core each) and an empty
program cache; what each replica did is read from its log lines, which Ray forwards to that process's output.
"""

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
import pytest
from gradio_client import Client
from gradio_client.utils import Status

from conftest import ROOT, TEST_DIR
from test_app import BAD_REQUESTS, PARAMETERS
from tests.zerogpu.harness import free_port

pytest.importorskip("ray.serve")
STARTUP_TIMEOUT = 600  # two replicas importing torch on two shared cores, one of them compiling
# A replica's "optimization: ... compiled in 12.0 s" or "... loaded from cache in 1.1 s" line, prefixed by Ray.
STARTED = re.compile(
    r"ServeReplica:flux:Pipeline pid=(\d+)\).*optimization: transformer AoT-compiled .*, (compiled|loaded from cache) in"
)
SERVED = re.compile(r"ServeReplica:flux:Pipeline pid=(\d+)\).*CALL generate ")


class Served:
    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True)
        self.log = folder / "serve.log"
        self.cache = folder / "aoti-cache"
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="ray-"))  # short: Ray's socket paths must fit in 107 bytes
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/"
        env = {
            **os.environ, "AOTI_CACHE_DIR": str(self.cache), "GRADIO_SERVER_PORT": str(port),
            "GRADIO_EXAMPLES_CACHE": str(folder / "examples"), "SERVE_MIN_REPLICAS": "2", "SERVE_MAX_REPLICAS": "2",
            "RAY_TMPDIR": str(self.ray_tmp), "RAY_DEDUP_LOGS": "0", "PYTHONUNBUFFERED": "1",  # every replica line, in full
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

    def client(self) -> Client:
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


@pytest.fixture(scope="module")
def served():
    served = Served(TEST_DIR / "serve")
    try:
        served.wait_until_serving()
        yield served
    finally:
        served.stop()


def request(seed: int, size: int = 256, steps: int = 2) -> list:
    return ["a red bicycle", seed, False, size, size, 3.5, steps]


def test_one_replica_compiles_and_the_other_loads_its_program(served):
    started = served.started(2)
    assert sorted(started.values()) == ["compiled", "loaded from cache"], served.output()[-5000:]
    assert len([entry for entry in served.cache.iterdir() if entry.is_dir()]) == 1


def test_concurrent_requests_get_the_image_their_seed_gives_alone(served):
    client = served.client()
    jobs = [client.submit(*request(seed), api_name="/infer") for seed in range(8)]
    together = [job.result(timeout=300) for job in jobs]
    assert [seed for _, seed in together] == list(range(8))
    assert set(served.served_by(8)) == set(served.started(2))  # both replicas generated
    for seed, (path, _) in enumerate(together):
        alone, _ = client.predict(*request(seed), api_name="/infer")
        assert Path(path).read_bytes() == Path(alone).read_bytes(), seed


def test_the_front_has_the_apps_contract_and_checks_before_any_replica(served):
    client = served.client()
    info = client.view_api(return_format="dict", print_info=False)
    assert [p["parameter_name"] for p in info["named_endpoints"]["/infer"]["parameters"]] == PARAMETERS
    path, seed = client.predict(*request(3), "tiny-style", 0.5, api_name="/infer")  # trailing lora, lora_scale
    assert seed == 3 and Path(path).stat().st_size > 0
    time.sleep(3)  # for the replicas' log lines to reach serve.py's output
    calls = len(served.served_by())
    for change, message in BAD_REQUESTS:
        values = dict(zip(["prompt", "seed", "randomize_seed", "width", "height", "guidance", "steps"], request(3)))
        values.update(change)
        lora = [values.pop("lora", ""), values.pop("lora_scale", 1.0)]
        with pytest.raises(Exception, match=message):
            client.predict(*values.values(), *lora, api_name="/infer")
    assert client.predict(*request(4), api_name="/infer")[1] == 4
    time.sleep(3)
    assert len(served.served_by(calls + 1)) == calls + 1  # that one reached a replica, none of the rejected ones


def test_a_replica_killed_mid_run_loses_no_request_and_is_replaced(served):
    before = served.started(2)
    client = served.client()
    jobs = [client.submit(*request(seed, size=1024, steps=50), api_name="/infer") for seed in range(4)]  # seconds each
    deadline = time.monotonic() + 120
    running = (Status.PROCESSING, Status.PROGRESS, Status.ITERATING)
    while sum(job.status().code in running for job in jobs) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)  # the front lets two through: one per replica
    time.sleep(1)
    victim = next(pid for pid, how in before.items() if how == "compiled")
    os.kill(victim, signal.SIGKILL)
    assert [job.result(timeout=300)[1] for job in jobs] == [0, 1, 2, 3]
    assert "a replica died during a request (ActorDiedError); sending it again" in served.output()
    after = served.started(3, timeout=300)
    replacements = set(after) - set(before)
    assert len(replacements) == 1 and after[replacements.pop()] == "loaded from cache", served.output()[-5000:]
    assert client.predict(*request(5), api_name="/infer")[1] == 5
