"""npu_fused_infer_attention_score: kernel against the golden reference, and its relations to the other
operators (spec ops §4)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given

import npu_kernels as nk
from npu_kernels.masks import INT_MAX
from npu_kernels.ops import fused
from npu_kernels.reference import tolerance

from .conftest import assert_close
from .fused_cases import FCase, fcases, make_inputs

pytestmark = pytest.mark.kernels     # the Triton kernels against the reference (the interpreter on the CPU)


def assert_lse_close(lse: torch.Tensor, ref: torch.Tensor, tol: float = 1e-4) -> None:
    """Sentinels (+inf, -3.4e38) exactly, finite values within ``tol`` (default: float32 accuracy; see
    ``lse_tolerance``)."""
    assert lse.shape == ref.shape and lse.dtype == torch.float32
    sentinel = ~torch.isfinite(ref) | (ref.abs() > 1e30)
    assert torch.equal(lse[sentinel], ref[sentinel])
    torch.testing.assert_close(lse[~sentinel], ref[~sentinel], atol=tol, rtol=tol)


def lse_tolerance(call: fused.FusedCall) -> float:
    """float32 accuracy (1e-4), or 2·eps of the query dtype where the scores are computed in it: the NPU's
    fp16 high-performance path (spec ops §1.8) and the decode kernel's int8 keys, whose scale is folded
    into the query in its dtype (the NPU's own MSD expansion is about 1e-3 away, spec ops §3.3)."""
    if call.prompt is not None:
        return tolerance(torch.float16)[0] if call.prompt.fp16_path else 1e-4
    return tolerance(call.incre.dtype)[0] if call.incre.antiquant is not None else 1e-4


def check(case: FCase, device) -> None:
    q, k, v, kw = make_inputs(case, device)
    out, lse = nk.npu_fused_infer_attention_score(q, k, v, **kw)
    assert_matches(case, (out, lse), nk.reference.npu_fused_infer_attention_score(q, k, v, **kw),
                   lse_tolerance(fused.validate(q, k, v, **kw)))


def assert_matches(case: FCase, outputs: tuple, reference: tuple, lse_tol: float) -> None:
    """(attention_out, softmax_lse) of a call against the reference's; without ``case.lse`` the lse is
    the operator's empty placeholder."""
    (out, lse), (ref, ref_lse) = outputs, reference
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert_close(out, ref, case.dtype)
    if case.lse:
        assert_lse_close(lse, ref_lse, lse_tol)
    else:
        assert lse.shape == (0,) and lse.dtype == torch.float32


@given(case=fcases())
@example(case=FCase(layout="TND", B=2, qlens=(5, 3), kvlens=(7, 0), S2=7, sparse_mode=3))
@example(case=FCase(layout="BSH_NBSD", B=2, S1=1, S2=20, kvlens=(20, 0), kv_pad=2))
@example(case=FCase(layout="BNSD", B=2, S1=6, S2=30, D=128, Dv=128, paged="4d", kvlens=(30, 17), rope=True))
# the rope part of the scores on the fp16 high-performance path
@example(case=FCase(layout="BSND", dtype=torch.float16, S1=3, S2=20, D=128, Dv=128, rope=True, inner_precise=1,
                    lse=True))
# int8 decode keys: the lse of scores from the query with the key scale folded in, in fp16
@example(case=FCase(layout="BSH", S1=1, S2=1, D=16, Dv=16, kvlens=(1,), paged="3d", antiquant="tensor", lse=True))
@example(case=FCase(layout="BSND", B=2, S1=5, S2=9, prefix=3, mask_p=0.3, inner_precise=2))
@example(case=FCase(layout="BNSD", S1=1, S2=12, antiquant="token", separated=True))
@example(case=FCase(layout="BSH", B=2, S1=1, S2=40, paged="3d", kvlens=(40, 7), antiquant="page_head", separated=True))
@example(case=FCase(layout="BNSD", B=2, S1=1, S2=20, paged="4d", kvlens=(20, 5), antiquant="token_head",
                    separated=True))
@example(case=FCase(layout="BSND", B=2, S1=1, S2=9, antiquant="head", separated=True))
@example(case=FCase(layout="BSND", B=2, S1=4, S2=9, antiquant="mixed", separated=True))
# per-token parameters shared by the kv heads were read with the stride of a size-1 axis
@example(case=FCase(layout="NSD", kv_heads=2, S1=2, S2=1, sparse_mode=2, antiquant="token"))
def test_matches_reference(case, device):
    check(case, device)


def test_prefill_equals_prompt(device):
    """Q_S > 1: the prompt operator with the same arguments (its next_tokens default is 0, and its
    sparse modes 10-14 are FIA's high precision, inner_precise 0)."""
    case = FCase(layout="BSH", B=2, kv_heads=2, group=2, S1=11, S2=17, qlens=(11, 6), kvlens=(9, 17),
                 sparse_mode=3, lse=False)
    q, k, v, kw = make_inputs(case, device)
    out, _ = nk.npu_fused_infer_attention_score(q, k, v, **kw)
    pfa = nk.npu_prompt_flash_attention(
        q, k, v, num_heads=case.N, num_key_value_heads=case.kv_heads, input_layout="BSH", scale_value=kw["scale"],
        actual_seq_lengths=list(case.qlens), actual_seq_lengths_kv=list(case.kvlens), sparse_mode=13,
        atten_mask=kw["atten_mask"], next_tokens=INT_MAX)
    torch.testing.assert_close(out, pfa, atol=0, rtol=0)


def test_decode_equals_incre(device):
    case = FCase(layout="BNSD", B=2, kv_heads=2, group=4, S1=1, S2=40, kvlens=(40, 13), lse=False)
    q, k, v, kw = make_inputs(case, device)
    out, _ = nk.npu_fused_infer_attention_score(q, k, v, **kw)
    ifa = nk.npu_incre_flash_attention(q, k, v, num_heads=case.N, num_key_value_heads=case.kv_heads,
                                       input_layout="BNSD", scale_value=kw["scale"], actual_seq_lengths=[40, 13])
    torch.testing.assert_close(out, ifa, atol=0, rtol=0)


def test_out_equals_functional_and_leaves_lse(device):
    case = FCase(layout="BSND", B=2, S1=7, S2=10, sparse_mode=2, lse=False)
    q, k, v, kw = make_inputs(case, device)
    out, _ = nk.npu_fused_infer_attention_score(q, k, v, **kw)
    ws = nk._npu_fused_infer_attention_score_get_max_workspace(q, k, v, **kw)
    o = torch.full_like(out, float("nan"))
    lse = torch.full((1,), 7.0, dtype=torch.float16, device=device)
    nk.npu_fused_infer_attention_score.out(q, k, v, workspace=ws, out=[o, lse], **kw)
    torch.testing.assert_close(o, out, atol=0, rtol=0)
    assert lse.item() == 7.0


def test_out_with_workspace_allocates_nothing(device, monkeypatch):
    from npu_kernels import alloc

    for case in (FCase(layout="BNSD", B=2, S1=1, S2=30, kvlens=(30, 9)), FCase(layout="BSH", S1=5, S2=6)):
        q, k, v, kw = make_inputs(case, device)
        ws = nk._npu_fused_infer_attention_score_get_max_workspace(q, k, v, **kw)
        o, lse = nk._npu_fused_infer_attention_score_infer_output(
            q, v, input_layout=case.layout, num_heads=case.N, softmax_lse_flag=True)
        with monkeypatch.context() as m:
            m.setattr(alloc, "empty", lambda *a: (_ for _ in ()).throw(AssertionError("allocated")))
            m.setattr(torch.Tensor, "to", lambda *a, **k: (_ for _ in ()).throw(AssertionError("copied")))
            nk.npu_fused_infer_attention_score.out(q, k, v, workspace=ws, out=[o, lse], **kw)
        ref, ref_lse = nk.reference.npu_fused_infer_attention_score(q, k, v, **kw)
        assert_close(o, ref, case.dtype)
        assert_lse_close(lse, ref_lse)


def test_lse_merge_law(device):
    """Attention over all keys equals the two halves merged with their lse (spec ops §4.2)."""
    g = torch.Generator().manual_seed(3)
    q = torch.randn(1, 2, 6, 32, generator=g).to(device)
    k = torch.randn(1, 2, 24, 32, generator=g).to(device)
    v = torch.randn(1, 2, 24, 32, generator=g).to(device)
    q, k, v = (t.bfloat16() for t in (q, k, v))
    kw = dict(num_heads=2, input_layout="BNSD", scale=32 ** -0.5, softmax_lse_flag=True)
    full, _ = nk.npu_fused_infer_attention_score(q, k, v, **kw)
    o1, l1 = nk.npu_fused_infer_attention_score(q, k[:, :, :10], v[:, :, :10], **kw)
    o2, l2 = nk.npu_fused_infer_attention_score(q, k[:, :, 10:], v[:, :, 10:], **kw)
    lmax = torch.maximum(l1, l2)
    w1, w2 = torch.exp(l1 - lmax), torch.exp(l2 - lmax)
    merged = (w1 * o1.float() + w2 * o2.float()) / (w1 + w2)
    assert_close(full, merged, torch.bfloat16)


def test_token_layout_lse_shape(device):
    case = FCase(layout="NTD_TND", B=2, qlens=(4, 2), kvlens=(5, 3), S2=5)
    q, k, v, kw = make_inputs(case, device)
    out, lse = nk.npu_fused_infer_attention_score(q, k, v, **kw)
    T = q.shape[1]
    assert out.shape == (T, case.N, case.Dv) and lse.shape == (T, case.N, 1)
    assert (out[6:] == 0).all() and torch.isinf(lse[6:]).all()          # trailing token: no batch


def test_decode_sliding_window(device):
    """BSH + paged 3-D cache + 0 < pre_tokens = W: the decode path keeps the last min(W, kvlen) keys."""
    case = FCase(layout="BSH", B=2, kv_heads=1, group=2, S1=1, S2=40, paged="3d", kvlens=(40, 3), lse=True)
    q, k, v, kw = make_inputs(case, device)
    out, lse = nk.npu_fused_infer_attention_score(q, k, v, **{**kw, "pre_tokens": 5})
    ref, ref_lse = nk.reference.npu_fused_infer_attention_score(q, k, v, **{**kw, "pre_tokens": 5})
    assert_close(out, ref, case.dtype)
    assert_lse_close(lse, ref_lse)
    # the same as attending to the last keys of each sequence, gathered by hand
    table, bs = kw["block_table"].long(), kw["block_size"]
    for b, (kvlen, keep) in enumerate(((40, 5), (3, 3))):
        idx = torch.arange(kvlen - keep, kvlen, device=device)
        rows = table[b, idx // bs] * bs + idx % bs
        kb = k.reshape(-1, k.shape[-1])[rows][None]
        vb = v.reshape(-1, v.shape[-1])[rows][None]
        one = nk.reference.npu_fused_infer_attention_score(q[b:b + 1], kb, vb, num_heads=case.N,
                                                           num_key_value_heads=case.kv_heads, input_layout="BSH",
                                                           scale=kw["scale"])[0]
        assert_close(out[b:b + 1], one, case.dtype)


def test_more_sequences_than_tokens(device):
    """Token-major lengths may name sequences without query tokens, so there can be more sequences than
    tokens (the parameter block grows to hold them; the kernel's grid still covers the tokens)."""
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(t, 2, 16, generator=g).half().to(device) for t in (3, 9, 9))
    kw = dict(num_heads=2, input_layout="TND", scale=0.25, softmax_lse_flag=True, sparse_mode=3,
              atten_mask=torch.ones(2048, 2048, dtype=torch.bool, device=device).triu(1),
              actual_seq_lengths=[0, 1, 1, 3, 3], actual_seq_lengths_kv=[2, 4, 4, 7, 9])
    out, lse = nk.npu_fused_infer_attention_score(q, k, v, **kw)
    ref, ref_lse = nk.reference.npu_fused_infer_attention_score(q, k, v, **kw)
    assert_close(out, ref, torch.float16)
    assert_lse_close(lse, ref_lse)
