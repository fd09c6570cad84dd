"""LoRAs at request time: fused into the compiled programs' weights, equal to diffusers' eager LoRA.

One regional compile of the tiny float32 pipeline is shared by the module; the LoRAs are those
assets/build_loras.py made. FP8 runs on CPU with torchao's hardware check bypassed, as in test_fp8.
"""

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import aoti
import fp8
import optimization
from config import MAX_SEQUENCE_LENGTH
from conftest import ROOT, allow_fp8_on_cpu, load_pipeline, pretend_gpu, tiny_config
from fp8_kernels.rope_pairs import ROW_ORDER
from lora import HubLora, LocalLora, LoraError, LoraFuser, LoraLibrary, check_scale, keep_masters, resolve
from lora.library import _pick_weight_file

LORA_DIR = ROOT / "assets" / "loras"
PIXELS = 1e-4  # as test_pipeline: compiled and eager images agree to this (pixel values in [0, 1])


def generate(pipe, **kwargs):
    return pipe(
        "a red fox in the snow", width=512, height=256, num_inference_steps=2, max_sequence_length=MAX_SEQUENCE_LENGTH,
        generator=torch.Generator().manual_seed(1), output_type="np", **kwargs,
    ).images[0]


def compiled_pipeline(dtype=torch.float32, **options):
    pipe = load_pipeline(dtype)
    masters = keep_masters(pipe.transformer)  # before optimize_pipeline_ (it would quantize with FP8)
    config = tiny_config(**options)
    report = optimization.optimize_pipeline_(
        pipe, config, prompt="example", width=512, height=512, num_inference_steps=1, max_sequence_length=MAX_SEQUENCE_LENGTH,
    )
    fuser = LoraFuser({"transformer": pipe.transformer, "text_encoder": pipe.text_encoder}, masters, report.plan.fp8)
    return pipe, fuser


@pytest.fixture(scope="module")
def compiled():
    return compiled_pipeline()


@pytest.fixture(scope="module")
def library():
    return LoraLibrary(LORA_DIR)


@pytest.fixture(scope="module")
def base_image(compiled):
    pipe, fuser = compiled
    with fuser.applied(None):
        return generate(pipe)


def eager_image(name, scale=1.0):
    """A fresh eager pipeline with the LoRA loaded by diffusers (PEFT layers, not fused)."""
    pipe = load_pipeline()
    source = resolve(name, LORA_DIR)
    pipe.load_lora_weights(str(source.path.parent), weight_name=source.path.name)
    return generate(pipe, joint_attention_kwargs={"scale": scale})


def live_weights(fuser):
    """A copy of every tensor the LoRA fuser may write."""
    return {
        (slot.layer, part): t.clone()
        for slot in fuser.slots.values()
        for part, t in (("weight", slot.weight), ("qdata", slot.qdata), ("scale", slot.scale), ("bias", slot.bias))
        if t is not None
    }


def assert_same(before, after):
    changed = [key for key in before if not torch.equal(before[key].view(torch.uint8), after[key].view(torch.uint8))]
    assert not changed, f"{len(changed)} tensors changed, e.g. {changed[:3]}"


@pytest.mark.slow
@pytest.mark.parametrize("name, scale", [("tiny-style", 1.0), ("tiny-detail", 1.0), ("tiny-kohya", 1.0), ("tiny-style", 0.5)])
def test_compiled_image_with_a_lora_equals_diffusers_eager_lora(compiled, library, base_image, name, scale):
    pipe, fuser = compiled
    with fuser.applied(library.load(name), scale):
        image = generate(pipe)
    reference = eager_image(name, scale)
    assert np.abs(reference - base_image).max() > 20 * PIXELS  # the LoRA changes the image
    assert np.abs(image - reference).max() < PIXELS


@pytest.mark.slow
def test_switching_loras_equals_loading_the_second_fresh_and_none_restores_the_base_bit_for_bit(
    compiled, library, base_image
):
    pipe, fuser = compiled
    with fuser.applied(None):
        base = live_weights(fuser)
    with fuser.applied(library.load("tiny-style")):
        generate(pipe)
    with fuser.applied(library.load("tiny-detail")):
        image = generate(pipe)
    assert np.abs(image - eager_image("tiny-detail")).max() < PIXELS
    with fuser.applied(None):
        assert_same(base, live_weights(fuser))
        assert np.array_equal(generate(pipe), base_image)


