"""Compile, apply, save and load the tiny FLUX transformer (float32, CPU)."""

import json
import subprocess
import sys

import pytest
import torch

import aoti
from conftest import ROOT, load_transformer, rel_error

TOLERANCE = 1e-5  # float32: compiled kernels reorder sums, errors observed ~1e-6
# Three resolutions besides the captured 512x512: square, landscape, portrait, and the extremes.
SIZES = [(256, 256), (1024, 1024), (1344, 768), (768, 1344), (2048, 256)]


@pytest.fixture()
def applied(compiled_program):
    transformer = load_transformer()
    eager = load_transformer()
    aoti.apply(transformer, compiled_program)
    return transformer, eager


def test_package_is_small_and_leaves_the_weights_out(compiled_program):
    assert len(compiled_program.package) < 10e6
    weights = load_transformer().state_dict()
    assert set(compiled_program.weight_names) == set(weights)


@pytest.mark.parametrize("width, height", SIZES)
def test_compiled_matches_eager(applied, call_for, width, height):
    transformer, eager = applied
    kwargs = call_for(width, height, seed=width + height)
    with torch.no_grad():
        out, ref = transformer(**kwargs)[0], eager(**kwargs)[0]
    assert out.shape == ref.shape == kwargs["hidden_states"].shape
    assert rel_error(out, ref) < TOLERANCE


def test_apply_keeps_one_copy_and_the_attributes():
    transformer = load_transformer()
    params = dict(transformer.named_parameters())
    pointers = {name: p.data_ptr() for name, p in params.items()}
    dtype, device, config = transformer.dtype, transformer.device, transformer.config
    program = aoti.CompiledProgram(b"", aoti.Signature("", ()), tuple(params))  # apply does not load it
    compiled = aoti.apply(transformer, program)
    assert sum(p.numel() for p in transformer.parameters()) == 0
    assert {name: w.data_ptr() for name, w in compiled.weights.items()} == pointers  # moved, not copied
    assert (transformer.dtype, transformer.device, transformer.config) == (dtype, device, config)
    assert transformer.forward is compiled
    with pytest.raises(ValueError, match="already compiled"):
        aoti.apply(transformer, program)


def test_program_binds_live_weights(applied, call_for):
    transformer, eager = applied
    kwargs = call_for(512, 512)
    with torch.no_grad():
        transformer(**kwargs)  # loads and binds
        transformer.forward.weights["proj_out.bias"].add_(1.0)  # bound by pointer: visible to the program
        eager.proj_out.bias.add_(1.0)
        assert rel_error(transformer(**kwargs)[0], eager(**kwargs)[0]) < TOLERANCE


def test_apply_rejects_a_module_without_the_programs_weights(compiled_program):
    module = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="lacks .* weights"):
        aoti.apply(module, compiled_program)
    assert module.weight.numel() == 4  # nothing was dropped


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c(128, 128), "outside the compiled range"),
        (lambda c: c(4096, 4096), "outside the compiled range"),
        (lambda c: c(528, 528), "in steps of 4"),  # 33 x 33 tokens: FLUX takes it, the graph assumes 4k
        (lambda c: c(512, 512, img_ids=torch.zeros(2048, 3)), "inconsistent"),
        (lambda c: c(512, 512, return_dict=True), "frozen at export"),
    ],
)
def test_compiled_module_rejects_calls_it_cannot_run(applied, call_for, change, message):
    transformer, _ = applied
    with pytest.raises(ValueError, match=message):
        transformer(**change(call_for))


def test_eager_fallback_runs_the_modules_forward_on_the_same_weights(compiled_program, call_for):
    """Where no program accepts a call, `eager_fallback` runs the module's own forward instead of raising;
    the module keeps its weights (the ones the programs read) for it."""
    transformer, eager = load_transformer(), load_transformer()
    pointers = {name: p.data_ptr() for name, p in transformer.named_parameters()}
    compiled = aoti.apply(transformer, compiled_program, eager_fallback=True)
    assert {name: p.data_ptr() for name, p in transformer.named_parameters()} == pointers
    assert {w.data_ptr() for w in compiled.weights.values()} <= set(pointers.values())
    kwargs = call_for(528, 528)  # 33 x 33 tokens: outside the program's steps of 4
    assert not compiled.accepts(**kwargs) and compiled.accepts(**call_for(512, 512))
    with torch.no_grad():
        assert torch.equal(transformer(**kwargs)[0], eager(**kwargs)[0])


