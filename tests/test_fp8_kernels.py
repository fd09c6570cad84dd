"""fp8_kernels/: the fused single-block quantization and FP8 attention.

On CPU the ops run their torch path, so these tests check the math against what each op replaces,
that torch.export records the ops and AOTInductor compiles them, and that calls the kernels cannot
serve fall back. torchao refuses FP8 without a capable GPU; the tests bypass that check, as
test_fp8.py does. The `cuda` tests compare the Triton kernels with the torch path on the GPU
machine (bench/results/kernels-h200/ has their run).
"""

import pytest
import torch
import torch.nn.functional as F
from diffusers import FluxTransformer2DModel
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor, FluxSingleTransformerBlock

import aoti
import optimization
from config import OptimizationConfig
from conftest import rel_error
from fp8 import quantize_fp8_
from fp8_kernels import (
    attention,
    cudnn_attention,
    fuse_feed_forward_quantization_,
    fuse_single_block_quantization_,
    quantize,
    sdpa_as_fp8,
)
from fp8_kernels import flux_attention as fp8_flux
from fp8_kernels.rope_pairs import ROW_ORDER, PairAngles, half_split_order, mark_split_, split_rope_pairs_
from plan import Plan

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton kernels need a CUDA GPU")


def single_block(device="cpu"):
    torch.manual_seed(0)
    block = FluxSingleTransformerBlock(dim=256, num_attention_heads=2, attention_head_dim=128)
    return block.to(device, torch.bfloat16).eval().requires_grad_(False)


def block_inputs(device="cpu", tokens=64):
    g = torch.Generator(device).manual_seed(1)
    return [torch.randn(*shape, generator=g, device=device).to(torch.bfloat16)
            for shape in ((1, tokens, 256), (1, 16, 256), (1, 256))]


def normed_qkv(tokens, device="cpu", heads=2, head_dim=128):
    """q, k RMS-normalized per head as FLUX's are; [B, H, S, D] views of [B, S, H, D] memory, as diffusers passes them."""
    g = torch.Generator(device).manual_seed(tokens)
    q, k, v = (torch.randn(1, tokens, heads, head_dim, generator=g, device=device).transpose(1, 2) for _ in range(3))
    return F.rms_norm(q, (head_dim,)), F.rms_norm(k, (head_dim,)), v


def test_fused_single_block_equals_torchao_bit_for_bit(fp8_on_cpu):
    block = single_block()
    quantize_fp8_(block, "row")
    args = block_inputs()
    with torch.no_grad():
        expected = block(*args)
        holder = torch.nn.Module()
        holder.single_transformer_blocks = torch.nn.ModuleList([block])
        assert fuse_single_block_quantization_(holder) == 1
        assert fuse_single_block_quantization_(holder) == 1  # again: the same forward, not wrapped twice
        fused = block(*args)
    for out, ref in zip(fused, expected):
        assert torch.equal(out, ref)


def test_fused_feed_forwards_equal_torchao_bit_for_bit(fp8_on_cpu):
    from diffusers.models.transformers.transformer_flux import FluxTransformerBlock

    torch.manual_seed(0)
    block = FluxTransformerBlock(dim=256, num_attention_heads=2, attention_head_dim=128).bfloat16().eval()
    quantize_fp8_(block, "row")
    holder = torch.nn.Module()
    holder.transformer_blocks = torch.nn.ModuleList([block])
    x = torch.randn(1, 64, 256).bfloat16()
    with torch.no_grad():
        expected = block.ff(x), block.ff_context(x[:, :16])
        assert fuse_feed_forward_quantization_(holder) == 2  # the image and the text stream's
        assert fuse_feed_forward_quantization_(holder) == 2
        fused = block.ff(x), block.ff_context(x[:, :16])
    for out, ref in zip(fused, expected):
        assert torch.equal(out, ref)


