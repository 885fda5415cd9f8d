"""``_npu_paged_attention`` (ATB PagedAttention, spec vllm-ascend-ops §1.1-§1.2, §1.5) on the fused
operator's decode path, and NZ paged caches (§5) as the attention operators read them.

The call: one decode query row per request, keys and values from paged caches, no mask. It runs as the
fused operator (``ops.fused``) with a BSND query (rows, 1, N, D) of the first ``rows = min(T, B)`` query
rows, the caches as BnBsH (nb, bs, KV_N·D) views (ND) or NZ views, the block table's first ``rows`` rows
and kv lengths = ``context_lens`` (its plan, validation and task: the split-KV decode kernels when
Dv = D, else the prefill kernel with the decode semantics), into a scratch output; a second task writes
the rows of requests with a non-zero length into ``out`` and leaves every other row untouched, as the NPU
does. Both tasks read the lengths from their parameter blocks, so a task update that changes
``context_lens`` changes both.

Rows (spec §1.1): the NPU gives request b the query/output row r(b) = the number of non-empty requests
before it. With the empty requests trailing (as vLLM-Ascend pads) r(b) = b; an empty request followed
by a non-empty one is rejected (documented deviation: the compaction is not reproduced), as is a
non-empty request without a query row (b >= T).

Caches must be contiguous (the NPU's binding copies other inputs; a copy would miss the cache writes
that a captured graph's replays see). ``context_lens`` is host data on the NPU (read by its tiling at the call): it is read at the call here
too, without waiting for device work; a device tensor is copied to the host (a synchronisation). The
``workspace`` argument is accepted and not used (the fused call has its own scratch);
``_npu_paged_attention_get_workspace`` returns a zeroed 1-byte uint8 tensor.

NZ caches. The attention operators see a paged cache as (blocks, KV_N, block_size, D). An NZ cache holds
element (blk, n, t, d) at [blk, n, d // c0, t, d % c0] (c0 = 32 bytes of elements): its view here
(``nz_heads``) is the (blocks, KV_N, block_size, D) view of the 5-D tensor with token stride c0 and
channel stride 1, which addresses channel d correctly within its c0-wide tile only; channel d is at
``(d // c0) * tile + d % c0`` from the token's first channel, tile = block_size · c0 (``nz_tiles``). A
view with token stride c0 < D is never a plain cache (its rows would overlap, which ``check_rows``
rejects), so the layout travels with the view into every plan. Readers: the CPU execution path gathers
paged blocks with ``reference.paged_attention.paged_rows``; the Triton kernels (decode and prefill) take
(C0, tile stride) per cache from ``kernel_tiles`` as a constexpr and an argument, C0 = 0 for a plain
cache, and add the tile term to their channel offsets (``kernels.prefill.channel_offsets``). K, V and
the key rope part of one call may each be NZ or not. NZ caches are paged, so the prefill kernel reads them
through pointers (its tensor descriptors are for dense layouts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .. import checks, params, plans, tasks
from ..device import check_device
from ..errors import require
from . import fused, incre
from .kv_cache import contiguous, nz_c0, nz_cache
from .sources import PLAIN

OP = "_npu_paged_attention"
MAX_HEAD_DIM = 576          # the NPU's limit of D and Dv
KERNEL_HEAD_DIM = checks.MAX_D


# NZ caches -------------------------------------------------------------------------------------------


def nz_heads(name: str, cache: torch.Tensor, kv_n: int) -> torch.Tensor:
    """The (blocks, KV_N, block_size, D) view of an NZ cache (blocks, KV_N, D / c0, block_size, c0)."""
    checks.tensor(name, cache, ndim=(5,))
    c0 = nz_c0(cache.dtype)
    require(cache.shape[4] == c0, name, cache,
            f"an NZ cache (blocks, KV_N, D/c0, block_size, c0) of {cache.dtype} has c0 = {c0} (32 bytes)")
    nb, heads, tiles, bs, _ = cache.shape
    require(heads == kv_n, name, cache, f"the NZ cache's head axis (dim 1) must be num_key_value_heads={kv_n}")
    nz_cache(name, cache, kv_n, tiles * c0)                     # contiguous, dims as the NZ layout
    return cache.as_strided((nb, kv_n, bs, tiles * c0), (cache.stride(0), cache.stride(1), c0, 1),
                            cache.storage_offset())


def nz_tiles(view: torch.Tensor) -> Optional[tuple[int, int]]:
    """(c0, tile stride) of a (blocks, KV_N, block_size, D) view of an NZ cache; None for a plain view."""
    c0 = nz_c0(view.dtype)
    if view.stride(3) == 1 and view.stride(2) == c0 < view.shape[3]:
        return c0, view.shape[2] * c0
    return None


def kernel_tiles(view: Optional[torch.Tensor]) -> tuple[int, int]:
    """(C0, tile stride) of a paged cache view as the kernels take it: ``nz_tiles``, (0, 0) for a plain
    view or none."""
    return (None if view is None else nz_tiles(view)) or PLAIN


def check_rows(name: str, view: torch.Tensor) -> None:
    """A plain (blocks, KV_N, block_size, D) cache view keeps each token's D channels apart."""
    require(view.stride(3) != 1 or view.stride(2) >= view.shape[3], name, view,
            f"the tokens of a paged cache overlap (token stride {view.stride(2)} < D={view.shape[3]})")


