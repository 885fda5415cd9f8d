"""``npu_prompt_flash_attention`` (PFA): validate → plan → run (spec ops §2).

``validate`` turns torch_npu's arguments into a ``PromptCall`` (views, sizes, per-batch lengths and
bands), ``plan`` into the kernel's static configuration and the parameter block, ``run`` allocates the
output and submits the launch (``npu_kernels.tasks``).

int8 paths (spec ops §2.2-§2.4): ``quant.full_quant_args`` accepts the three combinations (int8 → int8,
int8 → float16, float16/bfloat16 → int8) and ``check_int8_output`` the tiling's interceptions; the scale
tensors reach the kernel as device pointers (dequant scales as their raw bits), never read on the host.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from .. import alloc, checks, masks, params, quant, tasks
from ..errors import require
from ..kernels import prefill
from ..layouts import PROMPT_LAYOUTS, Layout, as_bnsd, out_shape
from ..masks import Band
from .sources import Sources

OP = "npu_prompt_flash_attention"


@dataclass(frozen=True)
class PromptCall:
    """Validated arguments of one prefill-path call, in (B, N, S, D) terms."""

    heads: checks.Heads
    layout: Layout
    dtype: torch.dtype                 # input dtype
    out_dtype: torch.dtype
    qlens: list[int]
    kvlens: list[int]
    bands: list[Band]
    mask: Optional[torch.Tensor]       # (B or 1, R, C) view, only when applied element-wise
    pse: Optional[torch.Tensor]        # (B or 1, N, R, C)
    scale: float
    fill: float
    zero_masked_rows: bool             # inner_precise bit 1 (FIA); PFA never sets it
    # per batch (q_off, kv_off, qm_off, kvm_off, prefix): params.Q_OFF ... params.PREFIX; None = zeros
    offsets: Optional[tuple[tuple[int, int, int, int, int], ...]] = None
    sources: Sources = Sources()
    lse_empty: float = float("inf")    # lse of rows of a batch without keys (decode semantics: -3.4e38)
    fp16_path: bool = False            # the NPU computes this call on its fp16 high-performance path
    quant: quant.QuantArgs = quant.NO_QUANT


def normalise_sparse_mode(sparse_mode: int) -> tuple[int, int]:
    """PFA's sparse_mode → (mode 0..4, inner_precise): 10-14 alias 0-4 in high precision."""
    require(isinstance(sparse_mode, int), "sparse_mode", sparse_mode, "must be an int")
    require(sparse_mode not in (5, 6, 7, 8), "sparse_mode", sparse_mode,
            "modes 5-8 (prefix, global, dilated, block_local) are not supported")
    require(sparse_mode in masks.SPARSE_MODES or 10 <= sparse_mode <= 14, "sparse_mode", sparse_mode,
            "must be 0-4 or 10-14")
    return (sparse_mode - 10, 0) if sparse_mode >= 10 else (sparse_mode, 1)


def check_band_tokens(sparse_mode: int, pre: int, nxt: int, s1: int, qlens: list[int],
                      kvtots: list[int], has_mask: bool) -> None:
    """pre/next rules of the tiling (spec ops §1.5), where the band uses them."""
    if not ((sparse_mode == 0 and has_mask) or sparse_mode == 4):
        return
    require(not (pre < 0 and nxt < 0), "pre_tokens", pre, f"pre_tokens and next_tokens ({nxt}) cannot both be negative")
    require(pre + nxt >= 0, "pre_tokens", pre, f"-next_tokens ({-nxt}) must be <= pre_tokens")
    for b, (qlen, kvtot) in enumerate(zip(qlens, kvtots)):
        if sparse_mode == 0:
            require(nxt >= 0 or -nxt < s1, "next_tokens", nxt, f"a negative next_tokens needs |next_tokens| < S1={s1}")
            require(pre >= 0 or -pre < kvtot, "pre_tokens", pre,
                    f"a negative pre_tokens needs |pre_tokens| < the kv length ({kvtot}, batch {b})")
        else:
            require(nxt >= 0 or -nxt < kvtot, "next_tokens", nxt,
                    f"sparse_mode=4: a negative next_tokens needs |next_tokens| < the kv length ({kvtot}, batch {b})")
            require(pre >= 0 or -pre < qlen, "pre_tokens", pre,
                    f"sparse_mode=4: a negative pre_tokens needs |pre_tokens| < the query length ({qlen}, batch {b})")