def test_only_per_row_fp8_blocks_are_fused(fp8_on_cpu):
    bf16, per_tensor = single_block(), single_block()
    quantize_fp8_(per_tensor, "tensor")
    holder = torch.nn.Module()
    holder.single_transformer_blocks = torch.nn.ModuleList([bf16, per_tensor])
    assert fuse_single_block_quantization_(holder) == 0
    assert "forward" not in vars(bf16) and "forward" not in vars(per_tensor)
    holder.transformer_blocks = holder.single_transformer_blocks  # no feed-forwards there: nothing found
    assert fuse_feed_forward_quantization_(holder) == 0


def test_fp8_attention_is_close_to_fp32_sdpa(monkeypatch):
    monkeypatch.setattr(cudnn_attention, "MIN_TOKENS", 0)  # FP8 at any size
    q, k, v = normed_qkv(300)
    expected = F.scaled_dot_product_attention(q, k, v)
    out = attention.scaled_dot_product_attention_fp8(q.bfloat16(), k.bfloat16(), v.bfloat16(), kernel="cudnn")
    assert out.dtype == torch.bfloat16 and out.shape == expected.shape
    # FP8 keeps 3 mantissa bits: a few percent per attention call on random data (the transformer's
    # error against fp32 is what decides whether it is on by default: bench/NOTES.md).
    assert rel_error(out.float(), expected) < 0.06


@pytest.mark.parametrize("kernel", attention.KERNELS)
@pytest.mark.parametrize("case", ["mask", "causal", "head_dim_48"])
def test_fp8_attention_leaves_other_calls_to_sdpa(case, kernel):
    head_dim = 48 if case == "head_dim_48" else 128
    q, k, v = (x.bfloat16() for x in normed_qkv(40, head_dim=head_dim))
    kwargs = {"mask": dict(attn_mask=torch.ones(40, 40, dtype=torch.bool).tril()), "causal": dict(is_causal=True),
              "head_dim_48": {}}[case]
    expected = F.scaled_dot_product_attention(q, k, v, **kwargs)
    assert torch.equal(attention.scaled_dot_product_attention_fp8(q, k, v, kernel=kernel, **kwargs), expected)


def test_sdpa_is_restored_after_the_swap():
    original = F.scaled_dot_product_attention
    with pytest.raises(RuntimeError, match="inside"):
        with sdpa_as_fp8("cudnn"):
            assert F.scaled_dot_product_attention.func is attention.scaled_dot_product_attention_fp8
            raise RuntimeError("inside")
    assert F.scaled_dot_product_attention is original
    with pytest.raises(ValueError, match="flash"):
        with sdpa_as_fp8("flash"):
            pass
    assert F.scaled_dot_product_attention is original


def flux_attention_module(text_tokens=0):
    """diffusers' FLUX attention (a single block's, or with a text stream a double block's), norm weights in [-3, 3]."""
    from diffusers.models.transformers.transformer_flux import FluxAttention

    torch.manual_seed(0)
    attn = FluxAttention(query_dim=256, heads=2, dim_head=128, added_kv_proj_dim=256 if text_tokens else None,
                         pre_only=not text_tokens)
    for name in ("norm_q", "norm_k", "norm_added_q", "norm_added_k"):
        if hasattr(attn, name):
            getattr(attn, name).weight.data.uniform_(-3, 3)
    return attn.bfloat16().eval().requires_grad_(False)


def attention_inputs(text_tokens, tokens=64):
    g = torch.Generator().manual_seed(2)
    hidden = (10 * torch.randn(1, tokens, 256, generator=g)).bfloat16()
    text = torch.randn(1, text_tokens, 256, generator=g).bfloat16() if text_tokens else None
    freqs = torch.randn(tokens + text_tokens, 64, generator=g).repeat_interleave(2, dim=1)  # per channel pair, as FLUX
    return dict(hidden_states=hidden, encoder_hidden_states=text, image_rotary_emb=(freqs.cos(), freqs.sin()))


