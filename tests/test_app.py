"""The app as a server: started in-process, called through gradio_client like any API user."""

import dataclasses
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from gradio_client import Client
from gradio_client.utils import QueueError, Status
from PIL import Image

from conftest import ROOT


@pytest.fixture(scope="module")
def client(app):
    return Client(app.demo.local_url, verbose=False, download_files=str(Path(os.environ["TMPDIR"]) / "client"))


PARAMETERS = [
    "prompt", "seed", "randomize_seed", "width", "height", "guidance_scale", "num_inference_steps", "lora", "lora_scale"
]


def infer(client, prompt="a red bicycle", seed=5, randomize_seed=False, width=512, height=256, guidance=3.5, steps=2, **lora):
    """Positional, as callers written before the LoRA parameters call it; `lora=..., lora_scale=...` appends those."""
    args = [prompt, seed, randomize_seed, width, height, guidance, steps]
    if lora:
        args += [lora.get("lora", ""), lora.get("lora_scale", 1.0)]
    path, seed = client.predict(*args, api_name="/infer")
    return Path(path), seed


def test_status_reports_the_compiled_transformer(app):
    assert "AoT-compiled" in app.STATUS and "embedded tiny FLUX" in app.STATUS


def test_the_allocator_is_told_to_grow_its_segments_before_cuda_starts(app):
    # Read by PyTorch when CUDA starts, in the app's process or a ZeroGPU worker forked from it; what it saves under a
    # 48 GB cap is measured in bench/results/zerogpu-memory-h100.
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"


def test_report_times_each_optimization_stage(app):
    compiled = set() if app.report.cached else {"capture", "export", "compile"}
    compiled = compiled | {f"VAE decoder {name}" for name in compiled}
    expected = {"plan", "cache lookup", "VAE decoder cache lookup", "apply"} | compiled  # quantize: FP8 GPUs only
    assert set(app.report.stages) == expected
    assert all(seconds >= 0 for seconds in app.report.stages.values())


def test_infer_returns_a_png_of_the_requested_size_and_the_seed(client):
    path, seed = infer(client, width=384, height=256, seed=123)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (384, 256)
    assert seed == 123


def test_randomized_seed_is_returned_and_reproduces_the_image(client):
    path, seed = infer(client, randomize_seed=True)
    assert 0 <= seed <= 2**31 - 1
    again, same_seed = infer(client, seed=seed)
    assert same_seed == seed and path.read_bytes() == again.read_bytes()


BAD_REQUESTS = [
    (dict(prompt=""), "Enter a prompt"),
    (dict(prompt="   "), "Enter a prompt"),
    (dict(prompt=5), "prompt must be text"),
    (dict(prompt="a cat\x00"), "prompt must not contain control characters, got U\\+0000"),
    (dict(width=500), "multiple of 32"),
    (dict(width=1040), "multiple of 32"),  # FLUX takes it; the compiled graph needs a multiple of 4 tokens
    (dict(height=4096), "between 256 and 2048"),
    (dict(width=128), "between 256 and 2048"),
    (dict(steps=0), "num_inference_steps must be between 1"),
    (dict(steps=51), "num_inference_steps must be between 1"),
    (dict(steps=2.5), "whole number"),
    (dict(steps=True), "num_inference_steps must be a number"),  # JSON true is not one step
    (dict(seed=-1), "seed must be between 0"),
    (dict(seed=2**31), "seed must be between 0"),
    (dict(seed="abc"), "seed must be a number"),
    (dict(width="wide"), "width must be a number"),
    (dict(guidance="x"), "guidance_scale must be a number"),
    (dict(guidance=100.0), "guidance_scale must be between"),
    (dict(guidance=True), "guidance_scale must be a number"),
    (dict(randomize_seed="maybe"), "randomize_seed must be true or false"),
    (dict(lora="../../etc/passwd"), "lora: .* paths and URLs are not loaded"),
    (dict(lora="https://example.com/x.safetensors"), "lora: .* paths and URLs are not loaded"),
    (dict(lora="/tmp/x.safetensors"), "lora: .* paths and URLs are not loaded"),
    (dict(lora="tiny-style.ckpt"), "lora: only .safetensors files are loaded"),
    (dict(lora="no-such-lora"), "lora: no LoRA named 'no-such-lora'"),
    (dict(lora=5), "lora: must be text"),
    (dict(lora="x" * 250), "lora: 'xxxx.*is longer than a LoRA file's name can be"),  # not the file system's error
    (dict(lora="owner/" + "x" * 5000), "lora: 'owner/xxx.*is 5006 characters, longer than a LoRA name can be"),
    (dict(lora="tiny-style", lora_scale=2.5), "lora_scale: must be between 0 and 2"),
    (dict(lora="tiny-style", lora_scale=True), "lora_scale: must be a number"),
    (dict(seed=10**400), r"seed must be a number in range, got 1000000000.* \(401 characters\)"),  # beyond any float
    (dict(width="9" * 500), r"width must be a number, got '9999.* \(502 characters\)"),  # text; not echoed whole
    (dict(seed="42"), "seed must be a number, got '42'"),  # the API says integer: text is refused, not parsed
    (dict(guidance=-(10**400)), "guidance_scale must be a number in range"),
    (dict(lora="tiny-style", lora_scale=10**400), "lora_scale: must be a number"),
]