@pytest.mark.slow
def test_scale_zero_is_no_lora_and_the_same_request_again_writes_nothing(compiled, library, base_image, monkeypatch):
    pipe, fuser = compiled
    style = library.load("tiny-style")
    fuser.activate(None)
    writes = []
    monkeypatch.setattr(fuser, "_write", lambda slot, parts, scale: writes.append(slot.layer))
    assert not fuser.activate(style, 0.0) and writes == []
    monkeypatch.undo()
    assert fuser.activate(style, 0.7)
    monkeypatch.setattr(fuser, "_write", lambda slot, parts, scale: writes.append(slot.layer))
    assert not fuser.activate(library.load("tiny-style"), 0.7) and writes == []  # cached LoRA, same scale: free
    assert fuser.activate(style, 0.8) and len(writes) == len(style.factors)  # only its layers are rewritten
    monkeypatch.undo()
    with fuser.applied(style, 0.0):
        assert np.array_equal(generate(pipe), base_image)


@pytest.mark.slow
def test_nothing_is_recompiled_and_no_tensor_moves(compiled, library, monkeypatch):
    pipe, fuser = compiled
    compiles = []
    monkeypatch.setattr(aoti, "compile", lambda *a, **k: compiles.append(a))
    monkeypatch.setattr(optimization.aoti, "compile", lambda *a, **k: compiles.append(a))
    forwards = [m.forward for m in pipe.transformer.modules() if isinstance(m.__dict__.get("forward"), aoti.CompiledForward)]
    assert len(forwards) == 2  # the double and the single block (regional)
    pointers = [t.data_ptr() for f in forwards for t in f.weights.values()]
    runners = [dict(f.runners._loaded) for f in forwards]
    for name in ("tiny-style", "tiny-kohya", "tiny-text", ""):
        with fuser.applied(library.load(name)):
            generate(pipe)
    assert compiles == []
    assert [t.data_ptr() for f in forwards for t in f.weights.values()] == pointers
    assert [dict(f.runners._loaded) for f in forwards] == runners  # the same loaded programs


@pytest.mark.slow
def test_a_lora_on_the_text_encoder_is_fused_there_too_and_removed_on_switch(compiled, library, base_image):
    """The CLIP text encoder runs eagerly: its layers are written in place like the transformer's eager ones."""
    pipe, fuser = compiled
    text = library.load("tiny-text")
    assert text.roots == {"transformer", "text_encoder"}
    encoder_before = {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}
    with fuser.applied(text):
        image = generate(pipe)
        assert any(not torch.equal(v, encoder_before[k]) for k, v in pipe.text_encoder.state_dict().items())
    assert np.abs(image - eager_image("tiny-text")).max() < PIXELS
    with fuser.applied(None):
        assert all(torch.equal(v, encoder_before[k]) for k, v in pipe.text_encoder.state_dict().items())
        assert np.array_equal(generate(pipe), base_image)


@pytest.mark.parametrize("name, message", [
    ("/etc/passwd", "paths and URLs"),
    ("../tiny-flux/transformer/diffusion_pytorch_model", "paths and URLs"),
    ("tiny-detail/../../tiny-flux", "paths and URLs"),
    ("https://huggingface.co/owner/name", "paths and URLs"),
    ("~/.cache/lora", "paths and URLs"),
    ("owner/name:weights.bin", "only .safetensors"),
    ("owner/name:weights", "only .safetensors"),
    ("owner//name", "not a Hub LoRA"),
    ("weights.ckpt", "only .safetensors"),
    ("no-such-lora", "no LoRA named 'no-such-lora'"),
    ("a lora", "not a LoRA name"),
    (3, "must be text"),
])
def test_bad_names_are_refused_naming_the_field(name, message):
    with pytest.raises(LoraError, match=f"^lora: .*{message}"):
        LoraLibrary(LORA_DIR).load(name)


@pytest.mark.slow
def test_files_that_are_not_safetensors_loras_are_refused_and_nothing_changes(compiled, tmp_path):
    pipe, fuser = compiled
    fuser.activate(None)
    before, state = live_weights(fuser), fuser.active
    torch.save({"transformer.x_embedder.lora_A.weight": torch.zeros(2, 64)}, tmp_path / "pickled.safetensors")
    (tmp_path / "pickle.bin").write_bytes(b"\x80\x04")
    (tmp_path / "outside.safetensors").symlink_to(LORA_DIR / "tiny-style.safetensors")
    save_file({"transformer.x_embedder.weight": torch.zeros(32, 64)}, tmp_path / "full-weights.safetensors")
    library = LoraLibrary(tmp_path)
    for name, message in [
        ("pickled", "not a safetensors file"), ("pickle.bin", "only .safetensors"), ("outside", "outside the LoRA folder"),
        ("full-weights", "not a FLUX LoRA|changes more than LoRA layers|no LoRA layers"),
    ]:
        with pytest.raises(LoraError, match=f"^lora: .*({message})"):
            fuser.activate(library.load(name))
    assert fuser.active == state
    assert_same(before, live_weights(fuser))