@pytest.mark.parametrize("text_tokens", [0, 16])
def test_qk_bounds_hold_at_the_cast(text_tokens, monkeypatch):
    """Every q and k value FLUX's attention casts to FP8 lies within its bound, and the bound is not loose
    by more than the RMSNorm's sqrt(D) allows."""
    attn = flux_attention_module(text_tokens)
    seen = []

    def record(x, bound):
        seen.append((x.float().abs().amax(), bound))
        return original(x, bound)

    original = fp8_flux.quantize_bounded
    monkeypatch.setattr(fp8_flux, "quantize_bounded", record)
    with sdpa_as_fp8("cudnn_static_qk", [attn]), torch.no_grad():
        attn(**attention_inputs(text_tokens))
    assert len(seen) == 2  # q, then k
    for amax, bound in seen:
        assert bound / 12 < amax <= bound  # sqrt(128) = 11.3


@pytest.mark.parametrize("text_tokens", [0, 16])
def test_static_qk_attention_is_as_exact_as_per_tensor_scales(text_tokens):
    """diffusers' FLUX attention with q and k cast by their bounds' scales, against the same module in fp32:
    no further from it than with per-tensor amax scales."""
    attn = flux_attention_module(text_tokens)
    inputs = attention_inputs(text_tokens)
    with torch.no_grad():
        expected = attn.float()(**{k: v.float() if torch.is_tensor(v) else v for k, v in inputs.items()})
        attn.bfloat16()
        with sdpa_as_fp8("cudnn_static_qk", [attn]):
            static = attn(**inputs)
        with sdpa_as_fp8("cudnn", [attn]):
            per_tensor = attn(**inputs)
    assert type(attn.processor) is FluxAttnProcessor  # the swap's processor is gone
    static, per_tensor, expected = (x if isinstance(x, tuple) else (x,) for x in (static, per_tensor, expected))
    for out, other, ref in zip(static, per_tensor, expected):
        assert rel_error(out.float(), ref) < 1.1 * rel_error(other.float(), ref) + 1e-3


@pytest.mark.parametrize("text_tokens", [0, 16])
@pytest.mark.parametrize("fuse_qkv", [False, True])
def test_rope_pairs_split_half_a_head_apart_leave_the_attention_as_it_was(text_tokens, fuse_qkv):
    """Permuting q and k's channels alike changes no attention score: the split module gives the static-q/k
    processor's output, with FLUX's rotary tables or with one angle per pair; a second split changes nothing."""
    attn = flux_attention_module(text_tokens)
    if fuse_qkv:
        attn.fuse_projections()
    inputs = attention_inputs(text_tokens)
    with torch.no_grad(), sdpa_as_fp8("cudnn_static_qk", [attn]):
        expected = attn(**inputs)
    holder = torch.nn.Module()
    holder.attn = attn
    assert split_rope_pairs_(holder) == 1 and split_rope_pairs_(holder) == 0
    assert type(attn.processor) is fp8_flux.FluxAttnProcessorFP8  # it stays: the module's layout needs it
    cos, sin = inputs["image_rotary_emb"]
    with torch.no_grad():
        for tables in (cos, sin), (cos[:, 0::2].contiguous(), sin[:, 0::2].contiguous()):
            out = attn(**{**inputs, "image_rotary_emb": tables})
            for o, e in zip(*(x if isinstance(x, tuple) else (x,) for x in (out, expected))):
                assert rel_error(o.float(), e.float()) < 1e-5
    q = attn.to_qkv if fuse_qkv else attn.to_q
    order = getattr(q, ROW_ORDER)
    assert sorted(order.tolist()) == list(range(q.out_features))  # a permutation of the layer's rows
    assert order[:64].tolist() == list(range(0, 128, 2)) and order[64:128].tolist() == list(range(1, 128, 2))
    with pytest.raises(NotImplementedError, match="attention masks"):
        attn(**inputs, attention_mask=torch.ones(1, 64, dtype=torch.bool))


def test_half_split_order_puts_each_pair_half_a_head_apart():
    order = half_split_order(heads=2, head_dim=4)
    assert order.tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def test_qk_bounds_only_for_flux_attention_with_rms_norms():
    attn = flux_attention_module()
    assert fp8_flux.qk_norms(attn) == [[attn.norm_q], [attn.norm_k]] and fp8_flux.swappable(attn)
    attn.set_processor(fp8_flux.FluxAttnProcessorFP8())
    assert not fp8_flux.swappable(attn)  # another processor may scale q and k after their norms
    attn.set_processor(FluxAttnProcessor())
    attn.norm_q = torch.nn.LayerNorm(128)
    assert fp8_flux.qk_norms(attn) is None and not fp8_flux.swappable(attn)
    assert not fp8_flux.swappable(torch.nn.Linear(2, 2))


