"""The CPU execution path (``npu_kernels.reference.execute``) and the attention core it shares with the
golden reference: against a plain transcription of spec ops §9, the NPU's fp16 path at a large scale,
block ids outside the cache, bounded memory, and per-batch integers read from the parameter block."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import npu_kernels as nk
from npu_kernels.layouts import as_bnsd, from_bnsd
from npu_kernels.masks import COMPRESSED_MASK, FILL_DECODE, FILL_FP32, INT_MAX, LSE_DECODE_EMPTY
from npu_kernels.ops import fused, incre, prompt
from npu_kernels.reference import core, execute
from npu_kernels.reference.core import Numerics

from .conftest import assert_close

TRIU = torch.ones(COMPRESSED_MASK, COMPRESSED_MASK, dtype=torch.bool).triu(1)


def oracle(q, k, v, scale: float, *, decode: bool, qlens: list[int], kvlens: list[int], mask=None, pse=None,
           mode: int = 0, pre: int = INT_MAX, nxt: int = INT_MAX, zero_masked_rows: bool = False):
    """Spec ops §9 for (B, N, S, D) tensors, one batch and one head at a time, in float64 with P rounded to
    the values' dtype: (out (B, N, S1, Dv), lse (B, N, S1)). ``mask`` (B, S1, S2) bool, True = masked out;
    ``pse`` (B, N, S1, S2)."""
    B, N, S1, _ = q.shape
    KV = k.shape[1]
    out = torch.zeros(B, N, S1, v.shape[-1], dtype=torch.float64)
    lse = torch.full((B, N, S1), LSE_DECODE_EMPTY if decode else math.inf, dtype=torch.float64)
    fill = FILL_DECODE if decode else FILL_FP32
    for b in range(B):
        qlen, kvlen = qlens[b], kvlens[b]
        if kvlen == 0:
            continue
        if decode or mode == 1 or (mode == 0 and mask is None):
            p_b, n_b = INT_MAX, INT_MAX
        elif mode == 0:
            p_b, n_b = pre, nxt
        elif mode == 2:
            p_b, n_b = INT_MAX, 0
        elif mode == 3:
            p_b, n_b = INT_MAX, kvlen - qlen
        else:
            p_b, n_b = pre - kvlen + qlen, nxt + kvlen - qlen
        i = torch.arange(qlen)[:, None]
        j = torch.arange(kvlen)[None, :]
        band = (j - i <= n_b) & (i - j <= p_b)
        has_key = band.any(-1)
        masked = ~band
        if mask is not None and mode in (0, 1):
            masked = masked | mask[b, :qlen, :kvlen]
        for n in range(N):
            kk, vv = k[b, n * KV // N, :kvlen].double(), v[b, n * KV // N, :kvlen]
            s = scale * (q[b, n, :qlen].double() @ kk.T)
            if pse is not None:
                s = s + pse[b, n, :qlen, :kvlen].double()
            s = s.masked_fill(masked, fill)
            m = s.max(-1, keepdim=True).values
            p = torch.exp(s - m)
            l = p.sum(-1, keepdim=True)
            o = (p.to(vv.dtype).double() @ vv.double()) / l
            zero = ~has_key
            if zero_masked_rows:
                zero = zero | masked.all(-1)
            o[zero] = 0
            row_lse = (torch.log(l) + m).squeeze(-1)
            row_lse[zero] = math.inf
            out[b, n, :qlen] = o
            lse[b, n, :qlen] = row_lse
    return out, lse


@dataclass(frozen=True)
class OCase:
    layout: str = "BNSD"
    dtype: torch.dtype = torch.float16
    B: int = 1
    kv_heads: int = 1
    group: int = 1
    S1: int = 8
    S2: int = 8
    D: int = 16
    qlens: Optional[tuple[int, ...]] = None
    kvlens: Optional[tuple[int, ...]] = None
    mode: int = 0
    pre: int = INT_MAX
    nxt: int = INT_MAX
    mask_p: Optional[float] = None
    pse: bool = False
    zero_masked_rows: bool = False
    seed: int = 0


@st.composite
def ocases(draw) -> OCase:
    B, S1, S2 = draw(st.integers(1, 2)), draw(st.sampled_from((1, 1, 2, 7, 24))), draw(st.integers(1, 30))
    lens = st.lists(st.integers(0, S2), min_size=B, max_size=B).map(tuple)
    qlens = None if S1 == 1 else draw(st.none() | st.lists(st.integers(0, S1), min_size=B, max_size=B).map(tuple))
    mode = 0 if S1 == 1 else draw(st.sampled_from((0, 0, 1, 2, 3, 4)))
    mask_p = draw(st.sampled_from((None, 0.3, 1.0))) if mode in (0, 1) else None
    mask_p = 0.3 if mode == 1 and mask_p is None else mask_p
    pre, nxt = INT_MAX, INT_MAX
    if mode == 4:
        pre, nxt = draw(st.integers(0, 6)), draw(st.integers(0, 6))
    elif mode == 0 and mask_p is not None and S1 > 1:
        pre, nxt = draw(st.sampled_from(((INT_MAX, INT_MAX), (4, 0), (2, 3))))
    return OCase(layout=draw(st.sampled_from(("BNSD", "BSH", "BSND"))),
                 dtype=draw(st.sampled_from((torch.float16, torch.bfloat16))), B=B,
                 kv_heads=draw(st.integers(1, 2)), group=draw(st.sampled_from((1, 2, 3))), S1=S1, S2=S2,
                 D=draw(st.sampled_from((16, 32))), qlens=qlens, kvlens=draw(st.none() | lens), mode=mode, pre=pre,
                 nxt=nxt, mask_p=mask_p, pse=draw(st.booleans()), zero_masked_rows=S1 > 1 and draw(st.booleans()),
                 seed=draw(st.integers(0, 2**16)))


def oracle_inputs(c: OCase):
    """BNSD tensors, the fused operator's keyword arguments, and the oracle's mask and pse."""
    g = torch.Generator().manual_seed(c.seed)
    N = c.kv_heads * c.group
    q = torch.randn(c.B, N, c.S1, c.D, generator=g).to(c.dtype)
    k = torch.randn(c.B, c.kv_heads, c.S2, c.D, generator=g).to(c.dtype)
    v = torch.randn(c.B, c.kv_heads, c.S2, c.D, generator=g).to(c.dtype)
    kw = dict(num_heads=N, num_key_value_heads=c.kv_heads, scale=c.D ** -0.5, input_layout=c.layout,
              sparse_mode=c.mode, pre_tokens=c.pre, next_tokens=c.nxt, inner_precise=2 * c.zero_masked_rows,
              softmax_lse_flag=True, actual_seq_lengths=c.qlens and list(c.qlens),
              actual_seq_lengths_kv=c.kvlens and list(c.kvlens))
    mask = pse = None
    if c.mask_p is not None:
        mask = torch.rand(c.B, c.S1, c.S2, generator=g) < c.mask_p
        kw["atten_mask"] = mask[:, 0] if c.S1 == 1 else mask[:, None]
    elif c.mode in (2, 3, 4):
        kw["atten_mask"] = TRIU
    if c.pse:
        pse = torch.randn(c.B, N, c.S1, c.S2, generator=g).to(c.dtype)
        kw["pse_shift"] = pse
    return q, k, v, kw, mask, pse


def run_fused(call: fused.FusedCall, out: torch.Tensor, lse: torch.Tensor, numerics: Optional[Numerics] = None,
              block: Optional[torch.Tensor] = None) -> None:
    """The CPU execution path of a validated fused call (its own parameter block unless ``block``);
    ``numerics`` replaces the path's own (as the golden reference does)."""
    lse_k = call.lse_view(lse)
    if call.incre is not None:
        c = call.incre
        block = incre.pack(c.kvlens) if block is None else block
        o4 = as_bnsd(out, call.layout.out, c.heads.N)
        if numerics is None:
            execute.decode(c, block, o4, lse_k)
        else:
            execute.run_decode(c, block, o4, lse_k, numerics)
    else:
        c = call.prompt
        block = prompt.pack(c.qlens, c.kvlens, c.bands, c.offsets) if block is None else block
        o4 = prompt.out_view(c, out)
        if numerics is None:
            execute.prefill(c, block, o4, lse_k)
        else:
            execute.run_prefill(c, block, o4, lse_k, numerics)


