"""Mask block summaries (``kernels.mask_summary``): the pass against the tiles it summarises, and the
prefill kernel with summaries against the reference on masks whose tiles are all visible, all masked or
mixed in one call, with fully masked rows, per-batch and shared masks; a skipped tile's keys are not read;
the pass runs at every launch and replay, so a mask changed in place is seen."""

from __future__ import annotations

from typing import Optional

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import npu_kernels as nk
from npu_kernels.kernels import mask_summary, prefill
from npu_kernels.masks import INT_MAX
from npu_kernels.ops import prompt
from npu_kernels.reference import tolerance

from .conftest import assert_close
from .test_fused import assert_lse_close

pytestmark = pytest.mark.kernels

TILE = prefill.block_config(128, 128, on_gpu=False)[0]     # the CPU launches' BLOCK_M = BLOCK_N
VISIBLE, MASKED, MIXED = 0, 1, 2


def tiled_mask(batches: int, rows: int, cols: int, kinds: list[int], tile: int, seed: int,
               full_rows: Optional[tuple[int, int]] = None) -> torch.Tensor:
    """[batches, rows, cols] bool: tile t (row-major over tiles of ``tile``) is all visible, all masked or
    mixed after ``kinds[t % len(kinds)]``; rows ``full_rows`` of the last batch are masked out entirely."""
    g = torch.Generator().manual_seed(seed)
    m = torch.zeros(batches, rows, cols, dtype=torch.bool)
    col_tiles = -(-cols // tile)
    for b in range(batches):
        for r in range(0, rows, tile):
            for c in range(0, cols, tile):
                kind = kinds[(b * 7 + (r // tile) * col_tiles + c // tile) % len(kinds)]
                block = m[b, r:r + tile, c:c + tile]
                if kind == MASKED:
                    block.fill_(True)
                elif kind == MIXED:
                    block.copy_(torch.rand(block.shape, generator=g) < 0.5)
                    block[0, 0], block[-1, -1] = True, False                  # both kinds, whatever the draw
    if full_rows is not None:
        m[-1, full_rows[0]:full_rows[1]] = True
    return m


def expected_summary(mask: torch.Tensor, cfg: mask_summary.SummaryConfig) -> torch.Tensor:
    """The summary ``mask_summary`` documents, computed tile by tile."""
    out = []
    for b in range(cfg.batches):
        for r in range(cfg.row_tiles):
            counts, visits = [], []
            for c in range(cfg.col_tiles):
                counts.append(len(visits))
                tile = mask[b, r * cfg.block_m:(r + 1) * cfg.block_m, c * cfg.block_n:(c + 1) * cfg.block_n]
                tile = tile[:cfg.rows - r * cfg.block_m, :cfg.cols - c * cfg.block_n] != 0
                if not tile.all():
                    visits.append(2 * c + int(tile.any()))
            counts.append(len(visits))
            out.append(torch.tensor(counts + visits + [-1] * (cfg.col_tiles - len(visits)), dtype=torch.int32))
    return torch.cat(out)


@given(batches=st.integers(1, 2), rows=st.integers(1, 70), cols=st.integers(1, 140),
       block_m=st.sampled_from((16, 32)), block_n=st.sampled_from((16, 32, 64)), pad=st.sampled_from((0, 5)),
       dtype=st.sampled_from((torch.bool, torch.int8, torch.uint8)), seed=st.integers(0, 5))
def test_summary_pass_matches_its_tiles(batches, rows, cols, block_m, block_n, pad, dtype, seed, device):
    """Counts and visits of every (mask batch, row tile), read through the mask's strides (a padded mask:
    only [0, rows) x [0, cols) is summarised) in each mask dtype."""
    big = tiled_mask(batches, rows + pad, cols + pad, [VISIBLE, MASKED, MIXED, MIXED, VISIBLE], 16, seed)
    if dtype == torch.int8:
        big = big.to(torch.int8) * -3                    # any non-zero value masks
    mask = big.to(dtype).to(device)
    kernel_mask = mask.view(torch.uint8) if dtype == torch.bool else mask
    cfg = mask_summary.SummaryConfig(batches, rows, cols, block_m, block_n,
                                     (0 if batches == 1 else int(mask.stride(0)), int(mask.stride(1)),
                                      int(mask.stride(2))))
    summary = torch.full((cfg.words,), -1, dtype=torch.int32, device=device)
    mask_summary.launch(cfg, kernel_mask, summary)
    expected = expected_summary(big, cfg)
    written = expected != -1                              # visits past the count are not written
    assert torch.equal(summary.cpu()[written], expected[written])


@st.composite
def calls(draw) -> dict:
    b = draw(st.integers(1, 2))
    s1, s2 = draw(st.integers(1, 3 * TILE)), draw(st.integers(1, 4 * TILE))
    kinds = draw(st.lists(st.sampled_from((VISIBLE, MASKED, MIXED)), min_size=1, max_size=6))
    full = draw(st.none() | st.tuples(st.integers(0, s1 - 1), st.integers(1, s1)).map(sorted).map(tuple))
    return dict(B=b, S1=s1, S2=s2, kinds=kinds, full_rows=full, shared=draw(st.booleans()),
                mode=draw(st.sampled_from((0, 1))), band=draw(st.sampled_from(((INT_MAX, INT_MAX), (TILE, 5)))),
                kvlens=draw(st.none() | st.lists(st.integers(0, s2), min_size=b, max_size=b)),
                dtype=draw(st.sampled_from((torch.float16, torch.bfloat16))), precise=draw(st.sampled_from((0, 1))),
                rows_invalid=draw(st.booleans()), seed=draw(st.integers(0, 3)))


def inputs(c: dict, device):
    g = torch.Generator().manual_seed(c["seed"])
    n, d = 2, 32
    q, k, v = (torch.randn(c["B"], n, s, d, generator=g).to(c["dtype"]).to(device)
               for s in (c["S1"], c["S2"], c["S2"]))
    mask = tiled_mask(1 if c["shared"] else c["B"], c["S1"], c["S2"], c["kinds"], TILE, c["seed"], c["full_rows"])
    return q, k, v, mask.to(device)


@given(c=calls())
def test_operators_match_the_reference(c, device):
    """PFA and FIA (with lse, also inner_precise's fp16 path and row-invalid bit) on masks mixing all-visible,
    all-masked and mixed tiles, with fully masked rows, per batch or shared."""
    q, k, v, mask = inputs(c, device)
    pre, nxt = c["band"]
    pfa = dict(num_heads=2, input_layout="BNSD", scale_value=0.3, sparse_mode=c["mode"] + 10 * (1 - c["precise"]),
               pre_tokens=pre, next_tokens=nxt, atten_mask=mask, actual_seq_lengths_kv=c["kvlens"])
    assert prompt.validate(q, k, v, **pfa).mask is not None
    assert_close(nk.npu_prompt_flash_attention(q, k, v, **pfa), nk.reference.npu_prompt_flash_attention(q, k, v, **pfa),
                 c["dtype"])
    fia = dict(num_heads=2, input_layout="BNSD", scale=0.3, sparse_mode=c["mode"], pre_tokens=pre, next_tokens=nxt,
               atten_mask=mask, actual_seq_lengths_kv=c["kvlens"], softmax_lse_flag=True,
               inner_precise=c["precise"] + 2 * c["rows_invalid"])
    out, lse = nk.npu_fused_infer_attention_score(q, k, v, **fia)
    ref, ref_lse = nk.reference.npu_fused_infer_attention_score(q, k, v, **fia)
    assert_close(out, ref, c["dtype"])
    fp16_path = c["precise"] and c["dtype"] == torch.float16
    assert_lse_close(lse, ref_lse, tolerance(torch.float16)[0] if fp16_path else 1e-4)


def test_all_masked_tiles_read_no_keys(device):
    """Keys and values of tiles masked out for every row are not read: NaN there changes nothing."""
    s1, s2 = 2 * TILE, 4 * TILE
    mask = torch.zeros(1, s1, s2, dtype=torch.bool)
    mask[:, :, TILE:3 * TILE] = True                     # two all-masked key blocks, no fully masked row
    mask[:, 5, 3 * TILE + 1] = True                      # a mixed one
    c = dict(B=1, S1=s1, S2=s2, dtype=torch.float16, seed=1, shared=True, kinds=[VISIBLE], full_rows=None)
    q, k, v, _ = inputs(c, device)
    kw = dict(num_heads=2, input_layout="BNSD", scale=0.3, atten_mask=mask.to(device), softmax_lse_flag=True)
    ref, ref_lse = nk.reference.npu_fused_infer_attention_score(q, k, v, **kw)
    k[:, :, TILE:3 * TILE], v[:, :, TILE:3 * TILE] = float("nan"), float("nan")
    out, lse = nk.npu_fused_infer_attention_score(q, k, v, **kw)
    assert_close(out, ref, torch.float16)
    assert_lse_close(lse, ref_lse)


def test_a_mask_changed_in_place_is_seen_by_the_next_launch_and_replay(device):
    """One plan, its summary computed at every launch: eager ``.out`` calls with the caller's workspace and
    replays of a captured call follow the mask's current contents."""
    import runtime

    c = dict(B=2, S1=2 * TILE, S2=3 * TILE, dtype=torch.bfloat16, seed=2, shared=False,
             kinds=[VISIBLE, MASKED, MIXED], full_rows=(TILE, TILE + 3))
    q, k, v, mask = inputs(c, device)
    kw = dict(num_heads=2, input_layout="BNSD", scale=0.3, atten_mask=mask, softmax_lse_flag=True)
    ws = nk._npu_fused_infer_attention_score_get_max_workspace(q, k, v, **kw).fill_(float("nan"))
    out, lse = nk._npu_fused_infer_attention_score_infer_output(q, v, input_layout="BNSD", num_heads=2,
                                                                 softmax_lse_flag=True)
    contents = [mask.clone(), ~mask, tiled_mask(2, 2 * TILE, 3 * TILE, [MIXED, VISIBLE], TILE, 3).to(device)]
    for m in contents:
        mask.copy_(m)
        nk.npu_fused_infer_attention_score.out(q, k, v, workspace=ws, out=[out, lse], **kw)
        ref, ref_lse = nk.reference.npu_fused_infer_attention_score(q, k, v, **kw)
        assert_close(out, ref, torch.bfloat16)
        assert_lse_close(lse, ref_lse)
    g = runtime.NPUGraph()
    with runtime.graph(g):
        gout = nk.npu_prompt_flash_attention(q, k, v, num_heads=2, input_layout="BNSD", scale_value=0.3,
                                             next_tokens=INT_MAX, atten_mask=mask)
    for m in reversed(contents):
        mask.copy_(m)
        g.replay()
        runtime.synchronize()
        ref = nk.reference.npu_prompt_flash_attention(q, k, v, num_heads=2, input_layout="BNSD", scale_value=0.3,
                                                      next_tokens=INT_MAX, atten_mask=mask)
        assert_close(gout, ref, torch.bfloat16)


def test_summary_scratch_lives_in_the_workspace(device):
    """``.out`` with the caller's workspace allocates no summary of its own: the workspace is sized for it
    (an upper bound: ``_get_max_workspace``), and the plan's summary has the launch's tile sizes."""
    c = dict(B=2, S1=3 * TILE, S2=2 * TILE + 5, dtype=torch.float16, seed=0, shared=False, kinds=[MIXED],
             full_rows=None)
    q, k, v, mask = inputs(c, device)
    call = prompt.validate(q, k, v, num_heads=2, input_layout="BNSD", atten_mask=mask)
    static = prompt.plan(call, prompt.output(call), None).static
    meta = dict(static.meta)
    assert (static.summary.block_m, static.summary.block_n) == (meta["BLOCK_M"], meta["BLOCK_N"])
    assert static.summary.words == 2 * 3 * (2 * 3 + 1)
    kw = dict(num_heads=2, input_layout="BNSD", atten_mask=mask)
    ws = nk._npu_fused_infer_attention_score_get_max_workspace(q, k, v, **kw)
    assert ws.numel() * ws.element_size() >= 4 * (static.summary.words + 2 * 9)
