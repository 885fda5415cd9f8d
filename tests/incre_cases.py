"""Random incremental-attention cases: the whole argument space drawn together (used by several tests)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from hypothesis import strategies as st

from npu_kernels.layouts import from_bnsd
from npu_kernels.checks import FLOAT_DTYPES as DTYPES
from npu_kernels.checks import MASK_DTYPES
from npu_kernels.ops.incre import LAYOUTS


@dataclass(frozen=True)
class Case:
    dtype: torch.dtype = torch.float16
    layout: str = "BNSD"
    B: int = 1
    kv_heads: int = 1
    group: int = 1
    S2: int = 16                          # key/value seq length, or blocks per sequence x block_size when paged
    D: int = 16
    kvlens: Optional[tuple[int, ...]] = None
    kv_pad: Optional[int] = None
    mask: Optional[str] = None            # None, "2d", "3d", "4d"
    mask_dtype: torch.dtype = torch.bool
    mask_pad: int = 0                     # extra columns beyond S2
    mask_p: float = 0.3                   # probability of a masked element
    pse: bool = False
    pse_batch: bool = True
    paged: Optional[str] = None           # None, "3d" (blocks, block_size, KV_N*D), "4d" (blocks, KV_N, block_size, D)
    block_size: int = 16
    spare_blocks: int = 2                 # blocks of the pool no table entry points to
    int8: Optional[str] = None            # None, "tensor", "channel"
    aq_offset: bool = False
    quant: Optional[str] = None           # int8 output: None, "tensor", "channel"
    quant_offset: bool = False
    quant_bf16: bool = False              # bfloat16 quant_scale2/quant_offset2 (bfloat16 query only)
    seed: int = 0

    @property
    def N(self) -> int:
        return self.kv_heads * self.group


def _poison(t: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Float keys/values outside the valid range become NaN, so that reading one shows."""
    if t.is_floating_point():
        t = t.masked_fill(~keep, float("nan"))
    return t