@given(c=ocases())
def test_core_matches_the_plain_oracle(c: OCase):
    """In float64 the core is the oracle up to rounding; the CPU path (float32) is within the tolerance."""
    q, k, v, kw, mask, pse = oracle_inputs(c)
    inp = c.layout
    call = fused.validate(from_bnsd(q, inp), from_bnsd(k, inp), from_bnsd(v, inp), **kw)
    decode = c.S1 == 1
    qlens = [1] * c.B if decode else list(c.qlens or [c.S1] * c.B)
    kvlens = list(c.kvlens or [c.S2] * c.B)
    want, want_lse = oracle(q, k, v, c.D ** -0.5, decode=decode, qlens=qlens, kvlens=kvlens, mask=mask, pse=pse,
                            mode=c.mode, pre=c.pre, nxt=c.nxt, zero_masked_rows=c.zero_masked_rows)
    out = torch.full(call.out_shape, math.nan, dtype=torch.float64)
    lse = torch.full(call.lse_shape, math.nan)
    run_fused(call, out, lse, Numerics(compute=torch.float64))
    got = as_bnsd(out, call.layout.out, q.shape[1])
    torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-9)
    assert torch.equal(lse[..., 0].isinf(), want_lse.isinf()) and torch.equal(lse[..., 0] < -1e30, want_lse < -1e30)
    finite = want_lse.abs() < 1e30
    torch.testing.assert_close(lse[..., 0][finite].double(), want_lse[finite], atol=1e-5, rtol=1e-6)

    out32 = torch.full(call.out_shape, math.nan, dtype=c.dtype)
    lse32 = torch.full(call.lse_shape, math.nan)
    run_fused(call, out32, lse32)
    assert_close(as_bnsd(out32, call.layout.out, q.shape[1]), want, c.dtype)
    torch.testing.assert_close(lse32[..., 0][finite].double(), want_lse[finite], atol=1e-4, rtol=1e-4)