# _npu_paged_attention ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PagedCall:
    """The static part of a call: how it maps onto the fused operator."""

    rows: int                  # query rows of the fused call: min(T, B)
    capacity: int              # longest kv length: block_table columns x block_size
    nz: bool                   # NZ caches (blocks, KV_N*D/c0, block_size, c0)
    kv_n: int
    fused: dict                # the fused call's scalar keyword arguments
    static: tuple              # the row-writing task's static plan


def _caches(key_cache, value_cache, kv_n: int, d: int) -> tuple[bool, int, int]:
    """(NZ, block_size, Dv) of the two caches: ND (nb, bs, KV_N, D), else NZ (nb, KV_N*D/c0, bs, c0)."""
    for name, t in (("key_cache", key_cache), ("value_cache", value_cache)):
        checks.tensor(name, t, ndim=(4,))
    nd = key_cache.shape[2:] == (kv_n, d) and value_cache.shape[2] == kv_n
    if nd:
        require(value_cache.shape[:2] == key_cache.shape[:2], "value_cache", value_cache,
                f"dims 0-1 (num_blocks, block_size) must equal the key cache's {tuple(key_cache.shape[:2])}")
        for name, t in (("key_cache", key_cache), ("value_cache", value_cache)):
            contiguous(name, t)
        return False, key_cache.shape[1], value_cache.shape[3]
    c0 = nz_c0(key_cache.dtype)
    require(key_cache.shape[3] == c0 and value_cache.shape[3] == c0, "key_cache", key_cache,
            f"caches are ND (num_blocks, block_size, {kv_n}, D={d}) or NZ (num_blocks, {kv_n}*D/{c0}, block_size, {c0})")
    require(value_cache.shape[1] % kv_n == 0, "value_cache", value_cache,
            f"an NZ cache's dim 1 is num_kv_heads ({kv_n}) x Dv / {c0}")
    dv = value_cache.shape[1] // kv_n * c0
    kc, vc = nz_cache("key_cache", key_cache, kv_n, d, False), nz_cache("value_cache", value_cache, kv_n, dv, False)
    require((vc.blocks, vc.block_size) == (kc.blocks, kc.block_size), "value_cache", value_cache,
            f"must have the key cache's num_blocks ({kc.blocks}) and block_size ({kc.block_size})")
    for name, dim in (("key_cache", d), ("value_cache", dv)):
        require(dim % c0 == 0, name, key_cache if name == "key_cache" else value_cache,
                f"an NZ cache needs a head dim that is a multiple of c0={c0} (got {dim})")
    return True, kc.block_size, dv


