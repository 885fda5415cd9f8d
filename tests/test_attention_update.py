"""npu_attention_update (spec vllm-ascend-ops §3): the merge against the reference on the CPU's native path
and in the Triton kernel, with both lse sentinels (+inf from the prefill path, -3.4e38 from the decode
path), hand-computed merges, registration, graph capture, and one error per rule.

Tolerance: fp16/bf16 outputs within ``nk.reference.tolerance`` (two units in the last place); float32
outputs and lse_out within 1e-5 (absolute and relative): the kernel computes the reference's steps in
float32, and exp/log implementations differ by a few units in the last place. Sentinel rows are exact.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

import npu_kernels as nk
from npu_kernels import reference as ref
from npu_kernels.ops import attention_update
from npu_kernels.reference import tolerance

from .test_kv_cache import FEWER

DECODE_EMPTY = -3.4e38          # lse of a decode-path row without keys
INF = float("inf")


def update_tolerance(dtype: torch.dtype) -> tuple[float, float]:
    return (1e-5, 1e-5) if dtype == torch.float32 else tolerance(dtype)


@st.composite
def update_cases(draw):
    return dict(sp=draw(st.integers(1, 16)), rows=draw(st.integers(1, 12)), h=8 * draw(st.integers(1, 8)),
                dtype=draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16])),
                update_type=draw(st.sampled_from([0, 1])), sentinels=draw(st.sampled_from([0.0, 0.3, 0.9])),
                strided=draw(st.booleans()), seed=draw(st.integers(0, 999)))


def update_inputs(case, device):
    """lse: finite values in [-20, 20], each replaced by +inf or -3.4e38 with probability ``sentinels``."""
    g = torch.Generator().manual_seed(case["seed"])
    lse, outs = [], []
    for _ in range(case["sp"]):
        x = torch.rand(case["rows"], generator=g) * 40 - 20
        kind = torch.rand(case["rows"], generator=g)
        x = torch.where(kind < case["sentinels"] / 2, INF, torch.where(kind < case["sentinels"], DECODE_EMPTY, x))
        o = torch.randn(case["rows"], 2 * case["h"] if case["strided"] else case["h"], generator=g).to(case["dtype"])
        lse.append(torch.stack([x, x], 1)[:, 0].to(device) if case["strided"] else x.to(device))
        outs.append((o[:, ::2] if case["strided"] else o).to(device))
    return lse, outs


def check_update(case, device):
    lse, outs = update_inputs(case, device)
    out, lse_out = nk.npu_attention_update(lse, outs, case["update_type"])
    expected, expected_lse = ref.npu_attention_update(lse, outs, case["update_type"])
    assert out.dtype == outs[0].dtype and out.shape == outs[0].shape
    atol, rtol = update_tolerance(case["dtype"])
    torch.testing.assert_close(out.float(), expected.float(), atol=atol, rtol=rtol, equal_nan=True)
    all_prefill_empty = torch.stack(lse).eq(INF).all(0)
    assert torch.equal(out.isnan().any(1), all_prefill_empty)            # NaN exactly where every partial is +inf
    if case["update_type"] == 0:
        assert lse_out is None and expected_lse is None
        return
    torch.testing.assert_close(lse_out, expected_lse, atol=1e-5, rtol=1e-5, equal_nan=True)
    all_decode_empty = torch.stack(lse).eq(DECODE_EMPTY).all(0)
    assert (lse_out[all_decode_empty] == torch.tensor(DECODE_EMPTY)).all()


# Triton's interpreter (numpy) warns where every partial is +inf: -inf - (-inf) is NaN, as specified
IEEE_NAN = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
CASE_ALL_SENTINELS = dict(sp=3, rows=9, h=16, dtype=torch.bfloat16, update_type=1, sentinels=0.9, strided=True, seed=4)


@example(case=CASE_ALL_SENTINELS)
@given(case=update_cases())
def test_update_native(case, native_path, device):
    check_update(case, device)


@IEEE_NAN
@FEWER
@example(case=CASE_ALL_SENTINELS)
@given(case=update_cases())
def test_update_triton(case, triton_path, device):
    check_update(case, device)


def test_merge_by_hand(path, device):
    """lse ln 1 and ln 3: weights 1/4 and 3/4, lse_out ln 4."""
    lse = [torch.zeros(2, device=device), torch.full((2,), 3.0, device=device).log()]
    outs = [torch.full((2, 8), 4.0, device=device), torch.full((2, 8), 8.0, device=device)]
    out, lse_out = nk.npu_attention_update(lse, outs, 1)
    torch.testing.assert_close(out, torch.full((2, 8), 7.0, device=device))
    torch.testing.assert_close(lse_out, torch.full((2,), 4.0, device=device).log())


@IEEE_NAN
def test_sentinels_by_hand(path, device):
    """Row 0: a prefill "no key" (+inf) partial has weight 0, so the other partial comes out exactly. Row 1:
    a decode "no key" (-3.4e38) partial has weight 0 next to a finite one. Row 2: every partial +inf: NaN.
    Row 3: every partial -3.4e38: weights 1, lse_out -3.4e38."""
    lse0 = torch.tensor([INF, 0.5, INF, DECODE_EMPTY], device=device)
    lse1 = torch.tensor([1.25, DECODE_EMPTY, INF, DECODE_EMPTY], device=device)
    o0 = torch.randn(4, 16, device=device).to(torch.bfloat16)
    o1 = torch.randn(4, 16, device=device).to(torch.bfloat16)
    o0[3], o1[3] = 0, 0                                              # decode path rows without keys are 0
    out, lse_out = nk.npu_attention_update([lse0, lse1], [o0, o1], 1)
    assert torch.equal(out[0], o1[0]) and lse_out[0] == 1.25
    assert torch.equal(out[1], o0[1]) and lse_out[1] == 0.5
    assert out[2].isnan().all() and lse_out[2].isnan()
    assert (out[3] == 0).all() and lse_out[3] == torch.tensor(DECODE_EMPTY)


def test_update_type_0_returns_none_but_the_op_a_tensor(device):
    lse, outs = [torch.zeros(3, device=device)], [torch.ones(3, 8, device=device)]
    out, lse_out = nk.npu_attention_update(lse, outs, 0)
    assert lse_out is None and torch.equal(out, outs[0])
    out, lse_out = torch.ops.npu.npu_attention_update(lse, outs, 0)
    assert lse_out.shape == (3,) and lse_out.dtype == torch.float32


def test_opcheck_and_compile(device):
    g = torch.Generator().manual_seed(0)
    lse = [torch.randn(5, generator=g).to(device) for _ in range(3)]
    outs = [torch.randn(5, 16, generator=g).to(torch.float16).to(device) for _ in range(3)]
    torch.library.opcheck(torch.ops.npu.npu_attention_update.default, (lse, outs, 1))

    def fn(a, b, c, x, y, z):
        out, lse_out = nk.npu_attention_update([a, b, c], [x, y, z], 1)
        return out * 2, lse_out

    eager = fn(*lse, *outs)
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")(*lse, *outs)
    torch.testing.assert_close(compiled, eager)


def test_capture_replays_with_new_partials(path, device):
    import runtime

    g = torch.Generator().manual_seed(1)
    lse = [torch.randn(6, generator=g).to(device) for _ in range(2)]
    outs = [torch.randn(6, 8, generator=g).to(device) for _ in range(2)]
    graph = runtime.NPUGraph()
    with runtime.graph(graph):
        out, lse_out = nk.npu_attention_update(lse, outs, 1)
    for _ in range(2):
        for t in (*lse, *outs):
            t.copy_(torch.randn(t.shape, generator=g))
        lse[1][0] = INF
        graph.replay()
        runtime.synchronize()
        expected, expected_lse = ref.npu_attention_update(lse, outs, 1)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lse_out, expected_lse, atol=1e-5, rtol=1e-5)


DEV = nk.npu_device()
L = [torch.zeros(4, device=DEV)] * 2
O = [torch.zeros(4, 16, device=DEV)] * 2

ERRORS = [
    ("SP >= 1", lambda: nk.npu_attention_update([], [], 0), ValueError, "lse=0: needs 1 to 16"),
    ("SP >= 1, fake", lambda: attention_update.validate([], [], 0), ValueError, "lse=0: needs 1 to 16"),
    ("no local_out", lambda: nk.npu_attention_update(L, [], 0), ValueError, "local_out=0: needs one tensor per lse"),
    ("SP <= 16", lambda: nk.npu_attention_update(L * 9, O * 9, 0), ValueError, "lse=18: needs 1 to 16"),
    ("one out per lse", lambda: nk.npu_attention_update(L, O[:1], 0), ValueError,
     "local_out=1: needs one tensor per lse"),
    ("lse float32", lambda: nk.npu_attention_update([L[0].half()] * 2, O, 0), TypeError, r"lse\[0\]=.*dtype"),
    ("lse 1-D", lambda: nk.npu_attention_update([L[0].view(2, 2)] * 2, O, 0), ValueError, r"lse\[0\]=.*1 dimensions"),
    ("lse one shape", lambda: nk.npu_attention_update([L[0], torch.zeros(5, device=DEV)], O, 0), ValueError,
     r"lse\[1\]=.*share one shape"),
    ("local_out dtype", lambda: nk.npu_attention_update(L, [O[0].to(torch.int8)] * 2, 0), TypeError,
     r"local_out\[0\]=.*dtype"),
    ("local_out 2-D", lambda: nk.npu_attention_update(L, [O[0].view(4, 2, 8)] * 2, 0), ValueError,
     r"local_out\[0\]=.*2 dimensions"),
    ("local_out one shape", lambda: nk.npu_attention_update(L, [O[0], torch.zeros(4, 8, device=DEV)], 0), ValueError,
     r"local_out\[1\]=.*share one shape"),
    ("local_out one dtype", lambda: nk.npu_attention_update(L, [O[0], O[1].half()], 0), TypeError,
     r"local_out\[1\]=.*share one dtype"),
    ("rows match", lambda: nk.npu_attention_update([torch.zeros(5, device=DEV)] * 2, O, 0), ValueError,
     r"lse\[0\]=.*one value per row"),
    ("H >= 8", lambda: nk.npu_attention_update(L, [torch.zeros(4, 4, device=DEV)] * 2, 0), ValueError, "head dim 4"),
    ("H multiple of 8", lambda: nk.npu_attention_update(L, [torch.zeros(4, 12, device=DEV)] * 2, 0), ValueError,
     "head dim 12"),
    ("H <= 512", lambda: nk.npu_attention_update(L, [torch.zeros(4, 520, device=DEV)] * 2, 0), ValueError,
     "head dim 520"),
    ("update_type", lambda: nk.npu_attention_update(L, O, 2), ValueError, "update_type=2"),
]


@pytest.mark.parametrize("call, exc, match", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


AOT_SCRIPT = """
import json
from npu_kernels import aot
from npu_kernels.kernels import attention_update
for row in aot.rows(attention_update.aot_variants()):
    print(json.dumps({k: row.get(k) for k in ("kernel", "variant", "arch", "spill_bytes", "error")}))
"""


def test_kernel_compiles_for_gpus():
    from .conftest import compile_only

    rows = compile_only("-c", AOT_SCRIPT, timeout=600)
    assert {r["kernel"] for r in rows} == {"attention_update"} and {r["arch"] for r in rows} == {80, 90}
    assert not [r for r in rows if r["error"]], rows