def make_inputs(case: Case, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """(query, key, value, kwargs) of ``case`` on ``device``; keys and values outside every batch's valid
    range (and unused pool blocks) are NaN for float caches."""
    g = torch.Generator().manual_seed(case.seed)
    B, N, KVN, S2, D = case.B, case.N, case.kv_heads, case.S2, case.D
    kvdtype = torch.int8 if case.int8 else case.dtype

    def kv_data() -> torch.Tensor:                                    # (B, KV_N, S2, D)
        if case.int8:
            return torch.randint(-128, 128, (B, KVN, S2, D), generator=g, dtype=torch.int8)
        return torch.randn(B, KVN, S2, D, generator=g).to(case.dtype)

    k, v = kv_data(), kv_data()
    eff = [S2] * B if case.kvlens is None else [case.kvlens[0]] * B if len(case.kvlens) == 1 else list(case.kvlens)
    pad = None if case.kv_pad is None or case.kvlens is None else max(case.kv_pad, 0)
    keep = torch.zeros(B, 1, S2, 1, dtype=torch.bool)
    for b, n in enumerate(eff):
        start = 0 if pad is None else S2 - pad - n
        if start >= 0:
            keep[b, :, start:start + n] = True
    k, v = _poison(k, keep), _poison(v, keep)
    q = from_bnsd(torch.randn(B, N, 1, D, generator=g).to(case.dtype), case.layout).contiguous()
    kw = dict(num_heads=N, num_key_value_heads=KVN if case.group > 1 else 0, scale_value=D ** -0.5,
              input_layout=case.layout)
    if case.kvlens is not None:
        kw["actual_seq_lengths"] = list(case.kvlens)
    if case.kv_pad is not None:
        kw["kv_padding_size"] = torch.tensor([case.kv_pad], dtype=torch.int64, device=device)
    if case.paged:
        bs = case.block_size
        per_seq = S2 // bs
        total = B * per_seq + case.spare_blocks
        order = torch.randperm(total, generator=g)
        table = order[:B * per_seq].reshape(B, per_seq).to(torch.int32)

        def pool(x: torch.Tensor) -> torch.Tensor:                    # (B, KV_N, S2, D) -> pool
            blocks = x.reshape(B, KVN, per_seq, bs, D).permute(0, 2, 1, 3, 4).reshape(B * per_seq, KVN, bs, D)
            p = torch.full((total, KVN, bs, D), float("nan") if not case.int8 else 0).to(kvdtype)
            p[table.reshape(-1).long()] = blocks
            return p if case.paged == "4d" else p.permute(0, 2, 1, 3).reshape(total, bs, KVN * D)

        k, v = pool(k), pool(v)
        kw.update(block_table=table.to(device), block_size=bs)
    else:
        k, v = from_bnsd(k, case.layout).contiguous(), from_bnsd(v, case.layout).contiguous()
    if case.mask is not None:
        m = torch.rand(B, S2 + case.mask_pad, generator=g) < case.mask_p
        m = {"2d": m, "3d": m[:, None], "4d": m[:, None, None]}[case.mask]
        kw["atten_mask"] = m.to(case.mask_dtype).to(device)
    if case.pse:
        b = B if case.pse_batch else 1
        kw["pse_shift"] = torch.randn(b, N, 1, S2 + 3, generator=g).to(case.dtype).to(device)
    if case.int8:
        shape = (2,) if case.int8 == "tensor" else \
            {"BNSD": (2, KVN, 1, D), "BSND": (2, KVN, D), "BSH": (2, KVN * D)}[case.layout]
        kw["antiquant_scale"] = (torch.rand(shape, generator=g) * 0.02 + 0.005).to(case.dtype).to(device)
        if case.aq_offset:
            kw["antiquant_offset"] = torch.randint(-4, 5, shape, generator=g).to(case.dtype).to(device)
    if case.quant:
        shape = (1,) if case.quant == "tensor" else \
            {"BNSD": (1, N, 1, D), "BSND": (1, 1, N, D), "BSH": (N * D,)}[case.layout]
        qdtype = torch.bfloat16 if case.quant_bf16 else torch.float32
        kw["quant_scale2"] = (torch.rand(shape, generator=g) * 30 + 5).to(qdtype).to(device)
        if case.quant_offset:
            kw["quant_offset2"] = torch.randint(-10, 11, shape, generator=g).to(qdtype).to(device)
    return q.to(device), k.to(device), v.to(device), kw


@st.composite
def cases(draw) -> Case:
    B = draw(st.integers(1, 2))
    kv_heads = draw(st.integers(1, 2))
    groups = (1, 2, 3, 4) if B * kv_heads <= 2 else (1, 2)
    group = draw(st.sampled_from(groups + ((8,) if B * kv_heads == 1 else ())))
    int8 = draw(st.sampled_from((None, None, "tensor", "channel")))
    layout = draw(st.sampled_from(LAYOUTS))
    paged = draw(st.sampled_from((None, None, "3d") + (("4d",) if layout == "BNSD" else ())))
    if paged:
        block_size = draw(st.sampled_from((32, 64) if int8 else (16, 32, 48)))
        S2 = block_size * draw(st.integers(1, max(1, 64 // block_size)))
    else:
        block_size = 16
        S2 = draw(st.integers(0, 64))
    length = st.sampled_from(sorted({0, min(1, S2), S2})) | st.integers(0, S2)
    kvlens = draw((st.just(None) if not paged else st.nothing()) | st.lists(length, min_size=B, max_size=B).map(tuple)
                  | length.map(lambda x: (x,)))
    kv_pad = draw(st.none() | st.integers(-2, S2)) if kvlens is not None and not paged else None
    mask = draw(st.sampled_from((None, "2d", "3d", "4d")))
    dtype = draw(st.sampled_from(DTYPES))
    quant = draw(st.sampled_from((None, None, "tensor") + (("channel",) if kv_pad is None else ())))
    return Case(
        dtype=dtype, layout=layout, B=B, kv_heads=kv_heads, group=group, S2=S2,
        D=draw(st.sampled_from((16, 32, 48, 64))), kvlens=kvlens, kv_pad=kv_pad, mask=mask,
        mask_dtype=draw(st.sampled_from(MASK_DTYPES)), mask_pad=draw(st.sampled_from((0, 5))),
        mask_p=draw(st.sampled_from((0.0, 0.3, 1.0))), pse=draw(st.booleans()), pse_batch=draw(st.booleans()),
        paged=paged, block_size=block_size, int8=int8, aq_offset=draw(st.booleans()), quant=quant,
        quant_offset=draw(st.booleans()), quant_bf16=dtype == torch.bfloat16 and draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
    )
