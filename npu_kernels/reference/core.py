"""The attention core shared by the golden operators (spec ops §1.6-§1.7 and §9), one batch at a time.

Written for clarity: scores of a whole batch as one (heads, rows, keys) tensor, masks as boolean
matrices from the predicates of ``npu_kernels.masks``. The int8 full-quantisation path (spec ops §2.4)
follows the NPU's discrete steps one by one (``Int8Steps``): fp16 roundings, P quantised per key block
of an online softmax, int32 products computed exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from einops import repeat

from ..masks import Band, band_matrix
from ..quant import ascend_quant


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


@dataclass(frozen=True)
class Int8Steps:
    """Scales of the int8 pipeline (FP19 dequant scales already decoded, 0-d float32 tensors) and the key
    block of its online softmax: P is quantised against the running maximum of each block, so the
    result depends on the block size."""

    deq_scale1: torch.Tensor
    quant_scale1: torch.Tensor
    deq_scale2: torch.Tensor
    block_n: int


def fp16(x: torch.Tensor) -> torch.Tensor:
    """Round to float16 and continue in float32."""
    return x.to(torch.float16).float()


def int8_scores(q: torch.Tensor, k: torch.Tensor, scale: float, steps: Int8Steps) -> torch.Tensor:
    """int8 q (N, rows, D) · k (N, keys, D)ᵀ as int32 (exact), dequant to fp16, times fp16 scale."""
    a = torch.einsum("nid,njd->nij", q.double(), k.double()).float()          # int32 values, exact
    s = fp16(a * steps.deq_scale1)
    return fp16(s * scale)


def online_softmax_pv(s: torch.Tensor, v: torch.Tensor, block_n: int,
                      int8: Optional[Int8Steps] = None, fp16_path: bool = False) -> tuple[torch.Tensor, ...]:
    """Flash attention's online softmax over key blocks of ``block_n``, P unnormalised against the
    running maximum: s (N, rows, keys), v (N, keys, Dv) → (out, l, m), each (N, rows, ·), fp32.

    Float: P rounded to V's dtype for P·V, out = acc / l. int8 (spec ops §2.4): P = fp16(exp(fp16(s - m))),
    quantised with quant_scale1, int8 P·V exact, dequantised with deq_scale2 to fp16, out = acc / fp16(l).
    ``fp16_path`` (the NPU's fp16 high-performance path, spec ops §1.8): P = fp16(exp(fp16(s - m))), P·V
    rounded to fp16, the accumulator kept in fp16, out = acc / fp16(l).
    """
    n, rows, keys = s.shape
    m = torch.full((n, rows, 1), float("-inf"), device=s.device)
    l = torch.zeros(n, rows, 1, device=s.device)
    acc = torch.zeros(n, rows, v.shape[-1], device=s.device)
    for j0 in range(0, keys, block_n):
        sb, vb = s[..., j0:j0 + block_n].float(), v[:, j0:j0 + block_n]
        m_new = torch.maximum(m, sb.amax(-1, keepdim=True))
        alpha = torch.exp(m - m_new)
        if fp16_path:
            p = fp16(torch.exp(fp16(sb - m_new)))
            pv = fp16(torch.einsum("nij,njd->nid", p, vb.float()))
        elif int8 is None:
            p = torch.exp(sb - m_new)
            pv = torch.einsum("nij,njd->nid", p.to(v.dtype).float(), vb.float())
        else:
            p = fp16(torch.exp(fp16(sb - m_new)))                              # unnormalised, in [0, 1]
            pq = ascend_quant(p, int8.quant_scale1)                            # int8
            pv = fp16(torch.einsum("nij,njd->nid", pq.double(), vb.double()).float() * int8.deq_scale2)
        l = l * alpha + p.sum(-1, keepdim=True)
        acc = acc * alpha + pv
        if fp16_path:
            acc = fp16(acc)
        m = m_new
    return acc / (l if int8 is None and not fp16_path else fp16(l)), l, m


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spans: list[BatchSpan], *, scale: float,
              fill: float, mask: Optional[torch.Tensor] = None, pse: Optional[torch.Tensor] = None,
              zero_masked_rows: bool = False, empty_lse: float = float("inf"),
              compute_dtype: torch.dtype = torch.float32, int8: Optional[Int8Steps] = None,
              block_n: Optional[int] = None, fp16_path: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """q (B, N, S1, D), k (B, KV_N, S2, D), v (B, KV_N, S2, Dv) → out (B, N, S1, Dv), lse (B, N, S1).

    ``mask`` (B or 1, R, C): non-zero = masked out, used only where ``band.use_user_mask``.
    Rows without a key in the band are 0 with lse ``+inf``; a batch without keys gets ``empty_lse``.
    ``block_n``: softmax and P·V block by block as a flash kernel does (``online_softmax_pv``; the
    rounding of P then depends on the running maximum); None: the exact row softmax.
    ``int8``: int8 q/k/v through the pipeline of spec ops §2.4 (pse added in fp16), with ``int8.block_n``.
    ``fp16_path``: fp16 q/k/v through the NPU's fp16 high-performance path (scores rounded to fp16 after
    Q·Kᵀ and after the scale, then ``online_softmax_pv`` with its fp16 steps; needs ``block_n``).
    """
    block_n = int8.block_n if int8 is not None else block_n
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
        if fp16_path:
            s = fp16(fp16(torch.einsum("nid,njd->nij", q[b, :, rows].float(), kb.float())) * scale)
        elif int8 is None:
            s = scale * torch.einsum("nid,njd->nij", q[b, :, rows].to(compute_dtype), kb)
        else:
            s = int8_scores(q[b, :, rows], kb, scale, int8)
        if pse is not None:
            pb = pse[b if pse.shape[0] > 1 else 0]
            s = s + pb[:, sp.qm_off:sp.qm_off + sp.qlen, sp.kvm_off:sp.kvm_off + sp.kvlen].to(s.dtype)
            if int8 is not None or fp16_path:
                s = fp16(s)
        keep = band_matrix(sp.qlen, sp.kvlen, sp.band, q.device)               # (qlen, kvlen)
        row_has_key = keep.any(-1)
        masked = ~keep
        if sp.band.use_user_mask and mask is not None:
            mb = mask[b if mask.shape[0] > 1 else 0]
            masked = masked | (mb[sp.qm_off:sp.qm_off + sp.qlen, sp.kvm_off:sp.kvm_off + sp.kvlen] != 0)
        s = s.masked_fill(masked, fill)
        if block_n is None:
            m = s.amax(-1, keepdim=True)
            p = torch.exp(s - m)
            l = p.sum(-1, keepdim=True)
            o = torch.einsum("nij,njd->nid", p.to(v.dtype).to(compute_dtype), vb.to(compute_dtype)) / l
        else:
            o, l, m = online_softmax_pv(s, vb, block_n, int8, fp16_path)
        zero = ~row_has_key
        if zero_masked_rows:
            zero = zero | masked.all(-1)
        o[:, zero] = 0
        row_lse = (torch.log(l) + m).squeeze(-1)
        row_lse[:, zero] = float("inf")
        out[b, :, rows] = o.to(compute_dtype)
        lse[b, :, rows] = row_lse.to(compute_dtype)
    return out, lse