def test_bad_inputs_get_a_clear_error_and_change_nothing(client):
    before, _ = infer(client, seed=77)
    for change, message in BAD_REQUESTS:
        with pytest.raises(Exception, match=message):
            infer(client, **{"seed": 77, **change})
    after, _ = infer(client, seed=77)
    assert before.read_bytes() == after.read_bytes()


def test_a_very_long_prompt_is_truncated_not_refused_and_the_image_says_so(client):
    path, _ = infer(client, prompt="a very long prompt " * 200)
    with Image.open(path) as image:
        assert "only the first 512 were used" in image.info["warning"]


def test_the_png_carries_what_made_it(client):
    path, seed = infer(client, prompt="a red bicycle", seed=5, width=384, height=256, guidance=4.0, steps=2)
    with Image.open(path) as image:
        fields = dict(image.info)
    assert fields == {"prompt": "a red bicycle", "model": "embedded tiny FLUX (random weights)", "seed": "5", "width": "384",
                      "height": "256", "num_inference_steps": "2", "guidance_scale": "4.0"}


def test_generated_images_are_files_gradio_deletes_within_an_hour(app, client):
    path, _ = infer(client, seed=11)
    tracked = [Path(f) for files in app.demo.temp_file_sets for f in files]
    assert any(f.is_file() and f.read_bytes() == path.read_bytes() for f in tracked)  # not written where cleanup misses
    every, older_than = app.demo.delete_cache
    assert every <= older_than <= 3600


def test_a_served_request_is_one_log_line_without_the_prompt(app, caplog):
    with caplog.at_level(logging.INFO, logger="app"):
        app.infer("a secret prompt", 3, False, 256, 256, 3.5, 2, "tiny-detail", 0.5)
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("served ")]
    assert line.startswith("served 256x256, 2 steps, LoRA tiny-detail at 0.5 in ") and "secret" not in caplog.text


def test_a_rejected_request_is_one_log_line(app, client, caplog):
    with caplog.at_level("INFO"), pytest.raises(Exception, match="multiple of 32"):
        infer(client, width=500)
    assert [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()] == [
        "rejected request: width must be a multiple of 32, got 500."
    ]
    assert "Traceback" not in caplog.text


def test_cached_examples_are_kept_per_model(app, monkeypatch):
    """Gradio keys cached examples by position only: another model (or dtype, FP8, ...) must get another folder."""
    folder = app.example_cache_folder()
    assert app.os.environ["GRADIO_EXAMPLES_CACHE"] == folder
    for change in (dict(model="someone/other-flux"), dict(dtype="bfloat16")):
        monkeypatch.setattr(app, "CONFIG", dataclasses.replace(app.CONFIG, **change))
        assert app.example_cache_folder() != folder, change


def test_api_description_lists_infer_with_its_parameters_types_and_ranges(client):
    info = client.view_api(return_format="dict", print_info=False)
    parameters = {p["parameter_name"]: p for p in info["named_endpoints"]["/infer"]["parameters"]}
    assert list(parameters) == PARAMETERS
    types = {name: p["python_type"]["type"] for name, p in parameters.items()}
    assert types == {"prompt": "str", "seed": "int", "randomize_seed": "bool", "width": "int", "height": "int",
                     "guidance_scale": "float", "num_inference_steps": "int", "lora": "str", "lora_scale": "float"}
    assert parameters["width"]["type"]["description"] == "whole number from 256 to 2048 in steps of 32"
    assert parameters["seed"]["type"]["description"] == "whole number from 0 to 2147483647"
    assert "between 1.0 and 15.0" in parameters["guidance_scale"]["type"]["description"]


