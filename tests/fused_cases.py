"""Random fused-attention cases: layouts, both paths and the FIA-only arguments drawn together."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from einops import rearrange
from hypothesis import strategies as st

from npu_kernels.layouts import FUSED_LAYOUTS, from_bnsd
from npu_kernels.masks import COMPRESSED_MASK, INT_MAX

TOKEN = ("TND", "NTD_TND", "TND_NTD")
DECODE_CAPABLE = ("BSH", "BSND", "BNSD", "BSH_NBSD", "BSND_NBSD", "BNSD_NBSD")


@dataclass(frozen=True)
class FCase:
    layout: str = "BNSD"
    dtype: torch.dtype = torch.float16
    B: int = 1
    kv_heads: int = 1
    group: int = 1
    S1: int = 8                     # per batch (token layouts: each batch's query count before lengths)
    S2: int = 8
    D: int = 16
    Dv: int = 16
    qlens: Optional[tuple[int, ...]] = None
    kvlens: Optional[tuple[int, ...]] = None
    sparse_mode: int = 0
    pre: int = INT_MAX
    next: int = INT_MAX
    mask_p: Optional[float] = None  # None: no user mask
    pse: bool = False
    inner_precise: int = 0
    lse: bool = True
    paged: Optional[str] = None     # "3d" / "4d" cache
    prefix: int = 0                 # shared-prefix tokens (0: none)
    rope: bool = False
    # "tensor", "channel", "token" (modes 0/1, combined or separated); separated only: "head" (mode 2),
    # "token_head" (3), "page" (4), "page_head" (5), "mixed" (key 0, value 1)
    antiquant: Optional[str] = None
    separated: bool = False
    q_pad: Optional[int] = None
    kv_pad: Optional[int] = None
    seed: int = 0

    @property
    def N(self) -> int:
        return self.kv_heads * self.group

    @property
    def page(self) -> int:
        """Paged-attention block size: a prefill call with a batch layout needs a multiple of 128, int8
        caches a multiple of 32."""
        if self.S1 > 1 and self.layout not in TOKEN:
            return 128
        return 32 if self.antiquant else 16


def _rand(g, *shape) -> torch.Tensor:
    return torch.randn(*shape, generator=g)


def make_inputs(c: FCase, device):
    """(query, key, value, kwargs) of case ``c`` on ``device``."""
    g = torch.Generator().manual_seed(c.seed)
    inp = c.layout.split("_")[0]
    kw = dict(num_heads=c.N, num_key_value_heads=c.kv_heads if c.group > 1 else 0, scale=c.D ** -0.5,
              input_layout=c.layout, sparse_mode=c.sparse_mode, pre_tokens=c.pre, next_tokens=c.next,
              inner_precise=c.inner_precise, softmax_lse_flag=c.lse)

    def kv_tensor(b, s, d):
        t = _rand(g, b, c.kv_heads, s, d)
        return (t * 40).round().clamp(-127, 127).to(torch.int8) if c.antiquant else t.to(c.dtype)

    if c.layout in TOKEN:
        qlens = list(c.qlens or (c.S1,) * c.B)
        kvlens = list(c.kvlens or (c.S2,) * c.B)
        T = sum(qlens) + 1                                 # one trailing token past the last batch
        q = from_bnsd(_rand(g, 1, c.N, T, c.D).to(c.dtype), inp)
        kw["actual_seq_lengths"] = list(torch.tensor(qlens).cumsum(0).tolist())
        if c.paged is None:
            Tkv = sum(kvlens)
            k = from_bnsd(kv_tensor(1, Tkv, c.D), inp)
            v = from_bnsd(kv_tensor(1, Tkv, c.Dv), inp)
            kw["actual_seq_lengths_kv"] = list(torch.tensor(kvlens).cumsum(0).tolist())
        else:
            kw["actual_seq_lengths_kv"] = kvlens
    else:
        q = from_bnsd(_rand(g, c.B, c.N, c.S1, c.D).to(c.dtype), inp)
        if c.paged is None:
            k = from_bnsd(kv_tensor(c.B, c.S2, c.D), inp)
            v = from_bnsd(kv_tensor(c.B, c.S2, c.Dv), inp)
        if c.qlens is not None:
            kw["actual_seq_lengths"] = list(c.qlens)
        if c.kvlens is not None:
            kw["actual_seq_lengths_kv"] = list(c.kvlens)
    if c.paged is not None:
        bs = c.page
        per_seq = -(-c.S2 // bs)
        blocks = c.B * per_seq + 3
        table = torch.randperm(blocks, generator=g)[:c.B * per_seq].reshape(c.B, per_seq).to(torch.int32)
        kc, vc = kv_tensor(blocks, bs, c.D), kv_tensor(blocks, bs, c.Dv)     # (blocks, KV_N, bs, D)
        if c.paged == "3d":
            kc, vc = (rearrange(t, "k n s d -> k s (n d)") for t in (kc, vc))
        k, v = kc, vc
        kw.update(block_table=table.to(device), block_size=bs)
        if "actual_seq_lengths_kv" not in kw:
            kw["actual_seq_lengths_kv"] = [c.S2] * c.B
    cols = (-(-c.S2 // c.page) * c.page if c.paged else c.S2) + c.prefix  # paged: the table's capacity
    if c.mask_p is not None:
        rows = max(c.qlens or (c.S1,)) if c.layout in TOKEN else c.S1
        if c.sparse_mode in (0, 1):
            m = torch.rand(c.B, rows, cols, generator=g) < c.mask_p
            kw["atten_mask"] = m[:, None] if not (c.layout in DECODE_CAPABLE and c.S1 == 1) else m[:, 0]
    if c.sparse_mode in (2, 3, 4):
        kw["atten_mask"] = torch.ones(COMPRESSED_MASK, COMPRESSED_MASK, dtype=torch.bool).triu(1)
    if c.pse:
        kw["pse_shift"] = _rand(g, c.B, c.N, c.S1, cols).to(c.dtype)
    if c.prefix:
        kw["key_shared_prefix"] = from_bnsd(kv_tensor(1, c.prefix + 2, c.D), inp)
        kw["value_shared_prefix"] = from_bnsd(kv_tensor(1, c.prefix + 2, c.Dv), inp)
        kw["actual_shared_prefix_len"] = [c.prefix]
    if c.rope:
        bq, sq = (1, q.shape[0] if inp == "TND" else q.shape[1]) if c.layout in TOKEN else (c.B, c.S1)
        kw["query_rope"] = from_bnsd(_rand(g, bq, c.N, sq, 64).to(c.dtype), inp)
        if c.paged == "3d":
            kw["key_rope"] = _rand(g, k.shape[0], k.shape[1], c.kv_heads * 64).to(c.dtype)
        elif c.paged == "4d":
            kw["key_rope"] = _rand(g, *k.shape[:3], 64).to(c.dtype)
        else:
            bk, sk = (1, k.shape[0] if inp == "TND" else k.shape[1]) if c.layout in TOKEN else (c.B, c.S2)
            kw["key_rope"] = from_bnsd(_rand(g, bk, c.kv_heads, sk, 64).to(c.dtype), inp)
    if c.antiquant:
        kw.update(_antiquant_args(c, g, inp, k))
    if c.q_pad is not None:
        kw["query_padding_size"] = torch.tensor([c.q_pad])
    if c.kv_pad is not None:
        kw["kv_padding_size"] = torch.tensor([c.kv_pad])
    kw = {n: (t.to(device) if isinstance(t, torch.Tensor) else t) for n, t in kw.items()}
    return q.contiguous().to(device), k.contiguous().to(device), v.contiguous().to(device), kw


def _antiquant_args(c: FCase, g, inp: str, cache: torch.Tensor) -> dict:
    """Anti-quant keyword arguments of ``c`` (int8 K/V)."""
    def channel(shape):
        return (torch.rand(*shape, generator=g) * 0.02 + 0.01).to(c.dtype), \
            torch.randint(-3, 4, shape, generator=g).to(c.dtype)

    def token(shape):
        return torch.rand(*shape, generator=g) * 0.02 + 0.01, torch.randint(-3, 4, shape, generator=g).float()

    per_channel = {"BNSD": (c.kv_heads, 1, c.D), "BSND": (c.kv_heads, c.D), "BSH": (c.kv_heads * c.D,)}.get(
        inp, (c.kv_heads, c.D))
    blocks = cache.shape[0]
    kind = c.antiquant
    if kind in ("tensor", "channel", "token") and not c.separated:
        if kind == "token":
            scale, offset = token((2, c.B, c.S2))
            return dict(antiquant_scale=scale, antiquant_offset=offset, antiquant_mode=1)
        scale, offset = channel((2,) if kind == "tensor" else (2, *per_channel))
        return dict(antiquant_scale=scale, antiquant_offset=offset)
    modes, makers = {
        "tensor": ((0, 0), lambda: channel((1,))), "channel": ((0, 0), lambda: channel(per_channel)),
        "token": ((1, 1), lambda: token((1, c.B, c.S2))), "head": ((2, 2), lambda: channel((c.kv_heads,))),
        "token_head": ((3, 3), lambda: token((c.B, c.kv_heads, c.S2))),
        "page": ((4, 4), lambda: token((blocks, c.page))), "page_head": ((5, 5), lambda: token((blocks, c.kv_heads, c.page))),
        "mixed": ((0, 1), None)}[kind]
    pairs = [channel(per_channel), token((1, c.B, c.S2))] if kind == "mixed" else [makers(), makers()]
    return dict(key_antiquant_scale=pairs[0][0], key_antiquant_offset=pairs[0][1],
                value_antiquant_scale=pairs[1][0], value_antiquant_offset=pairs[1][1],
                key_antiquant_mode=modes[0], value_antiquant_mode=modes[1])


@st.composite
def fcases(draw) -> FCase:
    layout = draw(st.sampled_from(FUSED_LAYOUTS))
    token = layout in TOKEN
    B = 1 if layout == "NSD" else draw(st.integers(1, 2))
    decode = layout in DECODE_CAPABLE and draw(st.booleans())
    S1 = 1 if decode else draw(st.integers(2, 16 if layout == "BNSD_NBSD" else 24))    # BNSD_NBSD: <= 16 rows
    S2 = draw(st.integers(1, 36))
    D = draw(st.sampled_from((16, 32)))
    paged = draw(st.sampled_from((None, "3d", "4d"))) if layout.split("_")[0] in ("BSH", "BNSD", "TND") else None
    if paged == "4d" and layout.split("_")[0] == "BSH":
        paged = "3d"
    antiquant = draw(st.sampled_from((None, None, "tensor", "channel", "token", "head", "token_head", "page",
                                      "page_head", "mixed")))
    if antiquant and (draw(st.booleans()) or token):
        antiquant = None
    if antiquant in ("head", "token_head", "page", "page_head") and not decode:
        antiquant = "token"                                          # query length > 1: modes 0 and 1 only
    if antiquant in ("page", "page_head") and not paged:
        antiquant = "token_head"
    prefix = 0 if (token or paged) else draw(st.sampled_from((0, 0, 3)))
    if antiquant not in (None, "tensor", "channel", "head") and prefix:
        antiquant = "channel"
    rope = not (prefix or antiquant) and draw(st.integers(0, 4)) == 0
    if rope:
        D = 128                                                      # rope: query D 128 (or 512, MLA)
    Dv = D if rope or antiquant in ("channel", "mixed") else draw(st.sampled_from((D, 16)))
    if token:
        qlens = tuple(draw(st.lists(st.integers(0, 6), min_size=B, max_size=B)))
        kvlens = tuple(draw(st.lists(st.integers(0 if not paged else 1, S2), min_size=B, max_size=B)))
    else:
        qlens = None if decode else draw(st.none() | st.lists(st.integers(0, S1), min_size=B, max_size=B).map(tuple))
        kvlens = draw(st.none() | st.lists(st.integers(0, S2), min_size=B, max_size=B).map(tuple))
        if paged and kvlens is None:
            kvlens = (S2,) * B
    mode = 0 if decode else draw(st.sampled_from((0, 0, 1, 2, 3, 4)))
    mask_p = draw(st.sampled_from((None, 0.3, 1.0))) if mode in (0, 1) else None
    if mode == 1 and mask_p is None:
        mask_p = 0.3
    pre, nxt = INT_MAX, INT_MAX
    if mode == 4:
        pre, nxt = draw(st.integers(0, 6)), draw(st.integers(0, 6))
    elif mode == 0 and mask_p is not None:
        pre, nxt = draw(st.sampled_from(((INT_MAX, INT_MAX), (4, 0), (2, 3))))
    padded = not (token or paged or prefix or decode) and draw(st.integers(0, 3)) == 0
    q_pad = draw(st.integers(0, 2)) if padded and qlens is not None else None
    kv_pad = draw(st.integers(0, min(3, S2))) if (padded or (decode and not paged and not prefix)) and kvlens is not None \
        and draw(st.booleans()) else None
    if q_pad is not None:
        qlens = tuple(min(q, S1 - q_pad) for q in qlens)
    if kv_pad is not None and not decode:
        kvlens = tuple(min(k, S2 - kv_pad) for k in kvlens)
    return FCase(
        layout=layout, dtype=draw(st.sampled_from((torch.float16, torch.bfloat16))), B=B,
        kv_heads=draw(st.integers(1, 2)), group=draw(st.sampled_from((1, 2))), S1=S1, S2=S2, D=D, Dv=Dv,
        qlens=qlens, kvlens=kvlens, sparse_mode=mode, pre=pre, next=nxt, mask_p=mask_p,
        pse=not token and layout != "NSD" and not decode and draw(st.integers(0, 3)) == 0,
        inner_precise=draw(st.sampled_from((0, 1) if decode else (0, 1, 2, 3))), lse=draw(st.booleans()),
        paged=paged, prefix=prefix, rope=rope, antiquant=antiquant,
        separated=antiquant not in (None, "tensor", "channel", "token") or draw(st.booleans()),
        q_pad=q_pad, kv_pad=kv_pad, seed=draw(st.integers(0, 2**16)))