def validate(query, key, value, *, padding_mask=None, atten_mask=None, pse_shift=None,
             actual_seq_lengths=None, deq_scale1=None, quant_scale1=None, deq_scale2=None,
             quant_scale2=None, quant_offset2=None, num_heads=1, scale_value=1.0,
             pre_tokens=masks.INT_MAX, next_tokens=0, input_layout="BSH", num_key_value_heads=0,
             actual_seq_lengths_kv=None, sparse_mode=0) -> PromptCall:
    query = checks.tensor("query", query)
    key = checks.tensor("key", key)
    value = checks.tensor("value", value)
    for name, t in (("query", query), ("key", key), ("value", value)):
        checks.tensor(name, t, dtypes=checks.FLOAT_DTYPES + (torch.int8,))
    require(key.dtype == query.dtype and value.dtype == query.dtype, "key", key,
            f"query, key and value must share one dtype (query is {query.dtype})", TypeError)
    layout = Layout.parse(input_layout, PROMPT_LAYOUTS)
    heads = checks.qkv_heads(query, key, value, layout, num_heads, num_key_value_heads)
    qa = quant.full_quant_args(query.dtype, heads.N, heads.Dv, deq_scale1, quant_scale1, deq_scale2,
                               quant_scale2, quant_offset2)
    require(isinstance(scale_value, (int, float)) and abs(float(scale_value)) < float("inf"), "scale_value",
            scale_value, "must be a finite float")
    for name, v in (("pre_tokens", pre_tokens), ("next_tokens", next_tokens)):
        require(isinstance(v, int), name, v, "must be an int")
    mode, inner_precise = normalise_sparse_mode(sparse_mode)

    qlens = checks.lengths("actual_seq_lengths", checks.int_list(actual_seq_lengths), heads.B, heads.S1) \
        or [heads.S1] * heads.B
    kvlens = checks.lengths("actual_seq_lengths_kv", checks.int_list(actual_seq_lengths_kv), heads.B, heads.S2) \
        or [heads.S2] * heads.B

    mask = None
    if mode in (2, 3, 4):
        checks.compressed_mask(atten_mask, mode)
    elif atten_mask is not None:
        mask = checks.user_mask(atten_mask, heads.B, heads.S1, heads.S2)
    elif mode == 1:
        require(False, "atten_mask", None, "sparse_mode=1 (allMask) requires atten_mask")
    check_band_tokens(mode, pre_tokens, next_tokens, heads.S1, qlens, kvlens, mask is not None)
    bands = [masks.prefill_band(mode, pre_tokens, next_tokens, q, kv, mask is not None, False)
             for q, kv in zip(qlens, kvlens)]
    if qa.int8_out:
        check_int8_output(qa, mode, pre_tokens, next_tokens, heads.S1, qlens, kvlens, bands)

    pse = None
    if pse_shift is not None:
        pse = checks.pse(pse_shift, torch.float16 if qa.int8_in else query.dtype, heads.B, heads.N, heads.S1,
                         heads.S2)
        inner_precise = 0                      # fp16 + pse is forced to high precision
    fp16_compute = qa.int8_in or (query.dtype == torch.float16 and inner_precise == 1)
    scale = masks.fp16_value(scale_value) if fp16_compute else float(scale_value)
    out_dtype = torch.int8 if qa.int8_out else torch.float16 if qa.int8_in else query.dtype
    return PromptCall(heads=heads, layout=layout, dtype=query.dtype, out_dtype=out_dtype, qlens=qlens,
                      kvlens=kvlens, bands=bands, mask=mask, pse=pse, scale=scale,
                      fill=masks.FILL_FP16 if fp16_compute else masks.FILL_FP32, zero_masked_rows=False, quant=qa,
                      fp16_path=fp16_compute and not qa.int8_in)