def test_mcp_tool_schema_describes_every_argument(app):
    """With FLUX_MCP_SERVER=1 agents see /infer as a tool; its schema comes from infer's docstring."""
    tools = httpx.get(app.demo.local_url + "gradio_api/mcp/schema", timeout=30).json()
    (tool,) = [t for t in tools if t["name"] == "infer"]
    properties = tool["inputSchema"]["properties"]
    assert list(properties) == PARAMETERS
    for name, schema in properties.items():
        assert schema["description"] and schema["description"] in app.infer.__doc__, name
    assert {name: schema["type"] for name, schema in properties.items() if name != "prompt"} == {
        "seed": "integer", "randomize_seed": "boolean", "width": "integer", "height": "integer",
        "guidance_scale": "number", "num_inference_steps": "integer", "lora": "string", "lora_scale": "number",
    }
    assert tool["inputSchema"]["required"] == ["prompt"]
    # Each line of the docstring's sections is a sentence of its own: Gradio joins lines with ", ".
    assert "Returns: The generated image (PNG, with its prompt, seed and settings as text fields) and" in tool["description"]


def test_the_mcp_tool_returns_the_image_and_the_seed(app):
    """An MCP client's session, as an agent opens one. With progress reports the result holds the image itself and
    the seed; without, Gradio 6.31 returns both as one text (gradio/mcp.py, `_execute_tool_without_progress` wraps a
    queued tool's outputs in a list): the image's URL and the seed, still no error."""
    import asyncio

    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    arguments = {"prompt": "a red fox", "seed": 4, "randomize_seed": False, "width": 256, "height": 256,
                 "num_inference_steps": 2}

    async def call(**options) -> object:
        async with streamablehttp_client(app.demo.local_url + "gradio_api/mcp/") as (read, write, _):
            async with ClientSession(read, write) as session:
                await session.initialize()
                return await session.call_tool("infer", arguments, **options)

    async def progress(step, total, message):
        pass

    with_progress = asyncio.run(asyncio.wait_for(call(progress_callback=progress), timeout=300))
    assert not with_progress.isError, with_progress.content
    image, *texts = with_progress.content
    assert image.type == "image" and image.mimeType == "image/png" and "4" in [t.text for t in texts], with_progress.content
    plain = asyncio.run(asyncio.wait_for(call(), timeout=300))
    assert not plain.isError and ".png" in plain.content[0].text and plain.content[0].text.endswith(" 4]"), plain.content


RUNNING = (Status.PROCESSING, Status.PROGRESS, Status.ITERATING)


def test_a_full_queue_answers_busy_and_serves_the_rest(app, client):
    queue = app.demo._queue
    limit, queue.max_size = queue.max_size, 1  # one waiting request at most (FLUX_QUEUE_SIZE)
    try:
        def submit(i):
            return client.submit("a busy queue", i, False, 1024, 1024, 3.5, 20, api_name="/infer")

        # The first request must be running, out of the queue, before the others arrive: sent together, one
        # of them could find it still waiting and the queue already full.
        jobs = [submit(0)]
        deadline = time.monotonic() + 120
        while jobs[0].status().code not in RUNNING and time.monotonic() < deadline:
            time.sleep(0.05)
        jobs += [submit(i) for i in range(1, 4)]
        outcomes = []
        for job in jobs:
            try:
                outcomes.append(job.result(timeout=300)[1])
            except QueueError as error:
                assert "Queue is full" in str(error)
                outcomes.append("busy")
    finally:
        queue.max_size = limit
    # Which of the later requests waits depends on arrival order; each one served is its own (seed = its index).
    assert outcomes[0] == 0 and all(outcome in ("busy", i) for i, outcome in enumerate(outcomes)), outcomes
    assert 1 <= outcomes.count("busy") <= 2, outcomes  # one runs, one waits, the rest are turned away
    assert infer(client)[1] == 5  # and the next request is served


def test_status_line_shows_the_last_generations_speed(app):
    image, seed = app.infer("a red kite", 9, False, 256, 256, 3.5, 3)
    timing = app.last_timing()
    assert (image.size, seed, timing["steps"], timing["size"]) == ((256, 256), 9, 3, "256x256")
    assert 0 < timing["seconds_per_step"] * 3 <= timing["seconds"]
    status = app.generation_status(timing)
    assert status.startswith(app.STATUS) and "3 steps" in status and "s/step" in status
    assert app.generation_status(None) == app.STATUS