@pytest.mark.slow
def test_a_lora_that_reshapes_a_layer_is_refused_and_nothing_changes(compiled, tmp_path):
    """Like a Control LoRA, which widens x_embedder's input for its conditioning image."""
    pipe, fuser = compiled
    fuser.activate(LoraLibrary(LORA_DIR).load("tiny-detail"))
    before, state = live_weights(fuser), fuser.active
    generator = torch.Generator().manual_seed(0)
    save_file({
        "transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.randn(2, 32, generator=generator),
        "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.randn(32, 2, generator=generator),
        "transformer.x_embedder.lora_A.weight": torch.randn(2, 128, generator=generator),  # 64 -> 128 input features
        "transformer.x_embedder.lora_B.weight": torch.randn(32, 2, generator=generator),
    }, tmp_path / "control.safetensors")
    with pytest.raises(LoraError, match=r"^lora: 'control' changes the shape of transformer.x_embedder .*Control LoRA"):
        fuser.activate(LoraLibrary(tmp_path).load("control"))
    assert fuser.active == state
    assert_same(before, live_weights(fuser))
    fuser.activate(None)


def test_scales_are_checked_naming_the_field():
    assert check_scale(0) == 0.0 and check_scale(1.5) == 1.5 and check_scale(2) == 2.0
    for bad in (-0.1, 2.5, float("nan"), True, None, "x", "1.5", 10**400):  # text is refused as the API says number
        with pytest.raises(LoraError, match="^lora_scale: "):
            check_scale(bad)


def test_names_resolve_to_the_hub_or_the_lora_folder(tmp_path):
    assert resolve("", LORA_DIR) is None and resolve("  ", LORA_DIR) is None
    assert resolve("owner/name", LORA_DIR) == HubLora("owner/name")
    assert resolve("owner/name:sub/style.safetensors", LORA_DIR) == HubLora("owner/name", "sub/style.safetensors")
    pinned = resolve("owner/name@0123abc:style.safetensors", LORA_DIR)
    assert pinned == HubLora("owner/name", "style.safetensors", "0123abc")
    assert pinned.name == "owner/name@0123abc:style.safetensors"
    assert resolve("owner/name@refs/pr/1", LORA_DIR) == HubLora("owner/name", None, "refs/pr/1")
    assert resolve("tiny-style", LORA_DIR) == LocalLora("tiny-style", LORA_DIR / "tiny-style.safetensors")
    assert resolve("tiny-style.safetensors", LORA_DIR) == LocalLora("tiny-style.safetensors", LORA_DIR / "tiny-style.safetensors")
    assert resolve("tiny-detail", LORA_DIR).path == LORA_DIR / "tiny-detail" / "pytorch_lora_weights.safetensors"
    assert _pick_weight_file(HubLora("o/n"), ["README.md", "a.safetensors"]) == "a.safetensors"
    assert _pick_weight_file(HubLora("o/n"), ["a.safetensors", "pytorch_lora_weights.safetensors"]).startswith("pytorch")
    with pytest.raises(LoraError, match=r"^lora: 'o/n' has several LoRA files \(a.safetensors, b.safetensors\): name one"):
        _pick_weight_file(HubLora("o/n"), ["a.safetensors", "b.safetensors"])


def test_hub_loras_are_downloaded_once_and_the_cache_is_bounded_in_bytes():
    downloads = []

    def download(source):
        downloads.append(source)
        return LORA_DIR / "tiny-style.safetensors"  # no network in tests: the Hub cache's file stands in

    sizes = {name: LoraLibrary(LORA_DIR).load(name).nbytes for name in ("tiny-style", "tiny-detail", "tiny-kohya")}
    library = LoraLibrary(LORA_DIR, max_bytes=sum(sizes.values()) - 1, download=download)  # not all three at once
    first = library.load("owner/style")
    assert library.load("owner/style") is first and downloads == [HubLora("owner/style")]
    library.load("tiny-detail")
    library.load("tiny-kohya")  # evicts owner/style, the least recently used
    library.load("owner/style")
    assert len(downloads) == 2 and library.reads == 4
    small = LoraLibrary(LORA_DIR, max_bytes=1)  # smaller than any LoRA: the last one read is kept all the same
    assert small.load("tiny-style") is small.load("tiny-style") and small.reads == 1


