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
from dataclasses import dataclass, replace
from typing import Optional

import torch

from .. import alloc, checks, masks, params, plans, quant, tasks
from ..device import execution
from ..errors import require
from ..kernels import mask_summary, prefill
from ..layouts import PROMPT_LAYOUTS, Layout, as_bnsd, out_shape
from ..masks import Band
from . import prompt_tnd
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
    mode: int = 0                      # sparse mode, 0..4
    decode: bool = False               # the fused operator's decode semantics on the prefill kernel
    window: bool = False               # the decode sliding window (bands from pre_tokens and kv lengths)


def normalise_sparse_mode(sparse_mode: int) -> tuple[int, int]:
    """PFA's sparse_mode → (mode 0..4, inner_precise): 10-14 alias 0-4 in high precision."""
    require(isinstance(sparse_mode, int), "sparse_mode", sparse_mode, "must be an int", TypeError)
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


DEFAULTS = {
    "padding_mask": None, "atten_mask": None, "pse_shift": None, "actual_seq_lengths": None, "deq_scale1": None,
    "quant_scale1": None, "deq_scale2": None, "quant_scale2": None, "quant_offset2": None, "num_heads": 1,
    "scale_value": 1.0, "pre_tokens": masks.INT_MAX, "next_tokens": 0, "input_layout": "BSH",
    "num_key_value_heads": 0, "actual_seq_lengths_kv": None, "sparse_mode": 0,
}
TENSOR_ARGS = ("query", "key", "value", "padding_mask", "atten_mask", "pse_shift", "deq_scale1", "quant_scale1",
               "deq_scale2", "quant_scale2", "quant_offset2")
# per-call integers: validated and packed on every call, not part of the signature
DYNAMIC_ARGS = ("actual_seq_lengths", "actual_seq_lengths_kv", "pre_tokens", "next_tokens")


def validate_static(query, key, value, *, padding_mask=None, atten_mask=None, pse_shift=None, deq_scale1=None,
                    quant_scale1=None, deq_scale2=None, quant_scale2=None, quant_offset2=None, num_heads=1,
                    scale_value=1.0, input_layout="BSH", num_key_value_heads=0, sparse_mode=0,
                    **dynamic) -> PromptCall:
    """Everything but the per-call integers (``DYNAMIC_ARGS``): a ``PromptCall`` without batches."""
    query = checks.tensor("query", query)
    key = checks.tensor("key", key)
    value = checks.tensor("value", value)
    for name, t in (("query", query), ("key", key), ("value", value)):
        checks.tensor(name, t, dtypes=checks.FLOAT_DTYPES + (torch.int8,))
    require(key.dtype == query.dtype and value.dtype == query.dtype, "key", key,
            f"query, key and value must share one dtype (query is {query.dtype})", TypeError)
    layout = Layout.parse(input_layout, PROMPT_LAYOUTS)
    heads = checks.qkv_heads(query, key, value, layout, num_heads, num_key_value_heads, aligned=True)
    qa = quant.full_quant_args(query.dtype, heads.N, heads.Dv, deq_scale1, quant_scale1, deq_scale2,
                               quant_scale2, quant_offset2)
    require(isinstance(scale_value, (int, float)) and abs(float(scale_value)) < float("inf"), "scale_value",
            scale_value, "must be a finite float")
    mode, inner_precise = normalise_sparse_mode(sparse_mode)
    mask = None
    if mode in (2, 3, 4):
        checks.compressed_mask(atten_mask, mode)
    elif atten_mask is not None:
        mask = checks.user_mask(atten_mask, heads.B, heads.S1, heads.S2)
    elif mode == 1:
        require(False, "atten_mask", None, "sparse_mode=1 (allMask) requires atten_mask")
    pse = None
    if pse_shift is not None:
        pse = checks.pse(pse_shift, torch.float16 if qa.int8_in else query.dtype, heads.B, heads.N, heads.S1,
                         heads.S2)
        inner_precise = 0                      # fp16 + pse is forced to high precision
    fp16_compute = qa.int8_in or (query.dtype == torch.float16 and inner_precise == 1)
    scale = masks.fp16_value(scale_value) if fp16_compute else float(scale_value)
    out_dtype = torch.int8 if qa.int8_out else torch.float16 if qa.int8_in else query.dtype
    return PromptCall(heads=heads, layout=layout, dtype=query.dtype, out_dtype=out_dtype, qlens=[], kvlens=[],
                      bands=[], mask=mask, pse=pse, scale=scale,
                      fill=masks.FILL_FP16 if fp16_compute else masks.FILL_FP32, zero_masked_rows=False, quant=qa,
                      fp16_path=fp16_compute and not qa.int8_in, mode=mode)