def test_fp16_path_follows_the_emulation_at_scale_128():
    """A reduced op-plugin case (fp16, scale 128): the CPU path on the NPU's fp16 high-performance path
    matches the reference's emulation within the fp16 tolerance, where exact math does not."""
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(1, 2, 512, 128, generator=g).half() for _ in range(3))
    kw = dict(num_heads=2, input_layout="BNSD", scale_value=128.0, next_tokens=65535)
    call = prompt.validate(q, k, v, **kw)
    assert call.fp16_path
    out = torch.full_like(q, math.nan)
    execute.prefill(call, prompt.pack(call.qlens, call.kvlens, call.bands), prompt.out_view(call, out), None)
    emulated = nk.reference.npu_prompt_flash_attention(q, k, v, emulate_fp16=True, **kw)
    assert_close(out, emulated, torch.float16)
    exact = nk.reference.npu_prompt_flash_attention(q, k, v, **kw)
    atol, rtol = nk.reference.tolerance(torch.float16)
    assert ((exact.float() - emulated.float()).abs() > atol + rtol * emulated.float().abs()).any()


def test_chunks_and_tiles_do_not_change_results(monkeypatch):
    """Row chunks, key tiles and the key ranges they reach (causal, band, user mask) leave the results of
    every method within the tolerance of one big chunk: 600 keys, in the online method tiles of two
    128-key blocks and chunks of 8 rows."""
    g = torch.Generator().manual_seed(3)
    q = torch.randn(1, 4, 96, 32, generator=g).half()
    k, v = (torch.randn(1, 2, 600, 32, generator=g).half() for _ in range(2))
    mask = torch.rand(96, 600, generator=g) < 0.4
    cases = [dict(sparse_mode=3, atten_mask=TRIU), dict(sparse_mode=4, atten_mask=TRIU, pre_tokens=9, next_tokens=2),
             dict(atten_mask=mask, next_tokens=65535)]
    for kw in cases:
        for dtype, emulate in ((torch.float16, True), (torch.bfloat16, False), (torch.float16, False)):
            args = [t.to(dtype) for t in (q, k, v)]
            kw2 = dict(num_heads=4, num_key_value_heads=2, input_layout="BNSD", scale_value=0.3, **kw)
            whole = nk.reference.npu_prompt_flash_attention(*args, emulate_fp16=emulate, **kw2)
            with monkeypatch.context() as m:
                m.setattr(core, "CHUNK_ELEMENTS", 4 * 96)
                m.setattr(core, "TILE_ELEMENTS", 4 * 8 * 256)
                m.setattr(core, "TILE_KEYS", 256)
                m.setattr(core, "ONLINE_ROWS", 8)
                small = nk.reference.npu_prompt_flash_attention(*args, emulate_fp16=emulate, **kw2)
            assert_close(small, whole, dtype)