def _block_size_rules(block_size: int, d: int, dv: int) -> None:
    """The NPU's block-size rules (spec §1.1)."""
    require(block_size > 0 and block_size % 16 == 0, "key_cache", block_size,
            "block_size (the cache's token axis) must be a positive multiple of 16")
    if d > 256 or dv > 256:
        require(block_size <= 128, "key_cache", block_size, f"block_size must be <= 128 with head dims ({d}, {dv}) > 256")
    elif d == dv == 256 and block_size >= 128:
        require(block_size % 128 == 0, "key_cache", block_size, "block_size >= 128 must be a multiple of 128 with D = 256")
    elif d == dv:
        require(d * block_size <= 128 * 128, "key_cache", block_size, f"D x block_size must be <= 16384 (D = {d})")


def validate_static(query, key_cache, value_cache, num_kv_heads, num_heads, scale_value, block_table,
                    context_lens, out, workspace=None) -> PagedCall:
    """Everything but the lengths' values (spec §1.1 constraints)."""
    query = checks.tensor("query", query, ndim=(3,), dtypes=checks.FLOAT_DTYPES)
    require(isinstance(num_heads, int) and num_heads > 0, "num_heads", num_heads, "must be an int > 0")
    require(isinstance(num_kv_heads, int) and num_kv_heads >= 0, "num_kv_heads", num_kv_heads,
            "must be an int >= 0 (0 means num_heads)")
    require(num_kv_heads == 0 or num_heads % num_kv_heads == 0, "num_kv_heads", num_kv_heads,
            f"num_heads ({num_heads}) must be divisible by it")
    kv_n = checks.head_counts(num_heads, num_kv_heads)
    t, n, d = query.shape
    require(n == num_heads, "num_heads", num_heads, f"must equal the query's head axis ({n})")
    for name, c in (("key_cache", key_cache), ("value_cache", value_cache)):
        checks.tensor(name, c, dtypes=(query.dtype,))
    nz, block_size, dv = _caches(key_cache, value_cache, kv_n, d)
    for name, dim in (("query", d), ("value_cache", dv)):
        require(0 < dim <= MAX_HEAD_DIM, name, query if name == "query" else value_cache,
                f"head dim {dim} must be in [1, {MAX_HEAD_DIM}]")
        if dim > KERNEL_HEAD_DIM:
            raise NotImplementedError(f"{name}: head dim {dim} > {KERNEL_HEAD_DIM} (the MLA shapes up to "
                                      f"{MAX_HEAD_DIM}) is not implemented by the attention kernels")
    _block_size_rules(block_size, d, dv)
    if block_size > incre.MAX_BLOCK_SIZE:
        raise NotImplementedError(f"key_cache: block_size {block_size} > {incre.MAX_BLOCK_SIZE} (allowed by the NPU "
                                  "for D x block_size <= 16384) is not implemented by the decode path")
    require(isinstance(scale_value, (int, float)) and abs(float(scale_value)) < float("inf"), "scale_value",
            scale_value, "must be a finite float")
    checks.tensor("block_table", block_table, ndim=(2,), dtypes=(torch.int32,))
    require(isinstance(context_lens, torch.Tensor), "context_lens", context_lens, "expected a torch.Tensor", TypeError)
    require(context_lens.dim() == 1 and context_lens.dtype == torch.int32, "context_lens", context_lens,
            "must be a 1-D int32 tensor (one kv length per request)", TypeError)
    if context_lens.device.type != "cpu":
        check_device("context_lens", context_lens)
    b = context_lens.shape[0]
    require(block_table.shape[0] == b, "block_table", block_table,
            f"must have a row per request (B = len(context_lens) = {b})")
    checks.tensor("out", out, dtypes=(query.dtype,))
    require(tuple(out.shape) == (t, n, dv), "out", out, f"must be (T={t}, N={n}, Dv={dv}) {query.dtype}")
    require(out.is_contiguous(), "out", out, "must be contiguous (the NPU writes it as is)")
    if workspace is not None:
        checks.tensor("workspace", workspace)
    rows = min(t, b)
    kw = dict(num_heads=n, num_key_value_heads=kv_n, scale=float(scale_value), input_layout="BSND",
              block_size=block_size)
    return PagedCall(rows, block_table.shape[1] * block_size, nz, kv_n, kw, (OP, rows, n, dv, query.dtype, out.device))