def per_batch(call: PromptCall, actual_seq_lengths=None, actual_seq_lengths_kv=None, pre_tokens=masks.INT_MAX,
              next_tokens=0) -> tuple[list[int], list[int], list[Band]]:
    """The per-call integers of a PFA call, validated: (query lengths, kv lengths, bands) per batch."""
    for name, v in (("pre_tokens", pre_tokens), ("next_tokens", next_tokens)):
        require(isinstance(v, int), name, v, "must be an int", TypeError)
    h = call.heads
    qlens = checks.lengths("actual_seq_lengths", checks.int_list(actual_seq_lengths), h.B, h.S1) or [h.S1] * h.B
    kvlens = checks.lengths("actual_seq_lengths_kv", checks.int_list(actual_seq_lengths_kv), h.B, h.S2) \
        or [h.S2] * h.B
    has_mask = call.mask is not None
    check_band_tokens(call.mode, pre_tokens, next_tokens, h.S1, qlens, kvlens, has_mask)
    bands = [masks.prefill_band(call.mode, pre_tokens, next_tokens, q, kv, has_mask, False)
             for q, kv in zip(qlens, kvlens)]
    if call.quant.int8_out:
        check_int8_output(call.quant, call.mode, pre_tokens, next_tokens, h.S1, qlens, kvlens, bands)
    return qlens, kvlens, bands


def validate(query, key, value, **kwargs) -> PromptCall:
    """torch_npu's arguments of ``npu_prompt_flash_attention`` (spec ops §2.1) → a ``PromptCall``."""
    unknown = sorted(set(kwargs) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"{OP} got unexpected keyword arguments {unknown}")
    kw = {**DEFAULTS, **kwargs}
    call = validate_static(query, key, value, **kw)
    qlens, kvlens, bands = per_batch(call, *(kw[k] for k in DYNAMIC_ARGS))
    return replace(call, qlens=qlens, kvlens=kvlens, bands=bands)


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


def pack(qlens: list[int], kvlens: list[int], bands: list[Band], offsets: Optional[tuple] = None,
         tiles: int = 0, block_m: int = 0) -> torch.Tensor:
    """The parameter block of a prefill-kernel call (``offsets`` per batch, zeros when None); with ``tiles``
    (a token-grid launch, ``token_grid``) followed by the tail of ``tiles`` row tiles of ``block_m`` tokens."""
    if offsets is None:
        return params.pack([(q, kv, 0, 0, 0, 0, *band.clamped(), 0) for q, kv, band in zip(qlens, kvlens, bands)])
    rows = [(q, kv, *off[:4], *band.clamped(), off[4]) for q, kv, band, off in zip(qlens, kvlens, bands, offsets)]
    return params.pack(rows, _tail(qlens, offsets, tiles, block_m) if tiles else ())


