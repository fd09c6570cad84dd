"""The export spec and the call contract of compiled programs (no compilation here)."""

import pytest
import torch

import aoti
from config import MAX_SIZE, MIN_SIZE, SIZE_STEP
from conftest import load_transformer
from optimization import DYNAMIC_AXES, IMAGE_SEQ


def test_image_sequence_range_is_derived_from_the_resolution_range():
    assert (IMAGE_SEQ.min, IMAGE_SEQ.max) == ((MIN_SIZE // 16) ** 2, (MAX_SIZE // 16) ** 2) == (256, 16384)
    assert IMAGE_SEQ.multiple == (SIZE_STEP // 16) ** 2 == 4  # sides in steps of 32 px: 2x2 tokens at a time


def test_the_exported_graph_knows_the_image_tokens_come_in_fours(captured_call):
    """What lets inductor drop bounds masks from kernels over the tokens, as in a static graph."""
    program = aoti.export(load_transformer(), captured_call, DYNAMIC_AXES).program
    tokens = next(n for n in program.graph.nodes if n.name == "hidden_states").meta["val"].shape[1]
    assert str(tokens).startswith("4*") and (tokens.node.expr / 4).is_integer


def test_dynamic_shapes_mirror_the_captured_call(captured_call):
    signature = aoti.Signature.from_call(captured_call, DYNAMIC_AXES)
    args, kwargs = signature.export_dynamic_shapes(captured_call.args, captured_call.kwargs)
    assert args == ()
    assert set(kwargs) == set(captured_call.kwargs)
    seq = kwargs["hidden_states"][1]
    assert kwargs["img_ids"] == {0: seq}  # one shared Dim object
    assert isinstance(seq, torch.export.Dim) and (seq.min, seq.max) == (256, 16384)
    assert kwargs["hidden_states"] == {1: seq}
    assert kwargs["joint_attention_kwargs"] == {}  # empty dict mirrored as {}
    for static in ("encoder_hidden_states", "txt_ids", "pooled_projections", "timestep", "guidance", "return_dict"):
        assert kwargs[static] is None


def test_check_accepts_other_sizes_in_range(captured_call, call_for):
    signature = aoti.Signature.from_call(captured_call, DYNAMIC_AXES)
    for width, height in [(256, 256), (1344, 768), (2048, 2048)]:
        signature.check((), call_for(width, height))


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(hidden_states=torch.randn(1, 128, 64), img_ids=torch.zeros(128, 3)), "outside the compiled range 256..16384"),
        (dict(img_ids=torch.zeros(2048, 3)), "inconsistent 'image_seq'"),
        (dict(encoder_hidden_states=torch.randn(1, 77, 32)), "expects"),
        (dict(return_dict=True), "frozen at export"),
        (dict(joint_attention_kwargs={"scale": 0.5}), "do not match the compiled call"),
        (dict(joint_attention_kwargs=None), "do not match the compiled call"),
        (dict(guidance=torch.tensor([3.5], dtype=torch.float64)), "float64"),
        (dict(guidance=3.5), "must be a tensor"),
    ],
)
def test_check_rejects_what_the_program_cannot_run(captured_call, call_for, change, message):
    signature = aoti.Signature.from_call(captured_call, DYNAMIC_AXES)
    with pytest.raises(ValueError, match=message):
        signature.check((), call_for(512, 512, **change))


def test_check_rejects_an_unknown_keyword(captured_call):
    signature = aoti.Signature.from_call(captured_call, DYNAMIC_AXES)
    with pytest.raises(ValueError, match="do not match"):
        signature.check((), {**captured_call.kwargs, "controlnet_block_samples": None})


def test_json_round_trip(captured_call):
    signature = aoti.Signature.from_call(captured_call, DYNAMIC_AXES)
    assert aoti.Signature.from_json(signature.to_json()) == signature


