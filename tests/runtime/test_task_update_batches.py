"""Task update that changes the number of sequences of a captured token-major call (DESIGN §3: grids and
parameter blocks from static upper bounds, at most T sequences in T tokens): vLLM-Ascend's FULL graph mode
on mixed batches and its ViT encoder graph. Each replay equals the eager call with the same arguments."""

import pytest
import torch

import npu_kernels as nk
from npu_kernels.masks import COMPRESSED_MASK

N, KV_N, D, T, PAGE, BLOCKS = 2, 1, 16, 8, 16, 24
TRIU = torch.ones(COMPRESSED_MASK, COMPRESSED_MASK, dtype=torch.bool).triu(1)


def _paged_state(device):
    g = torch.Generator().manual_seed(0)
    cache = torch.randn(BLOCKS, PAGE, KV_N * D, generator=g).half().to(device)
    return {"q": torch.randn(T, N, D, generator=g).half().to(device), "k": cache,
            "v": torch.randn(BLOCKS, PAGE, KV_N * D, generator=g).half().to(device),
            "table": torch.randperm(BLOCKS, generator=g)[:T * 3].reshape(T, 3).int().to(device),
            "mask": TRIU.to(device), "out": torch.empty(T, N, D, dtype=torch.float16, device=device)}


def _mixed(st, q_cum, kv_lens):
    """A vLLM-style mixed batch: TND queries, paged KV (per-sequence lengths), causal (sparse 3)."""
    nk.npu_fused_infer_attention_score.out(
        st["q"], st["k"], st["v"], num_heads=N, num_key_value_heads=KV_N, input_layout="TND", scale=D ** -0.5,
        sparse_mode=3, atten_mask=st["mask"], block_table=st["table"][:len(q_cum)], block_size=PAGE,
        actual_seq_lengths=q_cum, actual_seq_lengths_kv=kv_lens, out=[st["out"], torch.empty(0, device=st["q"].device)])


STEPS = [                      # (cumulative query lengths, kv lengths per sequence)
    ([1, 2, 3, 4, 5, 6, 7, 8], [5, 17, 3, 40, 9, 1, 33, 12]),     # 8 requests x 1 token (decode)
    ([4, 8], [20, 4]),                                            # 2 x 4 (spec decode / chunked prefill)
    ([8], [30]),                                                  # 1 x 8
    ([1, 2, 3, 4, 5, 6, 7, 8], [6, 18, 4, 41, 10, 2, 34, 13]),    # back to 8 x 1
]


@pytest.mark.parametrize("order", ["update_then_replay", "replay_then_update"])
def test_mixed_batches_change_the_number_of_sequences(rt, device, order):
    st = _paged_state(device)
    eager = []
    for q_cum, kv_lens in STEPS:
        _mixed(st, q_cum, kv_lens)
        eager.append(st["out"].clone())
    g = rt.NPUGraph()
    with rt.graph(g):
        s = rt.current_stream()
        rt.graph_task_group_begin(s)
        _mixed(st, *STEPS[0])
        handle = rt.graph_task_group_end(s)
    u = rt.Stream()
    for (q_cum, kv_lens), want in zip(STEPS[1:] + STEPS[:1], eager[1:] + eager[:1]):
        if order == "replay_then_update":
            g.replay()
        with rt.stream(u):
            rt.graph_task_update_begin(u, handle)
            _mixed(st, q_cum, kv_lens)
            rt.graph_task_update_end(u)
        if order == "replay_then_update":
            rt.synchronize()
        g.replay()
        rt.synchronize()
        assert torch.equal(st["out"], want), (q_cum, kv_lens)
    ref, _ = nk.reference.npu_fused_infer_attention_score(
        st["q"], st["k"], st["v"], num_heads=N, num_key_value_heads=KV_N, input_layout="TND", scale=D ** -0.5,
        sparse_mode=3, atten_mask=st["mask"], block_table=st["table"][:8], block_size=PAGE,
        actual_seq_lengths=STEPS[0][0], actual_seq_lengths_kv=STEPS[0][1])
    torch.testing.assert_close(st["out"].float(), ref.float(), atol=2e-3, rtol=2e-3)


def test_one_sequence_capture_serves_three_with_the_max_workspace(rt, device):
    """ViT-style encoder graph: captured with one sequence, updated to three; the workspace comes from
    ``_get_max_workspace`` of the captured call and is an upper bound for any number of sequences."""
    g_ = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(12, N, D, generator=g_).half().to(device) for _ in range(3))
    kw = dict(num_heads=N, num_key_value_heads=N, input_layout="TND", scale=D ** -0.5)
    one = dict(actual_seq_lengths=[12], actual_seq_lengths_kv=[12])
    three = dict(actual_seq_lengths=[3, 7, 12], actual_seq_lengths_kv=[3, 7, 12])
    ws = nk._npu_fused_infer_attention_score_get_max_workspace(q, k, v, **kw, **one)
    out, lse = torch.empty(12, N, D, dtype=torch.float16, device=device), torch.empty(0, device=device)
    nk.npu_fused_infer_attention_score.out(q, k, v, workspace=ws, out=[out, lse], **kw, **three)
    want = out.clone()
    g = rt.NPUGraph()
    with rt.graph(g):
        s = rt.current_stream()
        rt.graph_task_group_begin(s)
        nk.npu_fused_infer_attention_score.out(q, k, v, workspace=ws, out=[out, lse], **kw, **one)
        handle = rt.graph_task_group_end(s)
    u = rt.Stream()
    with rt.stream(u):
        rt.graph_task_update_begin(u, handle)
        nk.npu_fused_infer_attention_score.out(q, k, v, workspace=ws, out=[out, lse], **kw, **three)
        rt.graph_task_update_end(u)
    g.replay()
    rt.synchronize()
    assert torch.equal(out, want)
    ref, _ = nk.reference.npu_fused_infer_attention_score(q, k, v, **kw, **three)
    torch.testing.assert_close(out.float(), ref.float(), atol=2e-3, rtol=2e-3)
