"""The prefill kernel on what the operators do not reach yet or reach only through a plan: the NPU's fp16
path (FP16_PATH), the token-major grid (TOKEN_GRID, its parameter block built by hand), block ids
outside the cache, and the MLA multi-token decode rows. Direct launches plan as the operators do and
add constexprs to the plan's."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import npu_kernels as nk
from npu_kernels import params, tasks
from npu_kernels.kernels import prefill
from npu_kernels.masks import INT_MAX
from npu_kernels.ops import fused, prompt
from npu_kernels.reference import tolerance

from .conftest import assert_close

pytestmark = pytest.mark.kernels


def launch(call: prompt.PromptCall, out: torch.Tensor, lse=None, block=None, grid=None, **meta) -> None:
    """The prefill kernel for ``call`` writing ``out`` (and ``lse``, the kernel's (B, N, S1) view), with
    ``meta`` added to the plan's constexprs, and ``block``/``grid`` in place of the plan's."""
    p = prompt.plan(call, out, lse)
    cfg = replace(p.static, meta=p.static.meta + tuple(meta.items()), grid=grid or p.static.grid)
    ops = prompt.operands(call, prompt.out_view(call, out), lse)
    prompt.launch(cfg, ops, tasks.device_block(p.params if block is None else block, out.device))


def randn(*shape, seed: int, dtype=torch.float16, device="cpu") -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype).to(device)


@pytest.mark.parametrize("scale", [128.0, 0.125])
@pytest.mark.parametrize("sparse_mode", [0, 3])
def test_fp16_path_follows_the_npu_emulation(scale, sparse_mode, device):
    """On the NPU's fp16 path (PFA's default for fp16) the kernel rounds as the NPU does: within the fp16
    tolerance of the reference's emulation, also at the op-plugin test's scale of 128."""
    q, k, v = (randn(1, 2, 70, 64, seed=s, device=device) for s in (1, 2, 3))
    kw = dict(num_heads=2, input_layout="BNSD", scale_value=scale, pre_tokens=65535, next_tokens=65535,
              sparse_mode=sparse_mode)
    if sparse_mode:
        kw["atten_mask"] = torch.ones(2048, 2048, dtype=torch.bool, device=device).triu(1)
    call = prompt.validate(q, k, v, **kw)
    assert call.fp16_path
    emulated = nk.reference.npu_prompt_flash_attention(q, k, v, emulate_fp16=True, **kw)
    out = prompt.output(call)
    launch(call, out, FP16_PATH=True)
    assert_close(out, emulated, torch.float16)


def test_fp32_kernel_departs_from_the_fp16_path_at_scale_128(device):
    """What FP16_PATH fixes: with fp32 scores, a scale of 128 moves the result past the fp16 tolerance of
    the NPU's emulation."""
    q, k, v = (randn(1, 2, 70, 64, seed=s, device=device) for s in (1, 2, 3))
    kw = dict(num_heads=2, input_layout="BNSD", scale_value=128.0, pre_tokens=65535, next_tokens=65535)
    call = prompt.validate(q, k, v, **kw)
    emulated = nk.reference.npu_prompt_flash_attention(q, k, v, emulate_fp16=True, **kw)
    out = prompt.output(call)
    launch(call, out, FP16_PATH=False)
    atol, rtol = tolerance(torch.float16)
    assert not torch.allclose(out.float(), emulated.float(), atol=atol, rtol=rtol)


def token_tail(qlens: list[int], starts: list[int], t: int, block_m: int) -> list[int]:
    """Per row tile of the T tokens: lo, hi of the block rows whose query rows meet the tile."""
    words = []
    for r in range(prefill.cdiv(t, block_m)):
        rows = [b for b, (s, n) in enumerate(zip(starts, qlens)) if n and s < (r + 1) * block_m and r * block_m < s + n]
        words += [min(rows), max(rows) + 1] if rows else [0, 0]
    return words


