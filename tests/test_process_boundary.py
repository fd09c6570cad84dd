"""Crossing process boundaries as on ZeroGPU: the startup compile runs in a forked GPU worker and
returns its result pickled; each request runs in a forked worker again."""

import multiprocessing
import pickle
from multiprocessing.reduction import ForkingPickler

import pytest
import torch

import aoti
from config import MAX_SEQUENCE_LENGTH
from conftest import load_pipeline, load_transformer, rel_error, tiny_config
from plan import Plan

pytestmark = pytest.mark.slow  # programs compiled and sent to other processes


def run_in_child(programs_bytes, kwargs):
    transformer = load_transformer()
    aoti.apply(transformer, pickle.loads(programs_bytes))
    with torch.no_grad():
        return transformer(**kwargs)[0]


def test_programs_pickle_small_and_run_in_a_fresh_process(compiled_program, call_for):
    payload = pickle.dumps([compiled_program])
    assert len(payload) < len(compiled_program.package) + 100_000  # the package and its contract, no weights
    kwargs = call_for(768, 512, seed=11)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        out = pool.apply(run_in_child, (payload, kwargs))
    with torch.no_grad():
        assert rel_error(out, load_transformer()(**kwargs)[0]) < 1e-5


def run_regional_in_child(programs_bytes, kwargs):
    from config import OptimizationConfig
    from optimization import apply_programs_

    transformer = load_transformer()
    apply_programs_(transformer, pickle.loads(programs_bytes), OptimizationConfig(), Plan.assumed(OptimizationConfig(), None))
    with torch.no_grad():
        return transformer(**kwargs)[0]


def test_regional_programs_cross_to_a_fresh_process(captured_call, call_for):
    """The default (per-block) programs, as ZeroGPU's worker returns them: pickled, then bound there."""
    from config import OptimizationConfig
    from optimization import compile_transformer

    config = OptimizationConfig()
    programs = compile_transformer(load_transformer(), [captured_call], config, Plan.assumed(config, None))
    payload = pickle.dumps(programs)
    assert len(payload) < sum(len(p.package) for group in programs.values() for p in group) + 200_000  # no weights
    kwargs = call_for(384, 640, seed=12)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        out = pool.apply(run_regional_in_child, (payload, kwargs))
    with torch.no_grad():
        assert rel_error(out, load_transformer()(**kwargs)[0]) < 1e-5


def call_compiled(transformer, kwargs, queue):
    torch.set_num_threads(1)  # this test process already ran OpenMP code; libgomp teams do not survive fork
    with torch.no_grad():
        queue.put(transformer(**kwargs)[0].numpy())  # plain bytes: a tensor would share memory with a dying process


def test_forked_workers_load_their_own_runner(compiled_program, call_for):
    """ZeroGPU's pattern: the main process applies but never runs; each forked worker runs.

    On CPU a worker forked from a process that has run OpenMP code hangs in libgomp unless it
    stays single-threaded; on ZeroGPU the program is CUDA code.
    """
    transformer = load_transformer()
    compiled = aoti.apply(transformer, compiled_program)
    eager = load_transformer()
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    for seed in range(2):  # one worker per request
        kwargs = call_for(512, 512, seed=seed)
        worker = context.Process(target=call_compiled, args=(transformer, kwargs, queue))
        worker.start()
        out = torch.from_numpy(queue.get(timeout=120))
        worker.join(timeout=60)
        assert worker.exitcode == 0
        with torch.no_grad():
            assert rel_error(out, eager(**kwargs)[0]) < 1e-5
    assert compiled.runners._loaded == {}  # nothing was loaded in the main process


def test_a_runner_is_not_reused_across_a_fork(compiled_program, call_for):
    transformer = load_transformer()
    compiled = aoti.apply(transformer, compiled_program)
    kwargs = call_for(256, 256)
    with torch.no_grad():
        transformer(**kwargs)
        first = compiled.runners._loaded[0]
        compiled.runners._pid = -1  # loaded by another process, as a forked child sees it
        transformer(**kwargs)
    assert compiled.runners._loaded[0] is not first


def test_compiled_forward_pickles_without_its_runners(compiled_program, call_for):
    transformer = load_transformer()
    compiled = aoti.apply(transformer, compiled_program)
    kwargs = call_for(256, 256)
    with torch.no_grad():
        expected = compiled(**kwargs)[0]
        copy = pickle.loads(pickle.dumps(compiled))
        assert copy.runners._loaded == {}  # loads again, lazily, where it is used
        assert rel_error(copy(**kwargs)[0], expected) < 1e-5


def test_host_shared_tensors_cross_through_shared_memory():
    """What a GPU function returns on ZeroGPU is pickled with multiprocessing's ForkingPickler (spaces' queues)."""
    weight = torch.nn.Parameter(torch.randn(3, 4))
    tree = {"block": [{"weight": weight}]}
    assert aoti.HostShared(tree).to("cpu")["block"][0]["weight"] is weight  # not pickled: the sender's own tensor
    received = pickle.loads(ForkingPickler.dumps(aoti.HostShared(tree))).to("cpu")["block"][0]["weight"]
    assert received.is_shared() and not received.requires_grad and torch.equal(received, weight)


def test_the_serving_process_binds_the_weights_the_gpu_function_prepared(monkeypatch, call_for):
    """On ZeroGPU the GPU function runs in a forked worker and its result comes back pickled: the serving
    process binds the weights prepared there (fused QKV here, FP8 on a GPU) and never prepares its own copy.
    The attention backend chosen there is set up here too (a Hub kernel's ops exist only where it was loaded)."""
    import optimization
    import plan

    inside = []  # non-empty while the GPU function runs

    def gpu(duration=None, size=None):
        def wrap(fn):
            def run(*args, **kwargs):
                inside.append(True)
                try:
                    result = fn(*args, **kwargs)
                finally:
                    inside.pop()
                return pickle.loads(ForkingPickler.dumps(result))  # as spaces' result queue does
            return run
        return wrap

    prepared, backends = [], []
    prepare, set_backend = optimization.prepare_transformer_, optimization.set_attention_backend
    monkeypatch.setattr(optimization.spaces, "GPU", gpu)
    monkeypatch.setattr(optimization, "prepare_transformer_", lambda *a: prepared.append(bool(inside)) or prepare(*a))
    for module in (optimization, plan):  # the plan sets it in the GPU function, optimization again outside
        monkeypatch.setattr(module, "set_attention_backend",
                            lambda m, name, *a, **k: backends.append((bool(inside), name)) or set_backend(m, name, *a, **k))
    pipe = load_pipeline()
    optimization.optimize_pipeline_(
        pipe, tiny_config(fuse_qkv=True), prompt="a cat", width=256, height=256,
        num_inference_steps=1, max_sequence_length=MAX_SEQUENCE_LENGTH,
    )
    assert prepared and all(prepared)  # only inside the GPU function
    assert backends == [(True, "auto"), (False, "native")]
    bound = [w for block in pipe.transformer.transformer_blocks for w in block.forward.weights.values()]
    assert bound and all(w.is_shared() for w in bound)  # the copies that crossed, not this process's own
    kwargs = call_for(384, 256, seed=5)
    with torch.no_grad():
        assert rel_error(pipe.transformer(**kwargs)[0], load_transformer()(**kwargs)[0]) < 1e-5
