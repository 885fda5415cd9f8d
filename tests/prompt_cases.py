"""Random prompt-attention cases: the whole argument space drawn together (used by several tests)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from hypothesis import strategies as st

from npu_kernels.layouts import from_bnsd
from npu_kernels.masks import COMPRESSED_MASK, INT_MAX
from npu_kernels.checks import FLOAT_DTYPES as DTYPES
from npu_kernels.checks import MASK_DTYPES
from npu_kernels.layouts import PROMPT_LAYOUTS as LAYOUTS


@dataclass(frozen=True)
class Case:
    dtype: torch.dtype = torch.float16
    layout: str = "BNSD"
    B: int = 1
    kv_heads: int = 1
    group: int = 1
    S1: int = 8
    S2: int = 8
    D: int = 16
    Dv: int = 16
    qlens: Optional[tuple[int, ...]] = None
    kvlens: Optional[tuple[int, ...]] = None
    sparse_mode: int = 0
    pre: int = INT_MAX
    next: int = 0
    mask: Optional[str] = None            # None, "2d", "3d", "4d"
    mask_dtype: torch.dtype = torch.bool
    mask_batch: bool = True               # batch axis B (else 1)
    mask_pad: int = 0                     # extra rows/cols beyond S1/S2
    mask_p: float = 0.3                   # probability of a masked element
    pse: bool = False
    pse_batch: bool = True
    seed: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def N(self) -> int:
        return self.kv_heads * self.group


def make_inputs(case: Case, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """(query, key, value, kwargs) of ``case`` on ``device``."""
    g = torch.Generator().manual_seed(case.seed)
    inp = case.layout.split("_")[0]

    def heads(n, s, d):
        t = torch.randn(case.B, n, s, d, generator=g).to(case.dtype)
        return from_bnsd(t, inp).contiguous().to(device)

    q = heads(case.N, case.S1, case.D)
    k = heads(case.kv_heads, case.S2, case.D)
    v = heads(case.kv_heads, case.S2, case.Dv)
    kw = dict(num_heads=case.N, num_key_value_heads=case.kv_heads if case.group > 1 else 0,
              scale_value=case.D ** -0.5, input_layout=case.layout, sparse_mode=case.sparse_mode,
              pre_tokens=case.pre, next_tokens=case.next, **case.extra)
    if case.qlens is not None:
        kw["actual_seq_lengths"] = list(case.qlens)
    if case.kvlens is not None:
        kw["actual_seq_lengths_kv"] = list(case.kvlens)
    if case.sparse_mode % 10 in (2, 3, 4):
        kw["atten_mask"] = torch.ones(COMPRESSED_MASK, COMPRESSED_MASK, dtype=case.mask_dtype).triu(1).to(device)
    elif case.mask is not None:
        b = case.B if case.mask_batch else 1
        rows, cols = case.S1 + case.mask_pad, case.S2 + case.mask_pad
        m = torch.rand(b, rows, cols, generator=g) < case.mask_p
        m = {"2d": m[0], "3d": m, "4d": m[:, None]}[case.mask]
        kw["atten_mask"] = m.to(case.mask_dtype).to(device)
    if case.pse:
        b = case.B if case.pse_batch else 1
        kw["pse_shift"] = torch.randn(b, case.N, case.S1 + 2, case.S2 + 3, generator=g).to(case.dtype).to(device)
    return q, k, v, kw


@st.composite
def cases(draw) -> Case:
    B = draw(st.integers(1, 2))
    S1 = draw(st.integers(1, 40))
    S2 = draw(st.integers(0, 40))
    D = draw(st.sampled_from((16, 32, 48)))
    qlens = draw(st.none() | st.lists(st.integers(0, S1), min_size=B, max_size=B).map(tuple)
                 | st.integers(0, S1).map(lambda x: (x,)))
    kvlens = draw(st.none() | st.lists(st.integers(0, S2), min_size=B, max_size=B).map(tuple)
                  | st.integers(0, S2).map(lambda x: (x,)))
    q_eff = [S1] * B if qlens is None else [qlens[0]] * B if len(qlens) == 1 else list(qlens)
    kv_eff = [S2] * B if kvlens is None else [kvlens[0]] * B if len(kvlens) == 1 else list(kvlens)
    mode = draw(st.sampled_from((0, 0, 1, 2, 3, 4))) + draw(st.sampled_from((0, 10)))
    mask = draw(st.sampled_from((None, "2d", "3d", "4d"))) if mode % 10 in (0, 1) else None
    if mode % 10 == 1 and mask is None:
        mask = "2d"
    pre, nxt = INT_MAX, draw(st.sampled_from((0, INT_MAX)))
    if mode % 10 == 0 and mask is not None:
        # |next| < S1 when negative, |pre| < every kv length when negative, pre + next >= 0
        nxt = draw(st.integers(-(S1 - 1), S1 + 3) | st.just(INT_MAX))
        low = max(-nxt, -(min(kv_eff) - 1)) if nxt > 0 else -nxt
        pre = draw(st.integers(low, max(low, S2 + 3)) | st.just(INT_MAX))
    elif mode % 10 == 4:
        nxt = draw(st.integers(-(min(kv_eff) - 1) if min(kv_eff) > 0 else 0, S2 + 3))
        low = max(-nxt, -(min(q_eff) - 1)) if nxt > 0 else -nxt
        pre = draw(st.integers(low, max(low, S1 + 3)))
    return Case(
        dtype=draw(st.sampled_from(DTYPES)), layout=draw(st.sampled_from(LAYOUTS)), B=B,
        kv_heads=draw(st.integers(1, 2)), group=draw(st.sampled_from((1, 2, 3))), S1=S1, S2=S2, D=D,
        Dv=draw(st.sampled_from((D, 16, 64))), qlens=qlens, kvlens=kvlens, sparse_mode=mode, pre=pre, next=nxt,
        mask=mask, mask_dtype=draw(st.sampled_from(MASK_DTYPES)), mask_batch=draw(st.booleans()),
        mask_pad=draw(st.sampled_from((0, 3))), mask_p=draw(st.sampled_from((0.0, 0.3, 0.9, 1.0))),
        pse=draw(st.booleans()), pse_batch=draw(st.booleans()), seed=draw(st.integers(0, 2**16)),
    )