def test_a_model_that_cannot_load_ends_startup_with_the_fix(tmp_path):
    env = {**os.environ, "FLUX_MODEL": str(tmp_path / "no-such-model")}
    result = subprocess.run([sys.executable, "-c", "import app"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    for needle in ("FLUX_MODEL=", "HF_TOKEN", "embedded tiny model"):
        assert needle in result.stderr


def test_long_prompt_warns_that_it_is_cut(app, monkeypatch):
    warnings = []
    monkeypatch.setattr(app.gr, "Warning", warnings.append)
    image, _ = app.infer("many words " * 300, 1, False, 256, 256, 3.5, 1)
    assert image.size == (256, 256)
    assert len(warnings) == 1 and "only the first 512 were used" in warnings[0]


def test_zerogpu_duration_grows_with_work(app):
    small = app.gpu_seconds("p", 0, 512, 512, 3.5, 4, "", 1.0)
    default = app.gpu_seconds("p", 0, 1024, 1024, 3.5, 28, "tiny-style", 1.0)
    large = app.gpu_seconds("p", 0, 2048, 2048, 3.5, 50, "", 1.0)
    assert 10 < small < default < large


def test_requests_are_checked_before_the_gpu_function_and_reach_it_typed(app, monkeypatch):
    """On ZeroGPU the GPU function forks a worker and reserves a GPU: a bad request must never get there."""
    calls = []
    monkeypatch.setattr(app, "generate", lambda *args: calls.append(args) or (Image.new("RGB", (8, 8)), {}))
    names = {"guidance": "guidance_scale", "steps": "num_inference_steps"}
    request = dict(
        prompt="a red bicycle", seed=5, randomize_seed=False, width=512, height=256, guidance_scale=3.5, num_inference_steps=2
    )
    for change, message in BAD_REQUESTS:
        with pytest.raises(app.gr.Error, match=message):
            app.infer(**{**request, **{names.get(k, k): v for k, v in change.items()}})
    assert calls == []
    assert app.infer(**{**request, "seed": 5.0, "width": 512.0, "num_inference_steps": 2.0})[1] == 5  # JSON 5.0
    assert calls == [("a red bicycle", 5, 512, 256, 3.5, 2, "", 1.0)]
    assert [type(v) for v in calls[0]] == [str, int, int, int, float, int, str, float]
    app.infer(**request, lora=" tiny-style ", lora_scale=0.5)
    assert calls[-1][-2:] == ("tiny-style", 0.5)


def test_concurrent_requests_each_get_the_image_of_their_own_seed(client):
    seeds = [11, 12, 13, 14]
    jobs = [client.submit("a red bicycle", seed, False, 256, 256, 3.5, 1, api_name="/infer") for seed in seeds]
    results = [job.result(timeout=300) for job in jobs]
    assert [seed for _, seed in results] == seeds
    for (path, seed) in results:  # the same request alone gives the same bytes: no cross-talk between queued jobs
        alone, _ = infer(client, seed=seed, width=256, height=256, steps=1)
        assert Path(path).read_bytes() == alone.read_bytes()
    assert len({Path(path).read_bytes() for path, _ in results}) == len(seeds)


def test_examples_carry_valid_settings(app):
    for prompt, seed, randomize, width, height in app.EXAMPLES:
        app.check_inputs(prompt, seed, randomize, width, height, app.CONFIG.default_guidance, app.STEPS, "", 1.0)


def test_a_lora_changes_the_image_says_so_and_none_gives_the_base_back(client):
    base, _ = infer(client, seed=21)
    styled, _ = infer(client, seed=21, lora="tiny-style", lora_scale=1.0)
    with Image.open(styled) as image:
        assert (image.info["lora"], image.info["lora_scale"]) == ("tiny-style", "1.0")
    assert styled.read_bytes() != base.read_bytes()
    assert infer(client, seed=21, lora="", lora_scale=1.0)[0].read_bytes() == base.read_bytes()  # unfused exactly
    unscaled, _ = infer(client, seed=21, lora="tiny-style", lora_scale=0.0)  # the same pixels; its text fields name the LoRA
    with Image.open(unscaled) as image, Image.open(base) as reference:
        assert image.tobytes() == reference.tobytes()


def test_concurrent_requests_with_different_loras_each_get_their_own(client):
    requests = [("tiny-style", 1.0), ("", 1.0), ("tiny-detail", 0.5), ("tiny-kohya", 1.0), ("tiny-style", 1.0)]
    jobs = [client.submit("a red bicycle", 31, False, 256, 256, 3.5, 1, *request, api_name="/infer") for request in requests]
    images = [Path(job.result(timeout=300)[0]).read_bytes() for job in jobs]
    for (lora, scale), image in zip(requests, images):
        alone, _ = infer(client, seed=31, width=256, height=256, steps=1, lora=lora, lora_scale=scale)
        assert image == alone.read_bytes(), (lora, scale)
    assert len(set(images)) == 4  # the two tiny-style requests agree; every other pair differs


def test_the_status_line_names_the_lora(app):
    image, _ = app.infer("a red kite", 9, False, 256, 256, 3.5, 2, "tiny-detail", 0.5)
    timing = app.last_timing()
    assert (timing["lora"], timing["lora_scale"]) == ("tiny-detail", 0.5) and timing["lora_seconds"] >= 0
    assert "LoRA tiny-detail at 0.5" in app.generation_status(timing)
    app.infer("a red kite", 9, False, 256, 256, 3.5, 2)
    assert "LoRA" not in app.generation_status(app.last_timing())