def paged_call(table: torch.Tensor, kvlens: list[int], blocks: int, g):
    """A fused decode-path call with a paged (blocks, KV_N, 16, 32) cache; every value of the pool set."""
    q = torch.randn(table.shape[0], 2, 1, 32, generator=g).half()
    kc = torch.randn(blocks, 1, 16, 32, generator=g).half()
    vc = torch.randn(blocks, 1, 16, 32, generator=g).half()
    kw = dict(num_heads=2, num_key_value_heads=1, input_layout="BNSD", scale=0.2, block_table=table, block_size=16,
              actual_seq_lengths_kv=kvlens, softmax_lse_flag=True)
    return q, kc, vc, kw


def test_block_ids_outside_the_cache_read_zeros(monkeypatch):
    """An id outside [0, blocks) inside a batch's kv length reads zero keys and values (the reference with
    those slots zeroed by hand); with NPUK_CHECK_BLOCK_TABLE=1 it raises, naming batch, position and id."""
    g = torch.Generator().manual_seed(11)
    table = torch.tensor([[0, 1, 2], [3, 99, -4]], dtype=torch.int32)
    q, kc, vc, kw = paged_call(table, [40, 37], 4, g)
    call = fused.validate(q, kc, vc, **kw)
    out, lse = torch.full((2, 2, 1, 32), math.nan, dtype=torch.float16), torch.full((2, 2, 1, 1), math.nan)
    run_fused(call, out, lse)
    zeros = torch.cat([kc, torch.zeros_like(kc[:1])])               # block 4: the zero block
    fixed = torch.tensor([[0, 1, 2], [3, 4, 4]], dtype=torch.int32)
    ref, ref_lse = nk.reference.npu_fused_infer_attention_score(q, zeros, torch.cat([vc, torch.zeros_like(vc[:1])]),
                                                                 **{**kw, "block_table": fixed})
    assert_close(out, ref, torch.float16)
    torch.testing.assert_close(lse, ref_lse, atol=1e-5, rtol=1e-5)
    monkeypatch.setenv("NPUK_CHECK_BLOCK_TABLE", "1")
    with pytest.raises(ValueError, match=r"block_table\[1, 1\]=99: .*batch 1"):
        run_fused(call, out, lse)
    short = fused.validate(q, kc, vc, **{**kw, "actual_seq_lengths_kv": [40, 16]})
    run_fused(short, out, lse)                                       # ids past the kv lengths are not read


def test_parameter_block_rules_over_the_call_lists():
    """As after a task update: the per-batch integers come from the block, not from the call's lists."""
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 4, 20, 32, generator=g).half() for _ in range(3))
    kw = dict(num_heads=4, input_layout="BNSD", scale_value=0.2, sparse_mode=13, atten_mask=TRIU)
    planned = prompt.validate(q, k, v, actual_seq_lengths=[20, 20], actual_seq_lengths_kv=[20, 20], **kw)
    now = prompt.validate(q, k, v, actual_seq_lengths=[7, 13], actual_seq_lengths_kv=[20, 9], **kw)
    out = torch.full_like(q, math.nan)
    block = torch.cat([prompt.pack(now.qlens, now.kvlens, now.bands), torch.tensor([-1, -1], dtype=torch.int32)])
    execute.prefill(planned, block, prompt.out_view(planned, out), None)
    assert_close(out, nk.reference.npu_prompt_flash_attention(q, k, v, actual_seq_lengths=[7, 13],
                                                              actual_seq_lengths_kv=[20, 9], **kw), torch.float16)

    qd, kd = torch.randn(3, 2, 1, 32, generator=g).half(), torch.randn(3, 2, 50, 32, generator=g).half()
    planned_d = incre.validate(qd, kd, kd, num_heads=2, input_layout="BNSD", actual_seq_lengths=[50, 50, 50])
    out_d, lse_d = torch.full_like(qd, math.nan), torch.full((3, 2, 1), math.nan)
    execute.decode(planned_d, incre.pack([3, 0, 41]), out_d, lse_d)
    ref_d, ref_lse = nk.reference.npu_fused_infer_attention_score(qd, kd, kd, num_heads=2, input_layout="BNSD",
                                                                 actual_seq_lengths_kv=[3, 0, 41], softmax_lse_flag=True)
    assert_close(out_d, ref_d, torch.float16)
    assert (lse_d[1] == LSE_DECODE_EMPTY).all() and (out_d[1] == 0).all()
    torch.testing.assert_close(lse_d, ref_lse[..., 0], atol=1e-5, rtol=1e-5)


