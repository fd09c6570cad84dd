"""Crossing process boundaries as on ZeroGPU: the startup compile runs in a forked GPU worker and
returns its result pickled; each request runs in a forked worker again."""

import multiprocessing
import pickle

import torch

import aoti
from conftest import load_transformer, rel_error


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
    apply_programs_(transformer, pickle.loads(programs_bytes), OptimizationConfig(), fp8=False)
    with torch.no_grad():
        return transformer(**kwargs)[0]


def test_regional_programs_cross_to_a_fresh_process(captured_call, call_for):
    """The default (per-block) programs, as ZeroGPU's worker returns them: pickled, then bound there."""
    from config import OptimizationConfig
    from optimization import compile_transformer

    programs = compile_transformer(load_transformer(), [captured_call], OptimizationConfig(), fp8=False)
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
