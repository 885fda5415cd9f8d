"""The parameter block: per-call integers the kernels read on the device (DESIGN §3).

One int32 row of ``FIELDS`` entries per batch. Everything that may change between graph replays lives
here, nothing that selects a kernel or its grid does. Offsets are in elements of the seq axis.
"""

from __future__ import annotations

import itertools
from array import array
from typing import Sequence

import torch
import triton.language as tl

FIELDS = 9
QLEN = tl.constexpr(0)     # query rows of the batch
KVLEN = tl.constexpr(1)    # keys of the batch (shared prefix included)
Q_OFF = tl.constexpr(2)    # first query row in the query/output tensors' seq axis
KV_OFF = tl.constexpr(3)   # first key row in the key/value tensors' seq axis
QM_OFF = tl.constexpr(4)   # first query row in the mask/pse row axis
KVM_OFF = tl.constexpr(5)  # first key column in the mask/pse column axis
PRE = tl.constexpr(6)      # band: key j kept for row i iff i - PRE <= j <= i + NEXT
NEXT = tl.constexpr(7)
PREFIX = tl.constexpr(8)   # shared-prefix keys in front of the batch's own keys (counted in KVLEN)


def pack(rows: list[tuple[int, ...]], tail: Sequence[int] = ()) -> torch.Tensor:
    """[B * FIELDS (+ tail)] int32 CPU tensor from one tuple of FIELDS values per batch, then ``tail``."""
    words = array("i", itertools.chain.from_iterable(rows))
    if len(words) != FIELDS * len(rows):
        raise ValueError(f"parameter block: every row needs {FIELDS} fields")
    words.extend(tail)
    return torch.frombuffer(words, dtype=torch.int32) if words else torch.empty(0, dtype=torch.int32)


def field(block: torch.Tensor, batches: int, index: tl.constexpr) -> list[int]:
    """Field ``index`` (e.g. ``KVLEN``) of the first ``batches`` rows of a parameter block, on the host."""
    return block[:batches * FIELDS].view(batches, FIELDS)[:, index.value].tolist()