def test_static_qk_op_is_close_to_fp32_sdpa():
    """q and k cast with their bounds' scales (up to 11x their amax here) lose nothing over per-tensor amax scales."""
    q, k, v = normed_qkv(300)
    bounds = torch.tensor([128 ** 0.5 * 1.02] * 2)
    q8, k8 = (fp8_flux.quantize_bounded(x.bfloat16(), b) for x, b in zip((q, k), bounds))
    expected = F.scaled_dot_product_attention(q, k, v)
    out = cudnn_attention.cudnn_fp8_attention_static_qk(q8, k8, v.bfloat16(), bounds, 128 ** -0.5)
    per_tensor = cudnn_attention.reference(q.bfloat16(), k.bfloat16(), v.bfloat16(), 128 ** -0.5)
    assert out.dtype == torch.bfloat16 and out.stride() == per_tensor.stride()
    assert rel_error(out.float(), expected) < 1.1 * rel_error(per_tensor.float(), expected)


def test_cudnn_op_keeps_the_layout_diffusers_passes():
    """Output [B, H, S, D] over [B, S, H, D] memory, as the fake op promises the compiled program."""
    q, k, v = (x.bfloat16() for x in normed_qkv(64))
    out = cudnn_attention.cudnn_fp8_attention(q, k, v, 0.1)
    fake = cudnn_attention.cudnn_fp8_attention._abstract_fn(q, k, v, 0.1)  # the registered fake
    assert out.shape == fake.shape == q.shape and out.stride() == fake.stride()
    assert out.transpose(1, 2).is_contiguous()


def test_cudnn_quantization_round_trips_each_tensor_with_its_own_scale():
    q, k, v = (x.bfloat16() for x in normed_qkv(64))
    v = v * 100  # scales must differ per tensor
    q8, k8, v8, scales = cudnn_attention.quantize(q, k, v)
    assert q8.dtype == torch.float8_e4m3fn and q8.stride() == q.stride()
    for x, x8, scale, inverse in zip((q, k, v), (q8, k8, v8), scales[:3], scales[3:]):
        assert x8.float().abs().max() == 448  # the largest value lands on FP8's largest
        assert torch.isclose(scale * inverse, torch.tensor(1.0))
        assert rel_error(x8.float() * scale, x.float()) < 0.04  # 3 mantissa bits


def test_cudnn_kernel_says_why_it_cannot_run(monkeypatch):
    assert cudnn_attention.unavailable("cpu") == "no CUDA device"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100")
    cudnn_attention._unavailable.cache_clear()
    try:
        assert "Hopper" in cudnn_attention.unavailable("cuda:0") and "A100" in cudnn_attention.unavailable("cuda:0")
    finally:
        cudnn_attention._unavailable.cache_clear()


def test_export_records_the_fp8_ops(fp8_on_cpu, monkeypatch):
    block = single_block()
    quantize_fp8_(block, "row")
    holder = torch.nn.Module()
    holder.single_transformer_blocks = torch.nn.ModuleList([block])
    fuse_single_block_quantization_(holder)
    monkeypatch.setattr(cudnn_attention, "MIN_TOKENS", 0)  # the block's 80 tokens in FP8
    ops = {"cudnn": {f"{quantize.OPS}.cudnn_fp8_attention.default"},
           "cudnn_static_qk": {f"{quantize.OPS}.cudnn_fp8_attention_static_qk.default"}}
    freqs = torch.randn(80, 64).repeat_interleave(2, dim=1)  # 16 text + 64 image tokens
    for kernel, kernel_ops in ops.items():
        with aoti.weights.unwrapped_subclasses(block), sdpa_as_fp8(kernel, [block]):
            program = torch.export.export(block, tuple(block_inputs()), {"image_rotary_emb": (freqs.cos(), freqs.sin())},
                                          strict=False)
        targets = {str(node.target) for node in program.graph.nodes}
        assert {f"{quantize.OPS}.gelu_cat_quantize.default", *kernel_ops} <= targets


