"""Layouts are views: every input layout read as (B, N, S, D) without a copy, the same as einops says."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange

from npu_kernels.layouts import _TO_BNSD, as_bnsd, from_bnsd


@pytest.mark.parametrize("layout, shape", [("BSH", (2, 5, 12)), ("BSND", (2, 5, 3, 4)), ("BNSD", (2, 3, 5, 4)),
                                           ("NBSD", (3, 2, 5, 4)), ("TND", (5, 3, 4)), ("NTD", (3, 5, 4)),
                                           ("NSD", (3, 5, 4))])
def test_as_bnsd_is_the_einops_view(layout, shape):
    t = torch.randn(shape)
    view = as_bnsd(t, layout, 3)
    expected = rearrange(t, _TO_BNSD[layout], n=3) if layout == "BSH" else rearrange(t, _TO_BNSD[layout])
    assert view.shape == expected.shape and view.stride() == expected.stride()
    assert view.data_ptr() == t.data_ptr() and torch.equal(view, expected)
    assert torch.equal(from_bnsd(view, layout), t)
