"""KV-cache writes and reads (spec vllm-ascend-ops §2, §5): validate → plan → run.

Operators: ``_npu_reshape_and_cache``, ``_npu_reshape_and_cache_siso``, ``npu_scatter_pa_kv_cache`` (and
``_functional``), ``npu_gather_pa_kv_cache`` (and ``_functional``), ``npu_scatter_nd_update_`` /
``npu_scatter_nd_update``. Pure data movement: elements are moved as their bits (bit exact, NaN payloads
included).

Paged caches (§5.1) are contiguous; a token slot is ``blk * bs + off`` and its channel ``h = n * D + d``
(``H = KV_N * D`` channels per token):

    ND   (nb, bs, KV_N, D)             element offset  slot * H + h
    NZ4  (nb, H / c0, bs, c0)          blk * bs * H + (h // c0) * bs * c0 + off * c0 + h % c0
    NZ5  (nb, KV_N, D / c0, bs, c0)    the same bytes as NZ4 (D % c0 == 0)

with ``c0 = 32 bytes / itemsize`` (16 for fp16/bf16, 32 for int8). ``Cache.token_view`` is this addressing
as a torch view and ``kernels.kv_cache.cache_offset`` as a Triton function; the paged attention kernels
can reuse both, so that writes and reads agree by construction.

Which layout: ``npu_scatter_pa_kv_cache`` follows ``cache_mode`` ("Norm"/None → ND, "PA_NZ" → NZ4 or
NZ5 by rank). The NPU picks the layout of ``_npu_reshape_and_cache`` and ``npu_gather_pa_kv_cache``
from the caches' storage format (FRACTAL_NZ), which plain tensors do not carry; here the shapes decide:
``_npu_reshape_and_cache`` writes ND when both caches are (nb, bs, KV_N, D)-shaped (also when a cache
would fit both, unless the dtypes mix, which only NZ caches allow), else NZ4 when both are
(nb, H / c0, bs, c0)-shaped; ``npu_gather_pa_kv_cache`` reads
"Norm" for 3-D key/value (T, KV_N, D) and "PA_NZ" for 2-D key/value (T, H), as the NPU's shapes are.

Indices (slot mappings, block tables, sequence lengths, offsets, scatter_nd indices) are read on the
device when the launch runs, never on the host, so every call can be captured and replayed with new
index values. Out-of-range values never touch memory outside the tensors:
- a slot outside [0, nb * bs) is skipped (the NPU skips negative slots; larger ones are undefined there);
- a gathered token whose table column is outside the table or whose block id is outside [0, nb) reads
  zeros (as torch_npu's test golden); output rows past the requests' total are not written; a negative
  length (or a decreasing cumulative step) is an empty request;
- a scatter_nd index vector with a component outside its dimension is skipped (undefined on the NPU).
Duplicate slots or indices: one of the writers wins, which one is undefined (as on the NPU).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch

from .. import alloc, checks, env, tasks
from ..errors import not_implemented, require
from ..kernels import kv_cache as kernels

CACHE_DTYPES = (torch.float16, torch.bfloat16, torch.int8)
INDEX_DTYPES = (torch.int32, torch.int64)
SCATTER_ND_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.bool, torch.int64, torch.int8)
CACHE_MODES = (None, "Norm", "PA_NZ")
MAX_BLOCK_SIZE = 65535          # PA_NZ: the cache's block-size dim must be below it
NO_PARAMS = torch.empty(0, dtype=torch.int32)   # no per-call integers: the indices are device tensors


def native(device: torch.device) -> bool:
    """True when a call runs the vectorised PyTorch path (the CPU with NPUK_CPU_KERNELS=native); False
    when it launches the Triton kernels (CUDA, or the CPU with NPUK_CPU_KERNELS=triton)."""
    return device.type == "cpu" and env.cpu_kernels() == "native"


def nz_c0(dtype: torch.dtype) -> int:
    """Inner width of the NZ layout: 32 bytes of elements."""
    return 32 // dtype.itemsize


def bits(t: torch.Tensor) -> torch.Tensor:
    """``t`` viewed as integers of its element size, so that copies move bits (no float canonicalisation)."""
    return t.view({1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


@dataclass(frozen=True)
class Cache:
    """A contiguous paged cache of ``blocks`` blocks of ``block_size`` tokens of ``width`` channels; NZ
    caches hold each block as width / c0 tiles of (block_size, c0); ND caches have c0 = width."""

    tensor: torch.Tensor
    nz: bool
    blocks: int
    block_size: int
    width: int
    c0: int

    @property
    def slots(self) -> int:
        return self.blocks * self.block_size

    @property
    def layout(self) -> tuple:
        return (self.nz, self.blocks, self.block_size, self.width, self.c0, self.tensor.dtype)

    def token_view(self) -> torch.Tensor:
        """(nb, bs, width // c0, c0) view of the cache: ``[blk, off]`` holds token ``blk * bs + off``'s
        channels as width // c0 rows of c0 (ND: one row of width)."""
        t = self.tensor
        if self.nz:
            t = t.permute((0, 2, 1, 3) if t.dim() == 4 else (0, 3, 1, 2, 4))
        return t.view(self.blocks, self.block_size, self.width // self.c0, self.c0)


def contiguous(name: str, t: torch.Tensor) -> None:
    require(t.is_contiguous(), name, t, "must be contiguous (the NPU rejects non-contiguous tensors here)")


def nd_cache(name: str, cache: torch.Tensor, heads: int, dim: int) -> Cache:
    """A (nb, bs, heads, dim) ND cache."""
    checks.tensor(name, cache, ndim=(4,), dtypes=CACHE_DTYPES)
    require(tuple(cache.shape[2:]) == (heads, dim), name, cache,
            f"an ND cache is (num_blocks, block_size, {heads}, {dim}) for tokens of {heads} heads x {dim}")
    contiguous(name, cache)
    return Cache(cache, False, cache.shape[0], cache.shape[1], heads * dim, heads * dim)


def nz_cache(name: str, cache: torch.Tensor, heads: int, dim: int, allow_5d: bool = True) -> Cache:
    """A (nb, heads * dim / c0, bs, c0) NZ cache, or (nb, heads, dim / c0, bs, c0) when ``allow_5d``."""
    checks.tensor(name, cache, ndim=(4, 5) if allow_5d else (4,), dtypes=CACHE_DTYPES)
    c0, width = nz_c0(cache.dtype), heads * dim
    if cache.dim() == 4:
        expected, bs = (width // c0, c0), cache.shape[2]
        ok = width % c0 == 0 and (cache.shape[1], cache.shape[3]) == expected
        shape = f"(num_blocks, {width}/{c0}, block_size, {c0})"
    else:
        expected, bs = (heads, dim // c0, c0), cache.shape[3]
        ok = dim % c0 == 0 and (cache.shape[1], cache.shape[2], cache.shape[4]) == expected
        shape = f"(num_blocks, {heads}, {dim}/{c0}, block_size, {c0})"
    require(ok, name, cache, f"an NZ {cache.dtype} cache (c0 = {c0}) for tokens of {heads} x {dim} channels is {shape}")
    contiguous(name, cache)
    return Cache(cache, True, cache.shape[0], bs, width, c0)


def tokens(name: str, t, ndim: int = 3) -> torch.Tensor:
    return checks.tensor(name, t, ndim=(ndim,), dtypes=CACHE_DTYPES)


def index(name: str, t, dtypes=INDEX_DTYPES, ndim: int = 1) -> torch.Tensor:
    return checks.tensor(name, t, ndim=(ndim,), dtypes=dtypes)


def same_blocks(key: Cache, value: Cache) -> None:
    require((key.blocks, key.block_size) == (value.blocks, value.block_size), "value_cache", value.tensor,
            f"must have the key cache's num_blocks ({key.blocks}) and block_size ({key.block_size})")


def same_dtype(name: str, t: torch.Tensor, dtype: torch.dtype, rule: str) -> None:
    require(t.dtype == dtype, name, t, rule, TypeError)


# ---------------------------------------------------------------------------------------------------
# Scatter: token rows into a paged cache (_npu_reshape_and_cache(_siso), npu_scatter_pa_kv_cache)


@dataclass(frozen=True)
class Rows:
    """Token rows (T, KV_N, D) and the cache they are written to or read from."""

    rows: torch.Tensor
    cache: Cache


@dataclass(frozen=True)
class ScatterCall:
    parts: tuple[Rows, ...]      # key (and value)
    slots: torch.Tensor          # [T] slot of each token


def _pair(key, value, slots, slot_name: str, slot_dtypes) -> None:
    """The checks shared by the two-tensor writes: (T, KV_N, D)/(T, KV_N, Dv) tokens and a [T] slot list."""
    tokens("key", key)
    tokens("value", value)
    require(tuple(value.shape[:2]) == tuple(key.shape[:2]), "value", value,
            f"dims 0-1 (tokens, heads) must equal the key's {tuple(key.shape[:2])}")
    slot_list(slot_name, slots, slot_dtypes, key.shape[0])


def slot_list(name: str, slots, dtypes, count: int) -> None:
    index(name, slots, dtypes)
    require(slots.shape[0] == count, name, slots, f"needs one slot per token ({count})")


def validate_reshape_and_cache(key, value, key_cache, value_cache, slot_indices) -> ScatterCall:
    """ATB ReshapeAndCache (§2.1): ND caches (nb, bs, KV_N, D) or NZ caches (nb, KV_N*D/c0, bs, c0)."""
    _pair(key, value, slot_indices, "slot_indices", (torch.int32,))
    for name, t in (("key_cache", key_cache), ("value_cache", value_cache)):
        checks.tensor(name, t, ndim=(4,), dtypes=CACHE_DTYPES)
    (_, kv_n, d), dv = key.shape, value.shape[2]
    nd = tuple(key_cache.shape[2:]) == (kv_n, d) and tuple(value_cache.shape[2:]) == (kv_n, dv)
    nz = all(c.shape[3] == nz_c0(c.dtype) and c.shape[1] * c.shape[3] == kv_n * dim
             for c, dim in ((key_cache, d), (value_cache, dv)))
    one_dtype = all(t.dtype == key.dtype for t in (value, key_cache, value_cache))
    if nd and (one_dtype or not nz):
        for name, t in (("value", value), ("key_cache", key_cache), ("value_cache", value_cache)):
            same_dtype(name, t, key.dtype, f"ND caches: key, value and both caches share one dtype ({key.dtype})")
        kc, vc = nd_cache("key_cache", key_cache, kv_n, d), nd_cache("value_cache", value_cache, kv_n, dv)
    else:
        require(nz, "key_cache", key_cache,
                f"the caches must both be ND (num_blocks, block_size, {kv_n}, D) or both NZ "
                f"(num_blocks, {kv_n}*D/c0, block_size, c0) for key/value heads of D = {d} / {dv}")
        same_dtype("key_cache", key_cache, key.dtype, f"must have the key's dtype ({key.dtype})")
        same_dtype("value_cache", value_cache, value.dtype, f"must have the value's dtype ({value.dtype})")
        kc, vc = nz_cache("key_cache", key_cache, kv_n, d, False), nz_cache("value_cache", value_cache, kv_n, dv, False)
    same_blocks(kc, vc)
    return ScatterCall((Rows(key, kc), Rows(value, vc)), slot_indices)


def validate_reshape_and_cache_siso(key, key_cache, slot_indices) -> ScatterCall:
    """ATB ReshapeAndCache with the value bypassed (§2.2): ND caches only."""
    tokens("key", key)
    slot_list("slot_indices", slot_indices, (torch.int32,), key.shape[0])
    kc = nd_cache("key_cache", key_cache, key.shape[1], key.shape[2])
    same_dtype("key_cache", key_cache, key.dtype, f"must have the key's dtype ({key.dtype})")
    return ScatterCall((Rows(key, kc),), slot_indices)


def validate_scatter_pa_kv_cache(key, value, key_cache, value_cache, slot_mapping, *, compress_lens=None,
                                 compress_seq_offsets=None, seq_lens=None, cache_mode="PA_NZ") -> ScatterCall:
    """aclnnScatterPaKvCache, the 3-D token scenario (§2.3)."""
    for name, t in (("compress_lens", compress_lens), ("compress_seq_offsets", compress_seq_offsets),
                    ("seq_lens", seq_lens)):
        if t is not None:
            raise not_implemented(name, "the compress scenario of npu_scatter_pa_kv_cache (4-D key/value)")
    require(cache_mode in CACHE_MODES, "cache_mode", cache_mode, "must be 'Norm', None or 'PA_NZ'")
    _pair(key, value, slot_mapping, "slot_mapping", INDEX_DTYPES)
    for name, t in (("key", key), ("value", value), ("slot_mapping", slot_mapping)):
        require(t.numel() > 0, name, t, "empty tensors are rejected")
        contiguous(name, t)
    same_dtype("key_cache", key_cache, key.dtype, f"must have the key's dtype ({key.dtype})")
    same_dtype("value_cache", value_cache, value.dtype, f"must have the value's dtype ({value.dtype})")
    (count, kv_n, d), dv = key.shape, value.shape[2]
    if cache_mode == "PA_NZ":
        for name, t in (("key", key), ("value", value)):
            require(t.shape[2] * t.element_size() % 32 == 0, name, t,
                    "PA_NZ: the head size in bytes must be a multiple of 32")
        kc, vc = nz_cache("key_cache", key_cache, kv_n, d), nz_cache("value_cache", value_cache, kv_n, dv)
        require(kc.block_size < MAX_BLOCK_SIZE, "key_cache", key_cache,
                f"PA_NZ: block_size ({kc.block_size}) must be < {MAX_BLOCK_SIZE}")
    else:
        same_dtype("value", value, key.dtype, f"cache_mode='Norm': key and value share one dtype ({key.dtype})")
        kc, vc = nd_cache("key_cache", key_cache, kv_n, d), nd_cache("value_cache", value_cache, kv_n, dv)
    same_blocks(kc, vc)
    require(kc.slots >= count, "key_cache", key_cache,
            f"num_blocks * block_size ({kc.slots}) must be at least the number of tokens ({count})")
    return ScatterCall((Rows(key, kc), Rows(value, vc)), slot_mapping)


def _scatter_static(op: str, call: ScatterCall, on_native: bool) -> tuple:
    return (op, on_native, call.slots.dtype, tuple(call.slots.shape),
            tuple((tuple(p.rows.shape), p.rows.stride(), p.cache.layout) for p in call.parts))


def _scatter(parts: tuple[Rows, ...], slots: torch.Tensor, on_native: bool) -> None:
    for p in parts:
        if on_native:
            _scatter_native(p, slots)
        else:
            kernels.scatter(bits(p.rows), slots, bits(p.cache.tensor), p.cache.nz, p.cache.c0,
                            p.cache.block_size, p.cache.slots)


def _scatter_native(p: Rows, slots: torch.Tensor) -> None:
    c = p.cache
    s = slots.long()
    keep = (s >= 0) & (s < c.slots)
    s = s[keep]
    rows = bits(p.rows).reshape(len(slots), c.width // c.c0, c.c0)[keep]
    bits(c.token_view()).index_put_((s // c.block_size, s % c.block_size), rows)


def submit_scatter(op: str, call: ScatterCall) -> None:
    """Write the call's rows into its caches in place."""
    if call.slots.numel() == 0:
        return
    device = call.slots.device
    on_native = native(device)

    def launch(block: torch.Tensor) -> None:
        _scatter(call.parts, call.slots, on_native)

    inputs = (*(p.rows for p in call.parts), call.slots)
    outputs = tuple(p.cache.tensor for p in call.parts)
    tasks.submit(tasks.Task(op, _scatter_static(op, call, on_native), NO_PARAMS, device, launch, inputs, outputs))


def submit_scatter_functional(op: str, call: ScatterCall) -> tuple[torch.Tensor, ...]:
    """Write the call's rows into copies of its caches; returns the copies."""
    copies = tuple(alloc.empty(p.cache.tensor.shape, p.cache.tensor.dtype, p.cache.tensor.device)
                   for p in call.parts)
    parts = tuple(Rows(p.rows, replace(p.cache, tensor=c)) for p, c in zip(call.parts, copies))
    device = call.slots.device
    on_native = native(device)

    def launch(block: torch.Tensor) -> None:
        for p, c in zip(call.parts, copies):
            c.copy_(p.cache.tensor)
        _scatter(parts, call.slots, on_native)

    inputs = (*(p.rows for p in call.parts), *(p.cache.tensor for p in call.parts), call.slots)
    tasks.submit(tasks.Task(op, _scatter_static(op, call, on_native), NO_PARAMS, device, launch, inputs))
    return copies


def _npu_reshape_and_cache(key, value, key_cache, value_cache, slot_indices) -> None:
    submit_scatter("_npu_reshape_and_cache",
                   validate_reshape_and_cache(key, value, key_cache, value_cache, slot_indices))


def _npu_reshape_and_cache_siso(key, key_cache, slot_indices) -> None:
    submit_scatter("_npu_reshape_and_cache_siso", validate_reshape_and_cache_siso(key, key_cache, slot_indices))


def npu_scatter_pa_kv_cache(key, value, key_cache, value_cache, slot_mapping, **kwargs) -> None:
    submit_scatter("npu_scatter_pa_kv_cache",
                   validate_scatter_pa_kv_cache(key, value, key_cache, value_cache, slot_mapping, **kwargs))


def npu_scatter_pa_kv_cache_functional(key, value, key_cache, value_cache, slot_mapping,
                                       **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    return submit_scatter_functional(
        "npu_scatter_pa_kv_cache_functional",
        validate_scatter_pa_kv_cache(key, value, key_cache, value_cache, slot_mapping, **kwargs))


# ---------------------------------------------------------------------------------------------------
# Gather: the first seq_lens[b] tokens of each request into contiguous rows (npu_gather_pa_kv_cache)


@dataclass(frozen=True)
class GatherCall:
    parts: tuple[Rows, Rows]             # key and value: the output rows and the cache read
    block_tables: torch.Tensor           # [B, W] int32
    seq_lens: torch.Tensor               # [B] or [B + 1] (cumulative) int32
    seq_offset: Optional[torch.Tensor]   # [B] int32: tokens skipped at the start (whole blocks)
    cumsum: bool

    @property
    def batch(self) -> int:
        return self.block_tables.shape[0]


def validate_gather_pa_kv_cache(key_cache, value_cache, block_tables, seq_lens, key, value, *, seq_offset=None,
                                is_seq_lens_cumsum=False) -> GatherCall:
    """aclnnGatherPaKvCache (§2.4): "Norm" for 3-D key/value, "PA_NZ" for 2-D ones (see the module doc)."""
    key = checks.tensor("key", key, ndim=(2, 3), dtypes=CACHE_DTYPES)
    nz = key.dim() == 2
    tokens("value", value, key.dim())
    require(value.shape[0] == key.shape[0], "value", value, f"must have the key's {key.shape[0]} rows")
    for name, t in (("value", value), ("key_cache", key_cache), ("value_cache", value_cache)):
        checks.tensor(name, t, dtypes=CACHE_DTYPES)
        same_dtype(name, t, key.dtype, f"key, value and both caches share one dtype ({key.dtype})")
    if nz:
        kc, vc = nz_cache("key_cache", key_cache, 1, key.shape[1], False), \
            nz_cache("value_cache", value_cache, 1, value.shape[1], False)
    else:
        require(value.shape[1] == key.shape[1], "value", value, f"must have the key's {key.shape[1]} heads")
        kc, vc = nd_cache("key_cache", key_cache, key.shape[1], key.shape[2]), \
            nd_cache("value_cache", value_cache, value.shape[1], value.shape[2])
    same_blocks(kc, vc)
    index("block_tables", block_tables, (torch.int32,), 2)
    index("seq_lens", seq_lens, (torch.int32,))
    batch = block_tables.shape[0]
    expected = batch + 1 if is_seq_lens_cumsum else batch
    require(seq_lens.shape[0] == expected, "seq_lens", seq_lens,
            f"needs {expected} values ({'batch + 1 with' if is_seq_lens_cumsum else 'batch without'} "
            f"is_seq_lens_cumsum; batch = block_tables.shape[0] = {batch})")
    if seq_offset is not None:
        index("seq_offset", seq_offset, (torch.int32,))
        require(seq_offset.shape[0] == batch, "seq_offset", seq_offset, f"needs one value per request ({batch})")
    for name, t in (("key_cache", key_cache), ("value_cache", value_cache), ("block_tables", block_tables),
                    ("seq_lens", seq_lens), ("key", key), ("value", value), ("seq_offset", seq_offset)):
        if t is not None:
            require(t.numel() > 0, name, t, "empty tensors are rejected")
            contiguous(name, t)
    return GatherCall((Rows(key, kc), Rows(value, vc)), block_tables, seq_lens, seq_offset, is_seq_lens_cumsum)


def _gather_static(op: str, call: GatherCall, on_native: bool) -> tuple:
    return (op, on_native, call.cumsum, call.seq_offset is not None, tuple(call.block_tables.shape),
            tuple((tuple(p.rows.shape), p.cache.layout) for p in call.parts))


def _gather(call: GatherCall, parts: tuple[Rows, ...], on_native: bool) -> None:
    if on_native:
        _gather_native(call, parts)
        return
    for p in parts:
        kernels.gather(bits(p.cache.tensor), call.block_tables, call.seq_lens, call.seq_offset, bits(p.rows),
                       p.cache.nz, p.cache.c0, p.cache.block_size, p.cache.width, p.cache.blocks, call.cumsum)


def _gather_native(call: GatherCall, parts: tuple[Rows, ...]) -> None:
    cache = parts[0].cache
    bs, rows = cache.block_size, parts[0].rows.shape[0]
    b, t, valid = request_rows(call.seq_lens.long(), call.cumsum, rows)
    col = t.div(bs, rounding_mode="floor")
    if call.seq_offset is not None:
        col += call.seq_offset.long().div(bs, rounding_mode="trunc")[b]
    width = call.block_tables.shape[1]
    found = valid & (col >= 0) & (col < width)
    blk = call.block_tables[b, col.clamp(0, width - 1)].long()
    found &= (blk >= 0) & (blk < cache.blocks)
    blk, off = blk.clamp(0, cache.blocks - 1), t.remainder(bs)
    for p in parts:
        c = p.cache
        got = bits(c.token_view())[blk, off]
        got = torch.where(found[:, None, None], got, torch.zeros((), dtype=got.dtype))
        bits(p.rows).view(rows, c.width // c.c0, c.c0)[valid] = got[valid]


def request_tokens(seq_lens: torch.Tensor, cumsum: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(first output row, tokens n_b of each request): n_b = max(seq_lens[b], 0), cumulative:
    max(seq_lens[b+1] - seq_lens[b], 0) from row seq_lens[0]."""
    n = (seq_lens[1:] - seq_lens[:-1] if cumsum else seq_lens).clamp(min=0)
    first = seq_lens[0] if cumsum else torch.zeros((), dtype=seq_lens.dtype, device=seq_lens.device)
    return first, n


def request_rows(seq_lens: torch.Tensor, cumsum: bool, rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each output row r < rows: (request b, token t of b, whether r belongs to a request). Request b
    has n_b = max(seq_lens[b], 0) tokens (cumulative: max(seq_lens[b+1] - seq_lens[b], 0)) at rows
    start_b = first + n_0 + ... + n_{b-1}, first = seq_lens[0] when cumulative, else 0."""
    first, n = request_tokens(seq_lens, cumsum)
    ends = first + n.cumsum(0)
    r = torch.arange(rows, device=seq_lens.device)
    b = torch.searchsorted(ends, r, right=True)
    valid = (b < len(n)) & (r >= first)
    b = b.clamp(max=len(n) - 1)
    return b, r - (ends - n)[b], valid


def submit_gather(op: str, call: GatherCall, parts: Optional[tuple[Rows, ...]] = None) -> None:
    """Fill the rows of ``parts`` (default: the call's key and value) from the caches."""
    parts = call.parts if parts is None else parts
    device = call.seq_lens.device
    on_native = native(device)
    functional = parts is not call.parts

    def launch(block: torch.Tensor) -> None:
        if functional:
            for p, q in zip(call.parts, parts):
                q.rows.copy_(p.rows)
        _gather(call, parts, on_native)

    inputs = tuple(t for t in (*(p.cache.tensor for p in call.parts), call.block_tables, call.seq_lens,
                               call.seq_offset) if t is not None)
    inputs += tuple(p.rows for p in call.parts) if functional else ()
    outputs = () if functional else tuple(p.rows for p in parts)
    tasks.submit(tasks.Task(op, _gather_static(op, call, on_native), NO_PARAMS, device, launch, inputs, outputs))


def rows_fit(call: GatherCall) -> None:
    """The requests' tokens fit the rows of key and value, checked when ``seq_lens`` is readable on the host
    (the CPU); on a GPU the kernel stops at the last row instead (§2.4)."""
    if call.seq_lens.device.type != "cpu":
        return
    first, n = request_tokens(call.seq_lens.long(), call.cumsum)
    need = int(first + n.sum())
    rows = call.parts[0].rows.shape[0]
    require(need <= rows, "seq_lens", call.seq_lens,
            f"the requests' {need} tokens must fit the {rows} rows of key and value")


def npu_gather_pa_kv_cache(key_cache, value_cache, block_tables, seq_lens, key, value, **kwargs) -> None:
    call = validate_gather_pa_kv_cache(key_cache, value_cache, block_tables, seq_lens, key, value, **kwargs)
    rows_fit(call)
    submit_gather("npu_gather_pa_kv_cache", call)


def npu_gather_pa_kv_cache_functional(key_cache, value_cache, block_tables, seq_lens, key, value,
                                      **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    call = validate_gather_pa_kv_cache(key_cache, value_cache, block_tables, seq_lens, key, value, **kwargs)
    rows_fit(call)
    copies = tuple(Rows(alloc.empty(p.rows.shape, p.rows.dtype, p.rows.device), p.cache) for p in call.parts)
    submit_gather("npu_gather_pa_kv_cache_functional", call, copies)
    return copies[0].rows, copies[1].rows


# ---------------------------------------------------------------------------------------------------
# scatter_nd: TensorFlow ScatterNdUpdate (npu_scatter_nd_update(_), §2.5)


@dataclass(frozen=True)
class ScatterNdCall:
    target: torch.Tensor         # self
    indices: torch.Tensor        # [..., a]
    updates: torch.Tensor        # indices.shape[:-1] + self.shape[a:]

    @property
    def depth(self) -> int:      # a: the number of leading dims of self an index vector selects
        return self.indices.shape[-1]

    @property
    def count(self) -> int:      # K: the number of index vectors
        return self.indices.numel() // self.depth

    @property
    def row(self) -> int:        # elements of one selected slice self[i_0, ..., i_{a-1}]
        return self.updates.numel() // self.count if self.count else 0


def validate_scatter_nd_update(self, indices, updates) -> ScatterNdCall:
    checks.tensor("self", self, ndim=tuple(range(1, 9)), dtypes=SCATTER_ND_DTYPES)
    checks.tensor("indices", indices, dtypes=INDEX_DTYPES)
    require(indices.dim() >= 2, "indices", indices, "needs at least 2 dimensions (..., a)")
    depth = indices.shape[-1]
    require(1 <= depth <= self.dim(), "indices", indices,
            f"the last dim (a = {depth}) must be in [1, self.dim() = {self.dim()}]")
    checks.tensor("updates", updates)
    same_dtype("updates", updates, self.dtype, f"must have self's dtype ({self.dtype})")
    expected = tuple(indices.shape[:-1]) + tuple(self.shape[depth:])
    require(tuple(updates.shape) == expected, "updates", updates,
            f"shape must be indices.shape[:-1] + self.shape[a:] = {expected}")
    require(dense_after_first(self), "self", self, "may be non-contiguous in its first dimension only")
    return ScatterNdCall(self, indices, updates)


def dense_after_first(t: torch.Tensor) -> bool:
    """True when dims 1.. of ``t`` are laid out contiguously (dim 0 may have any stride)."""
    expected = 1
    for size, stride in zip(reversed(t.shape[1:]), reversed(t.stride()[1:])):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def _scatter_nd_static(op: str, call: ScatterNdCall, on_native: bool) -> tuple:
    return (op, on_native, call.target.dtype, tuple(call.target.shape), call.target.stride(),
            call.indices.dtype, tuple(call.indices.shape), tuple(call.updates.shape))


def _scatter_nd(call: ScatterNdCall, target: torch.Tensor, on_native: bool) -> None:
    depth = call.depth
    indices = call.indices.reshape(call.count, depth)
    updates = bits(call.updates).reshape(call.count, call.row)
    if not on_native:
        kernels.scatter_nd(bits(target), indices, updates, tuple(target.shape[:depth]), target.stride()[:depth])
        return
    idx = indices.long()
    keep = ((idx >= 0) & (idx < torch.tensor(target.shape[:depth], device=idx.device))).all(1)
    bits(target).index_put_(tuple(idx[keep].unbind(1)), updates[keep].view(-1, *target.shape[depth:]))


def submit_scatter_nd(op: str, call: ScatterNdCall, target: torch.Tensor) -> None:
    """Write the updates into ``target`` (self, or a copy of it for the functional operator)."""
    device = target.device
    on_native = native(device)
    functional = target is not call.target

    def launch(block: torch.Tensor) -> None:
        if functional:
            target.copy_(call.target)
        if call.count and call.row:
            _scatter_nd(call, target, on_native)

    inputs = (call.indices, call.updates) + ((call.target,) if functional else ())
    outputs = () if functional else (target,)
    tasks.submit(tasks.Task(op, _scatter_nd_static(op, call, on_native), NO_PARAMS, device, launch, inputs, outputs))


def npu_scatter_nd_update_(self, indices, updates) -> None:
    """The in-place operator's work; the registered op returns ``self`` (library_cache)."""
    submit_scatter_nd("npu_scatter_nd_update_", validate_scatter_nd_update(self, indices, updates), self)


def npu_scatter_nd_update(self, indices, updates) -> torch.Tensor:
    call = validate_scatter_nd_update(self, indices, updates)
    out = alloc.empty(self.shape, self.dtype, self.device)
    submit_scatter_nd("npu_scatter_nd_update", call, out)
    return out

