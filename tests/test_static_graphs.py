"""Per-resolution static graphs beside the dynamic one: one weight copy, dispatch by shape."""

import pytest
import torch

import aoti
from conftest import load_transformer, rel_error

STATIC = (256, 256)


@pytest.fixture(scope="module")
def static_program(call_for):
    kwargs = call_for(*STATIC)
    return aoti.compile(aoti.export(load_transformer(), aoti.CapturedCall((), kwargs)))


@pytest.fixture()
def applied(static_program, compiled_program):
    transformer, eager = load_transformer(), load_transformer()
    compiled = aoti.apply(transformer, [static_program, compiled_program])
    return transformer, compiled, eager


def test_static_program_accepts_only_its_size(static_program, call_for):
    static_program.signature.check((), call_for(*STATIC))
    with pytest.raises(ValueError, match="expects"):
        static_program.signature.check((), call_for(512, 256))


def test_dispatch_picks_the_static_graph_for_its_size_and_the_dynamic_one_otherwise(applied, call_for):
    transformer, compiled, eager = applied
    for size, expected in [(STATIC, 0), ((512, 256), 1), ((256, 512), 1)]:
        kwargs = call_for(*size, seed=sum(size))
        assert compiled.select((), kwargs)[0] == expected
        with torch.no_grad():
            assert rel_error(transformer(**kwargs)[0], eager(**kwargs)[0]) < 1e-5


def test_all_graphs_are_bound_to_the_one_copy_of_the_weights(applied, call_for):
    transformer, compiled, eager = applied
    static_call, dynamic_call = call_for(*STATIC), call_for(512, 256)
    with torch.no_grad():
        transformer(**static_call), transformer(**dynamic_call)  # both programs loaded and bound
        assert len(compiled.runners._loaded) == 2
        compiled.weights["proj_out.bias"].add_(0.5)  # one in-place change, seen by both graphs
        eager.proj_out.bias.add_(0.5)
        for kwargs in (static_call, dynamic_call):
            assert rel_error(transformer(**kwargs)[0], eager(**kwargs)[0]) < 1e-5


def test_a_size_no_graph_accepts_gets_the_dynamic_graphs_error(applied, call_for):
    transformer, _, _ = applied
    with pytest.raises(ValueError, match="outside the compiled range"):
        transformer(**call_for(4096, 4096))
