import pytest
import torch

import aoti


class Doubler(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x, *, scale=1.0):
        self.calls += 1
        return 2 * x * scale


def run_pipeline(module, x):
    """Stands in for a pipeline: prepares inputs, calls the module, then keeps working."""
    out = module(x + 1, scale=3.0)
    return out.sum()


def test_records_arguments_exactly_and_stops_the_pipeline():
    module, x = Doubler(), torch.randn(4)
    with aoti.capture(module) as call:
        run_pipeline(module, x)
        pytest.fail("the block must stop at the captured call")
    assert module.calls == 0  # the module itself never ran
    assert len(call.args) == 1 and torch.equal(call.args[0], x + 1)
    assert call.kwargs == {"scale": 3.0}


def test_pipeline_catching_exception_cannot_swallow_the_stop():
    module = Doubler()

    def guarded_pipeline(x):
        try:
            return module(x)
        except Exception:
            return None

    with aoti.capture(module) as call:
        guarded_pipeline(torch.ones(2))
        pytest.fail("the stop must pass through `except Exception`")
    assert call.captured


def test_method_is_restored_after_capture_and_on_error():
    module = Doubler()
    with aoti.capture(module):
        module(torch.ones(1))
    assert "forward" not in vars(module)
    with pytest.raises(KeyError):
        with aoti.capture(module):
            raise KeyError("boom")
    assert "forward" not in vars(module)
    assert torch.equal(module(torch.ones(1)), torch.full((1,), 2.0))


def test_instance_attribute_is_put_back():
    module = Doubler()
    module.forward = patched = lambda x: x  # e.g. a previously applied patch
    with aoti.capture(module):
        module(torch.ones(1))
    assert module.forward is patched


def test_capturing_nothing_is_an_error():
    module = Doubler()
    with pytest.raises(aoti.CaptureError, match="Doubler.forward was not called"):
        with aoti.capture(module):
            pass
    assert "forward" not in vars(module)


def test_other_methods_can_be_captured():
    module = Doubler()
    with aoti.capture(module, method="extra_repr") as call:
        module.extra_repr("x")
    assert call.args == ("x",)
