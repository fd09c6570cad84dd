"""GELU(tanh) + concat + per-row FP8 quantization in one pass: the input of FLUX's single blocks' `proj_out`
(and, without the concat, of the double blocks' feed-forward output layers).

torchao quantizes that input after the block has written it: inductor's kernels read the 15,360-wide
rows twice (amax, then cast) after GELU and concat wrote them. Here one program per row reads the
attention output and the MLP's pre-activation from memory once (the second pass hits L2) and writes
FP8 once; the first pass finds the row's largest |GELU| without computing GELU (see the kernel). The
math is torchao's (`_choose_scale_float8`, `_quantize_affine_float8`), so the result matches it bit for
bit apart from GELU's own rounding. On an H200, at 4608 x 15360: 0.108 ms against inductor's 0.247
(0.142 while the first pass computed GELU; bench/README.md, "FP8 kernels").
"""

from __future__ import annotations

import torch
from torchao.quantization.quant_primitives import _choose_scale_float8, _quantize_affine_float8

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the op runs its torch path
    triton = None

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max
# The torch.library namespace of this package's ops: compiled programs call them by name, so it is in the cache key.
OPS = "flux_aot"


def reference(attn: torch.Tensor, mlp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The eager path this op replaces: diffusers' GELU and concat, then torchao's per-row quantization."""
    rows = torch.cat([attn, torch.nn.functional.gelu(mlp, approximate="tanh")], dim=-1)
    rows = rows.reshape(-1, rows.shape[-1])
    scale = _choose_scale_float8(rows, block_size=[1, rows.shape[-1]], float8_dtype=FP8)
    return _quantize_affine_float8(rows, scale, FP8), scale


if triton is not None:
    NEGATIVE_GELU_MAX = tl.constexpr(0.171)  # max |gelu_tanh(x)| over x < 0 is 0.1700 (at x = -0.75)

    @triton.jit
    def _gelu(m):
        # tanh-GELU as 0.5 * (1 + tanh(z)) = sigmoid(2z), rounded to bf16 as eager GELU's output is.
        return (m * tl.sigmoid(1.5957691216057308 * (m + 0.044715 * m * m * m))).to(tl.bfloat16).to(tl.float32)

    # A row is read twice, the second time from L2: few registers per program, so many rows in flight per SM
    # (a whole 15,360-wide row in registers allowed one, and ran at a quarter of the memory bandwidth).
    @triton.autotune(
        configs=[triton.Config({"BLOCK": b}, num_warps=w) for b, w in [(1024, 4), (2048, 4), (2048, 8), (4096, 8)]],
        key=["ATTN_COLS", "MLP_COLS"],
    )
    @triton.jit
    def _gelu_cat_quantize_kernel(
        attn, mlp, out, scale, attn_stride, mlp_stride, out_stride,
        ATTN_COLS: tl.constexpr, MLP_COLS: tl.constexpr, FP8_MAX: tl.constexpr, BLOCK: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        attn += row * attn_stride
        mlp += row * mlp_stride
        out += row * out_stride
        amax = tl.zeros([BLOCK], tl.float32)
        for start in tl.range(0, ATTN_COLS, BLOCK):
            a = tl.load(attn + start + cols, mask=start + cols < ATTN_COLS, other=0.0).to(tl.float32)
            amax = tl.maximum(amax, tl.abs(a))
        # GELU rises for inputs above -0.76 and stays within NEGATIVE_GELU_MAX below: the row's largest |GELU|
        # is GELU of its largest input unless that is smaller, so the first pass needs no GELU.
        top = tl.full([BLOCK], float("-inf"), tl.float32)
        for start in tl.range(0, MLP_COLS, BLOCK):
            top = tl.maximum(top, tl.load(mlp + start + cols, mask=start + cols < MLP_COLS, other=float("-inf")).to(tl.float32))
        row_amax = tl.maximum(tl.max(amax, axis=0), _gelu(tl.max(top, axis=0)))
        if row_amax < NEGATIVE_GELU_MAX:  # rows with only small values: GELU of each input
            for start in tl.range(0, MLP_COLS, BLOCK):
                g = _gelu(tl.load(mlp + start + cols, mask=start + cols < MLP_COLS, other=0.0).to(tl.float32))
                row_amax = tl.maximum(row_amax, tl.max(tl.abs(g), axis=0))
        s = tl.math.div_rn(row_amax, tl.full((), FP8_MAX, tl.float32))
        s = s.to(tl.bfloat16).to(tl.float32)  # as torchao, which divides in bf16
        tl.store(scale + row, s)
        # IEEE division, as torch's x / scale: an approximate one would move values across FP8 rounding bounds.
        for start in tl.range(0, ATTN_COLS, BLOCK):
            keep = start + cols < ATTN_COLS
            a = tl.load(attn + start + cols, mask=keep, other=0.0).to(tl.float32)
            tl.store(out + start + cols, tl.clamp(tl.math.div_rn(a, s), -FP8_MAX, FP8_MAX).to(tl.float8e4nv), mask=keep)
        for start in tl.range(0, MLP_COLS, BLOCK):
            keep = start + cols < MLP_COLS
            g = _gelu(tl.load(mlp + start + cols, mask=keep, other=0.0).to(tl.float32))
            tl.store(out + ATTN_COLS + start + cols, tl.clamp(tl.math.div_rn(g, s), -FP8_MAX, FP8_MAX).to(tl.float8e4nv),
                     mask=keep)


@torch.library.triton_op(f"{OPS}::gelu_cat_quantize", mutates_args=())
def gelu_cat_quantize(attn: torch.Tensor, mlp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cat([attn, gelu_tanh(mlp)], -1) quantized to FP8 per row: (data [rows, cols], fp32 scale [rows, 1])."""
    if not (attn.is_cuda and triton is not None):
        return reference(attn, mlp)
    return _launch(attn.reshape(-1, attn.shape[-1]), mlp.reshape(-1, mlp.shape[-1]))


@torch.library.triton_op(f"{OPS}::gelu_quantize", mutates_args=())
def gelu_quantize(mlp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """gelu_tanh(mlp) quantized to FP8 per row, the input of a feed-forward's output layer: (data, scale) as above."""
    if not (mlp.is_cuda and triton is not None):
        return reference(mlp[..., :0], mlp)
    mlp = mlp.reshape(-1, mlp.shape[-1])
    return _launch(mlp[:, :0], mlp)


def _launch(attn: torch.Tensor, mlp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows, attn_cols = attn.shape
    mlp_cols = mlp.shape[1]
    out = torch.empty(rows, attn_cols + mlp_cols, dtype=FP8, device=mlp.device)
    scale = torch.empty(rows, 1, dtype=torch.float32, device=mlp.device)
    torch.library.wrap_triton(_gelu_cat_quantize_kernel)[(rows,)](
        attn, mlp, out, scale, attn.stride(0), mlp.stride(0), out.stride(0),
        ATTN_COLS=attn_cols, MLP_COLS=mlp_cols, FP8_MAX=FP8_MAX,
    )
    return out, scale