@pytest.mark.parametrize("layout", ["TND", "NTD_TND"])
def test_token_grid_matches_the_reference(layout, device):
    """TOKEN_GRID: a grid of (token tiles, heads) whatever the number of sequences; each program walks the
    batches its tile meets. Sequences of 5, 0, 40, 3 and 1 tokens, the last 11 tokens past them, one
    sequence without keys (zeros, lse sentinel), GQA, lse."""
    n, kv_n, d, t = 4, 2, 16, 60
    qlens, kvlens = [5, 0, 40, 3, 1], [9, 4, 33, 0, 7]
    cum_q = [sum(qlens[:i + 1]) for i in range(len(qlens))]
    cum_kv = [sum(kvlens[:i + 1]) for i in range(len(kvlens))]
    shape = (t, n, d) if layout == "TND" else (n, t, d)
    kshape = (sum(kvlens), kv_n, d) if layout == "TND" else (kv_n, sum(kvlens), d)
    q, k, v = randn(*shape, seed=4, device=device), randn(*kshape, seed=5, device=device), \
        randn(*kshape, seed=6, device=device)
    kw = dict(num_heads=n, num_key_value_heads=kv_n, input_layout=layout, actual_seq_lengths=cum_q,
              actual_seq_lengths_kv=cum_kv, sparse_mode=3, softmax_lse_flag=True, scale=d ** -0.5,
              atten_mask=torch.ones(2048, 2048, dtype=torch.bool, device=device).triu(1))
    ref, ref_lse = nk.reference.npu_fused_infer_attention_score(q, k, v, **kw)
    fc = fused.validate(q, k, v, **fused.with_defaults(kw))
    call = fc.prompt
    out, lse = fused.outputs(fc)
    rows = call.heads.B
    block = prompt.pack(call.qlens, call.kvlens, call.bands, call.offsets)
    starts = [off[0] for off in call.offsets]
    block_m = dict(prompt.plan(call, out, None).static.meta)["BLOCK_M"]
    block = torch.cat([block, torch.tensor(token_tail(call.qlens, starts, t, block_m), dtype=torch.int32)])
    assert block.numel() == rows * params.FIELDS + 2 * prefill.cdiv(t, block_m)
    launch(call, out, fc.lse_view(lse), block=block, grid=prefill.token_grid(t, block_m, n), TOKEN_GRID=True)
    assert_close(out, ref, torch.float16)
    assert torch.equal(lse[:9].isinf(), ref_lse[:9].isinf())
    torch.testing.assert_close(lse, ref_lse, atol=1e-4, rtol=1e-4)


def zero_block_expected(q, k, v, table, kw):
    """The reference with the ids outside the cache pointing at an extra zero block: zero keys, zero values."""
    blocks = k.shape[0]
    bad = (table < 0) | (table >= blocks)
    k2, v2 = (torch.cat([t, torch.zeros_like(t[:1])]) for t in (k, v))
    return nk.reference.npu_fused_infer_attention_score(q, k2, v2, **{**kw, "block_table": table.masked_fill(bad, blocks)})


@pytest.mark.parametrize("layout, page", [("BNSD", 128), ("TND", 16)])
def test_block_ids_outside_the_cache_read_zeros(layout, page, device):
    """An id outside [0, blocks) inside a batch's kv length reads as a zero key and a zero value and is
    never dereferenced (-1, the block count, 100000, 2**31 - 1); per page tile (128) and per key (16)."""
    n, d, blocks = 2, 16, 6
    kvlens = [3 * page - 5, 2 * page + 1]
    table = torch.tensor([[0, -1, 2, 100000], [blocks, 3, 2**31 - 1, 1]], dtype=torch.int32, device=device)
    k, v = randn(blocks, page, n * d, seed=7, device=device), randn(blocks, page, n * d, seed=8, device=device)
    kw = dict(num_heads=n, num_key_value_heads=n, block_table=table, block_size=page, scale=d ** -0.5,
              softmax_lse_flag=True)
    if layout == "TND":
        q = randn(7, n, d, seed=9, device=device)
        kw.update(input_layout="TND", actual_seq_lengths=[4, 7], actual_seq_lengths_kv=kvlens)
    else:
        q = randn(2, n, 3, d, seed=9, device=device)
        k, v = (t.reshape(blocks, page, n, d).transpose(1, 2).contiguous() for t in (k, v))
        kw.update(input_layout="BNSD", actual_seq_lengths_kv=kvlens)
    out, lse = nk.npu_fused_infer_attention_score(q, k, v, **kw)
    ref, ref_lse = zero_block_expected(q, k, v, table, kw)
    assert_close(out, ref, torch.float16)
    torch.testing.assert_close(lse, ref_lse, atol=1e-4, rtol=1e-4)


def test_mla_multi_token_decode_rows(device):
    """MLA (rope, D = 512) with 3 query rows on the decode path: every row is computed with sparse 3's
    bottom-right band and the decode fill; a batch without keys is zeros."""
    b, n, s1, s2, d = 2, 4, 3, 40, 512
    q, qr = randn(b, n, s1, d, seed=10, device=device), randn(b, n, s1, 64, seed=11, device=device)
    k, kr = randn(b, 1, s2, d, seed=12, device=device), randn(b, 1, s2, 64, seed=13, device=device)
    kw = dict(num_heads=n, num_key_value_heads=1, input_layout="BNSD", query_rope=qr, key_rope=kr,
              actual_seq_lengths_kv=[s2, 0], sparse_mode=3, scale=(d + 64) ** -0.5,
              atten_mask=torch.ones(2048, 2048, dtype=torch.bool, device=device).triu(1))
    out, _ = nk.npu_fused_infer_attention_score(q, k, k, **kw)
    ref, _ = nk.reference.npu_fused_infer_attention_score(q, k, k, **kw)
    assert_close(out, ref, torch.float16)
    assert (out[1] == 0).all()
    assert not torch.equal(out[0, :, 0], out[0, :, 2])             # rows see different key ranges
