"""RoPE's channel pairs half a head apart in FLUX's q and k: the layout the compiled graph rotates fastest.

FLUX rotates the channels (2j, 2j + 1) of each head as a pair, so inductor's kernel that normalizes, rotates and
casts q and k reads each channel's partner one element off: unaligned loads, one element at a time. Attention only
needs q and k in the same channel order, so `split_rope_pairs_` permutes, once, the rows of the q and k projections
and their RMSNorms' weights to put pair j at channels (j, j + D/2), `rotate_half`'s layout: both halves then load
as whole vectors (the kernel alone 1.6-1.7x faster, bench/README.md). The rotary tables shrink to one angle per
pair (`PairAngles`), made once per step rather than read at twice the width in every block.

The modules keep `FluxAttnProcessorFP8`, the processor that knows the layout: an eager call of them stays right.
A LoRA fused into these layers is permuted the same way (`ROW_ORDER`, lora/slots.py).
"""

from __future__ import annotations

import torch

from .flux_attention import SPLIT, FluxAttnProcessorFP8, swappable

ROW_ORDER = "row_order"  # set on a Linear whose output rows are stored permuted: row i holds original row order[i]


def half_split_order(heads: int, head_dim: int) -> torch.Tensor:
    """The original channel each stored channel holds: per head its even channels, then its odd ones."""
    per_head = torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])
    return (torch.arange(heads)[:, None] * head_dim + per_head).flatten()


class PairAngles(torch.nn.Module):
    """FLUX's rotary embedding with one cos and sin per channel pair ([S, D/2], contiguous) instead of both channels'."""

    def __init__(self, pos_embed: torch.nn.Module):
        super().__init__()
        self.pos_embed = pos_embed

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = self.pos_embed(ids)
        return cos[..., 0::2].contiguous(), sin[..., 0::2].contiguous()


def _projections(attn: torch.nn.Module) -> list[tuple[torch.nn.Linear, torch.Tensor]]:
    """The layers whose output rows are q or k, with their row order in the split layout."""
    order = half_split_order(attn.heads, attn.head_dim)
    inner = attn.inner_dim
    fused = torch.cat([order, order + inner, torch.arange(2 * inner, 3 * inner)])  # q, k, v rows of one projection
    names = {"to_q": order, "to_k": order, "add_q_proj": order, "add_k_proj": order, "to_qkv": fused, "to_added_qkv": fused}
    return [(layer, rows) for name, rows in names.items() if isinstance(layer := getattr(attn, name, None), torch.nn.Linear)]


def _permute_(module: torch.nn.Module, name: str, order: torch.Tensor) -> None:
    # A new tensor, not a write into the old one: LoRA masters (lora/masters.py) keep the original rows.
    tensor = getattr(module, name)
    setattr(module, name, torch.nn.Parameter(tensor.detach()[order.to(tensor.device)], requires_grad=False))


def mark_split_(transformer: torch.nn.Module) -> list[torch.nn.Module]:
    """What a process needs around weights that another permuted (a ZeroGPU worker): the modules' processor and
    markers, and the pair-angle tables. Returns the attention modules that were not marked yet. Idempotent."""
    attention = [m for m in transformer.modules() if swappable(m)]
    for attn in attention:
        for layer, rows in _projections(attn):
            setattr(layer, ROW_ORDER, rows)
        attn.processor = FluxAttnProcessorFP8()
        setattr(attn, SPLIT, True)
    pos_embed = getattr(transformer, "pos_embed", None)  # a FLUX transformer's; modules below it take their caller's tables
    if attention and pos_embed is not None and not isinstance(pos_embed, PairAngles):
        transformer.pos_embed = PairAngles(pos_embed)
    return attention


def split_rope_pairs_(transformer: torch.nn.Module) -> int:
    """Permute the q and k projections and norms of every FLUX attention module into the split layout, and mark them
    (`mark_split_`). Before FP8 quantization (per-row scales follow the rows anyway). Idempotent; returns how many
    modules it changed."""
    attention = mark_split_(transformer)
    per_head = half_split_order(1, attention[0].head_dim) if attention else None
    for attn in attention:
        for layer, rows in _projections(attn):
            _permute_(layer, "weight", rows)
            if layer.bias is not None:
                _permute_(layer, "bias", rows)
        for norms in (attn.norm_q, attn.norm_k), (getattr(attn, "norm_added_q", None), getattr(attn, "norm_added_k", None)):
            for norm in filter(None, norms):
                _permute_(norm, "weight", per_head)
    return len(attention)
