"""FLUX from Ray Serve replicas, for more than one GPU: app.py's UI and /infer in front, its pipeline in each replica.

    pip install -r requirements-ray.txt && python serve.py

Replicas: each has one GPU (the cpu preset: one core) and runs app.py's own load and optimize, then one
generation at a time. Their compiled programs come from the program cache: with AOTI_CACHE_DIR on storage that
every node mounts, a cluster compiles a setup once, and a new or restarted replica loads it in about a second.
Replicas that start together do not all compile: the first takes a lock file next to the cache entry and
compiles, the others wait for its entry and load it (`ProgramCache.build_once`, aoti/cache.py). With
AOTI_HUB_REPO and no shared folder, each machine compiles at most once unless the entry is already on the Hub.

Front: app.py itself with FLUX_RAY_SERVE=1, so callers see the same /infer (parameters, checks, errors naming
the field) and the same UI. It checks each request before any replica sees it, then its `generate` sends the
checked request through a deployment handle; Ray Serve picks a replica with room. A request whose replica dies
(killed, out of memory, node lost) is sent again, once: an image depends only on its request, but a request that
ended two replicas would go on ending them. One that gets no answer within SERVE_REQUEST_TIMEOUT_S is cancelled.
Serve starts a replacement replica, which loads the cached programs.

Autoscaling: `ServeConfig` in config.py (SERVE_MIN_REPLICAS, SERVE_MAX_REPLICAS, SERVE_TARGET_ONGOING_REQUESTS).

On a Ray cluster: start serve.py on the head node with RAY_ADDRESS=auto (or a ray:// address) and
AOTI_CACHE_DIR on shared storage. This folder goes to the replicas as their working directory, and FLUX_*,
AOTI_*, HF_* and TORCHINDUCTOR_* variables go with them, except secrets (HF_TOKEN): Ray keeps a job's variables
where anyone with the cluster's dashboard can read them. A local Ray's replicas inherit this process's environment,
token included; on a cluster, give each node the token itself (its environment, or `hf auth login`'s token file).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import runpy
from collections.abc import Mapping
from pathlib import Path

import ray
import ray.serve

import config as cfg

log = logging.getLogger("serve")
ROOT = Path(__file__).resolve().parent
APP_NAME = "flux"
FORWARDED = ("FLUX_", "AOTI_", "HF_", "TORCHINDUCTOR_")  # settings the replicas read, wherever they run
SECRET = re.compile(r"TOKEN|SECRET|PASSWORD|(?<!PUBLIC_)KEY", re.IGNORECASE)  # never in a job's settings
ATTEMPTS = 2  # per request: its replica may die for reasons of its own; a second death is the request's doing


@ray.serve.deployment(max_ongoing_requests=1)  # one generation at a time per GPU, as app.py's queue does
class Pipeline:
    def __init__(self):
        import app  # load and optimize (the UI is built, never launched)

        self.app = app

    def describe(self) -> dict:
        """What the front shows and keys its example cache on, as this replica set it up."""
        app = self.app
        return {"report": app.report, "device_name": app.device_name, "transformer_config": dict(app.pipe.transformer.config)}

    async def generate(self, *request):
        # In a thread: the replica keeps answering Serve's health checks during a long generation.
        return await asyncio.to_thread(self.app.generate, *request)


class Replicas:
    """The front's side of the deployment: app.py's `generate`, run by a replica."""

    def __init__(self, handle: ray.serve.handle.DeploymentHandle, config: cfg.ServeConfig):
        self.handle = handle
        self.capacity = config.max_replicas  # requests the front lets through at once: one per replica
        self.timeout_s = config.request_timeout_s
        described = handle.describe.remote().result()
        self.report, self.device_name = described["report"], described["device_name"]
        self.transformer_config = described["transformer_config"]

    @classmethod
    def connect(cls, config: cfg.ServeConfig) -> Replicas:
        if not ray.is_initialized():  # a front started on its own: RAY_ADDRESS names the cluster
            ray.init()
        return cls(ray.serve.get_app_handle(APP_NAME), config)

    def generate(self, *request):
        for attempt in range(1, ATTEMPTS + 1):
            response = self.handle.generate.remote(*request)
            try:
                return response.result(timeout_s=self.timeout_s)
            except TimeoutError:  # ray's GetTimeoutError: a stuck replica must not hold the front's slot forever
                response.cancel()
                raise TimeoutError(f"no replica answered within {self.timeout_s:g} s (SERVE_REQUEST_TIMEOUT_S)") from None
            except ray.exceptions.RayActorError as error:  # the replica died before answering
                if attempt == ATTEMPTS:
                    raise RuntimeError(f"this request ended {ATTEMPTS} replicas in a row: it is not sent again") from error
                log.warning("a replica died during a request (%s); sending it again", type(error).__name__)


def replica_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The settings a job carries to its replicas: FORWARDED ones, no secrets."""
    return {name: value for name, value in environ.items() if name.startswith(FORWARDED) and not SECRET.search(name)}


def deploy(config: cfg.ServeConfig) -> ray.serve.handle.DeploymentHandle:
    """Start the replicas (on the cluster in RAY_ADDRESS, else on a local Ray) and return once `min_replicas` serve."""
    runtime_env = {"working_dir": str(ROOT), "env_vars": {**replica_environment(os.environ), "FLUX_RAY_SERVE": "0"}}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(runtime_env=runtime_env)
    else:
        ray.init(runtime_env=runtime_env, include_dashboard=False)
    ray.serve.start(proxy_location="Disabled")  # no HTTP proxy: the front calls replicas through a handle
    pipeline = Pipeline.options(
        ray_actor_options={"num_gpus": config.num_gpus, "num_cpus": config.num_cpus},
        autoscaling_config={
            "min_replicas": config.min_replicas, "max_replicas": config.max_replicas,
            "target_ongoing_requests": config.target_ongoing_requests,
        },
    )
    return ray.serve.run(pipeline.bind(), name=APP_NAME, route_prefix=None)


def main() -> None:
    deploy(cfg.from_env().serve)
    os.environ["FLUX_RAY_SERVE"] = "1"
    runpy.run_path(str(ROOT / "app.py"), run_name="__main__")


if __name__ == "__main__":
    main()