def test_export_quantizes_an_input_shared_by_several_layers_once(fp8_on_cpu):
    """torchao quantizes each linear layer's input itself: q, k, v and the MLP of a single block read one
    activation, which the program casts to FP8 once (not four times), with the same output."""
    block = single_block()
    quantize_fp8_(block, "row")
    call = aoti.CapturedCall(tuple(block_inputs()), {})

    def fp8_casts(exported):  # torchao's per-row scale, one per quantized activation
        return sum(node.target == torch.ops.torchao.choose_scale_float8.default for node in exported.program.graph.nodes)

    merged, unmerged = aoti.export(block, call), aoti.export(block, call, merge=False)
    assert fp8_casts(unmerged) - fp8_casts(merged) == 3
    with torch.no_grad():
        for a, b in zip(merged.program.module()(*call.args), unmerged.program.module()(*call.args)):
            assert torch.equal(a, b)


def tiny_transformer():
    """FLUX-shaped, with a head size the FP8 attention serves (32; the embedded model's is 16)."""
    torch.manual_seed(0)
    model = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=2, attention_head_dim=32, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(8, 12, 12),
    )
    return model.to(torch.bfloat16).eval().requires_grad_(False)


def transformer_call(h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(h, w, 3)
    ids[..., 1] = torch.arange(h)[:, None]
    ids[..., 2] = torch.arange(w)[None, :]
    bf16 = torch.bfloat16
    return dict(
        hidden_states=torch.randn(1, h * w, 64, generator=g).to(bf16), timestep=torch.full((1,), 0.5, dtype=bf16),
        guidance=torch.full((1,), 4.0), pooled_projections=torch.randn(1, 32, generator=g).to(bf16),
        encoder_hidden_states=torch.randn(1, 16, 32, generator=g).to(bf16), txt_ids=torch.zeros(16, 3, dtype=bf16),
        img_ids=ids.reshape(h * w, 3).to(bf16), joint_attention_kwargs={}, return_dict=False,
    )


@pytest.mark.slow
@pytest.mark.parametrize("kernel", attention.KERNELS)
def test_compiled_transformer_with_fp8_kernels_is_as_exact_as_eager_fp8(fp8_on_cpu, kernel, monkeypatch):
    """Against fp32: FP8 noise is large on a tiny random model (5%), so the compiled program is held to
    eager FP8's own error rather than compared with it value by value. The threshold between the sizes
    (272 and 400 tokens) puts one on each side of the op's switch to bf16 SDPA."""
    monkeypatch.setattr(cudnn_attention, "MIN_TOKENS", 300)
    config = OptimizationConfig(cache=False, attention_backend="native", fp8_fused_quantization=True,
                                fp8_fused_ff_quantization=True, fp8_attention=kernel)
    reference = tiny_transformer().float()
    eager = tiny_transformer()
    quantize_fp8_(eager, "row")
    model = tiny_transformer()
    static_qk_calls = []
    original = fp8_flux.cudnn_fp8_attention_static_qk
    monkeypatch.setattr(fp8_flux, "cudnn_fp8_attention_static_qk", lambda *a: static_qk_calls.append(1) or original(*a))
    plan = Plan.assumed(config, "row", "native")
    programs = optimization.compile_transformer(model, [aoti.CapturedCall((), transformer_call(16, 16))], config, plan)
    prepared = optimization.program_weights(model, programs, config)  # as a GPU function hands them back
    optimization.apply_programs_(model, programs, config, plan)
    # One per block kind, and, with RoPE's pairs split (the processor stays), one per double block that the
    # capture of the single blocks' call runs eagerly.
    assert len(static_qk_calls) == (2 + len(model.transformer_blocks) if kernel == "cudnn_static_qk" else 0)
    assert isinstance(model.pos_embed, PairAngles) == (kernel == "cudnn_static_qk")  # q and k's RoPE pairs split
    assert "forward" in vars(model.transformer_blocks[0].ff) and "forward" in vars(model.single_transformer_blocks[0])
    for h, w in [(16, 16), (16, 24)]:  # the captured size and another one of the dynamic range
        call = transformer_call(h, w, seed=h * w)
        with torch.no_grad():
            expected = reference(**{k: v.float() if torch.is_tensor(v) else v for k, v in call.items()})[0]
            eager_error = rel_error(eager(**call)[0].float(), expected)
            assert rel_error(model(**call)[0].float(), expected) < 1.25 * eager_error
    # A process given the prepared weights (ZeroGPU's main process) sets up the layout around them itself.
    other = tiny_transformer()
    optimization.apply_programs_(other, programs, config, plan, prepared)
    assert isinstance(other.pos_embed, PairAngles) == (kernel == "cudnn_static_qk")
    with torch.no_grad():
        assert torch.equal(other(**call)[0], model(**call)[0])


def test_mark_split_sets_up_the_layout_without_touching_weights():
    split, marked = tiny_transformer(), tiny_transformer()
    before = {name: t.clone() for name, t in marked.state_dict().items()}
    split_rope_pairs_(split)
    mark_split_(marked)
    assert all(torch.equal(t, before[name]) for name, t in marked.state_dict().items())
    assert not torch.equal(split.transformer_blocks[0].attn.to_q.weight, marked.transformer_blocks[0].attn.to_q.weight)
    for a, b in zip(split.modules(), marked.modules()):
        assert type(a) is type(b) and getattr(a, fp8_flux.SPLIT, False) == getattr(b, fp8_flux.SPLIT, False)
        assert torch.equal(getattr(a, ROW_ORDER, torch.empty(0)), getattr(b, ROW_ORDER, torch.empty(0)))


def test_the_config_offers_every_kernel():
    from config import FP8_ATTENTION

    assert FP8_ATTENTION == ("auto", "off", *attention.KERNELS)
    for gone in ("flash", "triton"):  # the Triton kernel lost to cuDNN's: bench/experiments/
        with pytest.raises(ValueError, match="cudnn_static_qk"):
            OptimizationConfig(fp8_attention=gone)


def test_fp8_options_are_part_of_the_cache_key():
    base = OptimizationConfig()

    def options(config, fp8=True, attention="native"):
        return optimization.compiled_options(config, Plan.assumed(config, "row" if fp8 else None, attention))

    fused = OptimizationConfig(fp8_fused_quantization=not base.fp8_fused_quantization)
    assert options(fused) != options(base)
    fused_ff = OptimizationConfig(fp8_fused_ff_quantization=not base.fp8_fused_ff_quantization)
    assert options(fused_ff) != options(base) and options(fused_ff, fp8=False) == options(base, fp8=False)
    with_attention = OptimizationConfig(fp8_attention="cudnn")
    without = OptimizationConfig(fp8_attention="off")
    assert options(with_attention) != options(without) != options(OptimizationConfig(fp8_attention="cudnn_static_qk"))
    # Where they cannot apply they are recorded as off: the same programs are compiled.
    assert options(with_attention, fp8=False) == options(without, fp8=False)
    assert options(with_attention, attention="_flash_3_hub") == options(without, attention="_flash_3_hub")
    bf16_text = OptimizationConfig(fp8_text_stream=False)
    assert options(bf16_text) != options(base) and options(bf16_text, fp8=False) == options(base, fp8=False)


@cuda
@pytest.mark.parametrize("tokens", [1536, 4544])
@pytest.mark.parametrize("magnitude", [1.0, 0.02])  # 0.02: every |GELU| below its largest for negative inputs
def test_quantize_kernel_matches_torchao(tokens, magnitude):
    g = torch.Generator("cuda").manual_seed(0)
    attn = (magnitude * torch.randn(1, tokens, 3072, generator=g, device="cuda")).bfloat16()
    mlp = (2 * magnitude * torch.randn(1, tokens, 12288, generator=g, device="cuda")).bfloat16()
    data, scale = quantize.gelu_cat_quantize(attn, mlp)
    ref_data, ref_scale = quantize.reference(attn, mlp)
    assert torch.equal(scale, ref_scale)
    # Only GELU's own rounding may differ (a sigmoid form of the same tanh): a few values in 10^4.
    assert (data.view(torch.uint8) != ref_data.view(torch.uint8)).float().mean() < 1e-3


@cuda
def test_cudnn_op_on_a_gpu_without_the_kernel_runs_bf16_sdpa(monkeypatch, caplog):
    """A program compiled with cuDNN's FP8 attention still serves on a GPU that cannot run it."""
    q, k, v = (x.bfloat16() for x in normed_qkv(4608, device="cuda", heads=24))
    monkeypatch.setattr(cudnn_attention, "unavailable", lambda device: "no FP8 here")
    cudnn_attention._warn_once.cache_clear()
    with caplog.at_level("WARNING"):
        out = cudnn_attention.cudnn_fp8_attention(q, k, v, 128 ** -0.5)
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v, scale=128 ** -0.5))
    assert "no FP8 here" in caplog.text