def test_kohyas_outer_layers_are_applied_not_dropped(tmp_path):
    """diffusers 0.42 converts kohya's img_in to an unprefixed "x_embedder" and then loads nothing for it."""
    generator = torch.Generator().manual_seed(0)
    save_file({
        "lora_unet_img_in.lora_down.weight": torch.randn(4, 64, generator=generator),
        "lora_unet_img_in.lora_up.weight": torch.randn(32, 4, generator=generator),
        "lora_unet_img_in.alpha": torch.tensor(2.0),
    }, tmp_path / "img-in.safetensors")
    lora = LoraLibrary(tmp_path).load("img-in")
    assert list(lora.factors) == ["transformer.x_embedder"]
    factors = lora.factors["transformer.x_embedder"]
    assert factors.scaling == 1.0  # kohya's alpha / rank is folded into the factors by the converter


def test_requantizing_a_master_gives_the_base_fp8_weight_bit_for_bit(monkeypatch):
    allow_fp8_on_cpu(monkeypatch)
    layer = torch.nn.Sequential(torch.nn.Linear(48, 32)).to(torch.bfloat16)
    master = layer[0].weight.detach().clone()
    fp8.quantize_fp8_(layer, "row")
    again = fp8.quantized_weight(master, "row")
    assert torch.equal(again.qdata.view(torch.uint8), layer[0].weight.qdata.view(torch.uint8))
    assert torch.equal(again.scale, layer[0].weight.scale)


@pytest.fixture(scope="module")
def fp8_compiled():
    with pytest.MonkeyPatch.context() as patch:
        pretend_gpu(patch, (9, 0))
        return compiled_pipeline(torch.bfloat16, fp8_granularity="row")  # patched only while compiling


@pytest.mark.slow
def test_fp8_layers_get_the_quantized_sum_of_master_and_lora_and_back(fp8_compiled, library, monkeypatch):
    allow_fp8_on_cpu(monkeypatch)
    pipe, fuser = fp8_compiled
    fp8_slots = [s for s in fuser.slots.values() if s.fp8]
    assert fp8_slots and all(s.layer in fuser._masters for s in fp8_slots)
    base = live_weights(fuser)
    base_image = generate(pipe)
    style = library.load("tiny-style")
    with fuser.applied(style, 0.9):
        image = generate(pipe)
        for slot in fp8_slots:
            factors = style.factors.get(slot.layer)
            master = fuser._masters[slot.layer]
            if factors is None:
                expected = master
            else:  # W + scale * scaling * B @ A, in float32, then the master's dtype
                fused = torch.addmm(master.float(), factors.up.float(), factors.down.float(), alpha=0.9 * factors.scaling)
                expected = fused.to(master.dtype)
            quantized = fp8.quantized_weight(expected, "row")
            assert torch.equal(slot.qdata.view(torch.uint8), quantized.qdata.view(torch.uint8)), slot.layer
            assert torch.equal(slot.scale, quantized.scale), slot.layer
    assert np.abs(image - base_image).max() > 0.01
    with fuser.applied(None):
        assert_same(base, live_weights(fuser))
        assert np.array_equal(generate(pipe), base_image)


@pytest.mark.slow
def test_a_bf16_text_stream_in_fp8_blocks_takes_the_lora_too(library, monkeypatch):
    pretend_gpu(monkeypatch, (9, 0))
    pipe, fuser = compiled_pipeline(torch.bfloat16, fp8_granularity="row", fp8_text_stream=False)
    text, image = fuser.slots["transformer.transformer_blocks.0.attn.add_q_proj"], fuser.slots[
        "transformer.transformer_blocks.0.attn.to_q"]
    assert not text.fp8 and image.fp8  # one block, both precisions
    base = live_weights(fuser)
    style = library.load("tiny-style")
    with fuser.applied(style, 0.9):
        factors = style.factors[text.layer]
        master = fuser._masters[text.layer]
        expected = torch.addmm(master.float(), factors.up.float(), factors.down.float(), alpha=0.9 * factors.scaling)
        assert torch.equal(text.weight, expected.to(text.weight.dtype))
    with fuser.applied(None):
        assert_same(base, live_weights(fuser))


