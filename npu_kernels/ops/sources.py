"""Where the prefill kernel finds queries and keys beyond plain (B, N, S, D) views, for the fused
operator: token-major batches, left padding read on the device, paged caches (NZ ones with their channel
tiles), a shared prefix, rope parts (MLA) and int8 anti-quantised keys/values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

# Anti-quantisation parameter addressing of the prefill kernel (its K_QUANT / V_QUANT).
PER_CHANNEL, PER_TOKEN, PER_ROW = 1, 2, 3
PLAIN = (0, 0)                  # (C0, tile stride) of a cache that is not NZ


@dataclass(frozen=True)
class AntiQuant:
    """``x = (x_int8 + offset) * scale`` for keys or values; scale/offset are [X, KV_N, Y] views:
    PER_CHANNEL Y = d; PER_TOKEN X = batch, Y = token index; PER_ROW X = batch or paged block, Y = row."""

    mode: int
    scale: torch.Tensor
    offset: Optional[torch.Tensor] = None
    name: str = ""                  # the arguments' prefix, e.g. "key_antiquant" (for errors)
    api_mode: int = 0               # torch_npu's anti-quant mode (0-5)


@dataclass(frozen=True)
class Sources:
    varlen: bool = False                                # token-major: rows are per-batch offsets into T
    q_pad: Optional[torch.Tensor] = None                # [1] int64 on the device: query right padding
    kv_pad: Optional[torch.Tensor] = None               # [1] int64 on the device: kv right padding
    table: Optional[torch.Tensor] = None                # [B, max blocks] int32: paged K/V (blocks, KV_N, bs, D)
    page_size: int = 0
    prefix: Optional[tuple[torch.Tensor, torch.Tensor]] = None   # [1, KV_N, P_S, D] and [1, KV_N, P_S, Dv]
    rope: Optional[tuple[torch.Tensor, torch.Tensor]] = None     # [B, N, S1, DR] and like K with DR
    key_quant: Optional[AntiQuant] = None
    value_quant: Optional[AntiQuant] = None
    nz: tuple[tuple[int, int], ...] = (PLAIN,) * 3      # (C0, tile stride) of the K, V and key-rope caches

    def meta(self) -> tuple[tuple[str, object], ...]:
        dr = 0 if self.rope is None else int(self.rope[0].shape[-1])
        kq, vq = self.key_quant, self.value_quant
        return (("VARLEN", self.varlen), ("HAS_QPAD", self.q_pad is not None),
                ("HAS_KVPAD", self.kv_pad is not None), ("IS_PAGED", self.table is not None),
                ("HAS_PREFIX", self.prefix is not None), ("ROPE_DIM", dr),
                ("BLOCK_DR", max(16, 1 << max(dr - 1, 0).bit_length())),
                ("K_QUANT", 0 if kq is None else kq.mode), ("V_QUANT", 0 if vq is None else vq.mode),
                ("HAS_K_OFFSET", kq is not None and kq.offset is not None),
                ("HAS_V_OFFSET", vq is not None and vq.offset is not None),
                *zip(("K_C0", "V_C0", "KR_C0"), (c0 for c0, _ in self.nz)))

    def strides(self) -> tuple[int, ...]:
        def of(t: Optional[torch.Tensor], n: int, skip: int = 0) -> tuple[int, ...]:
            return (0,) * n if t is None else tuple(int(x) for x in t.stride()[skip:])

        kp, vp = self.prefix or (None, None)
        qr, kr = self.rope or (None, None)
        ks = None if self.key_quant is None else self.key_quant.scale
        vs = None if self.value_quant is None else self.value_quant.scale
        return (*of(self.table, 1)[:1], *of(kp, 3, 1), *of(vp, 3, 1), *of(qr, 4), *of(kr, 4), *of(ks, 3), *of(vs, 3),
                *(tile for _, tile in self.nz))

    def tensors(self) -> tuple[Optional[torch.Tensor], ...]:
        """QPAD, KVPAD, TABLE, KP, VP, QR, KR, KSC, KOF, VSC, VOF (None where absent)."""
        kp, vp = self.prefix or (None, None)
        qr, kr = self.rope or (None, None)
        kq, vq = self.key_quant, self.value_quant
        return (self.q_pad, self.kv_pad, self.table, kp, vp, qr, kr, kq and kq.scale, kq and kq.offset,
                vq and vq.scale, vq and vq.offset)
