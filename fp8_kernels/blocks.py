"""FLUX's single blocks with their `proj_out` input quantized by `gelu_cat_quantize`."""

from __future__ import annotations

import types
from typing import Any

import torch
from torchao.float8.inference import addmm_float8_unwrapped_inference
from torchao.quantization import Float8Tensor

from .quantize import gelu_cat_quantize


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
    data, scale = gelu_cat_quantize(attn_output, mlp)
    weight = self.proj_out.weight
    out = addmm_float8_unwrapped_inference(
        data, scale, weight.qdata.t(), weight.scale.t(), output_dtype=hidden_states.dtype, bias=self.proj_out.bias,
        use_fast_accum=weight.mm_config.use_fast_accum,
    )
    hidden_states = residual + gate.unsqueeze(1) * out.reshape(*attn_output.shape[:-1], -1)
    return hidden_states[:, :text_seq_len], hidden_states[:, text_seq_len:]


def fuse_single_block_quantization_(transformer: torch.nn.Module) -> int:
    """Give every single block whose `proj_out` is per-row FP8 the fused forward; return how many. Idempotent.

    The blocks keep their weights (a LoRA fused into `proj_out` in place is read as before).
    """
    count = 0
    for block in getattr(transformer, "single_transformer_blocks", ()):
        weight = block.proj_out.weight
        per_row = isinstance(weight, Float8Tensor) and tuple(weight.block_size) == (1, weight.shape[1])
        if per_row and isinstance(block.act_mlp, torch.nn.GELU) and block.act_mlp.approximate == "tanh":
            block.forward = types.MethodType(_single_block_forward, block)
            count += 1
    return count