@pytest.mark.slow
def test_q_and_k_stored_with_rope_pairs_split_take_the_lora_in_their_row_order(library, monkeypatch):
    """With the static-q/k FP8 attention, q and k's projection rows are stored permuted (fp8_kernels/rope_pairs.py):
    the LoRA is fused in the layer's own order, then stored in theirs."""
    pretend_gpu(monkeypatch, (9, 0), passing={"fp8_attention"})  # the FP8 attention op's torch path
    pipe, fuser = compiled_pipeline(torch.bfloat16, fp8_granularity="row", fp8_attention="cudnn_static_qk")
    split = [slot for slot in fuser.slots.values() if slot.rows is not None]
    assert {slot.layer.rsplit(".", 1)[1] for slot in split} == {"to_q", "to_k", "add_q_proj", "add_k_proj"}
    base, base_image = live_weights(fuser), generate(pipe)
    style = library.load("tiny-style")
    with fuser.applied(style, 0.9):
        image = generate(pipe)
        for slot in split:
            factors, master = style.factors.get(slot.layer), fuser._masters[slot.layer]
            fused = master if factors is None else torch.addmm(
                master.float(), factors.up.float(), factors.down.float(), alpha=0.9 * factors.scaling).to(master.dtype)
            quantized = fp8.quantized_weight(fused[slot.rows], "row")
            assert torch.equal(slot.qdata.view(torch.uint8), quantized.qdata.view(torch.uint8)), slot.layer
    assert any(slot.layer in style.factors for slot in split) and np.abs(image - base_image).max() > 0.01
    with fuser.applied(None):
        assert_same(base, live_weights(fuser))
        assert np.array_equal(generate(pipe), base_image)


def test_a_layer_stored_permuted_gets_its_master_back_in_order():
    """Without kept masters a layer's master is copied from its live weight: back in the layer's order."""
    layer = torch.nn.Linear(4, 6)
    rows = torch.tensor([0, 2, 4, 1, 3, 5])
    original = layer.weight.detach().clone()
    layer.weight = torch.nn.Parameter(original[rows], requires_grad=False)
    setattr(layer, ROW_ORDER, rows)  # as fp8_kernels/rope_pairs.py marks q and k
    fuser = LoraFuser({"transformer": torch.nn.Sequential(layer)})
    slot = fuser.slots["transformer.0"]
    assert torch.equal(fuser._master(slot), original)
    fuser._write(slot, [], 1.0)
    assert torch.equal(layer.weight, original[rows])


@pytest.mark.slow
def test_fp8_needs_masters_kept_before_quantizing(fp8_compiled):
    pipe, _ = fp8_compiled
    with pytest.raises(ValueError, match="keep_masters before optimize_pipeline_"):
        LoraFuser({"transformer": pipe.transformer}, fp8_granularity="row")
    with pytest.raises(ValueError, match="already quantized or compiled"):
        keep_masters(pipe.transformer)


def test_the_shipped_loras_are_what_build_loras_makes(tmp_path):
    script = ROOT / "assets" / "build_loras.py"
    subprocess.run([sys.executable, str(script), "--out", str(tmp_path)], check=True, capture_output=True)
    built = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.safetensors"))
    assert built == sorted(p.relative_to(LORA_DIR) for p in LORA_DIR.rglob("*.safetensors"))
    for path in built:
        assert (tmp_path / path).read_bytes() == (LORA_DIR / path).read_bytes(), path
        assert (tmp_path / path).stat().st_size < 64_000


@pytest.mark.slow
def test_the_whole_transformer_compiled_with_fused_qkv_takes_a_lora_too(library):
    """Programs that bind their weights as constants (regional=False) read them by address too; with fused
    QKV, the LoRA's q, k and v layers are row blocks of one projection."""
    pipe, fuser = compiled_pipeline(regional=False, fuse_qkv=True)
    assert "transformer.transformer_blocks.0.attn.to_qkv" in fuser.slots
    base = generate(pipe)
    with fuser.applied(library.load("tiny-style")):
        image = generate(pipe)
    assert np.abs(image - eager_image("tiny-style")).max() < PIXELS
    with fuser.applied(None):
        assert np.array_equal(generate(pipe), base)


