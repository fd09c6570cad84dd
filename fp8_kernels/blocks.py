"""FLUX's blocks with the FP8 input of a layer after GELU quantized in one pass: the single blocks' `proj_out`
(`gelu_cat_quantize`) and the double blocks' feed-forward output layers (`gelu_quantize`)."""

from __future__ import annotations

import types
from typing import Any

import torch
from diffusers.models.activations import GELU
from torchao.float8.inference import addmm_float8_unwrapped_inference
from torchao.quantization import Float8Tensor

from .quantize import gelu_cat_quantize, gelu_quantize


def _single_block_forward(
    self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, temb: torch.Tensor,
    image_rotary_emb: Any = None, joint_attention_kwargs: dict[str, Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """diffusers' `FluxSingleTransformerBlock.forward`, with GELU, concat and `proj_out`'s FP8 quantization
    in one kernel and `proj_out`'s matmul the one torchao would call."""
    text_seq_len = encoder_hidden_states.shape[1]
    hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
    residual = hidden_states
    norm_hidden_states, gate = self.norm(hidden_states, emb=temb)
    mlp = self.proj_mlp(norm_hidden_states)
    attn_output = self.attn(hidden_states=norm_hidden_states, image_rotary_emb=image_rotary_emb,
                            **(joint_attention_kwargs or {}))
    out = _fp8_linear(self.proj_out, *gelu_cat_quantize(attn_output, mlp), hidden_states.dtype)
    hidden_states = residual + gate.unsqueeze(1) * out.reshape(*attn_output.shape[:-1], -1)
    return hidden_states[:, :text_seq_len], hidden_states[:, text_seq_len:]


def _feed_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    """diffusers' `FeedForward.forward` with "gelu-approximate", its output layer's input quantized with the GELU."""
    mlp = self.net[0].proj(hidden_states)
    out = _fp8_linear(self.net[2], *gelu_quantize(mlp), hidden_states.dtype)
    return out.reshape(*mlp.shape[:-1], -1)


def _fp8_linear(linear: torch.nn.Linear, data: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The matmul torchao would call for `linear` (per-row FP8) on an input quantized by our kernel."""
    weight = linear.weight
    return addmm_float8_unwrapped_inference(
        data, scale, weight.qdata.t(), weight.scale.t(), output_dtype=dtype, bias=linear.bias,
        use_fast_accum=weight.mm_config.use_fast_accum,
    )


def _per_row_fp8(linear: torch.nn.Module) -> bool:
    weight = getattr(linear, "weight", None)
    return isinstance(weight, Float8Tensor) and tuple(weight.block_size) == (1, weight.shape[1])


def _tanh_gelu(module: torch.nn.Module) -> bool:
    return getattr(module, "approximate", None) == "tanh" and isinstance(module, (torch.nn.GELU, GELU))


def fuse_single_block_quantization_(transformer: torch.nn.Module) -> int:
    """Give every single block whose `proj_out` is per-row FP8 the fused forward; return how many. Idempotent.

    The blocks keep their weights (a LoRA fused into `proj_out` in place is read as before).
    """
    count = 0
    for block in getattr(transformer, "single_transformer_blocks", ()):
        if _per_row_fp8(block.proj_out) and _tanh_gelu(block.act_mlp):
            block.forward = types.MethodType(_single_block_forward, block)
            count += 1
    return count


def fuse_feed_forward_quantization_(transformer: torch.nn.Module) -> int:
    """Likewise for the double blocks' feed-forwards (image and text stream) whose output layer is per-row FP8."""
    count = 0
    for block in getattr(transformer, "transformer_blocks", ()):
        for ff in (getattr(block, "ff", None), getattr(block, "ff_context", None)):
            net = getattr(ff, "net", ())
            # GELU (with its input projection), dropout (inactive in inference), output layer: nothing else.
            if len(net) == 3 and _tanh_gelu(net[0]) and isinstance(net[1], torch.nn.Dropout) and _per_row_fp8(net[2]):
                ff.forward = types.MethodType(_feed_forward, ff)
                count += 1
    return count