FRESH_PROCESS = """
import sys, torch
sys.path.insert(0, sys.argv[1])
import aoti
from conftest import load_transformer
transformer = load_transformer()
aoti.apply(transformer, aoti.load(sys.argv[2]))
kwargs = torch.load(sys.argv[3])
with torch.no_grad():
    torch.save(transformer(**kwargs)[0], sys.argv[4])
"""


def test_saved_program_runs_in_a_fresh_process(compiled_program, call_for, tmp_path):
    aoti.save(compiled_program, tmp_path / "program")
    kwargs = call_for(1024, 768, seed=7)
    torch.save(kwargs, tmp_path / "inputs.pt")
    subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(ROOT / "tests"), str(tmp_path / "program"),
         str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")],
        check=True, cwd=ROOT, timeout=300,
    )
    with torch.no_grad():
        ref = load_transformer()(**kwargs)[0]
    assert rel_error(torch.load(tmp_path / "out.pt"), ref) < TOLERANCE


def corrupt_truncate(folder):
    package = folder / "program.pt2"
    package.write_bytes(package.read_bytes()[:1000])


def corrupt_flip_byte(folder):
    data = bytearray((folder / "program.pt2").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "program.pt2").write_bytes(bytes(data))


def corrupt_manifest(folder):
    (folder / "manifest.json").write_text("{not json")


def corrupt_torch_version(folder):
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["torch"] = "0.0.1"
    (folder / "manifest.json").write_text(json.dumps(manifest))


def remove_package(folder):
    (folder / "program.pt2").unlink()


@pytest.mark.parametrize(
    "corrupt", [corrupt_truncate, corrupt_flip_byte, corrupt_manifest, corrupt_torch_version, remove_package]
)
def test_damaged_artifact_is_rejected_before_loading(compiled_program, tmp_path, corrupt):
    folder = aoti.save(compiled_program, tmp_path / "program")
    corrupt(folder)
    with pytest.raises(aoti.ArtifactError):
        aoti.load(folder)


def test_save_load_round_trip(compiled_program, tmp_path):
    loaded = aoti.load(aoti.save(compiled_program, tmp_path / "program"))
    assert loaded == compiled_program


def test_loading_skips_torchs_cpu_isa_probe(compiled_program, call_for, monkeypatch):
    """`aoti_load_package` probes the CPU's vector ISA first (25-55 s in a fresh process on the GPU
    machine) only to warn about a device mismatch; our loader must not pay for it."""
    import torch._inductor.codecache as codecache

    def probe(*args, **kwargs):
        raise AssertionError("the loader probed the device")

    monkeypatch.setattr(codecache, "get_device_information", probe)
    transformer, eager = load_transformer(), load_transformer()
    aoti.apply(transformer, compiled_program)
    kwargs = call_for(256, 512, seed=4)
    with torch.no_grad():
        assert rel_error(transformer(**kwargs)[0], eager(**kwargs)[0]) < 1e-5


class Sentinel(Exception):
    pass


@pytest.mark.parametrize("device, probes", [("cpu", True), ("meta", False)])
def test_cpu_isa_probe_only_for_graphs_with_cpu_kernels(device, probes, monkeypatch):
    """Inductor's CPU vector-ISA probe (52-60 s on the H200 machine) is skipped for a graph
    without CPU tensors ("meta" stands in for CUDA here), and kept where CPU kernels need it."""
    seen = {}

    def compile_and_package(program, package_path, inductor_configs):
        seen.update(inductor_configs)
        raise Sentinel

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", compile_and_package)
    module = torch.nn.Linear(4, 4).to(device)
    exported = aoti.export(module, aoti.CapturedCall((), {"input": torch.ones(2, 4, device=device)}), None)
    with pytest.raises(Sentinel):
        aoti.compile(exported, {"epilogue_fusion": False})
    assert seen["epilogue_fusion"] is False
    assert ("cpp.vec_isa_ok" not in seen) if probes else (seen["cpp.vec_isa_ok"] is False)


def test_export_computes_a_repeated_pure_call_once_but_draws_random_numbers_each_time():
    class Repeats(torch.nn.Module):
        def forward(self, x):
            return x.sin() * 2 + x.sin(), torch.rand_like(x) - torch.rand_like(x)

    x = torch.randn(8)
    exported = aoti.export(Repeats(), aoti.CapturedCall((x,), {}))
    targets = [str(node.target) for node in exported.program.graph.nodes]
    assert targets.count("aten.sin.default") == 1 and targets.count("aten.rand_like.default") == 2
    same, noise = exported.program.module()(x)
    torch.testing.assert_close(same, 3 * x.sin())
    assert noise.abs().sum() > 0  # two draws, not one subtracted from itself