@pytest.mark.slow
def test_a_forked_process_can_take_the_lock_another_thread_held_at_the_fork(compiled):
    import os
    import threading

    _, fuser = compiled
    held, release = threading.Event(), threading.Event()

    def hold():
        with fuser.lock:
            held.set()
            release.wait()

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait()
    pid = os.fork()
    if pid == 0:  # the child: only this thread exists, and the lock must be free
        os._exit(0 if fuser.lock.acquire(timeout=5) else 1)
    release.set()
    thread.join()
    assert os.waitpid(pid, 0)[1] == 0


@pytest.mark.slow
def test_an_eager_pipeline_takes_the_same_loras(library, base_image):
    """AoT compilation off (AOTI=0): every layer is a module's own parameter, written the same way."""
    pipe = load_pipeline()
    fuser = LoraFuser({"transformer": pipe.transformer, "text_encoder": pipe.text_encoder}, keep_masters(pipe.transformer))
    with fuser.applied(library.load("tiny-text")):
        assert np.abs(generate(pipe) - eager_image("tiny-text")).max() < PIXELS
    with fuser.applied(None):
        assert np.abs(generate(pipe) - base_image).max() < PIXELS


@pytest.mark.slow
def test_an_xlabs_lora_equals_diffusers_eager_lora_too(compiled, base_image, tmp_path):
    """XLabs' format (fused q, k, v factors per block) goes through diffusers' own converter, as eager diffusers does."""
    pipe, fuser = compiled
    config = pipe.transformer.config
    dim, rank = config.num_attention_heads * config.attention_head_dim, 4
    single_in = pipe.transformer.single_transformer_blocks[0].proj_out.in_features
    shapes = {"double_blocks.0.processor.qkv_lora1": (dim, 3 * dim), "double_blocks.0.processor.proj_lora1": (dim, dim),
              "single_blocks.0.processor.qkv_lora": (dim, 3 * dim), "single_blocks.0.processor.proj_lora": (single_in, dim)}
    g = torch.Generator().manual_seed(5)
    state = {}
    for key, (features_in, features_out) in shapes.items():
        state[f"{key}.down.weight"] = torch.randn(rank, features_in, generator=g) * 0.3
        state[f"{key}.up.weight"] = torch.randn(features_out, rank, generator=g) * 0.3
    save_file(state, tmp_path / "xlabs.safetensors")
    with fuser.applied(LoraLibrary(tmp_path).load("xlabs")):
        image = generate(pipe)
    eager = load_pipeline()
    eager.load_lora_weights(str(tmp_path), weight_name="xlabs.safetensors")
    reference = generate(eager)
    assert np.abs(reference - base_image).max() > 20 * PIXELS  # the LoRA changes the image
    assert np.abs(image - reference).max() < PIXELS


EVIL = "([a-z_.0-9]+)+Q"  # backtracks exponentially in `re.match` against a long layer name that does not end in Q


def two_layers(generator, rank=2):
    return {
        f"transformer.transformer_blocks.0.attn.to_{name}.lora_{part}.weight": torch.randn(*shape, generator=generator)
        for name in ("q", "k") for part, shape in (("A", (rank, 32)), ("B", (32, rank)))
    }


def loaded_within(library, name, seconds=5.0):
    """`library.load(name)`'s LoraError message, raised within `seconds` (a thread: a regex hang would not stop)."""
    import threading

    outcome = {}

    def load():
        try:
            library.load(name)
        except LoraError as error:
            outcome["error"] = str(error)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"reading {name!r} took more than {seconds} s"
    return outcome.get("error")


def test_a_layer_name_a_regex_engine_would_hang_on_is_refused_at_once(tmp_path):
    """PEFT matches layer names as regular expressions; a file's names never reach it unless they are plain."""
    generator = torch.Generator().manual_seed(0)
    tensors = two_layers(generator)
    tensors[f"transformer.{EVIL}.lora_A.weight"] = torch.randn(4, 32, generator=generator)  # another rank: a pattern
    tensors[f"transformer.{EVIL}.lora_B.weight"] = torch.randn(32, 4, generator=generator)
    save_file(tensors, tmp_path / "redos.safetensors")
    message = loaded_within(LoraLibrary(tmp_path), "redos")
    assert message == f"lora: 'redos' has a tensor whose name is not a layer name: 'transformer.{EVIL}.lora_A.weight'"


