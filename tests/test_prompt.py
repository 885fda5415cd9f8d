"""npu_prompt_flash_attention: kernel against the golden reference over the whole argument space."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given

import npu_kernels as nk
from npu_kernels.masks import INT_MAX

from .conftest import assert_close
from .prompt_cases import Case, cases, make_inputs

pytestmark = pytest.mark.kernels     # the Triton kernels against the reference (the interpreter on the CPU)


def check(case: Case, device) -> None:
    q, k, v, kw = make_inputs(case, device)
    out = nk.npu_prompt_flash_attention(q, k, v, **kw)
    ref = nk.reference.npu_prompt_flash_attention(q, k, v, **kw)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert_close(out, ref, case.dtype)


@given(case=cases())
# bfloat16 tl.dot operands were multiplied as raw bits by the interpreter
@example(case=Case(dtype=torch.bfloat16, layout="BSH", B=2, kv_heads=2, group=2, S1=45, S2=52, D=32, Dv=32))
# the fp32 fill value overflowed to -inf when it was written as -3.4028235e38
@example(case=Case(dtype=torch.bfloat16, S1=20, S2=20, mask="2d", mask_p=1.0, next=INT_MAX))
# fully masked rows with a finite band: the keys of skipped blocks join the uniform average
@example(case=Case(S1=40, S2=70, mask="3d", mask_p=1.0, pre=3, next=2))
def test_matches_reference(case, device):
    check(case, device)


def test_layouts_share_memory(device):
    """Layouts are strides: the output of BNSD_BSND is BSND, BSH splits H into heads."""
    case = Case(layout="BNSD_BSND", B=2, kv_heads=2, group=2, S1=9, S2=11, D=16, Dv=32)
    q, k, v, kw = make_inputs(case, device)
    out = nk.npu_prompt_flash_attention(q, k, v, **kw)
    assert out.shape == (2, 9, 4, 32)
    check(case, device)


def test_strided_inputs(device):
    """Non-contiguous query/key/value views are read through their strides."""
    g = torch.Generator().manual_seed(1)
    big = torch.randn(2, 3, 20, 64, generator=g).half().to(device)
    q, k, v = big[:, :, :, :16], big[:, :, :, 16:32], big[:, :, :, 32:48]
    kw = dict(num_heads=3, input_layout="BNSD", scale_value=0.25, next_tokens=INT_MAX)
    assert_close(nk.npu_prompt_flash_attention(q, k, v, **kw),
                 nk.reference.npu_prompt_flash_attention(q, k, v, **kw), torch.float16)


def test_rows_past_actual_length_are_zero(device):
    case = Case(B=2, S1=12, S2=12, qlens=(5, 0), kvlens=(12, 7), next=INT_MAX)
    q, k, v, kw = make_inputs(case, device)
    out = nk.npu_prompt_flash_attention(q, k, v, **kw)
    assert (out[0, :, 5:] == 0).all() and (out[1] == 0).all()
    assert (out[0, :, :5] != 0).any()


def test_empty_query_and_empty_keys(device):
    q = torch.randn(1, 2, 0, 16, dtype=torch.float16, device=device)
    k = torch.randn(1, 2, 5, 16, dtype=torch.float16, device=device)
    assert nk.npu_prompt_flash_attention(q, k, k, num_heads=2, input_layout="BNSD").shape == (1, 2, 0, 16)
    q = torch.randn(1, 2, 3, 16, dtype=torch.float16, device=device)
    k0 = torch.randn(1, 2, 0, 16, dtype=torch.float16, device=device)
    out = nk.npu_prompt_flash_attention(q, k0, k0, num_heads=2, input_layout="BNSD")
    assert out.shape == (1, 2, 3, 16) and (out == 0).all()


def test_band_blocks_are_skipped_not_just_masked(device):
    """A band far from the diagonal leaves keys outside it unread: poisoning them changes nothing."""
    case = Case(S1=64, S2=128, sparse_mode=4, pre=3, next=0, kvlens=(128,))
    q, k, v, kw = make_inputs(case, device)
    ref = nk.npu_prompt_flash_attention(q, k, v, **kw)
    k2, v2 = k.clone(), v.clone()
    # sparse 4 anchors at the bottom right: row i sees keys [i + 64 - 3, i + 64]; keys < 61 - 32 are
    # in blocks no row of the kernel's row blocks reaches
    k2[:, :, :16] = float("nan")
    v2[:, :, :16] = float("nan")
    out = nk.npu_prompt_flash_attention(q, k2, v2, **kw)
    torch.testing.assert_close(out, ref, atol=0, rtol=0)


@pytest.mark.parametrize("dv, sparse_mode", [(128, 3), (192, 0)])
def test_tnd_is_the_fused_token_major_call(device, dv, sparse_mode):
    """TND (spec ops §2.2): cumulative lengths, bf16, D = 192; each sequence attends to its own keys
    (causally in sparse mode 3), as plain attention per sequence computes it; the reference agrees."""
    g = torch.Generator().manual_seed(3)
    n, cum = 8, [5, 12]
    q, k = (torch.randn(cum[-1], n, 192, generator=g).bfloat16() for _ in range(2))
    v = torch.randn(cum[-1], n, dv, generator=g).bfloat16()
    kw = dict(num_heads=n, input_layout="TND", scale_value=192 ** -0.5, sparse_mode=sparse_mode,
              actual_seq_lengths=cum, actual_seq_lengths_kv=cum)
    mask = torch.ones(2048, 2048, dtype=torch.bool).triu(1) if sparse_mode == 3 else None
    out = nk.npu_prompt_flash_attention(q.to(device), k.to(device), v.to(device), **kw,
                                        atten_mask=None if mask is None else mask.to(device))
    assert out.shape == (cum[-1], n, dv) and out.dtype == torch.bfloat16
    rows = []
    for lo, hi in zip([0, *cum[:-1]], cum):
        qs, ks, vs = (t[lo:hi].float().transpose(0, 1) for t in (q, k, v))
        rows.append(torch.nn.functional.scaled_dot_product_attention(
            qs, ks, vs, is_causal=sparse_mode == 3, scale=192 ** -0.5).transpose(0, 1))
    assert_close(out.cpu(), torch.cat(rows), torch.bfloat16)
    ref = nk.reference.npu_prompt_flash_attention(q, k, v, **kw, atten_mask=mask)
    assert_close(out.cpu(), ref, torch.bfloat16)


def test_tnd_rules(device):
    q = torch.zeros(4, 4, 192, dtype=torch.bfloat16, device=device)
    with pytest.raises(ValueError, match=r"num_heads=4: TND needs N in \[8, 128\]"):
        nk.npu_prompt_flash_attention(q, q, q, num_heads=4, input_layout="TND", actual_seq_lengths=[4],
                                      actual_seq_lengths_kv=[4])
