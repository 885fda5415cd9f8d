"""Block ids outside the paged cache (hardening): never dereferenced; they read as zero keys and values on
both execution paths, and ``NPUK_CHECK_BLOCK_TABLE=1`` turns them into an error naming the batch, the
position and the id."""

from __future__ import annotations

import pytest
import torch

import npu_kernels as nk
from npu_kernels import caches

BLOCKS, PAGE, D = 4, 16, 16


def _call(device, bad_id: int):
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 1, 2 * D, generator=g).half().to(device)
    cache = torch.randn(BLOCKS + 1, PAGE, 2 * D, generator=g).half().to(device)
    cache[BLOCKS] = 0                                   # a zero block, for the expected result
    table = torch.tensor([[0, 1, 2], [3, bad_id, 1]], dtype=torch.int32, device=device)
    kw = dict(num_heads=2, input_layout="BSH", scale_value=D ** -0.5, block_size=PAGE, actual_seq_lengths=[40, 40])
    return q, cache, table, kw


@pytest.mark.parametrize("bad_id", [-1, BLOCKS, 100000, 2**31 - 1])
def test_ids_outside_the_cache_read_zeros(device, path, bad_id):
    q, cache, table, kw = _call(device, bad_id)
    out = nk.npu_incre_flash_attention(q, cache[:BLOCKS], cache[:BLOCKS], block_table=table, **kw)
    zero_block = table.clone()
    zero_block[1, 1] = BLOCKS
    want = nk.npu_incre_flash_attention(q, cache, cache, block_table=zero_block, **kw)
    torch.testing.assert_close(out, want, atol=2e-3, rtol=2e-3)
    assert not torch.isnan(out).any()


def test_checked_mode_names_batch_position_and_id(device, path, monkeypatch):
    monkeypatch.setenv("NPUK_CHECK_BLOCK_TABLE", "1")
    caches.release()                                   # plans read the switch
    q, cache, table, kw = _call(device, 100000)
    with pytest.raises(ValueError, match=r"block_table\[1, 1\]=100000: block id outside \[0, 4\) for keys 16..31 "
                                         r"of batch 1"):
        nk.npu_incre_flash_attention(q, cache[:BLOCKS], cache[:BLOCKS], block_table=table, **kw)
    caches.release()