def test_a_metadata_pattern_is_refused_and_the_rest_of_the_metadata_ignored(tmp_path):
    import json

    generator = torch.Generator().manual_seed(0)
    settings = {"transformer.r": 2, "transformer.lora_alpha": 2, "transformer.target_modules": EVIL,
                "transformer.rank_pattern": {EVIL: 4}}
    save_file(two_layers(generator), tmp_path / "pattern.safetensors", {"lora_adapter_metadata": json.dumps(settings)})
    message = loaded_within(LoraLibrary(tmp_path), "pattern")
    assert message == f"lora: 'pattern': its metadata's rank_pattern names something that is not a layer: {EVIL!r}"
    settings["transformer.rank_pattern"] = {"^transformer_blocks.0.attn.to_k": 1}  # plain: read, by name
    settings["transformer.alpha_pattern"] = {"to_k": 1}  # a dotted suffix, as PEFT matches it
    save_file(two_layers(generator), tmp_path / "plain.safetensors", {"lora_adapter_metadata": json.dumps(settings)})
    lora = LoraLibrary(tmp_path).load("plain")  # target_modules, a regex to PEFT, is dropped, not compiled
    assert lora.factors["transformer.transformer_blocks.0.attn.to_q"].scaling == 2 / 2
    assert lora.factors["transformer.transformer_blocks.0.attn.to_k"].scaling == 1 / 1


def test_pattern_keys_match_as_peft_matches_plain_names():
    from peft.utils.other import get_pattern_key

    from lora.library import _pattern_key

    patterns = {"^single_transformer_blocks.1.proj_out": 8, "attn.to_q": 4, "to_k": 2, "^proj_out": 1}
    for layer in ("single_transformer_blocks.1.proj_out", "single_transformer_blocks.11.proj_out", "proj_out",
                  "transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.add_q_proj", "blocks.0.to_k", "to_k"):
        expected = get_pattern_key(patterns.keys(), layer)
        assert _pattern_key(patterns, layer) == (expected if expected in patterns else None), layer


def test_oversized_files_are_refused_before_they_are_parsed(tmp_path):
    from lora.library import MAX_HEADER_BYTES, MAX_TENSORS

    save_file({"transformer.a.lora_A.weight": torch.zeros(1, 1)}, tmp_path / "header.safetensors",
              {"padding": "x" * MAX_HEADER_BYTES})
    assert "MB header, over the 8 MB a LoRA needs" in loaded_within(LoraLibrary(tmp_path), "header")
    save_file({f"transformer.layer_{i}.lora_A.weight": torch.zeros(1, 1) for i in range(MAX_TENSORS + 1)},
              tmp_path / "many.safetensors")
    assert f"holds {MAX_TENSORS + 1} tensors, more than a FLUX LoRA can" in loaded_within(LoraLibrary(tmp_path), "many")
    save_file({"transformer." + "a" * 5000 + ".lora_A.weight": torch.zeros(1, 1)}, tmp_path / "long.safetensors")
    message = loaded_within(LoraLibrary(tmp_path), "long")
    assert message.endswith("aaa...'") and len(message) < 160  # the name cut in the message


def test_a_hub_lora_is_fetched_at_its_revision_and_refused_before_download_when_too_large(monkeypatch, tmp_path):
    """The Hub's metadata gives the file's size: a visitor cannot make the Space fetch and keep a huge file."""
    import huggingface_hub
    from huggingface_hub import constants

    save_file(two_layers(torch.Generator().manual_seed(0)), tmp_path / "style.safetensors")
    sizes = {"owner/small": 10 << 20, "owner/huge": 5 * 10**9}
    asked, downloaded = [], []

    def metadata(url, token=None, **kwargs):
        asked.append(url)
        return SimpleNamespace(size=sizes[url.split("/")[3] + "/" + url.split("/")[4]])

    def download(repo, filename, revision=None, token=None, **kwargs):
        downloaded.append((repo, filename, revision))
        return str(tmp_path / "style.safetensors")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", metadata)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    library = LoraLibrary(LORA_DIR)
    with pytest.raises(LoraError, match=r"^lora: 'owner/huge:style.safetensors' is 5.0 GB, over the 2.1 GB a LoRA may be$"):
        library.load("owner/huge:style.safetensors")
    assert downloaded == []  # refused from the metadata alone
    assert library.load("owner/small@v1.0:style.safetensors").name == "owner/small@v1.0:style.safetensors"
    assert downloaded == [("owner/small", "style.safetensors", "v1.0")] and "/resolve/v1.0/style.safetensors" in asked[-1]


