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
