"""FLOPs and bytes of one attention call, the figures behind TFLOP/s, TB/s and the roofline.

FLOPs follow FlashAttention-3's ``flops()``: ``2 * N * Sq * avg_k * (D + Dv)`` per batch (two matmuls,
a multiply-add counted as 2), ``N`` the query heads (GQA shares K/V, not the work). ``avg_k`` is the
mean number of visible keys per query row: ``Sk`` without a band; ``(max(0, Sk - Sq) + Sk) / 2`` for
bottom-right causal (FA3's convention, S²/2 rather than S(S+1)/2 for Sq = Sk, so numbers compare with
the published ones); the exact count of visible (i, j) pairs for any other band. Per batch lengths
(``actual_seq_lengths``) are summed batch by batch. A user mask applied element-wise counts as dense.

Bytes are the minimum traffic of one call: every input element read once, every output written once
(decode: Q, K/V of the visible tokens, O, the page table and quantisation scales).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch


def visible_pairs(qlen: int, kvlen: int, pre: int, nxt: int) -> int:
    """Exact number of (i, j), 0 <= i < qlen, 0 <= j < kvlen, with ``i - pre <= j <= i + nxt``."""
    if qlen <= 0 or kvlen <= 0:
        return 0
    i = torch.arange(qlen, dtype=torch.int64)
    lo = (i - pre).clamp(min=0)
    hi = (i + nxt).clamp(max=kvlen - 1)
    return int((hi - lo + 1).clamp(min=0).sum())


def attended_pairs(qlen: int, kvlen: int, pre: int, nxt: int) -> float:
    """Visible pairs of one batch by the FA3 definition (bottom-right causal counted as Sq * avg_k)."""
    if qlen <= 0 or kvlen <= 0:
        return 0.0
    no_left_limit = pre >= qlen - 1
    if no_left_limit and nxt >= kvlen - 1:
        return float(qlen * kvlen)
    if no_left_limit and nxt == kvlen - qlen:
        return qlen * (max(0, kvlen - qlen) + kvlen) / 2
    return float(visible_pairs(qlen, kvlen, pre, nxt))


def attention_flops(heads: int, d: int, dv: int, qlens: Sequence[int], kvlens: Sequence[int],
                    bands: Optional[Sequence[tuple[int, int]]] = None) -> float:
    """FLOPs of a batch of attention problems; ``bands`` holds (pre, next) per batch (None: dense)."""
    bands = bands or [(kv, kv) for kv in kvlens]
    pairs = sum(attended_pairs(q, kv, pre, nxt) for q, kv, (pre, nxt) in zip(qlens, kvlens, bands))
    return 2.0 * heads * pairs * (d + dv)


def call_flops(call) -> float:
    """FLOPs of a validated prefill call (``npu_kernels.ops.prompt.PromptCall``)."""
    h = call.heads
    bands = [b.clamped() for b in call.bands]
    return attention_flops(h.N, h.D, h.Dv, call.qlens, call.kvlens, bands)


def prefill_bytes(b: int, heads: int, kv_heads: int, s1: int, s2: int, d: int, dv: int, elem: int,
                  out_elem: Optional[int] = None) -> int:
    """Q, K, V read once and O written once."""
    out_elem = elem if out_elem is None else out_elem
    return b * (heads * s1 * d * elem + kv_heads * s2 * (d + dv) * elem + heads * s1 * dv * out_elem)


def decode_bytes(heads: int, kv_heads: int, q_len: int, kvlens: Sequence[int], d: int, dv: int, elem: int,
                 kv_elem: Optional[int] = None, out_elem: Optional[int] = None, block_size: int = 0,
                 scale_bytes: int = 0) -> int:
    """Bytes of one decode call: Q, the K/V of each batch's visible tokens, O, the page table
    (int32 entries, one per touched block) and ``scale_bytes`` of quantisation parameters."""
    kv_elem = elem if kv_elem is None else kv_elem
    out_elem = elem if out_elem is None else out_elem
    b = len(kvlens)
    total = b * heads * q_len * (d * elem + dv * out_elem)
    total += sum(kvlens) * kv_heads * (d + dv) * kv_elem
    if block_size:
        total += sum(-(-kv // block_size) for kv in kvlens) * 4
    return total + scale_bytes


def roofline_s(flops: float, nbytes: float, peak_flops: Optional[float], peak_bw: Optional[float]) -> Optional[float]:
    """Lower bound of the time: ``max(flops / peak, bytes / bandwidth)`` (None when the GPU is unknown)."""
    if not peak_flops or not peak_bw:
        return None
    return max(flops / peak_flops, nbytes / peak_bw)


# Dense fp16/bf16 tensor peak (FLOP/s) and HBM bandwidth (B/s) from the datasheets
# (spec/performance.md §1); matched against torch.cuda.get_device_name().
PEAKS = (
    ("H100 PCIe", 756e12, 2.0e12),
    ("H100", 989.4e12, 3.35e12),        # SXM5
    ("H200", 989.5e12, 4.8e12),
    ("H800", 989.4e12, 3.35e12),
    ("A100", 312e12, 2.039e12),         # SXM4 80 GB
)


def peaks(gpu_name: str) -> tuple[Optional[float], Optional[float]]:
    """(peak FLOP/s, peak B/s) of the named GPU, or (None, None) when not in ``PEAKS``."""
    for key, flops, bw in PEAKS:
        if key.lower() in gpu_name.lower():
            return flops, bw
    return None, None
