"""KV-cache operators (spec vllm-ascend-ops §2, §5): bit exact against the reference on the CPU's native
path and in the Triton kernels, NZ addressing by hand, out-of-range indices, registration, graph capture
with indices changed after capture, and one error per rule.

Data are random bit patterns (NaN payloads and infinities included) and compared as integers. The
Triton kernels run in this process where Triton can run them: on a GPU, or on the CPU when Triton is in
interpreter mode (``TRITON_INTERPRET=1`` before it was imported, which ``npu_kernels`` sets on the CPU).
"""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import npu_kernels as nk
from npu_kernels import reference as ref
from npu_kernels.ops import kv_cache as ops

from .conftest import compile_only

F16, BF16, I8 = torch.float16, torch.bfloat16, torch.int8
FEWER = settings(max_examples=max(5, settings.default.max_examples // 4))   # the interpreter is slow


def random_bits(shape, dtype, gen: torch.Generator, device) -> torch.Tensor:
    """Every bit pattern of ``dtype`` equally likely (NaNs and infinities included)."""
    n = int(torch.tensor(shape, dtype=torch.int64).prod()) * dtype.itemsize
    raw = torch.randint(0, 256, (n,), generator=gen, dtype=torch.uint8)
    return raw.view(dtype).view(shape).to(device)


def assert_bits_equal(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    a, e = ops.bits(actual.contiguous()), ops.bits(expected.contiguous())
    assert torch.equal(a, e), f"{int((a != e).sum())} elements differ"


# ---------------------------------------------------------------------------------------------------
# writes


WRITES = ("reshape_nd", "reshape_nz", "siso", "pa_norm", "pa_nz4", "pa_nz5", "pa_functional")


@st.composite
def write_cases(draw):
    op = draw(st.sampled_from(WRITES))
    nz = op in ("reshape_nz", "pa_nz4", "pa_nz5") or (op == "pa_functional" and draw(st.booleans()))
    kdtype = draw(st.sampled_from([F16, BF16, I8]))
    vdtype = draw(st.sampled_from([F16, BF16, I8])) if nz else kdtype
    kv_n = draw(st.integers(1, 3))

    def head_dim(dtype):
        return 32 // dtype.itemsize * draw(st.integers(1, 2)) if nz else draw(st.sampled_from([1, 5, 16, 24]))

    nb, bs = draw(st.integers(1, 4)), draw(st.sampled_from([1, 3, 16]))
    pa = op.startswith("pa")
    tokens = draw(st.integers(1 if pa else 0, min(nb * bs, 12)))
    slots = draw(st.permutations(range(nb * bs)))[:tokens]
    slot_dtype = draw(st.sampled_from([torch.int32, torch.int64])) if pa else torch.int32
    invalid = [-1, -nb * bs - 3, nb * bs, torch.iinfo(slot_dtype).max]     # skipped
    slots = [draw(st.sampled_from(invalid)) if draw(st.integers(0, 4)) == 0 else s for s in slots]
    return dict(op=op, nz=nz, five_d=op == "pa_nz5" or (op == "pa_functional" and nz and draw(st.booleans())),
                dtypes=(kdtype, vdtype), kv_n=kv_n, dims=(head_dim(kdtype), head_dim(vdtype)), nb=nb, bs=bs,
                slots=slots, slot_dtype=slot_dtype, strided=not pa and draw(st.booleans()),
                seed=draw(st.integers(0, 999)))


def cache_shape(case, dtype, dim):
    nb, bs, kv_n = case["nb"], case["bs"], case["kv_n"]
    if not case["nz"]:
        return nb, bs, kv_n, dim
    c0 = 32 // dtype.itemsize
    return (nb, kv_n, dim // c0, bs, c0) if case["five_d"] else (nb, kv_n * dim // c0, bs, c0)


def write_inputs(case, device):
    g = torch.Generator().manual_seed(case["seed"])
    t = len(case["slots"])
    rows = []
    for dtype, dim in zip(case["dtypes"], case["dims"]):
        x = random_bits((t, case["kv_n"], 2 * dim if case["strided"] else dim), dtype, g, device)
        rows.append(x[..., ::2] if case["strided"] else x)
    caches = [random_bits(cache_shape(case, dtype, dim), dtype, g, device)
              for dtype, dim in zip(case["dtypes"], case["dims"])]
    slots = torch.tensor(case["slots"], dtype=torch.int64).to(case["slot_dtype"]).to(device)
    return rows, caches, slots


def check_write(case, device):
    (key, value), (kc, vc), slots = write_inputs(case, device)
    ekc, evc = kc.clone(), vc.clone()
    op = case["op"]
    mode = dict(cache_mode="PA_NZ" if case["nz"] else "Norm")
    if op == "siso":
        nk._npu_reshape_and_cache_siso(key, kc, slots)
        ref._npu_reshape_and_cache_siso(key, ekc, slots)
    elif op.startswith("reshape"):
        nk._npu_reshape_and_cache(key, value, kc, vc, slots)
        ref._npu_reshape_and_cache(key, value, ekc, evc, slots)
    elif op == "pa_functional":
        before = kc.clone(), vc.clone()
        nkc, nvc = nk.npu_scatter_pa_kv_cache_functional(key, value, kc, vc, slots, **mode)
        assert_bits_equal(kc, before[0])                        # the inputs are left alone
        kc, vc = nkc, nvc
        ref.npu_scatter_pa_kv_cache(key, value, ekc, evc, slots, **mode)
    else:
        nk.npu_scatter_pa_kv_cache(key, value, kc, vc, slots, **mode)
        ref.npu_scatter_pa_kv_cache(key, value, ekc, evc, slots, **mode)
    assert_bits_equal(kc, ekc)
    assert_bits_equal(vc, evc)


CASE_NZ5_INT8_KEY_BF16_VALUE = dict(op="pa_nz5", nz=True, five_d=True, dtypes=(I8, BF16), kv_n=2, dims=(64, 32),
                                    nb=2, bs=16, slots=[3, -1, 31, 17, 2**31 - 1], slot_dtype=torch.int32,
                                    strided=False, seed=1)


CASE_NZ4_FITTING_ND_MIXED = dict(op="reshape_nz", nz=True, five_d=False, dtypes=(F16, BF16), kv_n=1, dims=(16, 16),
                                 nb=1, bs=1, slots=[0], slot_dtype=torch.int32, strided=False, seed=0)   # ND-shaped too


@example(case=CASE_NZ5_INT8_KEY_BF16_VALUE)
@example(case=CASE_NZ4_FITTING_ND_MIXED)
@given(case=write_cases())
def test_writes_native(case, native_path, device):
    check_write(case, device)


@FEWER
@example(case=CASE_NZ5_INT8_KEY_BF16_VALUE)
@given(case=write_cases())
def test_writes_triton(case, triton_path, device):
    check_write(case, device)


def test_nz_addressing_by_hand(path, device):
    """Element (token slot s, channel h) of an NZ cache is at [s // bs, h // c0, s % bs, h % c0]; NZ5 is the
    same bytes."""
    key = torch.arange(1, 2 * 2 * 16 + 1, dtype=torch.int16).view(2, 2, 16).view(F16).to(device)  # T=2, KV_N=2, D=16
    cache = torch.zeros(3, 2, 4, 16, dtype=F16, device=device)                                 # nb=3, H/c0=2, bs=4
    nk.npu_scatter_pa_kv_cache(key, key, cache, cache.clone(), torch.tensor([5, 8], dtype=torch.int32, device=device))
    for t, s in enumerate((5, 8)):
        for n in range(2):
            assert_bits_equal(cache[s // 4, n, s % 4], key[t, n])
    assert int((ops.bits(cache) != 0).sum()) == key.numel()
    five = torch.zeros(3, 2, 1, 4, 16, dtype=F16, device=device)
    nk.npu_scatter_pa_kv_cache(key, key, five, five.clone(), torch.tensor([5, 8], dtype=torch.int32, device=device))
    assert_bits_equal(five.view(cache.shape), cache)


def test_nd_addressing_and_skipped_slots_by_hand(path, device):
    key = torch.arange(1, 4 * 2 * 3 + 1, dtype=torch.int8, device=device).view(4, 2, 3)
    cache = torch.zeros(2, 2, 2, 3, dtype=I8, device=device)
    slots = torch.tensor([2, -1, 4, 0], dtype=torch.int32, device=device)        # 4 = nb * bs: skipped
    nk._npu_reshape_and_cache_siso(key, cache, slots)
    assert torch.equal(cache[1, 0], key[0]) and torch.equal(cache[0, 0], key[3])
    assert (cache[0, 1] == 0).all() and (cache[1, 1] == 0).all()


def test_reshape_and_cache_chooses_nz_by_shape(path, device):
    key = torch.randn(3, 1, 32, device=device).to(F16)
    nd = torch.zeros(2, 16, 1, 32, dtype=F16, device=device)
    nz = torch.zeros(2, 2, 16, 16, dtype=F16, device=device)
    slots = torch.tensor([0, 17, 5], dtype=torch.int32, device=device)
    nk._npu_reshape_and_cache(key, key, nd, nd.clone(), slots)
    nk._npu_reshape_and_cache(key, key, nz, nz.clone(), slots)
    assert_bits_equal(nz.permute(0, 2, 1, 3).reshape(2, 16, 1, 32), nd)


# ---------------------------------------------------------------------------------------------------
# reads


@st.composite
def gather_cases(draw):
    nz = draw(st.booleans())
    dtype = draw(st.sampled_from([F16, BF16, I8]))
    c0 = 32 // dtype.itemsize
    kv_n = draw(st.integers(1, 2))
    dims = [c0 * draw(st.integers(1, 2)) if nz else draw(st.sampled_from([1, 4, 16])) for _ in range(2)]
    nb, bs = draw(st.integers(1, 4)), draw(st.sampled_from([1, 2, 16]))
    batch, width = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    table = [[draw(st.sampled_from([-1, nb, *range(nb)])) for _ in range(width)] for _ in range(batch)]
    lens = [draw(st.integers(-2, width * bs + bs)) for _ in range(batch)]
    cumsum = draw(st.booleans())
    if cumsum:
        first = draw(st.sampled_from([0, 0, 2]))
        lens = [first + sum(max(n, 0) for n in lens[:i]) for i in range(batch + 1)]
    offsets = [draw(st.integers(-bs - 1, width * bs)) for _ in range(batch)] if draw(st.booleans()) else None
    total = sum(max(n, 0) for n in lens) if not cumsum else lens[-1]
    rows = draw(st.integers(max(1, total), max(1, total) + 3))          # more tokens than rows: test_gather_overflow
    return dict(nz=nz, dtype=dtype, kv_n=kv_n, dims=dims, nb=nb, bs=bs, table=table, lens=lens, cumsum=cumsum,
                offsets=offsets, rows=rows, seed=draw(st.integers(0, 999)))


def gather_inputs(case, device):
    g = torch.Generator().manual_seed(case["seed"])
    nb, bs, kv_n, dtype = case["nb"], case["bs"], case["kv_n"], case["dtype"]
    c0 = 32 // dtype.itemsize
    caches, rows = [], []
    for d in case["dims"]:
        shape = (nb, kv_n * d // c0, bs, c0) if case["nz"] else (nb, bs, kv_n, d)
        caches.append(random_bits(shape, dtype, g, device))
        rows.append(random_bits((case["rows"], kv_n * d) if case["nz"] else (case["rows"], kv_n, d), dtype, g, device))
    i32 = dict(dtype=torch.int32, device=device)
    kw = dict(is_seq_lens_cumsum=case["cumsum"])
    if case["offsets"] is not None:
        kw["seq_offset"] = torch.tensor(case["offsets"], **i32)
    return caches, torch.tensor(case["table"], **i32), torch.tensor(case["lens"], **i32), rows, kw


def check_gather(case, device):
    (kc, vc), table, lens, (key, value), kw = gather_inputs(case, device)
    ek, ev = key.clone(), value.clone()
    if case["seed"] % 2:
        nk.npu_gather_pa_kv_cache(kc, vc, table, lens, key, value, **kw)
    else:
        key, value = nk.npu_gather_pa_kv_cache_functional(kc, vc, table, lens, key.clone(), value, **kw)
    ref.npu_gather_pa_kv_cache(kc, vc, table, lens, ek, ev, **kw)
    assert_bits_equal(key, ek)
    assert_bits_equal(value, ev)


@example(case=dict(nz=False, dtype=F16, kv_n=1, dims=[16, 4], nb=3, bs=2, table=[[2, -1, 0], [1, 3, 2]], lens=[5, 6],
                   cumsum=False, offsets=[-3, 2], rows=13, seed=1))
@example(case=dict(nz=True, dtype=I8, kv_n=1, dims=[32, 64], nb=2, bs=2, table=[[1, 0], [0, 1], [1, 1]],
                   lens=[0, 4, 2, 5], cumsum=True, offsets=None, rows=8, seed=2))       # a decreasing step: empty
@given(case=gather_cases())
def test_gather_native(case, native_path, device):
    check_gather(case, device)


@FEWER
@given(case=gather_cases())
def test_gather_triton(case, triton_path, device):
    check_gather(case, device)


@pytest.mark.skipif(nk.npu_device().type != "cpu", reason="seq_lens on a GPU is not read on the host")
@pytest.mark.parametrize("cumsum", [False, True])
@pytest.mark.parametrize("functional", [False, True])
def test_gather_overflow(cumsum, functional, device):
    """More requested tokens than key/value rows is an error naming seq_lens (read on the host when it lives
    there; on a GPU the kernel stops at the last row)."""
    kc = torch.zeros(2, 4, 1, 16, dtype=F16, device=device)
    table = torch.tensor([[0, 1], [1, 0]], dtype=torch.int32, device=device)
    lens = torch.tensor([0, 5, 8] if cumsum else [5, 3], dtype=torch.int32, device=device)
    op = nk.npu_gather_pa_kv_cache_functional if functional else nk.npu_gather_pa_kv_cache
    rows = torch.zeros(8, 1, 16, dtype=F16, device=device)
    op(kc, kc, table, lens, rows, rows.clone(), is_seq_lens_cumsum=cumsum)        # 8 tokens fit
    with pytest.raises(ValueError, match=r"seq_lens=.*8 tokens must fit the 7 rows"):
        op(kc, kc, table, lens, rows[:7], rows[:7].clone(), is_seq_lens_cumsum=cumsum)


def test_gather_by_hand(path, device):
    """Block size 2. Request 0: 3 tokens through blocks [1, 0]. Request 1: seq_offset 3 skips one whole
    block of its table (3 // 2), then 3 tokens: 2 from block 0, one whose block id (9) is out of range,
    read as zeros. Row 6 is past the total: untouched."""
    cache = torch.arange(1, 2 * 2 * 1 * 2 + 1, dtype=torch.int8, device=device).view(2, 2, 1, 2)   # nb=2, bs=2
    table = torch.tensor([[1, 0, 0], [5, 0, 9]], dtype=torch.int32, device=device)
    key = torch.full((7, 1, 2), -7, dtype=torch.int8, device=device)
    nk.npu_gather_pa_kv_cache(cache, cache, table, torch.tensor([3, 3], dtype=torch.int32, device=device), key,
                              key.clone(), seq_offset=torch.tensor([0, 3], dtype=torch.int32, device=device))
    c = cache[:, :, 0]                                                     # [blk, off, d]
    zero, kept = torch.zeros_like(c[0, 0]), torch.full_like(c[0, 0], -7)
    expected = torch.stack([c[1, 0], c[1, 1], c[0, 0], c[0, 0], c[0, 1], zero, kept])[:, None]
    assert torch.equal(key, expected)


def test_gather_inverts_scatter(path, device):
    """Tokens written by npu_scatter_pa_kv_cache through a block table come back from npu_gather_pa_kv_cache,
    in both layouts."""
    g = torch.Generator().manual_seed(3)
    table = torch.tensor([[3, 1], [0, 2]], dtype=torch.int32, device=device)
    lens = torch.tensor([5, 3], dtype=torch.int32, device=device)
    slots = torch.tensor([12, 13, 14, 15, 4, 0, 1, 2], dtype=torch.int32, device=device)     # block * 4 + offset
    key = random_bits((8, 2, 16), BF16, g, device)
    for mode, shape, rows in (("Norm", (4, 4, 2, 16), (8, 2, 16)), ("PA_NZ", (4, 2, 4, 16), (8, 32))):
        cache = torch.zeros(shape, dtype=BF16, device=device)
        nk.npu_scatter_pa_kv_cache(key, key, cache, cache.clone(), slots, cache_mode=mode)
        out = torch.empty(rows, dtype=BF16, device=device)
        nk.npu_gather_pa_kv_cache(cache, cache, table, lens, out, out.clone())
        assert_bits_equal(out.view(8, 2, 16), key)


# ---------------------------------------------------------------------------------------------------
# scatter_nd


@st.composite
def scatter_nd_cases(draw):
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    depth = draw(st.integers(1, len(shape)))
    lead = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=2)))
    vectors = [[draw(st.integers(-1, n)) for n in shape[:depth]] for _ in range(int(torch.tensor(lead).prod()))]
    return dict(shape=shape, depth=depth, lead=lead, vectors=vectors, strided=draw(st.booleans()),
                dtype=draw(st.sampled_from(list(ops.SCATTER_ND_DTYPES))),
                index_dtype=draw(st.sampled_from([torch.int32, torch.int64])), in_place=draw(st.booleans()),
                seed=draw(st.integers(0, 999)))


def check_scatter_nd(case, device):
    g = torch.Generator().manual_seed(case["seed"])
    shape, dtype = case["shape"], case["dtype"]
    if dtype == torch.bool:
        base = torch.randint(0, 2, (2 * shape[0], *shape[1:]), generator=g).bool().to(device)
        updates = torch.randint(0, 2, (*case["lead"], *shape[case["depth"]:]), generator=g).bool().to(device)
    else:
        base = random_bits((2 * shape[0], *shape[1:]), dtype, g, device)
        updates = random_bits((*case["lead"], *shape[case["depth"]:]), dtype, g, device)
    target = base[::2] if case["strided"] else base[:shape[0]]
    indices = torch.tensor(case["vectors"], dtype=case["index_dtype"]).view(*case["lead"], case["depth"]).to(device)
    expected = ref.npu_scatter_nd_update(target, indices, updates)
    if case["in_place"]:
        actual = target.clone() if not case["strided"] else target
        kept = base.clone()
        assert nk.npu_scatter_nd_update_(actual, indices, updates) is actual
        if case["strided"]:
            assert_bits_equal(base[1::2], kept[1::2])          # the rows between the strided ones are untouched
    else:
        actual = nk.npu_scatter_nd_update(target, indices, updates)
    assert_bits_equal(actual, expected)


def _distinct(case) -> bool:
    vectors = [tuple(v) for v in case["vectors"] if all(0 <= i < n for i, n in zip(v, case["shape"]))]
    return len(set(vectors)) == len(vectors)


@given(case=scatter_nd_cases().filter(_distinct))
def test_scatter_nd_native(case, native_path, device):
    check_scatter_nd(case, device)


@FEWER
@given(case=scatter_nd_cases().filter(_distinct))
def test_scatter_nd_triton(case, triton_path, device):
    check_scatter_nd(case, device)


def test_scatter_nd_rows_by_hand(path, device):
    """vLLM-Ascend's use: rows of a (slots, width) view; out-of-range index vectors are skipped."""
    cache = torch.zeros(6, 4, dtype=I8, device=device)
    updates = torch.arange(1, 13, dtype=I8, device=device).view(3, 4)
    nk.npu_scatter_nd_update_(cache, torch.tensor([[4], [-1], [6]], dtype=torch.int32, device=device), updates)
    assert torch.equal(cache[4], updates[0]) and int((cache != 0).sum()) == 4


# ---------------------------------------------------------------------------------------------------
# registration, compile, capture


def small_write(device):
    """Finite data: opcheck and torch.compile compare outputs as numbers (NaN != NaN)."""
    g = torch.Generator().manual_seed(0)
    key = torch.randn(3, 2, 16, generator=g).to(F16).to(device)
    cache = torch.randn(2, 4, 2, 16, generator=g).to(F16).to(device)
    return key, cache, torch.tensor([1, -1, 6], dtype=torch.int32, device=device)


def small_gather(device):
    key, cache, slots = small_write(device)
    table = torch.tensor([[1, 0], [0, 1]], dtype=torch.int32, device=device)
    lens = torch.tensor([3, 2], dtype=torch.int32, device=device)
    return cache, table, lens, torch.zeros(5, 2, 16, dtype=F16, device=device)


def test_opcheck(device):
    key, cache, slots = small_write(device)
    check = torch.library.opcheck
    check(torch.ops.npu._npu_reshape_and_cache.default, (key, key, cache.clone(), cache.clone(), slots))
    check(torch.ops.npu._npu_reshape_and_cache_siso.default, (key, cache.clone(), slots))
    for op in (torch.ops.npu.npu_scatter_pa_kv_cache.default, torch.ops.npu.npu_scatter_pa_kv_cache_functional.default):
        check(op, (key, key, cache.clone(), cache.clone(), slots), {"cache_mode": "Norm"})
    kc, table, lens, out = small_gather(device)
    for op in (torch.ops.npu.npu_gather_pa_kv_cache.default, torch.ops.npu.npu_gather_pa_kv_cache_functional.default):
        check(op, (kc, kc, table, lens, out.clone(), out.clone()), {"seq_offset": torch.zeros_like(lens)})
    rows = torch.zeros(8, 16, dtype=F16, device=device)
    index = torch.tensor([[3], [9]], device=device)
    for op in (torch.ops.npu.npu_scatter_nd_update.default, torch.ops.npu.npu_scatter_nd_update_.default,
               torch.ops.npu._npu_scatter_nd_update_into.default):
        check(op, (rows.clone(), index, torch.ones(2, 16, dtype=F16, device=device)))


def test_schemas_match_torch_npu():
    scatter = torch.ops.npu.npu_scatter_pa_kv_cache.default._schema
    assert [a.name for a in scatter.arguments] == ["key", "value", "key_cache", "value_cache", "slot_mapping",
                                                   "compress_lens", "compress_seq_offsets", "seq_lens", "cache_mode"]
    assert scatter.arguments[-1].default_value == "PA_NZ" and scatter.arguments[5].kwarg_only
    writes = [a.alias_info is not None and a.alias_info.is_write for a in scatter.arguments[:4]]
    assert writes == [False, False, True, True]
    gather = torch.ops.npu.npu_gather_pa_kv_cache.default._schema
    assert [a.name for a in gather.arguments][4:] == ["key", "value", "seq_offset", "is_seq_lens_cumsum"]
    assert gather.arguments[-1].default_value is False
    assert str(torch.ops.npu._npu_reshape_and_cache.default._schema).endswith("Tensor slot_indices) -> ()")
    inplace = torch.ops.npu.npu_scatter_nd_update_.default._schema
    assert inplace.returns[0].alias_info.is_write and inplace.arguments[0].alias_info.is_write


def test_compile_fullgraph(device):
    key, cache, slots = small_write(device)
    kc, table, lens, out = small_gather(device)
    index = torch.tensor([[1], [3]], device=device)

    def fn(key, slots, kc, vc, out_k, out_v, rows):
        nk.npu_scatter_pa_kv_cache(key, key, kc, vc, slots, cache_mode="Norm")
        nk.npu_gather_pa_kv_cache(kc, vc, table, lens, out_k, out_v)
        nk.npu_scatter_nd_update_(rows, index, out_k[:2, 0])
        fresh = nk.npu_scatter_nd_update(rows, index, out_v[2:4, 0])
        k2, _ = nk.npu_scatter_pa_kv_cache_functional(key, key, kc, vc, slots, cache_mode="Norm")
        return fresh + 1, k2

    eager = [t.clone() for t in (cache, cache, out, out, torch.zeros(4, 16, dtype=F16, device=device))]
    compiled = [t.clone() for t in eager]
    expected = fn(key, slots, *eager)
    got = torch.compile(fn, fullgraph=True, backend="aot_eager")(key, slots, *compiled)
    for a, b in zip((*got, *compiled), (*expected, *eager)):
        assert_bits_equal(a, b)


def test_capture_replays_with_slots_changed_in_place(path, device):
    """Captured once; the slot mapping and the key rows change in place between replays (as vLLM-Ascend's
    persistent buffers do); every replay writes where the current slots say."""
    import runtime

    g = torch.Generator().manual_seed(5)
    key = random_bits((3, 1, 32), BF16, g, device)
    cache = random_bits((2, 2, 16, 16), BF16, g, device)
    slots = torch.tensor([0, 1, 2], dtype=torch.int64, device=device)
    before, value_cache = cache.clone(), cache.clone()
    graph = runtime.NPUGraph()
    with runtime.graph(graph):
        nk.npu_scatter_pa_kv_cache(key, key, cache, value_cache, slots)
    runtime.synchronize()
    assert_bits_equal(cache, before)                                       # capture writes nothing
    for new in ([7, -1, 31], [16, 3, 4]):
        slots.copy_(torch.tensor(new))
        key.copy_(random_bits(key.shape, BF16, g, device))
        expected = cache.clone()
        ref.npu_scatter_pa_kv_cache(key, key, expected, expected.clone(), slots)
        graph.replay()
        runtime.synchronize()
        assert_bits_equal(cache, expected)


def test_task_update_with_a_new_block_table(path, device):
    """In a task group, a task update passes other index tensors of the same shapes; the replay gathers
    with them."""
    import runtime

    kc, table, lens, out = small_gather(device)
    out_v = out.clone()
    graph = runtime.NPUGraph()
    with runtime.graph(graph):
        stream = runtime.current_stream()
        runtime.graph_task_group_begin(stream)
        nk.npu_gather_pa_kv_cache(kc, kc, table, lens, out, out_v)
        handle = runtime.graph_task_group_end(stream)
    update = runtime.Stream()
    new_table, new_lens = torch.tensor([[0, 1], [1, 1]], dtype=torch.int32, device=device), lens.flip(0)
    with runtime.stream(update):
        runtime.graph_task_update_begin(update, handle)
        nk.npu_gather_pa_kv_cache(kc, kc, new_table, new_lens, out, out_v)
        runtime.graph_task_update_end(update)
    graph.replay()
    runtime.synchronize()
    expected = torch.zeros_like(out)
    ref.npu_gather_pa_kv_cache(kc, kc, new_table, new_lens, expected, expected.clone())
    assert_bits_equal(out, expected)


# ---------------------------------------------------------------------------------------------------
# errors: one per rule


DEV = nk.npu_device()


def t(*shape, dtype=F16):
    return torch.zeros(shape, dtype=dtype, device=DEV)


def i32(*values):
    return torch.tensor(values, dtype=torch.int32, device=DEV)


K, V = t(2, 2, 16), t(2, 2, 16)
ND = t(2, 4, 2, 16)
NZ = t(2, 2, 4, 16)
SLOTS = i32(0, 1)
GATHER = (ND, ND, i32(0, 1).view(1, 2), i32(3), t(3, 2, 16), t(3, 2, 16))
SELF = t(6, 4)
IDX = torch.tensor([[1], [2]], device=DEV)

ERRORS = [
    # _npu_reshape_and_cache / _siso
    ("key 3-D", lambda: nk._npu_reshape_and_cache(t(2, 32), V, ND, ND, SLOTS), ValueError, "key=.*3 dimensions"),
    ("key dtype", lambda: nk._npu_reshape_and_cache(K.float(), V, ND, ND, SLOTS), TypeError, "key=.*dtype must be"),
    ("value tokens/heads", lambda: nk._npu_reshape_and_cache(K, t(3, 2, 16), ND, ND, SLOTS), ValueError,
     "value=.*dims 0-1"),
    ("slot_indices int32", lambda: nk._npu_reshape_and_cache(K, V, ND, ND, SLOTS.long()), TypeError,
     "slot_indices=.*torch.int32"),
    ("one slot per token", lambda: nk._npu_reshape_and_cache(K, V, ND, ND, i32(0)), ValueError,
     "slot_indices=.*one slot per token"),
    ("caches ND or NZ", lambda: nk._npu_reshape_and_cache(K, V, t(2, 4, 1, 32), ND, SLOTS), ValueError,
     "key_cache=.*both be ND .* or both NZ"),
    ("ND one dtype", lambda: nk._npu_reshape_and_cache(K, V.bfloat16(), ND, ND.bfloat16(), SLOTS), TypeError,
     "value=.*share one dtype"),
    ("NZ cache dtype", lambda: nk._npu_reshape_and_cache(K, V, NZ.bfloat16(), NZ, SLOTS), TypeError,
     "key_cache=.*key's dtype"),
    ("cache contiguous", lambda: nk._npu_reshape_and_cache(K, V, t(2, 8, 2, 16)[:, ::2], ND, SLOTS), ValueError,
     "key_cache=.*contiguous"),
    ("same blocks", lambda: nk._npu_reshape_and_cache(K, V, ND, t(3, 4, 2, 16), SLOTS), ValueError,
     "value_cache=.*num_blocks"),
    ("siso ND only", lambda: nk._npu_reshape_and_cache_siso(K, NZ, SLOTS), ValueError, "key_cache=.*ND cache"),
    # npu_scatter_pa_kv_cache
    ("compress scenario", lambda: nk.npu_scatter_pa_kv_cache(K, V, ND, ND, SLOTS, seq_lens=SLOTS, cache_mode="Norm"),
     NotImplementedError, "seq_lens: the compress scenario"),
    ("cache_mode", lambda: nk.npu_scatter_pa_kv_cache(K, V, ND, ND, SLOTS, cache_mode="ND"), ValueError,
     "cache_mode='ND'"),
    ("empty", lambda: nk.npu_scatter_pa_kv_cache(t(0, 2, 16), t(0, 2, 16), ND, ND, i32(), cache_mode="Norm"),
     ValueError, "key=.*empty"),
    ("inputs contiguous", lambda: nk.npu_scatter_pa_kv_cache(t(2, 2, 32)[..., ::2], V, ND, ND, SLOTS,
                                                             cache_mode="Norm"), ValueError, "key=.*contiguous"),
    ("Norm one dtype", lambda: nk.npu_scatter_pa_kv_cache(K, V.bfloat16(), ND, ND.bfloat16(), SLOTS, cache_mode="Norm"),
     TypeError, "value=.*share one dtype"),
    ("PA_NZ 32-byte heads", lambda: nk.npu_scatter_pa_kv_cache(t(2, 2, 8), t(2, 2, 8), t(2, 1, 4, 16), t(2, 1, 4, 16),
                                                               SLOTS), ValueError, "key=.*multiple of 32"),
    ("PA_NZ shape", lambda: nk.npu_scatter_pa_kv_cache(K, V, ND, ND, SLOTS), ValueError, "key_cache=.*NZ"),
    ("PA_NZ block size", lambda: nk.npu_scatter_pa_kv_cache(t(2, 2, 32, dtype=I8), t(2, 2, 32, dtype=I8),
                                                            t(1, 2, 65535, 32, dtype=I8),
                                                            t(1, 2, 65535, 32, dtype=I8), SLOTS),
     ValueError, "block_size .* < 65535"),
    ("cache holds the tokens", lambda: nk.npu_scatter_pa_kv_cache(t(9, 2, 16), t(9, 2, 16), ND, ND, i32(*range(9)),
                                                                  cache_mode="Norm"),
     ValueError, "at least the number"),
    ("slot dtype", lambda: nk.npu_scatter_pa_kv_cache(K, V, ND, ND, SLOTS.float(), cache_mode="Norm"), TypeError,
     "slot_mapping=.*dtype must be"),
    ("key/value dtype vs caches", lambda: nk.npu_scatter_pa_kv_cache(K, V, NZ.bfloat16(), NZ, SLOTS), TypeError,
     "key_cache=.*key's dtype"),
    # npu_gather_pa_kv_cache
    ("gather key rank", lambda: nk.npu_gather_pa_kv_cache(*GATHER[:4], t(3, 2, 16, 1), GATHER[5]), ValueError,
     "key=.*2 or 3 dimensions"),
    ("gather one dtype", lambda: nk.npu_gather_pa_kv_cache(*GATHER[:4], GATHER[4], GATHER[5].bfloat16()), TypeError,
     "value=.*share one dtype"),
    ("block_tables int32", lambda: nk.npu_gather_pa_kv_cache(ND, ND, GATHER[2].long(), *GATHER[3:]), TypeError,
     "block_tables=.*torch.int32"),
    ("seq_lens length", lambda: nk.npu_gather_pa_kv_cache(*GATHER, is_seq_lens_cumsum=True), ValueError,
     "seq_lens=.*needs 2 values"),
    ("seq_offset length", lambda: nk.npu_gather_pa_kv_cache(*GATHER, seq_offset=i32(0, 0)), ValueError,
     "seq_offset=.*one value per request"),
    ("gather empty", lambda: nk.npu_gather_pa_kv_cache(*GATHER[:4], t(0, 2, 16), t(0, 2, 16)), ValueError,
     "key=.*empty"),
    ("gather contiguous", lambda: nk.npu_gather_pa_kv_cache(*GATHER[:4], t(6, 2, 16)[::2], GATHER[5]), ValueError,
     "key=.*contiguous"),
    ("gather NZ shape", lambda: nk.npu_gather_pa_kv_cache(ND, ND, *GATHER[2:4], t(3, 32), t(3, 32)), ValueError,
     "key_cache=.*NZ"),
    # npu_scatter_nd_update(_)
    ("self dtype", lambda: nk.npu_scatter_nd_update(SELF.int(), IDX, t(2, 4).int()), TypeError, "self=.*dtype must be"),
    ("indices rank", lambda: nk.npu_scatter_nd_update(SELF, torch.tensor([1, 2], device=DEV), t(2, 4)), ValueError,
     "indices=.*at least 2 dimensions"),
    ("index depth", lambda: nk.npu_scatter_nd_update(SELF, torch.zeros(2, 3, dtype=torch.int64, device=DEV), t(2)),
     ValueError, "indices=.*last dim"),
    ("indices dtype", lambda: nk.npu_scatter_nd_update(SELF, IDX.float(), t(2, 4)), TypeError, "indices=.*dtype"),
    ("updates dtype", lambda: nk.npu_scatter_nd_update(SELF, IDX, t(2, 4).bfloat16()), TypeError, "updates=.*dtype"),
    ("updates shape", lambda: nk.npu_scatter_nd_update(SELF, IDX, t(2, 5)), ValueError, r"updates=.*\(2, 4\)"),
    ("self dims >= 1 contiguous", lambda: nk.npu_scatter_nd_update_(t(6, 8)[:, ::2], IDX, t(2, 4)), ValueError,
     "self=.*first dimension only"),
]


@pytest.mark.parametrize("call, exc, match", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ---------------------------------------------------------------------------------------------------
# compile-only: every kernel variant for sm_80 and sm_90 (no GPU needed)

AOT_SCRIPT = """
import json
from npu_kernels import aot
from npu_kernels.kernels import kv_cache
for row in aot.rows(kv_cache.aot_variants()):
    print(json.dumps({k: row.get(k) for k in ("kernel", "variant", "arch", "spill_bytes", "error")}))
"""


def test_kernels_compile_for_gpus():
    rows = compile_only("-c", AOT_SCRIPT, timeout=600)
    assert {r["kernel"] for r in rows} == {"scatter", "gather", "scatter_nd"}
    assert {r["arch"] for r in rows} == {80, 90}
    assert not [r for r in rows if r["error"]], json.dumps(rows)