def fused_tensors(call: PagedCall, query, key_cache, value_cache, block_table) -> tuple:
    """The fused call's query (rows, 1, N, D), key and value caches, and block table: views."""
    q = query[:call.rows].unsqueeze(1)
    if call.nz:                                         # NZ4 (nb, KV_N*D/c0, bs, c0) -> NZ5
        k, v = (c.unflatten(1, (call.kv_n, -1)) for c in (key_cache, value_cache))
    else:                                               # ND4 (nb, bs, KV_N, D) -> BnBsH
        k, v = (c.flatten(2) for c in (key_cache, value_cache))
    return q, k, v, block_table[:call.rows]


def per_call(call: PagedCall, context_lens: torch.Tensor) -> list[int]:
    """The kv length of each request, read from the host tensor and checked; those of the first ``rows``."""
    with torch._C.DisableTorchFunction():              # host data, as on the NPU: no device read
        lens = context_lens.tolist()
    for b, length in enumerate(lens):
        require(0 <= length <= call.capacity, "context_lens", lens,
                f"lengths must be in [0, {call.capacity}] (block_table columns x block_size; request {b}: {length})")
        if length and b:
            require(lens[b - 1] > 0, "context_lens", lens,
                    f"request {b} has a length after an empty request {b - 1}: the NPU's row compaction "
                    "is not reproduced, empty requests must trail")
        require(length == 0 or b < call.rows, "context_lens", lens,
                f"request {b} has a length but no query row (T = {call.rows})")
    return lens[:call.rows]


def _write_rows(block: torch.Tensor, args: tuple) -> None:
    """``out[b] = result[b]`` for the rows whose kv length (in the parameter block) is non-zero."""
    result, out = args
    rows = result.shape[0]
    keep = (block[:rows * params.FIELDS].view(rows, params.FIELDS)[:, params.KVLEN.value] > 0)[:, None, None]
    out[:rows].copy_(torch.where(keep, result[:, 0], out[:rows]))


_plans = plans.Cache()


def _npu_paged_attention(query, key_cache, value_cache, num_kv_heads, num_heads, scale_value, block_table,
                         context_lens, out, *, workspace=None) -> None:
    """Eager implementation behind ``torch.ops.npu._npu_paged_attention``: writes ``out`` in place."""
    key_ = tuple(plans.signature(query, key_cache, value_cache, {
        "block_table": block_table, "context_lens": context_lens, "out": out, "workspace": workspace,
        "num_kv_heads": num_kv_heads, "num_heads": num_heads, "scale_value": scale_value}, frozenset()))
    call = _plans.get(key_)
    if call is None:
        call = validate_static(query, key_cache, value_cache, num_kv_heads, num_heads, scale_value, block_table,
                               context_lens, out, workspace)
        _plans.put(key_, call)
    lens = per_call(call, context_lens)
    if not call.rows:
        return
    q, k, v, table = fused_tensors(call, query, key_cache, value_cache, block_table)
    result, _ = fused.npu_fused_infer_attention_score(q, k, v, block_table=table, actual_seq_lengths_kv=lens,
                                                      **call.fused)
    tasks.submit(tasks.Task(OP, call.static, incre.pack(lens), out.device, run=_write_rows, args=(result, out),
                            roles=tasks.OWN + tasks.OUTPUT))


def get_workspace(query, key_cache, value_cache, num_kv_heads, num_heads, scale_value, block_table,
                  context_lens, out) -> torch.Tensor:
    """``_npu_paged_attention_get_workspace``: validates the call; a zeroed 1-byte uint8 tensor (never read)."""
    validate_static(query, key_cache, value_cache, num_kv_heads, num_heads, scale_value, block_table,
                    context_lens, out)
    return torch.zeros(1, dtype=torch.uint8, device=query.device)
