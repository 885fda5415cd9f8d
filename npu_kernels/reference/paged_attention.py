"""Golden ``_npu_paged_attention`` (spec vllm-ascend-ops §1.1) and the read of paged caches, ND or NZ.

``paged_rows`` gathers blocks of a paged cache as the attention operators see it, (blocks, KV_N, page,
D): a plain view, or the view of an NZ cache (``ops.paged_attention.nz_heads``), whose channel d is at
tile d // c0 of its block (read through ``kv_cache.Cache.token_view``).

The paged-attention reference loops over the requests: for request b with L = context_lens[b] > 0 it
reads keys and values 0..L-1 through its block-table row and writes output row b; rows of empty requests
are not written. Math in ``compute_dtype`` (float32 or float64): scores ``scale · q·k``, softmax, P rounded
to the input dtype before P·V (as the NPU's kernel), one cast of the result.
"""

from __future__ import annotations

import torch
from einops import rearrange, repeat

from ..ops import paged_attention as op
from ..ops.kv_cache import Cache


def _nz_blocks(store: torch.Tensor, c0: int, tile: int) -> torch.Tensor:
    """(blocks, KV_N, page, D / c0, c0) view of the (blocks, KV_N, page, D) view of an NZ cache."""
    nb, kv_n, page, d = store.shape
    nz = store.as_strided((nb, kv_n, d // c0, page, c0), (store.stride(0), store.stride(1), tile, c0, 1))
    tokens = Cache(nz, True, nb, page, kv_n * d, c0).token_view()        # (blocks, page, H / c0, c0)
    return tokens.unflatten(2, (kv_n, d // c0)).transpose(1, 2)


def paged_rows(store: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Blocks ``ids`` (G, nblk) of a (blocks, KV_N, page, ...) cache view as (G, KV_N, nblk * page, ...)."""
    tiles = op.nz_tiles(store) if store.dim() == 4 else None
    if tiles is None:
        g = store.index_select(0, ids.reshape(-1))                       # (G * nblk, KV_N, page, ...)
    else:
        g = _nz_blocks(store, *tiles).index_select(0, ids.reshape(-1)).flatten(3)
    return g.unflatten(0, ids.shape).transpose(1, 2).flatten(2, 3)


def _npu_paged_attention(query, key_cache, value_cache, num_kv_heads, num_heads, scale_value, block_table,
                         context_lens, out, *, workspace=None, compute_dtype: torch.dtype = torch.float32) -> None:
    """Reference of ``nk._npu_paged_attention`` (same arguments, validated the same way): writes ``out``."""
    call = op.validate_static(query, key_cache, value_cache, num_kv_heads, num_heads, scale_value, block_table,
                              context_lens, out, workspace)
    lens = op.per_call(call, context_lens)
    q, k, v, table = op.fused_tensors(call, query, key_cache, value_cache, block_table)
    k4, v4 = (_view(t, call.kv_n) for t in (k, v))
    page = call.fused["block_size"]
    group = num_heads // call.kv_n
    for b, length in enumerate(lens):
        if not length:
            continue
        ids = table[b:b + 1, :-(-length // page)].long()
        kb, vb = (repeat(paged_rows(t, ids)[0, :, :length], "g s d -> (g r) s d", r=group) for t in (k4, v4))
        s = float(scale_value) * torch.einsum("nd,nsd->ns", q[b, 0].to(compute_dtype), kb.to(compute_dtype))
        p = torch.exp(s - s.amax(-1, keepdim=True))
        o = torch.einsum("ns,nsd->nd", p.to(query.dtype).to(compute_dtype), vb.to(compute_dtype))
        out[b] = (o / p.sum(-1, keepdim=True)).to(out.dtype)


def _view(cache: torch.Tensor, kv_n: int) -> torch.Tensor:
    """The fused call's cache (BnBsH, or NZ 5-D) as the (blocks, KV_N, page, D) view."""
    if cache.dim() == 5:
        return op.nz_heads("cache", cache, kv_n)
    return rearrange(cache, "k s (n d) -> k n s d", n=kv_n)
