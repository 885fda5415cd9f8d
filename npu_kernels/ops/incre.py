"""``npu_incre_flash_attention`` (IFA): validate → plan → run (spec ops §3).

``validate`` turns torch_npu's arguments into an ``IncreCall`` (views, sizes, per-batch kv lengths,
paging, anti-quantisation), ``plan`` into the decode kernels' static configuration and the parameter
block, ``run`` allocates the output and the split-KV workspace and submits both launches as one task
(``npu_kernels.tasks``).

Graph safety: the number of splits and both grids come from static sizes (the key tensor's S2, or the
block table's capacity), the kv lengths from the parameter block, and ``kv_padding_size`` is read on the
device (element 0, as the NPU does), so neither validation nor the run path reads device memory.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Optional

import torch
from einops import rearrange

from .. import alloc, checks, params, plans, quant, tasks
from ..device import execution
from ..errors import require
from ..kernels import decode
from ..layouts import Layout, as_bnsd, out_shape
from ..masks import BAND_INF, FILL_DECODE, LSE_DECODE_EMPTY
from .sources import PLAIN

OP = "npu_incre_flash_attention"
LAYOUTS = ("BSH", "BSND", "BNSD")
MAX_S2 = 262144
MAX_BLOCK_SIZE = 512
ALL_INT8_ARGS = ("dequant_scale1", "quant_scale1", "dequant_scale2")


@dataclass(frozen=True)
class Paged:
    """PagedAttention (spec ops §1.12): token t of batch b is at block ``table[b, t // block_size]``."""

    table: torch.Tensor              # (B, max blocks) int32
    block_size: int
    nz: tuple[tuple[int, int], ...]  # (C0, tile stride) of the key and value caches (sources.PLAIN: not NZ)


@dataclass(frozen=True)
class AntiQuant:
    """Int8 key/value anti-quantisation ``x = (x_int8 + offset) * scale`` (spec ops §1.9)."""

    scale: torch.Tensor              # (2, KV_N, D) view, [0] key and [1] value; stride 0 where broadcast
    offset: Optional[torch.Tensor]   # same shape, None for symmetric


@dataclass(frozen=True)
class IncreCall:
    """Validated arguments of one decode-path call, in (B, N, S, D) terms."""

    heads: checks.Heads              # q (B, N, 1, D); k/v (B, KV_N, S2, D) or paged (blocks, KV_N, block_size, D)
    layout: Layout
    dtype: torch.dtype               # query dtype
    out_dtype: torch.dtype
    kvlens: list[int]
    capacity: int                    # longest possible kv length: S2, or blocks per sequence × block_size
    kv_pad: Optional[torch.Tensor]   # int64, element 0 = right padding of every batch; read on the device
    mask: Optional[torch.Tensor]     # (B, 1, C >= capacity) view; non-zero = masked out
    pse: Optional[torch.Tensor]      # (B or 1, N, 1, C >= capacity)
    scale: float
    paged: Optional[Paged] = None
    antiquant: Optional[AntiQuant] = None
    quant: quant.QuantArgs = quant.NO_QUANT      # int8 output (quant_scale2 / quant_offset2)
    fill: float = FILL_DECODE


def _paged_heads(query, key, value, layout: Layout, num_heads: int, kv_n: int, block_table,
                 block_size) -> tuple[checks.Heads, Paged]:
    """Query view and the paged caches as (blocks, KV_N, block_size, D) views (spec ops §1.12)."""
    q = as_bnsd(query, layout.inp, num_heads)
    b, n, s1, d = q.shape
    table = checks.tensor("block_table", block_table, ndim=(2,), dtypes=(torch.int32,))
    require(table.shape[0] == b, "block_table", table, f"must be (B={b}, max blocks per sequence)")
    require(isinstance(block_size, int) and 0 < block_size <= MAX_BLOCK_SIZE, "block_size", block_size,
            f"must be an int in [1, {MAX_BLOCK_SIZE}] with block_table")
    multiple = 32 if key.dtype == torch.int8 else 16
    require(block_size % multiple == 0, "block_size", block_size,
            f"must be a multiple of {multiple} for {key.dtype} key/value caches")
    from .paged_attention import check_rows, kernel_tiles, nz_heads

    views = []
    for name, t in (("key", key), ("value", value)):
        if t.dim() == 3:
            require(t.shape[1] == block_size and t.shape[2] == kv_n * d, name, t,
                    f"a paged cache is (blocks, block_size={block_size}, KV_N*D={kv_n * d})")
            view = rearrange(t, "m s (h d) -> m h s d", h=kv_n)
            check_rows(name, view)
        elif t.dim() == 5:
            view = nz_heads(name, t, kv_n)
            require(tuple(view.shape[1:]) == (kv_n, block_size, d), name, t,
                    f"an NZ paged cache is (blocks, KV_N={kv_n}, D/c0, block_size={block_size}, c0) with D={d}")
        else:
            require(t.dim() == 4, name, t, "a paged cache has 3, 4 or 5 (NZ) dimensions")
            require(layout.inp == "BNSD", name, t,
                    f"the (blocks, KV_N, block_size, D) cache needs input_layout BNSD, got {layout.inp}")
            require(tuple(t.shape[1:]) == (kv_n, block_size, d), name, t,
                    f"a paged cache is (blocks, KV_N={kv_n}, block_size={block_size}, D={d})")
            view = t
            check_rows(name, view)
        views.append(view)
    require(key.shape == value.shape, "value", value, f"must have the key cache's shape {tuple(key.shape)}")
    capacity = table.shape[1] * block_size
    heads = checks.Heads(q, views[0], views[1], b, n, kv_n, s1, capacity, d, d)
    return heads, Paged(table, block_size, tuple(map(kernel_tiles, views)))


def _antiquant(key, antiquant_scale, antiquant_offset, layout: Layout, dtype: torch.dtype,
               kv_n: int, d: int) -> Optional[AntiQuant]:
    """Anti-quantisation parameters as (2, KV_N, D) views (spec ops §3.2)."""
    if key.dtype != torch.int8:
        for name, t in (("antiquant_scale", antiquant_scale), ("antiquant_offset", antiquant_offset)):
            require(t is None, name, t, f"only with int8 key/value (key is {key.dtype})")
        return None
    require(antiquant_scale is not None, "antiquant_scale", None, "int8 key/value need antiquant_scale")
    channel = {"BNSD": (2, kv_n, 1, d), "BSND": (2, kv_n, d), "BSH": (2, kv_n * d)}[layout.inp]

    def view(name: str, t) -> torch.Tensor:
        checks.tensor(name, t, dtypes=(dtype,))
        shape = tuple(t.shape)
        require(shape in ((2,), channel), name, t, f"must be per-tensor (2,) or per-channel {channel} "
                f"for layout {layout.inp} (index 0 key, 1 value)")
        if shape == (2,):
            return t[:, None, None].expand(2, kv_n, d)
        return rearrange(t, "t n 1 d -> t n d") if t.dim() == 4 else \
            rearrange(t, "t (n d) -> t n d", n=kv_n) if t.dim() == 2 else t

    scale = view("antiquant_scale", antiquant_scale)
    offset = None
    if antiquant_offset is not None:
        offset = view("antiquant_offset", antiquant_offset)
        require(antiquant_offset.shape == antiquant_scale.shape, "antiquant_offset", antiquant_offset,
                f"must have antiquant_scale's shape {tuple(antiquant_scale.shape)}")
    return AntiQuant(scale, offset)


DEFAULTS = {
    "padding_mask": None, "atten_mask": None, "pse_shift": None, "actual_seq_lengths": None, "antiquant_scale": None,
    "antiquant_offset": None, "block_table": None, "dequant_scale1": None, "quant_scale1": None,
    "dequant_scale2": None, "quant_scale2": None, "quant_offset2": None, "kv_padding_size": None, "num_heads": 1,
    "scale_value": 1.0, "input_layout": "BSH", "num_key_value_heads": 0, "block_size": 0, "inner_precise": 1,
}
TENSOR_ARGS = ("query", "key", "value", "padding_mask", "atten_mask", "pse_shift", "antiquant_scale",
               "antiquant_offset", "block_table", "dequant_scale1", "quant_scale1", "dequant_scale2", "quant_scale2",
               "quant_offset2", "kv_padding_size")


def validate_static(query, key, value, *, padding_mask=None, atten_mask=None, pse_shift=None, antiquant_scale=None,
                    antiquant_offset=None, block_table=None, dequant_scale1=None, quant_scale1=None,
                    dequant_scale2=None, quant_scale2=None, quant_offset2=None, kv_padding_size=None, num_heads=1,
                    scale_value=1.0, input_layout="BSH", num_key_value_heads=0, block_size=0, inner_precise=1,
                    lengths_given: bool = False, lengths_name: str = "actual_seq_lengths") -> IncreCall:
    """Everything but the kv lengths: an ``IncreCall`` without them (``lengths_given``: whether the call
    has them, as the argument ``lengths_name``)."""
    query = checks.tensor("query", query)
    key = checks.tensor("key", key)
    value = checks.tensor("value", value)
    require(query.dtype in checks.FLOAT_DTYPES, "query", query,
            "dtype must be float16 or bfloat16 (int8 query/key/value is not supported by this operator)",
            TypeError)
    require(key.dtype in (query.dtype, torch.int8) and value.dtype == key.dtype, "key", key,
            f"key and value must both be {query.dtype} or both int8 (with antiquant_scale)", TypeError)
    for name, val in zip(ALL_INT8_ARGS, (dequant_scale1, quant_scale1, dequant_scale2)):
        require(val is None, name, val, "only for int8 query/key/value, which this operator does not support")
    layout = Layout.parse(input_layout, LAYOUTS)
    require(isinstance(scale_value, (int, float)) and abs(float(scale_value)) < float("inf"), "scale_value",
            scale_value, "must be a finite float")
    require(inner_precise in (0, 1), "inner_precise", inner_precise, "must be 0 (high precision) or 1 (high "
            "performance)")
    kv_n = checks.head_counts(num_heads, num_key_value_heads)

    paged = None
    if block_table is None:
        heads = checks.qkv_heads(query, key, value, layout, num_heads, num_key_value_heads)
        require(heads.S2 <= MAX_S2, "key", key, f"kv seq length must be <= {MAX_S2}")
    else:
        require(query.dim() == (3 if layout.inp == "BSH" else 4), "query", query,
                f"layout {layout.inp} needs {3 if layout.inp == 'BSH' else 4} dimensions")
        if layout.inp == "BSH":
            require(query.shape[2] % num_heads == 0, "query", query,
                    f"hidden size must be divisible by num_heads={num_heads}")
        require(num_heads == as_bnsd(query, layout.inp, num_heads).shape[1], "num_heads", num_heads,
                "must equal the query's head axis")
        heads, paged = _paged_heads(query, key, value, layout, num_heads, kv_n, block_table, block_size)
        checks.head_dim("query", query, heads.D)
        require(heads.B <= checks.MAX_B, "query", query, f"batch must be <= {checks.MAX_B}")
    require(heads.S1 == 1, "query", query, f"the query seq length must be 1, got {heads.S1}")
    require(heads.Dv == heads.D, "value", value, f"value head dim ({heads.Dv}) must equal the query's ({heads.D})")
    require(paged is None or lengths_given, lengths_name, None, "required with block_table (PagedAttention)")

    kv_pad = None
    if kv_padding_size is not None:
        checks.tensor("kv_padding_size", kv_padding_size, dtypes=(torch.int64,))
        require(kv_padding_size.numel() >= 1, "kv_padding_size", kv_padding_size, "needs at least one element")
        require(paged is None, "kv_padding_size", kv_padding_size, "cannot be combined with block_table")
        if lengths_given:                          # only active together with actual_seq_lengths
            kv_pad = kv_padding_size.reshape(-1)[:1]

    mask = None if atten_mask is None else checks.decode_mask(atten_mask, heads.B, heads.S2)
    pse = None
    if pse_shift is not None:
        require(heads.D % 16 == 0, "pse_shift", pse_shift, f"needs a head dim multiple of 16, got {heads.D}")
        pse = checks.pse(pse_shift, query.dtype, heads.B, heads.N, 1, heads.S2)
    antiquant = _antiquant(key, antiquant_scale, antiquant_offset, layout, query.dtype, kv_n, heads.D)
    qa = quant.full_quant_args(query.dtype, heads.N, heads.Dv, quant_scale2=quant_scale2,
                               quant_offset2=quant_offset2)
    require(not (qa.per_channel and kv_pad is not None), "quant_scale2", quant_scale2,
            "per-channel output quantisation cannot be combined with kv_padding_size")
    return IncreCall(heads=heads, layout=layout, dtype=query.dtype,
                     out_dtype=torch.int8 if qa.int8_out else query.dtype, kvlens=[], capacity=heads.S2,
                     kv_pad=kv_pad, mask=mask, pse=pse, scale=float(scale_value), paged=paged, antiquant=antiquant,
                     quant=qa)


def per_batch(call: IncreCall, actual_seq_lengths, name: str = "actual_seq_lengths") -> list[int]:
    """The kv length of each batch (the argument ``name``), validated."""
    h = call.heads
    lens = checks.lengths(name, checks.int_list(actual_seq_lengths), h.B, min(h.S2, MAX_S2))
    return lens if lens is not None else [h.S2] * h.B


def validate(query, key, value, **kwargs) -> IncreCall:
    """torch_npu's arguments of ``npu_incre_flash_attention`` (spec ops §3.1) → an ``IncreCall``."""
    unknown = sorted(set(kwargs) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"{OP} got unexpected keyword arguments {unknown}")
    kw = {**DEFAULTS, **kwargs}
    lengths = kw.pop("actual_seq_lengths")
    call = validate_static(query, key, value, lengths_given=lengths is not None, **kw)
    return replace(call, kvlens=per_batch(call, lengths))


@dataclass(frozen=True)
class Plan:
    static: decode.DecodeConfig
    params: torch.Tensor              # [B * FIELDS] int32, CPU


def _pow2(x: int) -> int:
    return max(16, 1 << (x - 1).bit_length())


def _programs(device: torch.device, on_gpu: bool) -> int:
    """Split-kernel programs that fill the device: one per SM on a GPU (the decode kernel's registers and
    shared memory leave one program resident per SM, ``python -m bench report``); in the interpreter
    enough for several splits per (batch, kv head) at test sizes, so that the combine step is exercised."""
    if not on_gpu:
        return 16
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 132


def plan(call: IncreCall, out: torch.Tensor, lse: Optional[torch.Tensor] = None,
         on_gpu: Optional[bool] = None) -> Plan:
    """Static configuration and parameter block. ``lse`` is a view whose first two dims are (B, N);
    ``on_gpu`` picks block sizes and splits (default: the output's device)."""
    h = call.heads
    o4 = as_bnsd(out, call.layout.out, h.N)
    on_gpu = o4.device.type == "cuda" if on_gpu is None else on_gpu
    block_n, warps, stages = decode.block_config(h.D, h.Dv, on_gpu, call.antiquant is not None,
                                                 0 if call.paged is None else call.paged.block_size)
    splits = decode.num_splits(call.capacity, h.B * h.KV_N, block_n, _programs(h.q.device, on_gpu))
    mask_strides = (0, 0) if call.mask is None else (int(call.mask.stride(0)), int(call.mask.stride(2)))
    pse_strides = (0, 0, 0) if call.pse is None else \
        (checks.broadcast_stride(call.pse, 0), int(call.pse.stride(1)), int(call.pse.stride(3)))
    table_strides = (0, 0) if call.paged is None else tuple(int(s) for s in call.paged.table.stride())
    aq = call.antiquant
    aq_strides = (0, 0, 0) if aq is None else tuple(int(s) for s in aq.scale.stride())
    aqo_strides = (0, 0, 0) if aq is None or aq.offset is None else tuple(int(s) for s in aq.offset.stride())
    (k_c0, k_tile), (v_c0, v_tile) = (PLAIN, PLAIN) if call.paged is None else call.paged.nz
    q = h.q
    split_strides = (q.stride(0), q.stride(1), q.stride(3), *h.k.stride(), *h.v.stride(), *mask_strides,
                     *pse_strides, *table_strides, *aq_strides, *aqo_strides, k_tile, v_tile)
    block_size = call.paged.block_size if call.paged is not None else 1
    split_meta = (("HEAD_DIM", h.D), ("HEAD_DIM_V", h.Dv), ("BLOCK_G", _pow2(h.group)), ("BLOCK_D", _pow2(h.D)),
                  ("BLOCK_DV", _pow2(h.Dv)), ("BLOCK_N", block_n),
                  ("HAS_MASK", call.mask is not None), ("HAS_PSE", call.pse is not None),
                  ("HAS_KV_PAD", call.kv_pad is not None), ("IS_PAGED", call.paged is not None),
                  ("ANTIQUANT", call.antiquant is not None),
                  ("HAS_AQ_OFFSET", call.antiquant is not None and call.antiquant.offset is not None),
                  ("FILL", call.fill), ("K_C0", k_c0), ("V_C0", v_c0))
    lse_strides = (0, 0) if lse is None else (int(lse.stride(0)), int(lse.stride(1)))
    combine_meta = (("HEAD_DIM_V", h.Dv), ("BLOCK_DV", _pow2(h.Dv)), ("BLOCK_S", 16),
                    ("BLOCK_N", block_n), ("HAS_KV_PAD", call.kv_pad is not None),
                    ("HAS_LSE", lse is not None), ("LSE_EMPTY", LSE_DECODE_EMPTY),
                    *(kv for kv in call.quant.meta() if kv[0] != "QUANT_MODE"))
    split_grid, combine_grid = decode.grids(splits, h.B * h.KV_N, h.B * h.N)
    rows_ws = h.B * h.N * splits
    static = decode.DecodeConfig(
        split_strides=tuple(int(s) for s in split_strides),
        split_sizes=(h.KV_N, h.B * h.KV_N, h.group, h.S2, block_size, splits), split_meta=split_meta,
        combine_strides=(int(o4.stride(0)), int(o4.stride(1)), int(o4.stride(3)), *lse_strides),
        combine_sizes=(h.N, h.B * h.N, h.S2, splits), combine_meta=combine_meta, split_grid=split_grid,
        combine_grid=combine_grid, num_warps=warps, num_stages=stages, sm_scale=call.scale, splits=splits,
        workspace=(rows_ws * h.Dv, rows_ws * 2))
    return Plan(static, pack(call.kvlens))


def pack(kvlens: list[int]) -> torch.Tensor:
    """The parameter block of a decode call: one query row and the kv length per batch."""
    return params.pack([(1, kv, 0, 0, 0, 0, BAND_INF, BAND_INF, 0) for kv in kvlens])


def operands(call: IncreCall, o4: torch.Tensor, lse: Optional[torch.Tensor], ws_acc: torch.Tensor,
             ws_ml: torch.Tensor) -> tuple:
    """The decode kernels' tensors: the split kernel's Q, K, V, MASK, PSE, TABLE, KV_PAD, AQ_SCALE,
    AQ_OFFSET, WS_ACC, WS_ML, then the combine kernel's O, LSE, QS2, QO2 (Q standing in for absent ones)."""
    h = call.heads
    mask = None if call.mask is None else (call.mask.view(torch.uint8) if call.mask.dtype == torch.bool else call.mask)
    aq = call.antiquant
    return tuple(h.q if t is None else t for t in (
        h.q, h.k, h.v, mask, call.pse, call.paged and call.paged.table, call.kv_pad, aq and aq.scale,
        aq and aq.offset, ws_acc, ws_ml, o4, lse, call.quant.quant_scale2, call.quant.quant_offset2))


def launch(static: decode.DecodeConfig, ops: tuple, block: torch.Tensor) -> None:
    """Both decode kernels on the tensors of ``operands``."""
    decode.launch(static, (*ops[:11], block), (ops[9], ops[10], ops[11], ops[12], ops[6], ops[13], ops[14], block))


def kernel_tensors(call: IncreCall, out: torch.Tensor, lse: Optional[torch.Tensor], ws_acc: torch.Tensor,
                   ws_ml: torch.Tensor, block: torch.Tensor) -> tuple[tuple, tuple]:
    """Tensor arguments of the split and combine kernels (absent tensors replaced by a dummy)."""
    ops = operands(call, as_bnsd(out, call.layout.out, call.heads.N), lse, ws_acc, ws_ml)
    return (*ops[:11], block), (ops[9], ops[10], ops[11], ops[12], ops[6], ops[13], ops[14], block)


def scratch(static: decode.DecodeConfig, workspace: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The split-KV partial accumulators and (max, sum) pairs, carved from a float32 ``workspace``."""
    n_acc, n_ml = static.workspace
    require(workspace.dtype == torch.float32 and workspace.is_contiguous() and workspace.numel() >= n_acc + n_ml,
            "workspace", workspace, f"must be a contiguous float32 tensor of at least {n_acc + n_ml} elements")
    return workspace[:n_acc], workspace[n_acc:n_acc + n_ml]


class Prepared(plans.Prepared):
    """A decode call planned once for its signature (``plans.Prepared``)."""

    __slots__ = ("has_lse",)

    def __init__(self, call: IncreCall, static: decode.DecodeConfig, ops: tuple, has_lse: bool, args: tuple,
                 execution: str):
        """``ops``: the call's ``operands``."""
        super().__init__(call, static, ops, args, execution, functools.partial(launch, static))
        self.has_lse = has_lse

    def native(self, ops: tuple, block: torch.Tensor, args: tuple) -> None:
        from ..reference import execute

        execute.decode(self.bound.bind(args), block, ops[11], ops[12] if self.has_lse else None)

    def check_blocks(self, block: torch.Tensor, call: IncreCall) -> None:
        if call.paged is not None:
            kvlens = params.field(block.cpu(), call.heads.B, params.KVLEN)
            checks.block_table_ids(call.paged.table, kvlens, call.paged.block_size, call.heads.k.shape[0])


def output(call: IncreCall) -> torch.Tensor:
    """Output of the query's shape (spec ops §3.1: empty_like(query)) in the output dtype."""
    h = call.heads
    return alloc.empty(out_shape(call.layout.inp, h.B, h.N, 1, h.Dv), call.out_dtype, h.q.device)


_plans = plans.Cache()
_LENGTHS = ("actual_seq_lengths",)
_PER_CALL = frozenset(_LENGTHS)     # per-call integers: the kv lengths (whether given is static)


def npu_incre_flash_attention(query, key, value, **kwargs) -> torch.Tensor:
    """Eager implementation behind ``torch.ops.npu.npu_incre_flash_attention`` (keyword arguments and
    defaults: ``DEFAULTS``)."""
    return entry(query, key, value, kwargs)


def entry(query, key, value, kwargs: dict) -> torch.Tensor:
    """The eager implementation, its keyword arguments a dict it may keep (the entry points pass theirs).
    A repeated signature validates and packs only the kv lengths; so does a task update that matches its
    captured call (``plans.rewritten``), which plans and submits nothing."""
    kwargs = checks.host_lists(kwargs, _PER_CALL)
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
        pl = plan(call, out)
        ws = alloc.empty((sum(pl.static.workspace),), torch.float32, out.device)
        ops = operands(call, as_bnsd(out, call.layout.out, call.heads.N), None, *scratch(pl.static, ws))
        p = Prepared(call, pl.static, ops, False, (*args, out, ws), execution(out.device))
        if p.cacheable:
            hit = plans.Entry(p, call, out, kwargs, TENSOR_ARGS[3:], _LENGTHS, (None,))
            _plans.put(key_, hit)
        block = pl.params
    else:
        p = hit.prepared
        args = (*qkv, *hit.pick(kwargs))
        out = alloc.empty(hit.shape, hit.dtype, query.device)
        ws = alloc.empty((sum(p.static.workspace),), torch.float32, out.device)
        block = cached_block(hit, kwargs)
    if out.numel():
        tasks.submit(tasks.Task(OP, p.static, block, out.device, run=p.run, args=(*args, out, ws), roles=_ROLES,
                                given=hit and (plans.Given, hit, qkv, kwargs, _PER_CALL)))
    return out


def cached_block(hit: plans.Entry, kwargs: dict) -> torch.Tensor:
    """The parameter block of a cached call (``hit``: the plan cache's entry): its kv lengths."""
    lengths = hit.dynamic(kwargs)
    return hit.recent.block(lengths, lambda: pack(per_batch(hit.call, *lengths)))


_ROLES = tasks.INPUT * len(TENSOR_ARGS) + tasks.OWN * 2
