"""The golden reference itself: hand-computed cases and torch SDPA where the semantics coincide."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
import torch.nn.functional as F

import npu_kernels as nk
from npu_kernels.masks import INT_MAX, in_band, outside_band

ref = nk.reference.npu_prompt_flash_attention
TRIU = torch.ones(2048, 2048, dtype=torch.bool).triu(1)


def pad16(t: torch.Tensor) -> torch.Tensor:
    """fp16 copy with the head dim padded by zeros to 16 (the prefill path's alignment)."""
    return torch.nn.functional.pad(t, (0, 16 - t.shape[-1])).half()


def test_hand_computed_two_keys():
    """One query, two keys: softmax([1, 0]) weights the values (1, 0) and (0, 1) (zeros pad D to 16)."""
    q = pad16(torch.tensor([[[[1.0, 0.0]]]]))                  # (1, 1, 1, 16) BNSD
    k = pad16(torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]]))
    v = pad16(torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]]))
    out = ref(q, k, v, num_heads=1, input_layout="BNSD", next_tokens=INT_MAX, compute_dtype=torch.float64)
    w = math.e / (math.e + 1)
    torch.testing.assert_close(out.double()[..., :2], torch.tensor([[[[w, 1 - w]]]], dtype=torch.float64), atol=1e-3,
                               rtol=0)
    assert (out[..., 2:] == 0).all()


def test_hand_computed_mask_and_pse():
    """Mask removes key 0; pse is added after the scale: scores 2*[0, 1] + [0, 1] on key 1 only."""
    q = pad16(torch.ones(1, 1, 1, 1))
    k = pad16(torch.tensor([[[[5.0], [1.0], [1.0]]]]))
    v = pad16(torch.tensor([[[[7.0], [1.0], [3.0]]]]))
    mask = torch.tensor([[1, 0, 0]], dtype=torch.uint8)
    pse = torch.tensor([[[[0.0, 0.0, math.log(3.0)]]]]).half()
    out = ref(q, k, v, num_heads=1, input_layout="BNSD", scale_value=2.0, atten_mask=mask, pse_shift=pse,
              next_tokens=INT_MAX, compute_dtype=torch.float64)
    # weights of keys 1 and 2: e^2 and 3 e^2 -> 1/4, 3/4
    assert out[0, 0, 0, 0].item() == pytest.approx(0.25 * 1 + 0.75 * 3, abs=2e-3)


def test_fully_masked_row_is_mean_of_values():
    q = torch.randn(1, 1, 2, 16).half()
    k = torch.randn(1, 1, 3, 16).half()
    v = torch.randn(1, 1, 3, 16).half()
    mask = torch.tensor([[1, 1, 1], [0, 1, 0]], dtype=torch.bool)
    out = ref(q, k, v, num_heads=1, input_layout="BNSD", atten_mask=mask, sparse_mode=1)
    torch.testing.assert_close(out[0, 0, 0].float(), v[0, 0].float().mean(0), atol=1e-3, rtol=1e-3)


def test_row_without_key_in_band_is_zero():
    """sparse 3 with more queries than keys: the first qlen - kvlen rows have no key."""
    q = torch.randn(1, 1, 5, 16).half()
    k = torch.randn(1, 1, 3, 16).half()
    out = ref(q, k, k, num_heads=1, input_layout="BNSD", sparse_mode=3, atten_mask=TRIU)
    assert (out[0, 0, :2] == 0).all() and (out[0, 0, 2:] != 0).any()


LIMITS = st.one_of(st.integers(-70, 70), st.sampled_from([0, 65535, INT_MAX]))


@given(st.integers(0, 60), st.integers(1, 40), st.integers(0, 60), st.integers(1, 40), LIMITS, LIMITS)
def test_outside_band_is_the_band_predicate_negated(i0, rows, j0, keys, pre, nxt):
    """The CPU path's band mask from diagonals equals the shared predicate on every (row, key) pair."""
    i = torch.arange(i0, i0 + rows)[:, None]
    j = torch.arange(j0, j0 + keys)[None, :]
    want = ~in_band(i, j, pre, nxt)
    got = outside_band(i0, i0 + rows, j0, j0 + keys, pre, nxt)
    assert torch.equal(got, want) if got is not None else not want.any()


