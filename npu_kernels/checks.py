"""Validation shared by the operators: tensors, heads, lengths, masks and pse (spec ops §1-§2).

Each check raises ``ValueError``/``TypeError`` naming the argument, the value and the rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from .device import check_device
from .errors import require
from .layouts import Layout, as_bnsd, bnsd_shape
from .masks import COMPRESSED_MASK

FLOAT_DTYPES = (torch.float16, torch.bfloat16)
MASK_DTYPES = (torch.bool, torch.int8, torch.uint8)
MAX_B, MAX_N, MAX_D, MAX_S, MAX_G = 65536, 256, 512, 20971520, 64


def tensor(name: str, t, *, ndim: Optional[tuple[int, ...]] = None,
           dtypes: Optional[tuple[torch.dtype, ...]] = None) -> torch.Tensor:
    require(isinstance(t, torch.Tensor), name, t, "expected a torch.Tensor", TypeError)
    if dtypes is not None:
        require(t.dtype in dtypes, name, t, f"dtype must be one of {', '.join(map(str, dtypes))}", TypeError)
    if ndim is not None:
        require(t.dim() in ndim, name, t, f"expected {' or '.join(map(str, ndim))} dimensions")
    check_device(name, t)
    return t


@dataclass(frozen=True)
class Heads:
    """Query/key/value as (B, N, S, D) views and their sizes."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    B: int
    N: int
    KV_N: int
    S1: int
    S2: int
    D: int
    Dv: int

    @property
    def group(self) -> int:
        return self.N // self.KV_N


def extent(t: torch.Tensor) -> int:
    """Bytes from the first to one past the last element of ``t`` (0 when empty)."""
    if t.numel() == 0:
        return 0
    return (sum((n - 1) * s for n, s in zip(t.shape, t.stride())) + 1) * t.element_size()


def written(tensors: Sequence[tuple[str, Optional[torch.Tensor]]]) -> None:
    """Tensors an operator writes (``(name, tensor)``, None skipped): no element shares memory with another
    element of the same tensor (an expanded view) or of another one in the list."""
    spans = []
    for name, t in tensors:
        if t is None or not t.numel():
            continue
        require(torch._debug_has_internal_overlap(t) != 1, name, t,
                "elements share memory (an expanded or overlapping view): every element is written")
        lo = t.data_ptr()
        hi = lo + extent(t)
        for other, (o_lo, o_hi) in spans:
            require(lo >= o_hi or o_lo >= hi, name, t, f"shares memory with {other}: both are written")
        spans.append((name, (lo, hi)))


def head_counts(num_heads: int, num_key_value_heads: int) -> int:
    """KV_N from num_heads/num_key_value_heads after the GQA rules (spec ops §1.2)."""
    require(isinstance(num_heads, int) and 0 < num_heads <= MAX_N, "num_heads", num_heads,
            f"must be an int in [1, {MAX_N}]")
    require(isinstance(num_key_value_heads, int) and num_key_value_heads >= 0, "num_key_value_heads",
            num_key_value_heads, "must be an int >= 0 (0 means num_heads)")
    kv_n = num_key_value_heads or num_heads
    require(num_heads % kv_n == 0, "num_key_value_heads", num_key_value_heads,
            f"num_heads ({num_heads}) must be divisible by it")
    require(num_heads // kv_n <= MAX_G, "num_key_value_heads", num_key_value_heads,
            f"num_heads / num_key_value_heads must be <= {MAX_G}")
    return kv_n


def head_dim(name: str, t: torch.Tensor, dim: int, aligned: Optional[torch.dtype] = None) -> None:
    """D in [1, 512]; ``aligned`` (the prefill path, given the query's dtype): a multiple of 16 for a
    float16/bfloat16 query, 32 for an int8 one; else a D that is not a multiple of 16 is supported up to 128."""
    require(0 < dim <= MAX_D, name, t, f"head dim {dim} must be in [1, {MAX_D}]")
    if aligned is not None:
        unit = 32 if aligned == torch.int8 else 16
        require(dim % unit == 0, name, t, f"head dim {dim} must be a multiple of {unit} with a {aligned} query "
                "on the prefill path")
    require(dim % 16 == 0 or dim <= 128, name, t, f"head dim {dim} not a multiple of 16 is supported only up to 128")


