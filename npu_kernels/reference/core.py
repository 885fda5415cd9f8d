"""The attention core shared by the golden operators (spec ops §1.6-§1.7 and §9), one batch at a time.

Written for clarity: scores of a whole batch as one (heads, rows, keys) tensor, masks as boolean
matrices from the predicates of ``npu_kernels.masks``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from einops import repeat

from ..masks import Band, band_matrix


@dataclass(frozen=True)
class BatchSpan:
    """Where batch b's valid rows and keys are, and its band."""

    qlen: int
    kvlen: int
    q_off: int       # first row in the query/output seq axis
    kv_off: int      # first key in the key/value seq axis
    qm_off: int      # first row in the mask/pse row axis
    kvm_off: int     # first column in the mask/pse column axis
    band: Band


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spans: list[BatchSpan], *, scale: float,
              fill: float, mask: Optional[torch.Tensor] = None, pse: Optional[torch.Tensor] = None,
              zero_masked_rows: bool = False, empty_lse: float = float("inf"),
              compute_dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """q (B, N, S1, D), k (B, KV_N, S2, D), v (B, KV_N, S2, Dv) → out (B, N, S1, Dv), lse (B, N, S1).

    ``mask`` (B or 1, R, C): non-zero = masked out, used only where ``band.use_user_mask``.
    Rows without a key in the band are 0 with lse ``+inf``; a batch without keys gets ``empty_lse``.
    """
    B, N, S1, _ = q.shape
    group = N // k.shape[1]
    out = torch.zeros(B, N, S1, v.shape[-1], dtype=compute_dtype, device=q.device)
    lse = torch.full((B, N, S1), float("inf"), dtype=compute_dtype, device=q.device)
    for b, sp in enumerate(spans):
        if sp.kvlen == 0:
            lse[b, :, sp.q_off:sp.q_off + sp.qlen] = empty_lse
            continue
        if sp.qlen == 0:
            continue
        rows = slice(sp.q_off, sp.q_off + sp.qlen)
        keys = slice(sp.kv_off, sp.kv_off + sp.kvlen)
        kb = repeat(k[b, :, keys], "g s d -> (g r) s d", r=group).to(compute_dtype)
        vb = repeat(v[b, :, keys], "g s d -> (g r) s d", r=group)
        s = scale * torch.einsum("nid,njd->nij", q[b, :, rows].to(compute_dtype), kb)
        if pse is not None:
            pb = pse[b if pse.shape[0] > 1 else 0]
            s = s + pb[:, sp.qm_off:sp.qm_off + sp.qlen, sp.kvm_off:sp.kvm_off + sp.kvlen].to(compute_dtype)
        keep = band_matrix(sp.qlen, sp.kvlen, sp.band, q.device)               # (qlen, kvlen)
        row_has_key = keep.any(-1)
        masked = ~keep
        if sp.band.use_user_mask and mask is not None:
            mb = mask[b if mask.shape[0] > 1 else 0]
            masked = masked | (mb[sp.qm_off:sp.qm_off + sp.qlen, sp.kvm_off:sp.kvm_off + sp.kvlen] != 0)
        s = s.masked_fill(masked, fill)
        m = s.amax(-1, keepdim=True)
        p = torch.exp(s - m)
        l = p.sum(-1, keepdim=True)
        o = torch.einsum("nij,njd->nid", p.to(v.dtype).to(compute_dtype), vb.to(compute_dtype)) / l
        zero = ~row_has_key
        if zero_masked_rows:
            zero = zero | masked.all(-1)
        o[:, zero] = 0
        row_lse = (torch.log(l) + m).squeeze(-1)
        row_lse[:, zero] = float("inf")
        out[b, :, rows] = o
        lse[b, :, rows] = row_lse
    return out, lse