@cuda
@pytest.mark.parametrize("tokens", [1536, 4544])
def test_cudnn_op_matches_its_torch_path(tokens):
    """Above MIN_TOKENS cuDNN's FP8 kernel; below it bf16 SDPA, the faster one there."""
    q, k, v = (x.bfloat16() for x in normed_qkv(tokens, device="cuda", heads=24))
    out = cudnn_attention.cudnn_fp8_attention(q, k, v, 128 ** -0.5)
    assert out.transpose(1, 2).is_contiguous()
    if tokens < cudnn_attention.MIN_TOKENS:
        assert torch.equal(out, F.scaled_dot_product_attention(q, k, v, scale=128 ** -0.5))
    else:
        expected = cudnn_attention.reference(q, k, v, 128 ** -0.5)
        # Both quantize alike; cuDNN also keeps the probabilities in FP8.
        assert rel_error(out.float(), expected.float()) < 0.04


@cuda
@pytest.mark.parametrize("tokens", [1536, 4544])
def test_cudnn_static_qk_op_matches_its_torch_path(tokens):
    q, k, v = (x.bfloat16() for x in normed_qkv(tokens, device="cuda", heads=24))
    bounds = torch.full((2,), 128 ** 0.5 * 1.02, device="cuda")
    q8, k8 = (fp8_flux.quantize_bounded(x, b) for x, b in zip((q, k), bounds))
    out = cudnn_attention.cudnn_fp8_attention_static_qk(q8, k8, v, bounds, 128 ** -0.5)
    assert out.transpose(1, 2).is_contiguous()
    expected = cudnn_attention.reference_static_qk(q8, k8, v, bounds, 128 ** -0.5)
    assert rel_error(out.float(), expected.float()) < 0.04


@cuda
def test_cudnn_static_qk_op_on_a_gpu_without_the_kernel_runs_bf16_sdpa(monkeypatch, caplog):
    """A program compiled with static q/k scales still serves on a GPU that cannot run cuDNN's FP8 kernel."""
    q, k, v = (x.bfloat16() for x in normed_qkv(4608, device="cuda", heads=24))
    bounds = torch.full((2,), 128 ** 0.5 * 1.02, device="cuda")
    q8, k8 = (fp8_flux.quantize_bounded(x, b) for x, b in zip((q, k), bounds))
    monkeypatch.setattr(cudnn_attention, "unavailable", lambda device: "no FP8 here")
    cudnn_attention._warn_once.cache_clear()
    with caplog.at_level("WARNING"):
        out = cudnn_attention.cudnn_fp8_attention_static_qk(q8, k8, v, bounds, 128 ** -0.5)
    assert "no FP8 here" in caplog.text and out.transpose(1, 2).is_contiguous()
    # q and k passed through FP8 (3 mantissa bits); v and the attention itself stay bf16.
    assert rel_error(out.float(), F.scaled_dot_product_attention(q, k, v, scale=128 ** -0.5).float()) < 0.04
