"""Regional compilation: one program per kind of repeated block, shared by every block of that kind."""

import pickle

import pytest
import torch

import aoti
from config import MAX_SEQUENCE_LENGTH
from conftest import load_transformer, rel_error
from optimization import block_axes, compiled_modules

pytestmark = pytest.mark.slow  # per-block programs compiled


@pytest.fixture(scope="module")
def block_programs(captured_call):
    """One dynamic program per block kind of the tiny transformer, weights as inputs."""
    transformer = load_transformer()
    programs = {}
    for kind, modules in compiled_modules(transformer, regional=True).items():
        with aoti.capture(modules[0]) as call, torch.no_grad():
            transformer(**captured_call.kwargs)
        programs[kind] = aoti.compile(aoti.export(modules[0], call, block_axes(MAX_SEQUENCE_LENGTH), weights_as_inputs=True))
    return programs


def regional(block_programs):
    transformer = load_transformer()
    bound = {
        kind: aoti.apply(modules, block_programs[kind])
        for kind, modules in compiled_modules(transformer, regional=True).items()
    }
    return transformer, bound


def test_the_kinds_are_flux_double_and_single_blocks():
    transformer = load_transformer()
    kinds = compiled_modules(transformer, regional=True)
    assert {k: len(v) for k, v in kinds.items()} == {"FluxTransformerBlock": 1, "FluxSingleTransformerBlock": 1}
    assert compiled_modules(transformer, regional=False) == {"transformer": [transformer]}


def test_a_model_without_repeated_blocks_cannot_be_compiled_regionally():
    with pytest.raises(ValueError, match="_repeated_blocks"):
        compiled_modules(torch.nn.Linear(2, 2), regional=True)


@pytest.mark.parametrize("size", [(512, 512), (768, 384), (256, 1024)])
def test_regional_transformer_gives_the_eager_output(block_programs, call_for, size):
    transformer, _ = regional(block_programs)
    kwargs = call_for(*size, seed=size[0])
    with torch.no_grad():
        assert rel_error(transformer(**kwargs)[0], load_transformer()(**kwargs)[0]) < 1e-5


def two_double_blocks():
    """The tiny transformer with a second double block: a perturbed copy of the first."""
    transformer, eager = load_transformer(), load_transformer()
    second = load_transformer().transformer_blocks[0]
    for p in second.parameters():
        p.data.add_(0.01 * torch.randn_like(p))
    eager.transformer_blocks.append(pickle.loads(pickle.dumps(second)))
    transformer.transformer_blocks.append(second)
    return transformer, eager


def test_blocks_of_a_kind_share_one_runner_and_keep_their_own_weights(block_programs, call_for):
    transformer, eager = two_double_blocks()
    pointers = [p.data_ptr() for block in transformer.transformer_blocks for p in block.parameters()]
    forwards = aoti.apply(list(transformer.transformer_blocks), block_programs["FluxTransformerBlock"])
    assert forwards[0].runners is forwards[1].runners
    bound = [t.data_ptr() for f in forwards for t in f.weights.values()]
    assert sorted(bound) == sorted(pointers)  # the blocks' own tensors: nothing copied
    kwargs = call_for(512, 256, seed=3)
    with torch.no_grad():
        assert rel_error(transformer(**kwargs)[0], eager(**kwargs)[0]) < 1e-5
    assert len(forwards[0].runners._loaded) == 1  # loaded once for both blocks


def test_sharing_survives_pickling_and_the_copy_runs(block_programs, call_for):
    transformer, eager = two_double_blocks()
    aoti.apply(list(transformer.transformer_blocks), block_programs["FluxTransformerBlock"])
    copy = pickle.loads(pickle.dumps(transformer))  # as ZeroGPU returns objects from its worker
    first, second = (block.forward for block in copy.transformer_blocks)
    assert first.runners is second.runners and first.runners._loaded == {}
    kwargs = call_for(384, 384, seed=5)
    with torch.no_grad():
        assert rel_error(copy(**kwargs)[0], eager(**kwargs)[0]) < 1e-5


def test_keyword_order_does_not_matter(block_programs, captured_call):
    transformer, _ = regional(block_programs)
    block = transformer.single_transformer_blocks[0]
    eager = load_transformer()
    eager_block = eager.single_transformer_blocks[0]
    with aoti.capture(eager_block) as call, torch.no_grad():
        eager(**captured_call.kwargs)
    reordered = dict(reversed(list(call.kwargs.items())))
    with torch.no_grad():
        for out, ref in zip(block(**reordered), eager_block(**call.kwargs)):
            assert rel_error(out, ref) < 1e-5


def test_a_rotary_table_that_does_not_match_the_image_is_refused(block_programs, captured_call):
    transformer, _ = regional(block_programs)
    eager = load_transformer()
    with aoti.capture(eager.transformer_blocks[0]) as call, torch.no_grad():
        eager(**captured_call.kwargs)
    cos, sin = call.kwargs["image_rotary_emb"]
    shorter = dict(call.kwargs, image_rotary_emb=(cos[:-16], sin[:-16]))
    with pytest.raises(ValueError, match="inconsistent 'image_seq'"):
        transformer.transformer_blocks[0](**shorter)


def test_programs_with_bound_constants_cannot_be_shared(compiled_program):
    modules = [load_transformer(), load_transformer()]
    with pytest.raises(ValueError, match="weights_as_inputs"):
        aoti.apply(modules, compiled_program)
    assert all(m.proj_out.weight.numel() for m in modules)  # refused before changing anything