def test_dynamic_axes_must_name_tensors_of_the_call(captured_call):
    seq = aoti.Dim("s", 2, 10)
    with pytest.raises(ValueError, match="does not have"):
        aoti.Signature.from_call(captured_call, {"latents": {1: seq}})
    with pytest.raises(ValueError, match="holds no tensor"):
        aoti.Signature.from_call(captured_call, {"return_dict": {0: seq}})
    with pytest.raises(ValueError, match="outside"):
        aoti.Signature.from_call(captured_call, {"hidden_states": {1: seq}})


def test_dim_range_is_validated():
    with pytest.raises(ValueError):
        aoti.Dim("s", 10, 5)


def test_keyword_order_does_not_matter(captured_call, call_for):
    signature = aoti.Signature.from_call(captured_call, DYNAMIC_AXES)
    kwargs = call_for(512, 256)
    signature.check((), dict(reversed(list(kwargs.items()))))
    with pytest.raises(ValueError, match="missing \\['guidance'\\]"):
        signature.check((), {k: v for k, v in kwargs.items() if k != "guidance"})


def test_an_offset_dim_follows_its_base():
    """FLUX blocks: the rotary table has the image tokens plus 512 text tokens."""
    seq = aoti.Dim("s", 4, 64)
    call = aoti.CapturedCall((), {"x": torch.zeros(1, 16), "table": (torch.zeros(16 + 8, 2), torch.zeros(16 + 8, 2))})
    signature = aoti.Signature.from_call(call, {"x": {1: seq}, "table": {0: seq + 8}})
    assert signature.leaves[1][1].shape == ("s+8", 2)
    assert aoti.Signature.from_json(signature.to_json()) == signature
    signature.check((), {"x": torch.zeros(1, 64), "table": (torch.zeros(72, 2), torch.zeros(72, 2))})
    with pytest.raises(ValueError, match="inconsistent 's'"):
        signature.check((), {"x": torch.zeros(1, 32), "table": (torch.zeros(32, 2), torch.zeros(32, 2))})
    with pytest.raises(ValueError, match="outside the compiled range 12..72 of 's\\+8'"):
        signature.check((), {"x": torch.zeros(1, 64), "table": (torch.zeros(88, 2), torch.zeros(88, 2))})
    _, kwarg_shapes = signature.export_dynamic_shapes(call.args, call.kwargs)
    base, derived = kwarg_shapes["x"][1], kwarg_shapes["table"][0][0]
    assert derived.root is base and derived.fn(5) == 13  # one export Dim, plus 8


def test_a_dim_in_steps_exports_as_a_multiple_and_rejects_other_sizes():
    """Image tokens in steps of 4 (sides in steps of 32 px): the compiler may then drop bounds masks."""
    seq = aoti.Dim("s", 8, 64, multiple=4)
    call = aoti.CapturedCall((), {"x": torch.zeros(1, 16), "table": torch.zeros(16 + 8, 2)})
    signature = aoti.Signature.from_call(call, {"x": {1: seq}, "table": {0: seq + 8}})
    assert aoti.Signature.from_json(signature.to_json()) == signature
    signature.check((), {"x": torch.zeros(1, 60), "table": torch.zeros(68, 2)})
    with pytest.raises(ValueError, match="outside the compiled range 8..64 in steps of 4 of 's'"):
        signature.check((), {"x": torch.zeros(1, 18), "table": torch.zeros(26, 2)})
    _, kwarg_shapes = signature.export_dynamic_shapes(call.args, call.kwargs)
    size, table = kwarg_shapes["x"][1], kwarg_shapes["table"][0]
    assert (size.root.min, size.root.max) == (2, 16) and size.fn(5) == 20 and table.fn(5) == 28
    with pytest.raises(ValueError, match="multiples of 4"):
        aoti.Dim("s", 6, 64, multiple=4)
    with pytest.raises(ValueError, match="outside"):
        aoti.Signature.from_call(aoti.CapturedCall((), {"x": torch.zeros(1, 18)}), {"x": {1: seq}})