def rows_all_computed(s1: int, qlens: list[int], kvlens: list[int], bands: list[Band]) -> bool:
    """True when every row of the query tensor has a key in its band (no row is left at 0, spec ops §1.7):
    row i of a batch has one iff max(i - pre, 0) <= min(i + next, kvlen - 1)."""
    return all(s1 == 0 or (q == s1 and kv > 0 and b.next >= 0 and b.pre + b.next >= 0 and q - 1 - b.pre <= kv - 1)
               for q, kv, b in zip(qlens, kvlens, bands))


def check_int8_output(qa: quant.QuantArgs, sparse_mode: int, pre: int, nxt: int, s1: int, qlens: list[int],
                      kvlens: list[int], bands: list[Band]) -> None:
    """The tiling's interceptions of int8 output (spec ops §1.7, §2.2). The NPU rejects a non-zero
    quant_offset2 where rows stay uncomputed (they are written as 0, not the offset); reading the offset's
    values would need a host sync, so any quant_offset2 is rejected there."""
    if sparse_mode == 4:
        require(pre >= 0, "pre_tokens", pre, "int8 output (quant_scale2) with sparse_mode=4 needs pre_tokens >= 0")
        require(nxt >= 0, "next_tokens", nxt, "int8 output (quant_scale2) with sparse_mode=4 needs next_tokens >= 0")
    if qa.quant_offset2 is not None:
        require(rows_all_computed(s1, qlens, kvlens, bands), "quant_offset2", qa.quant_offset2,
                "not allowed when some output rows are not computed (query rows past actual_seq_lengths, "
                "empty kv, or rows without a key in the band): those rows are 0, not the offset")


@dataclass(frozen=True)
class Plan:
    static: prefill.PrefillConfig
    params: torch.Tensor              # [B * FIELDS] int32, CPU


def plan(call: PromptCall, out: torch.Tensor, lse: Optional[torch.Tensor],
         on_gpu: Optional[bool] = None) -> Plan:
    """Static configuration and parameter block; ``on_gpu`` picks the block sizes (default: the
    output's device)."""
    h = call.heads
    o4 = out_view(call, out)
    on_gpu = o4.device.type == "cuda" if on_gpu is None else on_gpu
    block_m, block_n, warps, stages = prefill.block_config(h.D, h.Dv, on_gpu)
    min_block = 32 if call.quant.int8_in else 16               # int8 tensor cores need k >= 32
    mask_strides = (0, 0, 0) if call.mask is None else \
        (checks.broadcast_stride(call.mask, 0), int(call.mask.stride(1)), int(call.mask.stride(2)))
    pse_strides = (0, 0, 0, 0) if call.pse is None else \
        (checks.broadcast_stride(call.pse, 0), *(int(s) for s in call.pse.stride()[1:]))
    lse_strides = (0, 0, 0) if lse is None else tuple(int(s) for s in lse.stride()[:3])
    strides = (*h.q.stride(), *h.k.stride(), *h.v.stride(), *o4.stride(), *lse_strides, *mask_strides,
               *pse_strides, *call.sources.strides())
    meta = (("HEAD_DIM", h.D), ("HEAD_DIM_V", h.Dv), ("BLOCK_D", _pow2(h.D, min_block)),
            ("BLOCK_DV", _pow2(h.Dv, min_block)),
            ("BLOCK_M", block_m), ("BLOCK_N", block_n), ("HAS_MASK", call.mask is not None),
            ("HAS_PSE", call.pse is not None), ("HAS_LSE", lse is not None), ("FILL", call.fill),
            ("ZERO_MASKED_ROWS", call.zero_masked_rows), *call.quant.meta(), *call.sources.meta(),
            ("LSE_EMPTY", call.lse_empty))
    bn_total = h.B * h.N
    static = prefill.PrefillConfig(
        strides=tuple(int(s) for s in strides),
        sizes=(h.N, h.S1, h.S2, bn_total, h.group, call.sources.page_size), meta=meta,
        grid=prefill.grid(h.S1, block_m, bn_total), num_warps=warps, num_stages=stages, sm_scale=call.scale)
    offsets = call.offsets or ((0, 0, 0, 0, 0),) * h.B
    rows = [(q, kv, *off[:4], *band.clamped(), off[4])
            for q, kv, band, off in zip(call.qlens, call.kvlens, call.bands, offsets)]
    return Plan(static, params.pack(rows))