def qkv_heads(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, layout: Layout,
              num_heads: int, num_key_value_heads: int, aligned: bool = False) -> Heads:
    """Reads B, N, KV_N, S1, S2, D, Dv per the layout and checks the GQA rules (spec ops §1.2); ``aligned``:
    head dims as the prefill path needs them (``head_dim``)."""
    ndim = 3 if layout.inp == "BSH" else 4
    for name, t in (("query", query), ("key", key), ("value", value)):
        require(t.dim() == ndim, name, t, f"layout {layout.inp} needs {ndim} dimensions")
    kv_n = head_counts(num_heads, num_key_value_heads)
    if layout.inp == "BSH":
        require(query.shape[2] % num_heads == 0, "query", query,
                f"hidden size must be divisible by num_heads={num_heads}")
        require(key.shape[2] % kv_n == 0, "key", key, f"hidden size must be divisible by the kv heads ({kv_n})")
        require(value.shape[2] % kv_n == 0, "value", value,
                f"hidden size must be divisible by the kv heads ({kv_n})")
    b, n, s1, d = bnsd_shape(query, layout.inp, num_heads)
    kb, kn, s2, kd = bnsd_shape(key, layout.inp, kv_n)
    vb, vn, vs, dv = bnsd_shape(value, layout.inp, kv_n)
    require(n == num_heads, "num_heads", num_heads, f"must equal the query's head axis ({n})")
    require(kn == kv_n and vn == kv_n, "num_key_value_heads", num_key_value_heads,
            f"key/value head axes are ({kn}, {vn}), expected {kv_n}")
    require(kb == b and vb == b, "key", key, f"key/value batch must equal the query batch ({b})")
    require(vs == s2, "value", value, f"value seq length must equal the key's ({s2})")
    require(kd == d, "key", key, f"key head dim ({kd}) must equal the query head dim ({d})")
    require(b <= MAX_B, "query", query, f"batch must be <= {MAX_B}")
    require(s1 <= MAX_S and s2 <= MAX_S, "query", query, f"seq lengths must be <= {MAX_S}")
    head_dim("query", query, d, query.dtype if aligned else None)
    head_dim("value", value, dv, query.dtype if aligned else None)
    if layout.inp in ("BSH", "BSND"):
        require(n * d < 65535, "query", query, f"N*D = {n * d} must be < 65535 in layout {layout.inp}")
    return Heads(as_bnsd(query, layout.inp, num_heads), as_bnsd(key, layout.inp, kv_n),
                 as_bnsd(value, layout.inp, kv_n), b, n, kv_n, s1, s2, d, dv)


def lengths(name: str, values: Optional[Sequence[int]], batch: int, upper: int) -> Optional[list[int]]:
    """Per-batch lengths: one value broadcast, or >= batch values of which the first batch are used.
    Symbolic values (tracing) stay symbolic, so a traced call is not specialised to their values."""
    if values is None:
        return None
    if type(values) in (list, tuple) and all(type(v) is int for v in values):      # the common case, fast
        out = [values[0]] * batch if len(values) == 1 else list(values[:batch]) if len(values) >= batch else None
        if out is not None and all(0 <= v <= upper for v in out):
            return out
    require(isinstance(values, (list, tuple)) and all(isinstance(v, (int, torch.SymInt)) for v in values), name,
            values, "must be a list of ints")
    require(len(values) == 1 or len(values) >= batch, name, values,
            f"needs 1 or at least B={batch} values, got {len(values)}")
    out = [values[0]] * batch if len(values) == 1 else list(values[:batch])
    for v in out:
        require(0 <= v <= upper, name, values, f"every length must be in [0, {upper}]")
    return out


def host_lists(kwargs: dict, names: frozenset) -> dict:
    """``kwargs`` with each of ``names`` that is given as a tensor read as a list of ints, as the dispatcher
    reads a tensor passed for an ``int[]`` argument (a host read)."""
    for name in kwargs.keys() & names:
        v = kwargs[name]
        if type(v) is not list and isinstance(v, torch.Tensor):
            require(v.dim() == 1 and not v.is_floating_point() and not v.is_complex() and v.dtype != torch.bool,
                    name, v, "a tensor given for a list of ints must be 1-D with an integer dtype")
            kwargs = {**kwargs, name: v.tolist()}
    return kwargs


def int_list(values) -> Optional[list[int]]:
    """A list/tuple of ints (or SymInts while tracing) as a sequence of ints; other values are returned for
    ``lengths`` to reject."""
    if values is None or not isinstance(values, (list, tuple)) or all(type(v) is int for v in values):
        return values
    return [v if isinstance(v, torch.SymInt) else int(v) for v in values] \
        if all(isinstance(v, (int, torch.SymInt)) for v in values) else values


def user_mask(atten_mask: torch.Tensor, batch: Optional[int], rows: int, cols: int) -> torch.Tensor:
    """Full mask (spec ops §1.4, sparse 0/1) as a (B or 1, R >= rows, C >= cols) view (``batch`` None:
    checked per call with ``mask_covers``)."""
    tensor("atten_mask", atten_mask, ndim=(2, 3, 4), dtypes=MASK_DTYPES)
    m = atten_mask
    if m.dim() == 4:
        require(m.shape[1] == 1, "atten_mask", m, "a 4-D mask must be (B or 1, 1, S1, S2)")
        m = m[:, 0]
    elif m.dim() == 2:
        m = m.unsqueeze(0)
    mask_covers(atten_mask, m, batch, rows, cols)
    return m


