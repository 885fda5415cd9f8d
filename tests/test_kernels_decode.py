"""The split-KV decode kernels: block ids outside the cache, the per-key block-table path, int8 caches read
as words or bytes, and the split count sized by the device rather than capped."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import npu_kernels as nk
from npu_kernels import tasks
from npu_kernels.kernels import decode
from npu_kernels.layouts import as_bnsd
from npu_kernels.ops import incre

from .conftest import assert_close

pytestmark = pytest.mark.kernels

B, N, KV_N, D, PAGE, BLOCKS = 2, 4, 2, 32, 32, 5
TABLE = [[0, -1, 2], [BLOCKS, 3, 2**31 - 1]]          # ids outside [0, BLOCKS) inside both kv lengths


def paged_call(device, int8: bool, page: int = PAGE):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, N, 1, D, generator=g).half()
    k, v = (torch.randn(BLOCKS, KV_N, page, D, generator=g) for _ in range(2))
    kw = dict(num_heads=N, num_key_value_heads=KV_N, input_layout="BNSD", block_size=page,
              actual_seq_lengths=[3 * page - 6, 2 * page + 6], scale_value=D ** -0.5)
    if int8:
        k, v = ((t * 40).round().clamp(-127, 127).to(torch.int8) for t in (k, v))
        kw.update(antiquant_scale=(torch.rand(2, KV_N, 1, D, generator=g) * 0.02 + 0.01).half(),
                  antiquant_offset=torch.randint(-3, 4, (2, KV_N, 1, D), generator=g).half())
    else:
        k, v = k.half(), v.half()
    kw = {n: t.to(device) if isinstance(t, torch.Tensor) else t for n, t in kw.items()}
    return q.to(device), k.to(device), v.to(device), {**kw, "block_table": torch.tensor(TABLE, dtype=torch.int32,
                                                                                        device=device)}


@pytest.mark.parametrize("int8", [False, True], ids=["fp16", "int8-offset"])
def test_block_ids_outside_the_cache_read_zeros(int8, device):
    """-1, the block count and 2**31 - 1 inside the kv lengths: zero keys and zero values (after
    anti-quantisation, so the folded int8 key offset and value offset must not reach them)."""
    q, k, v, kw = paged_call(device, int8)
    out = nk.npu_incre_flash_attention(q, k, v, **kw)
    assert_close(out, nk.reference.npu_incre_flash_attention(q, k, v, **kw), torch.float16)
    if not int8:                              # the same as an explicit zero block in place of the bad ids
        table = kw["block_table"]
        bad = (table < 0) | (table >= BLOCKS)
        k2, v2 = (torch.cat([t, torch.zeros_like(t[:1])]) for t in (k, v))
        expected = nk.reference.npu_incre_flash_attention(q, k2, v2, **{**kw, "block_table": table.masked_fill(bad, BLOCKS)})
        assert_close(out, expected, torch.float16)


@pytest.mark.parametrize("int8", [False, True], ids=["fp16", "int8-offset"])
def test_block_table_read_per_key(int8, device):
    """Pages of 16 keys (int8: 32) under key blocks of 64: the table is read per key (no PAGE_TILES)."""
    q, k, v, kw = paged_call(device, int8, page=32 if int8 else 16)
    call = incre.validate(q, k, v, **kw)
    out = incre.output(call)
    p = incre.plan(call, out, None)
    cfg = replace(p.static, split_meta=(*p.static.split_meta, ("BLOCK_N", 64)),
                  combine_meta=(*p.static.combine_meta, ("BLOCK_N", 64)))
    ws = torch.empty(sum(cfg.workspace), dtype=torch.float32, device=device)
    ops = incre.operands(call, as_bnsd(out, call.layout.out, N), None, *incre.scratch(cfg, ws))
    assert not decode.split_args(cfg, (*ops[:11], ops[0]))["PAGE_TILES"]
    incre.launch(cfg, ops, tasks.device_block(p.params, device))
    assert_close(out, nk.reference.npu_incre_flash_attention(q, k, v, **kw), torch.float16)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_int8_caches_read_as_words_or_bytes(dtype, device):
    """int8 caches are read as int16 words of channel pairs when 16-byte aligned (K_WORDS, V_WORDS), byte by
    byte otherwise; both match the reference."""
    q, k, v, kw = paged_call(device, True)
    q = q.to(dtype)
    kw.update(antiquant_scale=kw["antiquant_scale"].to(dtype), antiquant_offset=kw["antiquant_offset"].to(dtype))
    for aligned in (True, False):
        if not aligned:                       # the same values one byte into their storage
            k, v = (torch.empty(t.numel() + 1, dtype=t.dtype, device=device)[1:].view(t.shape).copy_(t)
                    for t in (k, v))
        call = incre.validate(q, k, v, **kw)
        out = incre.output(call)
        p = incre.plan(call, out, None)
        ws = torch.empty(sum(p.static.workspace), dtype=torch.float32, device=device)
        ops = incre.operands(call, as_bnsd(out, call.layout.out, N), None, *incre.scratch(p.static, ws))
        args = decode.split_args(p.static, (*ops[:11], ops[0]))
        assert args["K_WORDS"] == args["V_WORDS"] == aligned
        incre.launch(p.static, ops, tasks.device_block(p.params, device))
        assert_close(out, nk.reference.npu_incre_flash_attention(q, k, v, **kw), dtype)


@pytest.mark.parametrize("paged", [False, True], ids=["contiguous", "paged"])
def test_row_offsets_in_int64(paged, monkeypatch, device):
    """Keys addressed by 64-bit products per row (ROWS32 off: D = 512, or strides too wide for int32
    offsets within a block) match the reference as the int32 offsets do."""
    split_args = decode.split_args
    monkeypatch.setattr(decode, "split_args", lambda cfg, tensors: {**split_args(cfg, tensors), "ROWS32": False})
    q, k, v, kw = paged_call(device, True)
    if not paged:
        g = torch.Generator().manual_seed(1)
        k, v = (torch.randint(-127, 128, (B, KV_N, 80, D), generator=g, dtype=torch.int8).to(device) for _ in "kv")
        kw = {n: t for n, t in kw.items() if n not in ("block_table", "block_size")}
        kw["actual_seq_lengths"] = [80, 37]
    out = nk.npu_incre_flash_attention(q, k, v, **kw)
    assert_close(out, nk.reference.npu_incre_flash_attention(q, k, v, **kw), torch.float16)


def test_split_count_fills_the_device():
    """Splits come from the programs the device holds, not a cap of 64: one (batch, kv head) on 264
    program slots gets 264 splits when the capacity has that many blocks."""
    assert decode.num_splits(capacity=65536, bkv_total=1, block_n=128, programs=264) == 264
    assert decode.num_splits(capacity=65536, bkv_total=2, block_n=128, programs=264) == 132
    assert decode.num_splits(capacity=1000, bkv_total=1, block_n=128, programs=264) == 8      # blocks of the capacity
    assert decode.num_splits(capacity=1 << 30, bkv_total=1, block_n=16, programs=10**6) == decode.MAX_SPLITS
