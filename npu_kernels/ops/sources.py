"""Where the prefill kernel finds queries and keys beyond plain (B, N, S, D) views, for the fused
operator: token-major batches, left padding read on the device, paged caches, a shared prefix, rope
parts (MLA) and int8 anti-quantised keys/values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

PER_CHANNEL, PER_TOKEN = 1, 2


@dataclass(frozen=True)
class KVAntiQuant:
    """``x = (x_int8 + offset) * scale``; scale/offset [2, KV_N, D] (per channel, per tensor broadcast)
    or [2, B, S2] (per token), index 0 for keys and 1 for values."""

    mode: int
    scale: torch.Tensor
    offset: Optional[torch.Tensor] = None


@dataclass(frozen=True)
class Sources:
    varlen: bool = False                                # token-major: rows are per-batch offsets into T
    q_pad: Optional[torch.Tensor] = None                # [1] int64 on the device: query right padding
    kv_pad: Optional[torch.Tensor] = None               # [1] int64 on the device: kv right padding
    table: Optional[torch.Tensor] = None                # [B, max blocks] int32: paged K/V (blocks, KV_N, bs, D)
    page_size: int = 0
    prefix: Optional[tuple[torch.Tensor, torch.Tensor]] = None   # [1, KV_N, P_S, D] and [1, KV_N, P_S, Dv]
    rope: Optional[tuple[torch.Tensor, torch.Tensor]] = None     # [B, N, S1, DR] and like K with DR
    antiquant: Optional[KVAntiQuant] = None

    def meta(self) -> tuple[tuple[str, object], ...]:
        dr = 0 if self.rope is None else int(self.rope[0].shape[-1])
        return (("VARLEN", self.varlen), ("HAS_QPAD", self.q_pad is not None),
                ("HAS_KVPAD", self.kv_pad is not None), ("IS_PAGED", self.table is not None),
                ("HAS_PREFIX", self.prefix is not None), ("ROPE_DIM", dr),
                ("BLOCK_DR", max(16, 1 << max(dr - 1, 0).bit_length())),
                ("KV_QUANT", 0 if self.antiquant is None else self.antiquant.mode),
                ("HAS_AQ_OFFSET", self.antiquant is not None and self.antiquant.offset is not None))

    def strides(self) -> tuple[int, ...]:
        def of(t: Optional[torch.Tensor], n: int, skip: int = 0) -> tuple[int, ...]:
            return (0,) * n if t is None else tuple(int(x) for x in t.stride()[skip:])

        kp, vp = self.prefix or (None, None)
        qr, kr = self.rope or (None, None)
        aq = None if self.antiquant is None else self.antiquant.scale
        return (*of(self.table, 1)[:1], *of(kp, 3, 1), *of(vp, 3, 1), *of(qr, 4), *of(kr, 4), *of(aq, 3))

    def tensors(self) -> tuple[Optional[torch.Tensor], ...]:
        """QPAD, KVPAD, TABLE, KP, VP, QR, KR, AQS, AQO (None where absent)."""
        kp, vp = self.prefix or (None, None)
        qr, kr = self.rope or (None, None)
        aq = self.antiquant
        return (self.q_pad, self.kv_pad, self.table, kp, vp, qr, kr, None if aq is None else aq.scale,
                None if aq is None else aq.offset)