def test_token_major_writes_only_the_batches_rows():
    """TND: each batch writes its own rows (a batch without keys 0 and lse +inf); rows of no batch in the
    block (unused rows QLEN = KVLEN = 0) keep what they held, here NaN."""
    g = torch.Generator().manual_seed(2)
    T, N, D = 12, 2, 16
    q, k, v = (torch.randn(T, N, D, generator=g).half() for _ in range(3))
    kw = dict(num_heads=N, input_layout="TND", scale=0.25, softmax_lse_flag=True, actual_seq_lengths=[4, 7],
              actual_seq_lengths_kv=[5, 5])
    call = fused.validate(q, k, v, **kw)
    c = call.prompt
    rows = [(4, 5, 0, 0), (3, 0, 4, 5)] + [(0, 0, 0, 0)] * (c.heads.B - 2)    # no pseudo-batch: rows 7.. unused
    block = prompt.pack([r[0] for r in rows], [r[1] for r in rows], c.bands[:1] * len(rows),
                        tuple((r[2], r[3], 0, 0, 0) for r in rows))
    out, lse = torch.full((T, N, D), math.nan, dtype=torch.float16), torch.full((T, N, 1), math.nan)
    run_fused(call, out, lse, block=block)
    ref, ref_lse = nk.reference.npu_fused_infer_attention_score(q, k, v, **{**kw, "actual_seq_lengths_kv": [5, 5]})
    assert_close(out[:4], ref[:4], torch.float16)
    assert (out[4:7] == 0).all() and lse[4:7].isinf().all() and (lse[4:7] > 0).all()
    assert out[7:].isnan().all() and lse[7:].isnan().all()


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's /proc/self/clear_refs")
@pytest.mark.parametrize("dtype, mode", [("float16", 3), ("bfloat16", 4)])
def test_memory_stays_bounded_on_a_long_sequence(dtype, mode):
    """A causal fp16 prefill (online method) and a band bf16 prefill (SDPA on row chunks) of 8k tokens, 2
    heads: the peak resident set grows during the call by less than half of one head's (S1, S2) float32
    scores (256 MiB; the scratch of a tile and the output are about 60 MiB)."""
    from bench import cpu

    peak = cpu.peak_memory(8192, dtype, threads=1, heads=2, dim=64, mode=mode)["growth_bytes"]
    assert peak < 128 << 20, f"peak memory grew by {peak / 2**20:.0f} MiB"


def test_bench_cpu_quick(tmp_path, monkeypatch):
    """``python -m bench cpu --quick`` (decode cases): rows with times, ratios and outputs within tolerance."""
    from bench import cpu, results

    monkeypatch.setenv("NPUK_CPU_KERNELS", "native")             # the bench sets it; restored afterwards
    assert cpu.main(quick=True, match="decode bfloat16", out_dir=tmp_path) == 0
    (path,) = tmp_path.glob("cpu-*.json")
    rows = results.read(path)["rows"]
    assert [r["mode"] for r in rows] == ["contiguous", "paged"]
    assert all(r["ours_ms"] > 0 and r["sdpa_ms"] > 0 and r["err"] <= 1 for r in rows)


def test_exp_is_torch_exp_within_its_stated_error():
    """``core.exp_`` (exp2 of x·log2 e in float32): within 4e-6 relative of exp down to -87, and 0 in fp16 below."""
    x = torch.linspace(-87.0, 0.0, 100001)
    want = torch.exp(x.double())
    got = core.exp_(x.clone()).double()
    assert ((got - want).abs() / want).max() < 4e-6
    assert core.exp_(torch.tensor([-65504.0, -3.4e38, -float("inf")])).half().eq(0).all()