def out_view(call: PromptCall, out: torch.Tensor) -> torch.Tensor:
    """(B, N, S1, Dv) view of the output; token-major outputs are shared by all batches (stride 0)."""
    o4 = as_bnsd(out, call.layout.out, call.heads.N)
    return o4.expand(call.heads.B, *o4.shape[1:]) if call.sources.varlen else o4


def _pow2(x: int, least: int = 16) -> int:
    return max(least, 1 << (x - 1).bit_length())


def submit(call: PromptCall, out: torch.Tensor, lse: Optional[torch.Tensor] = None, op: str = OP,
           caller_outputs: bool = False, block_buffer: Optional[torch.Tensor] = None) -> None:
    """Plan and submit the prefill kernel writing ``out`` (and ``lse`` when given); ``caller_outputs``
    when the caller passed them (``.out`` overloads), see ``tasks.Task.outputs``."""
    h = call.heads
    if out.numel() == 0 and (lse is None or lse.numel() == 0):
        return
    p = plan(call, out, lse)
    o4 = out_view(call, out)
    mask = None if call.mask is None else (call.mask.view(torch.uint8) if call.mask.dtype == torch.bool else call.mask)
    dummy = h.q
    run = functools.partial(prefill.launch, p.static, h.q, h.k, h.v, o4,
                            dummy if lse is None else lse, dummy if mask is None else mask,
                            dummy if call.pse is None else call.pse, scales=call.quant.kernel_scales(),
                            sources=call.sources.tensors())
    inputs = tuple(t for t in (h.q, h.k, h.v, mask, call.pse, *call.sources.tensors()) if t is not None) \
        + call.quant.tensors()
    outputs = tuple(t for t in (out, lse) if t is not None) if caller_outputs else ()
    tasks.submit(tasks.Task(op, p.static, p.params, out.device, run, inputs, outputs, block_buffer))


def output(call: PromptCall) -> torch.Tensor:
    h = call.heads
    return alloc.empty(out_shape(call.layout.out, h.B, h.N, h.S1, h.Dv), call.out_dtype, h.q.device)


def npu_prompt_flash_attention(query, key, value, *, padding_mask=None, atten_mask=None, pse_shift=None,
                               actual_seq_lengths: Optional[Sequence[int]] = None, deq_scale1=None,
                               quant_scale1=None, deq_scale2=None, quant_scale2=None, quant_offset2=None,
                               num_heads: int = 1, scale_value: float = 1.0, pre_tokens: int = masks.INT_MAX,
                               next_tokens: int = 0, input_layout: str = "BSH", num_key_value_heads: int = 0,
                               actual_seq_lengths_kv: Optional[Sequence[int]] = None,
                               sparse_mode: int = 0) -> torch.Tensor:
    """Eager implementation behind ``torch.ops.npu.npu_prompt_flash_attention``."""
    call = validate(query, key, value, padding_mask=padding_mask, atten_mask=atten_mask, pse_shift=pse_shift,
                    actual_seq_lengths=actual_seq_lengths, deq_scale1=deq_scale1, quant_scale1=quant_scale1,
                    deq_scale2=deq_scale2, quant_scale2=quant_scale2, quant_offset2=quant_offset2,
                    num_heads=num_heads, scale_value=scale_value, pre_tokens=pre_tokens, next_tokens=next_tokens,
                    input_layout=input_layout, num_key_value_heads=num_key_value_heads,
                    actual_seq_lengths_kv=actual_seq_lengths_kv, sparse_mode=sparse_mode)
    out = output(call)
    submit(call, out)
    return out