def _tail(qlens: list[int], offsets: tuple, tiles: int, block_m: int) -> list[int]:
    """Per row tile of the token axis, ``lo, hi``: the parameter-block rows whose query rows meet it
    (``lo == hi``: none)."""
    lo, hi = [len(qlens)] * tiles, [0] * tiles
    for b, (q, off) in enumerate(zip(qlens, offsets)):
        if q > 0:
            for t in range(off[0] // block_m, (off[0] + q - 1) // block_m + 1):
                lo[t], hi[t] = min(lo[t], b), b + 1
    return [w for t in range(tiles) for w in ((lo[t], hi[t]) if hi[t] else (0, 0))]


def token_grid(call: PromptCall) -> bool:
    """A token-major call: its grid covers the token axis (``prefill.token_grid``), whatever the number
    of batches in its parameter block."""
    return call.sources.varlen


def _extra_tiles(call: PromptCall) -> int:
    """The [BLOCK_M, BLOCK_N] tiles a key block reads besides Q/K/V (``prefill.block_config``); 0 where
    the numerics follow the key block (int8 pipeline, fp16 path), so the reference's block is the kernel's."""
    if call.quant.int8_in or call.fp16_path:
        return 0
    return (call.mask is not None) + (call.pse is not None)


def _mask_summary(call: PromptCall, block_m: int, block_n: int) -> Optional[mask_summary.SummaryConfig]:
    """The block summary of the call's user mask, where the kernel's row tiles and key blocks are the mask's
    own tiles: mask rows and columns read from 0 (no left padding), row tiles of one batch each (no token
    grid)."""
    m, h, src = call.mask, call.heads, call.sources
    if m is None or token_grid(call) or src.q_pad is not None or src.kv_pad is not None or m.shape[1] < h.S1:
        return None
    prefix = 0 if src.prefix is None else src.prefix[0].shape[2]
    return mask_summary.SummaryConfig(
        batches=int(m.shape[0]), rows=h.S1, cols=min(int(m.shape[2]), h.S2 + prefix), block_m=block_m,
        block_n=block_n, mask_strides=(checks.broadcast_stride(m, 0), int(m.stride(1)), int(m.stride(2))))


def summary_words(call: PromptCall, on_gpu: bool) -> int:
    """int32 words of the call's mask summary scratch (0: none) on a GPU (``on_gpu``) or the CPU."""
    block_m, block_n, _, _ = prefill.block_config(call.heads.D, call.heads.Dv, on_gpu, _extra_tiles(call))
    summary = _mask_summary(call, block_m, block_n)
    return 0 if summary is None else summary.words


def summary_scratch(static: prefill.PrefillConfig, device: torch.device) -> Optional[torch.Tensor]:
    """The mask summary scratch of a functional call (None without a summary)."""
    return None if static.summary is None else alloc.empty((static.summary.words,), torch.int32, device)


def plan(call: PromptCall, out: torch.Tensor, lse: Optional[torch.Tensor],
         on_gpu: Optional[bool] = None) -> Plan:
    """Static configuration and parameter block; ``lse`` is the (B, N, S1) view the kernel writes;
    ``on_gpu`` picks the block sizes (default: the output's device)."""
    h = call.heads
    o4 = out_view(call, out)
    on_gpu = o4.device.type == "cuda" if on_gpu is None else on_gpu
    block_m, block_n, warps, stages = prefill.block_config(h.D, h.Dv, on_gpu, _extra_tiles(call))
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
            ("LSE_EMPTY", call.lse_empty), ("FP16_PATH", call.fp16_path), ("TOKEN_GRID", token_grid(call)))
    bn_total = h.B * h.N
    tiles = prefill.cdiv(h.S1, block_m) if token_grid(call) else 0
    static = prefill.PrefillConfig(
        strides=tuple(int(s) for s in strides),
        sizes=(h.N, h.S1, h.S2, bn_total, h.group, call.sources.page_size), meta=meta,
        grid=prefill.token_grid(h.S1, block_m, h.N) if tiles else prefill.grid(h.S1, block_m, bn_total),
        num_warps=warps, num_stages=stages, sm_scale=call.scale, summary=_mask_summary(call, block_m, block_n))
    return Plan(static, pack(call.qlens, call.kvlens, call.bands, call.offsets, tiles, block_m))


def out_view(call: PromptCall, out: torch.Tensor) -> torch.Tensor:
    """(B, N, S1, Dv) view of the output; token-major outputs are shared by all batches (stride 0)."""
    o4 = as_bnsd(out, call.layout.out, call.heads.N)
    return o4.expand(call.heads.B, *o4.shape[1:]) if call.sources.varlen else o4


def _pow2(x: int, least: int = 16) -> int:
    return max(least, 1 << (x - 1).bit_length())


def operands(call: PromptCall, o4: torch.Tensor, lse: Optional[torch.Tensor],
             summary: Optional[torch.Tensor] = None) -> tuple:
    """The prefill kernel's tensors: Q, K, V, O, LSE, MASK, PSE (Q standing in for absent ones), the
    quantisation scales DEQ1, QS1, DEQ2, QS2, QO2, the fused-operator sources (``Sources.tensors``) and the
    mask summary's scratch, None where absent."""
    h = call.heads
    mask = call.mask
    if mask is not None and mask.dtype == torch.bool:
        mask = mask.view(torch.uint8)
    return (h.q, h.k, h.v, o4, h.q if lse is None else lse, h.q if mask is None else mask,
            h.q if call.pse is None else call.pse, *call.quant.kernel_scales(), *call.sources.tensors(), summary)


class Prepared(plans.Prepared):
    """A prefill-kernel call planned once for its signature (``plans.Prepared``)."""

    __slots__ = ("has_lse",)

    def __init__(self, call: PromptCall, static, o4: torch.Tensor, lse: Optional[torch.Tensor], args: tuple,
                 execution: str, summary: Optional[torch.Tensor] = None):
        super().__init__(call, static, operands(call, o4, lse, summary), args, execution,
                         functools.partial(launch, static))
        self.has_lse = lse is not None

    def native(self, ops: tuple, block: torch.Tensor, args: tuple) -> None:
        from ..reference import execute

        execute.prefill(self.bound.bind(args), block, ops[3], ops[4] if self.has_lse else None)

    def check_blocks(self, block: torch.Tensor, call: PromptCall) -> None:
        src = call.sources
        if src.table is not None:
            kvlens = params.field(block.cpu(), call.heads.B, params.KVLEN)
            checks.block_table_ids(src.table, kvlens, src.page_size, call.heads.k.shape[0])


