"""Triton kernel of ``npu_attention_update`` (``npu_kernels/ops/attention_update.py``): the log-sum-exp
merge of SP partial outputs, the computation of ``npu_kernels.reference.attention_update`` step for step
(sums in partial order; launched without multiply-add fusion, so each product is rounded as there).

The partials arrive as tuples of tensors (SP is a constexpr: the loops unroll); one program merges
BLOCK_R rows across the whole head dim, so lse_out is written once per row.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .. import launcher
from .prefill import cdiv, positional

BLOCK_ELEMENTS = 4096   # rows x head dim per program


@triton.jit
def _lse(LSE, i, o_r, m_r, STRIDES_LSE: tl.constexpr):
    """lse of partial i for rows o_r, +inf (no key) replaced by -inf."""
    x = tl.load(LSE[i] + o_r * STRIDES_LSE[i], mask=m_r, other=0.0)
    return tl.where(x == float("inf"), float("-inf"), x)


@triton.jit
def _attention_update_kernel(
    LSE,        # SP x [R] float32
    OUTS,       # SP x [R, H], one dtype
    OUT,        # [R, H] contiguous, the partials' dtype
    LSE_OUT,    # [R] float32 (HAS_LSE)
    R, H,
    STRIDES_LSE: tl.constexpr, STRIDES_R: tl.constexpr, STRIDES_H: tl.constexpr,   # per partial
    SP: tl.constexpr, HAS_LSE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr,
):
    i_r = tl.program_id(0)
    o_r = i_r.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)                            # [BR]
    o_h = tl.arange(0, BLOCK_H)                                                          # [BH]
    m_r = o_r < R
    m_h = o_h < H
    b_m = tl.full([BLOCK_R], float("-inf"), tl.float32)
    for i in tl.static_range(SP):
        b_m = tl.maximum(b_m, _lse(LSE, i, o_r, m_r, STRIDES_LSE), propagate_nan=tl.PropagateNan.ALL)
    b_s = tl.zeros([BLOCK_R], dtype=tl.float32)
    for i in tl.static_range(SP):
        b_s += tl.exp(_lse(LSE, i, o_r, m_r, STRIDES_LSE) - b_m)
    b_l = b_m + tl.log(b_s)                                                              # [BR]
    b_acc = tl.zeros([BLOCK_R, BLOCK_H], dtype=tl.float32)
    m_rh = m_r[:, None] & m_h[None, :]
    for i in tl.static_range(SP):
        b_w = tl.exp(_lse(LSE, i, o_r, m_r, STRIDES_LSE) - b_l)
        p_o = OUTS[i] + o_r[:, None] * STRIDES_R[i] + o_h[None, :] * STRIDES_H[i]
        b_acc += b_w[:, None] * tl.load(p_o, mask=m_rh, other=0.0).to(tl.float32)
    tl.store(OUT + o_r[:, None] * H + o_h[None, :], b_acc.to(OUT.dtype.element_ty), mask=m_rh)
    if HAS_LSE:
        tl.store(LSE_OUT + o_r, b_l, mask=m_r)


def kernel_args(lse: tuple, outs: tuple, out, lse_out, with_lse: bool) -> dict:
    """Arguments of ``_attention_update_kernel`` by name (``lse_out`` may be any float32 tensor when
    ``with_lse`` is False)."""
    rows, h = out.shape
    block_h = triton.next_power_of_2(h)
    return dict(LSE=tuple(lse), OUTS=tuple(outs), OUT=out, LSE_OUT=lse_out, R=rows, H=h,
                STRIDES_LSE=tuple(t.stride(0) for t in lse), STRIDES_R=tuple(t.stride(0) for t in outs),
                STRIDES_H=tuple(t.stride(1) for t in outs), SP=len(lse), HAS_LSE=with_lse,
                BLOCK_R=max(1, BLOCK_ELEMENTS // block_h), BLOCK_H=block_h)


def launch(lse: tuple, outs: tuple, out, lse_out, with_lse: bool) -> None:
    args = kernel_args(lse, outs, out, lse_out, with_lse)
    launcher.run(_attention_update_kernel, (cdiv(args["R"], args["BLOCK_R"]),),
                 positional(_attention_update_kernel, args), num_warps=4, num_stages=1, enable_fp_fusion=False)


def aot_variants() -> list:
    """Representative launches, planned for a GPU (``npu_kernels.aot.Variant``)."""
    import torch

    from .. import aot

    cases = [("fp32-sp2-h512-lse", torch.float32, 2, 512, True), ("bf16-sp16-h128", torch.bfloat16, 16, 128, False),
             ("fp16-sp4-h64", torch.float16, 4, 64, False)]
    def planned(dtype, sp: int, h: int, with_lse: bool):
        lse = tuple(torch.zeros(256) for _ in range(sp))
        outs = tuple(torch.zeros(256, h, dtype=dtype) for _ in range(sp))
        return lambda: launch(lse, outs, torch.zeros(256, h, dtype=dtype), torch.zeros(256), with_lse)

    return [aot.Variant(name, planned(dtype, sp, h, with_lse)) for name, dtype, sp, h, with_lse in cases]