@pytest.mark.parametrize("layout", ["BSH", "BSND", "BNSD", "BNSD_BSND"])
@pytest.mark.parametrize("mode", ["full", "causal", "gqa", "user_mask"])
def test_matches_sdpa(layout, mode):
    g = torch.Generator().manual_seed(0)
    B, N, S, D = 2, 4, 13, 16
    kv_n = 2 if mode == "gqa" else N
    q = torch.randn(B, N, S, D, generator=g, dtype=torch.float64)
    k = torch.randn(B, kv_n, S, D, generator=g, dtype=torch.float64)
    v = torch.randn(B, kv_n, S, D, generator=g, dtype=torch.float64)
    keep = torch.rand(B, 1, S, S, generator=g) > 0.3
    keep[..., 0] = True                                      # no fully masked row: SDPA would give NaN
    sdpa_kw = {"is_causal": True} if mode == "causal" else {"attn_mask": keep} if mode == "user_mask" else {}
    expected = F.scaled_dot_product_attention(q, k, v, scale=D ** -0.5, enable_gqa=mode == "gqa", **sdpa_kw)
    kw = dict(num_heads=N, num_key_value_heads=kv_n, scale_value=D ** -0.5, input_layout=layout,
              next_tokens=INT_MAX)
    if mode == "causal":
        kw.update(sparse_mode=2, atten_mask=TRIU)
    if mode == "user_mask":
        kw.update(atten_mask=~keep)                          # Ascend: non-zero = masked out
    inp, out_layout = (layout.split("_") + [layout])[:2]
    to_layout = {"BSH": lambda t: t.transpose(1, 2).flatten(2), "BSND": lambda t: t.transpose(1, 2),
                 "BNSD": lambda t: t}
    args = [to_layout[inp](t).half().contiguous() for t in (q, k, v)]
    out = ref(*args, compute_dtype=torch.float64, **kw)
    torch.testing.assert_close(out.double(), to_layout[out_layout](expected), atol=4e-3, rtol=4e-3)


def test_fp16_emulation_only_on_the_fp16_fast_path():
    """``emulate_fp16`` follows the NPU's fp16 high-performance roundings where that path applies (fp16
    input, PFA's default precision); on high precision (sparse 10-14, pse) and bf16 it is the exact math."""
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 2, 40, 32, generator=g).half() for _ in range(3))
    kw = dict(num_heads=2, input_layout="BNSD", scale_value=32 ** -0.5, next_tokens=INT_MAX)
    exact = ref(q, k, v, **kw)
    emulated = ref(q, k, v, emulate_fp16=True, **kw)
    assert not torch.equal(exact, emulated)                       # fp16 scores and P·V round differently
    torch.testing.assert_close(emulated.float(), exact.float(), atol=2e-3, rtol=2e-3)
    for other in (dict(kw, sparse_mode=10), dict(kw, pse_shift=torch.zeros(1, 2, 40, 40).half())):
        assert torch.equal(ref(q, k, v, emulate_fp16=True, **other), ref(q, k, v, **other))
    qb, kb, vb = (t.bfloat16() for t in (q, k, v))
    assert torch.equal(ref(qb, kb, vb, emulate_fp16=True, **kw), ref(qb, kb, vb, **kw))


def test_kernel_within_tolerance_of_the_fp16_emulation():
    """The fp32 kernel stays within the fp16 tolerance of the NPU's fp16 path as well as of exact math."""
    g = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(2, 3, 70, 64, generator=g).half() for _ in range(3))
    kw = dict(num_heads=3, input_layout="BNSD", scale_value=0.125, sparse_mode=3, atten_mask=TRIU)
    out = nk.npu_prompt_flash_attention(q, k, v, **kw)
    atol, rtol = nk.reference.tolerance(torch.float16)
    torch.testing.assert_close(out.float(), ref(q, k, v, emulate_fp16=True, **kw).float(), atol=atol, rtol=rtol)