def launch(static: prefill.PrefillConfig, ops: tuple, block: torch.Tensor) -> None:
    """The prefill kernel on the tensors of ``operands``."""
    prefill.launch(static, *ops[:7], block, scales=ops[7:12], sources=ops[12:23], summary=ops[23])


_plans = plans.Cache()


_PER_CALL = frozenset(DYNAMIC_ARGS)
_DYNAMIC_DEFAULTS = tuple(DEFAULTS[name] for name in DYNAMIC_ARGS)
_LISTS = frozenset(("actual_seq_lengths", "actual_seq_lengths_kv"))


def output(call: PromptCall) -> torch.Tensor:
    h = call.heads
    return alloc.empty(out_shape(call.layout.out, h.B, h.N, h.S1, h.Dv), call.out_dtype, h.q.device)


def _tnd_arguments(query, key, value, kwargs: dict) -> dict:
    """The fused operator's keyword arguments of a TND call (``prompt_tnd``), its keywords checked first."""
    if kwargs.keys() - DEFAULTS.keys():
        validate(query, key, value, **kwargs)              # raises for the unknown keyword
    return prompt_tnd.fused_arguments(query, key, value, kwargs)


def fake(query, key, value, **kwargs) -> torch.Tensor:
    """The output of a call, validated (the fake implementation used while tracing)."""
    if kwargs.get("input_layout") == "TND":
        from . import fused

        call = fused.validate(query, key, value, **_tnd_arguments(query, key, value, kwargs))
        return fused.outputs(call)[0]
    return output(validate(query, key, value, **kwargs))


def npu_prompt_flash_attention(query, key, value, **kwargs) -> torch.Tensor:
    """Eager implementation behind ``torch.ops.npu.npu_prompt_flash_attention`` (keyword arguments and
    defaults: ``DEFAULTS``)."""
    return entry(query, key, value, kwargs)


def entry(query, key, value, kwargs: dict) -> torch.Tensor:
    """The eager implementation, its keyword arguments a dict it may keep (the entry points pass theirs).
    A repeated signature validates and packs only the per-call integers; so does a task update that
    matches its captured call (``plans.rewritten``), which plans and submits nothing."""
    kwargs = checks.host_lists(kwargs, _LISTS)
    if kwargs.get("input_layout") == "TND":
        from . import fused

        return fused.npu_fused_infer_attention_score(query, key, value, **_tnd_arguments(query, key, value,
                                                                                          kwargs))[0]
    qkv = (query, key, value)
    if tasks.captured is not None:
        cap = plans.rewritten(OP, qkv, kwargs, cached_block)
        if cap is not None:
            return plans.spare_output(cap, query.device)
    # a plan's signature holds the names given: an unknown keyword finds none, and validation rejects it
    key_ = tuple(plans.signature(query, key, value, kwargs, _PER_CALL))
    hit = _plans.get(key_)
    if hit is None:
        args = (*qkv, *map(kwargs.get, TENSOR_ARGS[3:]))
        call = validate(query, key, value, **kwargs)
        out = output(call)
        pl = plan(call, out, None)
        summary = summary_scratch(pl.static, out.device)
        p = Prepared(call, pl.static, out_view(call, out), None, (*args, out, summary), execution(out.device), summary)
        if p.cacheable:
            hit = plans.Entry(p, call, out, kwargs, TENSOR_ARGS[3:], DYNAMIC_ARGS, _DYNAMIC_DEFAULTS)
            _plans.put(key_, hit)
        block = pl.params
    else:
        p = hit.prepared
        args = (*qkv, *hit.pick(kwargs))
        out = alloc.empty(hit.shape, hit.dtype, query.device)
        summary = summary_scratch(p.static, out.device)
        block = cached_block(hit, kwargs)
    if out.numel():
        tasks.submit(tasks.Task(OP, p.static, block, out.device, run=p.run, args=(*args, out, summary), roles=_ROLES,
                                given=hit and (plans.Given, hit, qkv, kwargs, _PER_CALL)))
    return out


def cached_block(hit: plans.Entry, kwargs: dict) -> torch.Tensor:
    """The parameter block of a cached call (``hit``: the plan cache's entry)."""
    dynamic = hit.dynamic(kwargs)
    return hit.recent.block(dynamic, lambda: pack(*per_batch(hit.call, *dynamic)))


_ROLES = tasks.INPUT * len(TENSOR_ARGS) + tasks.OWN * 2          # out, mask summary scratch
