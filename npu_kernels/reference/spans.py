"""Where each batch's rows and keys are: the parameter block's rows (``npu_kernels.params``) read at launch,
with left padding resolved from its device tensor as the kernels do (element 0, negative as 0).

Prefill (``kernels/prefill.py``): with query padding the rows start at ``S1 - pad - qlen`` (mask/pse rows
too) and a start below 0 leaves the batch without rows; with kv padding the keys start at
``S2 - pad - kvlen`` and a start below 0 leaves it without keys. Decode (``kernels/decode.py``): a start
``S2 - pad - kvlen`` below 0 leaves the batch without keys, else it moves the keys and the mask/pse
columns by that start.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch

from .. import params


@dataclass(frozen=True)
class Span:
    """Batch b's rows ``[q_off, q_off + qlen)`` and keys ``[kv_off, kv_off + kvlen - prefix)`` of its
    tensors (the first ``prefix`` keys are the shared prefix), its first mask/pse row and column, and its
    band: key j is kept for row i iff ``i - pre <= j <= i + nxt`` (batch coordinates)."""

    qlen: int
    kvlen: int
    q_off: int
    kv_off: int
    qm_off: int
    kvm_off: int
    pre: int
    nxt: int
    prefix: int

    @property
    def unused(self) -> bool:
        """A parameter-block row that serves no batch (token-major calls size the block by capacity)."""
        return self.qlen == 0 and self.kvlen == 0

    def key_range(self, i0: int, i1: int) -> tuple[int, int]:
        """Keys ``[j_lo, j_hi)`` the bands of rows ``[i0, i1)`` reach (empty when ``j_lo >= j_hi``)."""
        return max(i0 - self.pre, 0), min(i1 - 1 + self.nxt + 1, self.kvlen)

    def rows_with_keys(self, i0: int, i1: int, device) -> torch.Tensor:
        """[i1 - i0] bool: row i has a key in its band, ``max(i - pre, 0) <= min(i + nxt, kvlen - 1)``."""
        i = torch.arange(i0, i1, device=device)
        return (i - self.pre).clamp(min=0) <= (i + self.nxt).clamp(max=self.kvlen - 1)


def _rows(block: torch.Tensor, batches: int) -> list[Span]:
    words = block[:batches * params.FIELDS].view(batches, params.FIELDS).tolist()
    return [Span(*w) for w in words]


def _pad(t: Optional[torch.Tensor]) -> Optional[int]:
    return None if t is None else max(int(t.reshape(-1)[0]), 0)


def prefill(block: torch.Tensor, batches: int, s1: int, s2: int, q_pad: Optional[torch.Tensor],
            kv_pad: Optional[torch.Tensor]) -> list[Span]:
    """Spans of a prefill-kernel call."""
    qp, kp = _pad(q_pad), _pad(kv_pad)
    spans = []
    for sp in _rows(block, batches):
        if qp is not None:
            q_off = s1 - qp - sp.qlen
            sp = replace(sp, q_off=q_off, qm_off=q_off, qlen=0 if q_off < 0 else sp.qlen)
        if kp is not None:
            kv_off = s2 - kp - sp.kvlen
            sp = replace(sp, kv_off=kv_off, kvm_off=kv_off, kvlen=0 if kv_off < 0 else sp.kvlen)
        spans.append(sp)
    return spans


def decode(block: torch.Tensor, batches: int, s2: int, kv_pad: Optional[torch.Tensor]) -> list[Span]:
    """Spans of a decode call (one query row per batch)."""
    kp = _pad(kv_pad)
    spans = []
    for sp in _rows(block, batches):
        if kp is not None:
            start = s2 - kp - sp.kvlen
            sp = replace(sp, kvlen=0) if start < 0 else replace(sp, kv_off=sp.kv_off + start,
                                                                 kvm_off=sp.kvm_off + start)
        spans.append(sp)
    return spans
