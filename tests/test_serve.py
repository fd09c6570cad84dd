"""serve.py: two Ray Serve replicas of the embedded model behind app.py's front, called through gradio_client; and
the front's side alone (retries, time-out, the job's settings) over a stand-in handle, without Ray running.

`python serve.py` runs in its own process with its own local Ray (two replicas of one core each) and an empty
program cache; what each replica did is read from its log lines, which Ray forwards to that process's output.
"""

import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from gradio_client.utils import Status

from conftest import TEST_DIR
from test_app import BAD_REQUESTS, PARAMETERS
from tests.serve_harness import Served

pytest.importorskip("ray.serve")
import ray.exceptions  # noqa: E402

import config as cfg  # noqa: E402
import serve  # noqa: E402


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


@pytest.mark.servers  # Ray Serve and its replicas
def test_one_replica_compiles_and_the_other_loads_its_program(served):
    started = served.started(2)
    assert sorted(started.values()) == ["compiled", "loaded from cache"], served.output()[-5000:]
    # One entry per compiled module kind set: the transformer's blocks, and the VAE decoder.
    assert len([entry for entry in served.cache.iterdir() if entry.is_dir()]) == 2


@pytest.mark.servers  # Ray Serve and its replicas
def test_concurrent_requests_get_the_image_their_seed_gives_alone(served):
    client = served.client()
    jobs = [client.submit(*request(seed), api_name="/infer") for seed in range(8)]
    together = [job.result(timeout=300) for job in jobs]
    assert [seed for _, seed in together] == list(range(8))
    assert set(served.served_by(8)) == set(served.started(2))  # both replicas generated
    for seed, (path, _) in enumerate(together):
        alone, _ = client.predict(*request(seed), api_name="/infer")
        assert Path(path).read_bytes() == Path(alone).read_bytes(), seed


@pytest.mark.servers  # Ray Serve and its replicas
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


@pytest.mark.servers  # Ray Serve and its replicas
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


class FakeResponse:
    def __init__(self, outcome, cancelled):
        self.outcome, self.cancelled = outcome, cancelled

    def result(self, timeout_s=None):
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome

    def cancel(self):
        self.cancelled.append(self)


def replicas_answering(*outcomes) -> tuple[serve.Replicas, list, list]:
    """The front's Replicas over a stand-in handle whose replicas answer `outcomes` in turn."""
    sent, cancelled, answers = [], [], iter(outcomes)
    handle = SimpleNamespace(generate=SimpleNamespace(remote=lambda *r: sent.append(r) or FakeResponse(next(answers), cancelled)),
                             describe=SimpleNamespace(remote=lambda: FakeResponse(DESCRIBED, [])))
    return serve.Replicas(handle, cfg.ServeConfig(request_timeout_s=7.0)), sent, cancelled


DESCRIBED = {"report": None, "device_name": "CPU", "transformer_config": {}}


def test_a_request_whose_replica_died_is_sent_once_more_and_not_after_a_second_death():
    replicas, sent, _ = replicas_answering(ray.exceptions.RayActorError(), "image")
    assert replicas.generate("request") == "image" and len(sent) == 2
    replicas, sent, _ = replicas_answering(ray.exceptions.RayActorError(), ray.exceptions.RayActorError(), "image")
    with pytest.raises(RuntimeError, match="this request ended 2 replicas in a row: it is not sent again"):
        replicas.generate("request")
    assert len(sent) == 2  # the third replica never sees it


def test_a_request_no_replica_answers_in_time_is_cancelled_with_the_setting_named():
    replicas, sent, cancelled = replicas_answering(ray.exceptions.GetTimeoutError("late"))
    with pytest.raises(TimeoutError, match=r"no replica answered within 7 s \(SERVE_REQUEST_TIMEOUT_S\)"):
        replicas.generate("request")
    assert len(sent) == 1 and len(cancelled) == 1
    with pytest.raises(ValueError, match="SERVE_REQUEST_TIMEOUT_S must be positive"):
        cfg.from_env({"SERVE_REQUEST_TIMEOUT_S": "0"})


def test_secrets_stay_out_of_the_job_the_replicas_get_their_settings_from():
    environ = {"HF_TOKEN": "hf_secret", "HUGGING_FACE_HUB_TOKEN": "hf_old", "HF_HOME": "/data/hf", "FLUX_MODEL": "m",
               "AOTI_HUB_REPO": "o/programs", "AOTI_HUB_SIGNING_KEY": "k", "AOTI_HUB_TOKEN": "hf_w", "PATH": "/bin",
               "AOTI_HUB_PUBLIC_KEY": "p", "TORCHINDUCTOR_CACHE_DIR": "/c"}
    assert serve.replica_environment(environ) == {"HF_HOME": "/data/hf", "FLUX_MODEL": "m", "AOTI_HUB_REPO": "o/programs",
                                                  "AOTI_HUB_PUBLIC_KEY": "p", "TORCHINDUCTOR_CACHE_DIR": "/c"}