def mask_covers(atten_mask: torch.Tensor, m: torch.Tensor, batch: Optional[int], rows: int, cols: int) -> None:
    """The (B or 1, R, C) view ``m`` of ``atten_mask`` has B = ``batch`` (or 1) and covers rows x cols."""
    if batch is not None:
        require(m.shape[0] in (1, batch), "atten_mask", atten_mask, f"batch axis must be 1 or B={batch}")
    require(m.shape[1] >= rows and m.shape[2] >= cols, "atten_mask", atten_mask,
            f"last two dims must be at least ({rows}, {cols})")


def decode_mask(atten_mask: torch.Tensor, batch: int, cols: int) -> torch.Tensor:
    """Decode-path mask (spec ops §1.4: (B, S2), (B, 1, S2) or (B, 1, 1, S2); non-zero = masked out)
    as a (B, 1, C >= cols) view."""
    tensor("atten_mask", atten_mask, ndim=(2, 3, 4), dtypes=MASK_DTYPES)
    require(atten_mask.shape[0] == batch and all(x == 1 for x in atten_mask.shape[1:-1]), "atten_mask",
            atten_mask, f"decode masks are (B={batch}, S2), (B, 1, S2) or (B, 1, 1, S2)")
    m = atten_mask.unsqueeze(1) if atten_mask.dim() == 2 else atten_mask[:, 0] if atten_mask.dim() == 4 \
        else atten_mask
    decode_mask_covers(atten_mask, m, cols)
    return m


def decode_mask_covers(atten_mask: torch.Tensor, m: torch.Tensor, cols: int) -> None:
    require(m.shape[2] >= cols, "atten_mask", atten_mask, f"last dim must be at least {cols}")


def compressed_mask(atten_mask, sparse_mode: int) -> torch.Tensor:
    """Sparse modes 2-4 need the 2048x2048 triu(ones, 1) mask; the kernel derives the band instead."""
    require(atten_mask is not None, "atten_mask", None,
            f"sparse_mode={sparse_mode} requires the compressed {COMPRESSED_MASK}x{COMPRESSED_MASK} mask")
    tensor("atten_mask", atten_mask, ndim=(2, 3, 4), dtypes=MASK_DTYPES)
    side = (COMPRESSED_MASK, COMPRESSED_MASK)
    require(tuple(atten_mask.shape[-2:]) == side and all(x == 1 for x in atten_mask.shape[:-2]),
            "atten_mask", atten_mask,
            f"sparse_mode={sparse_mode} needs shape (2048, 2048), (1, 2048, 2048) or (1, 1, 2048, 2048)")
    return atten_mask


def pse(pse_shift: torch.Tensor, dtype: torch.dtype, batch: int, heads: int, rows: int, cols: int) -> torch.Tensor:
    """pse_shift (B or 1, N, S1p >= rows, S2p >= cols) in the query dtype."""
    tensor("pse_shift", pse_shift, ndim=(4,))
    require(pse_shift.dtype == dtype, "pse_shift", pse_shift, f"dtype must be {dtype} for this query")
    b, n, r, c = pse_shift.shape
    require(b in (1, batch) and n == heads, "pse_shift", pse_shift, f"shape must be (B={batch} or 1, N={heads}, ...)")
    pse_covers(pse_shift, rows, cols)
    return pse_shift


def pse_covers(pse_shift: torch.Tensor, rows: int, cols: int) -> None:
    require(pse_shift.shape[2] >= rows and pse_shift.shape[3] >= cols, "pse_shift", pse_shift,
            f"last two dims must be at least ({rows}, {cols})")


def broadcast_stride(t: torch.Tensor, dim: int) -> int:
    """Stride of ``dim``, 0 when the dim has size 1 (shared by all batches)."""
    return 0 if t.shape[dim] == 1 else int(t.stride(dim))


def block_id_error(batch: int, position: int, block_id: int, blocks: int, first_key: int, last_key: int) -> None:
    """The error of ``NPUK_CHECK_BLOCK_TABLE=1`` for a block id outside the cache."""
    require(False, f"block_table[{batch}, {position}]", block_id,
            f"block id outside [0, {blocks}) for keys {first_key}..{last_key} of batch {batch} "
            "(NPUK_CHECK_BLOCK_TABLE=1)")


def block_table_ids(table: torch.Tensor, kvlens: list[int], page: int, blocks: int) -> None:
    """``NPUK_CHECK_BLOCK_TABLE=1`` on the kernels' path: every block id a batch reads (the first
    ceil(kvlen / page) of its row) lies in [0, blocks). Reads the table on the host (a synchronisation on a
    GPU, so not inside a graph capture)."""
    if table.is_cuda and torch.cuda.is_current_stream_capturing():
        raise RuntimeError("NPUK_CHECK_BLOCK_TABLE=1 reads block tables on the host: it cannot check a call "
                           "inside a graph capture")
    rows = table.cpu()
    for b, kvlen in enumerate(kvlens):
        if kvlen <= 0:
            continue
        ids = rows[b, :-(-kvlen // page)]
        bad = ((ids < 0) | (ids >= blocks)).nonzero()
        if len(bad):
            pos = int(bad[0])
            block_id_error(b, pos, int(ids[pos]), blocks, pos * page, min((pos + 1) * page, kvlen) - 1)