def hub_cached(folder: Path, repo: str, content: bytes, used_at: float) -> Path:
    """A file as huggingface_hub's cache lays it out (blob, snapshot link, ref), last read at `used_at`."""
    import hashlib

    base = folder / f"models--{repo.replace('/', '--')}"
    blob = base / "blobs" / hashlib.sha256(content).hexdigest()
    revision = hashlib.sha1(repo.encode()).hexdigest()
    link = base / "snapshots" / revision / "lora.safetensors"
    for path in (blob.parent, link.parent, base / "refs"):
        path.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(content)
    link.symlink_to(Path("../../blobs") / blob.name)
    (base / "refs" / "main").write_text(revision)
    os.utime(blob, (used_at, used_at))
    return link


def test_the_download_folder_is_kept_under_its_size_least_recently_used_first(tmp_path):
    from lora.library import evict_downloads

    style = (LORA_DIR / "tiny-style.safetensors").read_bytes()
    folder, size = tmp_path / "loras", len(style)
    old, middle = (hub_cached(folder, f"someone/{name}", style + name.encode(), used_at)
                   for name, used_at in (("old", 1e9), ("middle", 2e9)))
    evict_downloads(folder, max_bytes=3 * size, keep=old)  # under the limit: nothing goes
    assert old.exists() and middle.exists()

    def download(source):  # a visitor's LoRA arrives: the folder is over, and the oldest download goes
        return hub_cached(folder, source.repo, style, 3e9)

    library = LoraLibrary(LORA_DIR, download=download, download_folder=folder, download_max_bytes=2 * size + 10)
    assert library.load("someone/new").factors.keys() == LoraLibrary(LORA_DIR).load("tiny-style").factors.keys()
    assert not old.exists() and middle.exists() and (folder / "models--someone--new").is_dir()
    evict_downloads(folder, max_bytes=1, keep=folder / "models--someone--new" / "snapshots")  # the one in use stays
    assert not middle.exists() and (folder / "models--someone--new").is_dir()


def test_names_longer_than_any_lora_name_are_refused_and_not_echoed_whole():
    message = str(pytest.raises(LoraError, resolve, "owner/" + "n" * 100_000, LORA_DIR).value)
    assert message.startswith("lora: 'owner/nnn") and "100006 characters" in message and len(message) < 200


@pytest.mark.parametrize("change, error", [
    (lambda t: t.update({k: v[:0] if "lora_A" in k else v[:, :0] for k, v in t.items()}), "has rank 0, outside 1..32"),
    (lambda t: t["transformer.transformer_blocks.0.attn.to_q.lora_B.weight"].__setitem__((0, 0), float("nan")),
     "holds values that are not finite (NaN or infinity)"),
    (lambda t: t["transformer.transformer_blocks.0.attn.to_k.lora_A.weight"].__setitem__((1, 3), float("inf")),
     "holds values that are not finite (NaN or infinity)"),
])
def test_a_rank_0_or_non_finite_lora_is_refused_when_read(tmp_path, change, error):
    tensors = two_layers(torch.Generator().manual_seed(0))
    change(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp_path / "bad.safetensors")
    assert error in loaded_within(LoraLibrary(tmp_path), "bad")


def test_visitor_named_repos_are_fetched_without_the_owners_token(monkeypatch):
    """Only the Space's own list uses HF_TOKEN: a visitor cannot read the owner's private or gated repos through it,
    nor tell them from missing ones by the error."""
    import huggingface_hub

    from lora import library as lora_library

    monkeypatch.setenv("HF_TOKEN", "hf_owner")
    sent = []

    def hub(repo, *args, token=None, **kwargs):  # the Hub's answers differ: private, missing, gated
        sent.append((repo, token))
        if repo == "owner/private":
            raise PermissionError(f"401 for {repo}: private")
        raise FileNotFoundError(f"{repo} is gated: accept its license" if token else f"404 for {repo}")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub)
    library = LoraLibrary(LORA_DIR, trusted=["owner/curated:style.safetensors"])
    for name in ("owner/private:lora.safetensors", "someone/missing:lora.safetensors"):
        with pytest.raises(LoraError) as refused:
            library.load(name)
        assert str(refused.value) == f"lora: could not download {name!r}: no public LoRA of that name, or the Hub is unreachable"
    with pytest.raises(LoraError, match="FileNotFoundError: owner/curated is gated"):  # the owner's list: the details
        library.load("owner/curated:style.safetensors")
    assert sent == [("owner/private", False), ("someone/missing", False), ("owner/curated", "hf_owner")]
    assert lora_library.LoraLibrary(LORA_DIR).token_for(HubLora("owner/curated")) is False  # nothing trusted by default
