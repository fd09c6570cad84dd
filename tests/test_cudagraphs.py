"""CUDA-graph replay (aoti.CUDAGraphs): the CPU fallback and wiring here; replay itself on a GPU.

The GPU tests are skipped on CPU; run them on the device machine with
`python -m pytest tests/test_cudagraphs.py` (results in bench/results/).
"""

import logging
import pickle

import numpy as np
import pytest
import torch

import aoti
from aoti.cudagraphs import _key as key_of_leaves
from config import MAX_SEQUENCE_LENGTH, OptimizationConfig
from conftest import load_pipeline, tiny_config
from optimization import optimize_pipeline_


def _key(args, kwargs):  # the graph key of a call, as CUDAGraphs computes it
    return key_of_leaves(*torch.utils._pytree.tree_flatten((args, kwargs)))


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class Counting:
    def __init__(self):
        self.calls = 0

    def __call__(self, x, scale=2.0):
        self.calls += 1
        return (x * scale + 1,)


def test_cpu_calls_run_the_function_directly():
    fn = Counting()
    graphed = aoti.CUDAGraphs(fn)
    x = torch.arange(4.0)
    assert torch.equal(graphed(x)[0], fn(x)[0])
    assert graphed(x, scale=3.0)[0].tolist() == [1.0, 4.0, 7.0, 10.0]
    assert graphed.shapes == 0 and fn.calls == 3


def test_graphs_are_specific_to_shapes_dtypes_and_other_arguments():
    x = torch.zeros(2, 3)
    assert _key((x,), {}) == _key((torch.ones(2, 3),), {})  # values are copied in, not part of the key
    assert len({
        _key((x,), {}), _key((torch.zeros(3, 2),), {}), _key((x.double(),), {}), _key((x,), {"scale": 3.0}),
        _key((x,), {"scale": None}), _key((), {"x": x}),
    }) == 6


def test_pickling_keeps_the_function_and_drops_the_graphs():
    graphed = aoti.CUDAGraphs(Counting(), max_graphs=3)
    graphed._graphs["captured"] = object()  # stands in for a graph of this process
    copy = pickle.loads(pickle.dumps(graphed))
    assert copy.shapes == 0 and copy.max_graphs == 3 and isinstance(copy.fn, Counting)
    assert copy(torch.ones(1))[0].item() == 3.0


@pytest.mark.slow
def test_optimize_pipeline_uses_graphs_only_on_the_gpu():
    pipe = load_pipeline()
    report = optimize_pipeline_(
        pipe, tiny_config(cuda_graphs=True), prompt="example", width=256, height=256,
        num_inference_steps=1, max_sequence_length=MAX_SEQUENCE_LENGTH,
    )
    assert report.aot and not report.cuda_graphs and "CUDA graphs" not in report.summary()
    assert not isinstance(pipe.transformer.forward, aoti.CUDAGraphs)


@cuda
def test_replay_matches_direct_calls_for_each_shape():
    linear = torch.nn.Linear(64, 64).cuda()
    graphed = aoti.CUDAGraphs(linear, max_graphs=2)
    with torch.no_grad():
        for rows in (8, 16, 8, 32):  # 32 evicts 16, the least recently used
            x = torch.randn(rows, 64, device="cuda")
            results = [graphed(x + i) for i in range(3)]  # runs directly, captures and replays, replays
            for i, result in enumerate(results):  # new values through one graph; results outlive the next call
                assert torch.allclose(result, linear(x + i))
    assert graphed.shapes == 2 and set(k[1][0] for k in graphed._graphs) == {(8, 64), (32, 64)}


@cuda
def test_graphs_captured_in_inference_mode_replay_outside_it_and_back():
    """diffusers' pipelines run under no_grad, a caller may use inference_mode: one graph serves both."""
    linear = torch.nn.Linear(64, 64).cuda().requires_grad_(False)
    graphed = aoti.CUDAGraphs(linear)
    x = torch.randn(8, 64, device="cuda")
    modes = (torch.inference_mode, torch.inference_mode, torch.no_grad, torch.inference_mode, torch.no_grad)
    for i, mode in enumerate(modes):  # the second call captures, in inference mode
        with mode():
            assert torch.allclose(graphed(x + i), linear(x + i))
    assert graphed.shapes == 1


@cuda
def test_a_call_that_cannot_be_captured_runs_directly(caplog):
    def syncs(x):
        return x * x.sum().item()  # a CPU sync: not allowed while capturing

    graphed = aoti.CUDAGraphs(syncs)
    x = torch.arange(4.0, device="cuda")
    with caplog.at_level(logging.WARNING, logger="aoti.cudagraphs"):
        assert all(torch.equal(graphed(x), syncs(x)) for _ in range(3))
    assert graphed.shapes == 0 and caplog.text.count("capture failed") == 1
    assert torch.equal(x + 1, torch.arange(1.0, 5.0, device="cuda"))  # the GPU still works,
    assert torch.randn(4, device="cuda").std() > 0  # and so does its random number generator


@cuda
def test_pipeline_with_graphs_gives_the_image_without_them():
    """The embedded pipeline on the GPU, default options (FP8 where the card has it): CUDA graphs on vs off."""
    images = {}
    for graphs in (False, True):
        pipe = load_pipeline(torch.bfloat16).to("cuda")
        report = optimize_pipeline_(
            pipe, OptimizationConfig(cuda_graphs=graphs, cache=False), prompt="example", width=512, height=512,
            num_inference_steps=1, max_sequence_length=MAX_SEQUENCE_LENGTH,
        )
        assert report.cuda_graphs == graphs
        images[graphs] = [
            pipe("a red fox", width=w, height=h, num_inference_steps=4, max_sequence_length=MAX_SEQUENCE_LENGTH,
                 generator=torch.Generator("cuda").manual_seed(1), output_type="np").images[0]
            for w, h in ((512, 512), (768, 384), (512, 512))
        ]
    assert pipe.transformer.forward.shapes == 2
    for with_graphs, without in zip(images[True], images[False]):
        assert np.abs(with_graphs - without).max() < 1e-2  # same kernels; only launch order may differ
