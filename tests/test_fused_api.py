"""npu_fused_infer_attention_score: registration (both overloads), companions and rejected arguments."""

from __future__ import annotations

import pytest
import torch

import npu_kernels as nk

from .fused_cases import FCase, make_inputs


def test_opcheck_both_overloads(device):
    q, k, v, kw = make_inputs(FCase(layout="BSH", B=2, kv_heads=2, group=2, S1=6, S2=9, kvlens=(9, 4),
                                    mask_p=0.3, lse=True), device)
    torch.library.opcheck(torch.ops.npu.npu_fused_infer_attention_score.default, (q, k, v), kw)
    out, lse = nk.npu_fused_infer_attention_score(q, k, v, **kw)
    ws = nk._npu_fused_infer_attention_score_get_max_workspace(q, k, v, **kw)
    torch.library.opcheck(torch.ops.npu.npu_fused_infer_attention_score.out, (q, k, v),
                          {**kw, "workspace": ws, "attention_out": torch.empty_like(out),
                           "softmax_lse": torch.empty_like(lse)})


def test_compile_fullgraph_both_overloads(device):
    q, k, v, kw = make_inputs(FCase(layout="BNSD", B=2, S1=1, S2=12, kvlens=(12, 5), lse=True), device)

    def functional(q, k, v):
        out, lse = nk.npu_fused_infer_attention_score(q, k, v, **kw)
        return out * 2, lse

    def out_variant(q, k, v, o, lse):
        nk.npu_fused_infer_attention_score.out(q, k, v, out=[o, lse], **kw)
        return o + 1

    eager = functional(q, k, v)
    compiled = torch.compile(functional, fullgraph=True, backend="aot_eager")(q, k, v)
    torch.testing.assert_close(compiled, eager)
    o, lse = torch.empty_like(eager[0]), torch.empty_like(eager[1])
    res = torch.compile(out_variant, fullgraph=True, backend="aot_eager")(q, k, v, o, lse)
    torch.testing.assert_close(res, eager[0] / 2 + 1)
    torch.testing.assert_close(lse, eager[1])


def test_schema_defaults():
    schema = torch.ops.npu.npu_fused_infer_attention_score.default._schema
    defaults = {a.name: a.default_value for a in schema.arguments if a.kwarg_only}
    assert defaults["pre_tokens"] == 2147483647 and defaults["next_tokens"] == 2147483647
    assert defaults["inner_precise"] == 0 and defaults["softmax_lse_flag"] is False
    assert defaults["scale"] == 1.0 and defaults["input_layout"] == "BSH"
    out_args = [a.name for a in torch.ops.npu.npu_fused_infer_attention_score.out._schema.arguments[-3:]]
    assert out_args == ["workspace", "attention_out", "softmax_lse"]


def test_infer_output_shapes(device):
    q = torch.empty(2, 8, 5, 64, dtype=torch.bfloat16, device=device)
    v = torch.empty(2, 2, 7, 32, dtype=torch.bfloat16, device=device)
    o, lse = nk._npu_fused_infer_attention_score_infer_output(
        q, v, input_layout="BNSD_BSND", num_heads=8, num_key_value_heads=2, softmax_lse_flag=True)
    assert o.shape == (2, 5, 8, 32) and o.dtype == torch.bfloat16 and lse.shape == (2, 8, 5, 1)
    o, lse = nk._npu_fused_infer_attention_score_infer_output(q, v, input_layout="BNSD_NBSD", num_heads=8,
                                                               num_key_value_heads=2)
    assert o.shape == (8, 2, 5, 32) and lse.shape == (0,) and lse.dtype == torch.float32
    o, _ = nk._npu_fused_infer_attention_score_infer_output(q, v, input_layout="BNSD", num_heads=8,
                                                             num_key_value_heads=2, quant_scale2=torch.ones(1))
    assert o.dtype == torch.int8


BASE = FCase(layout="BNSD", B=1, S1=4, S2=6)


@pytest.mark.parametrize("change, fragment", [
    (dict(input_layout="SBH"), "input_layout='SBH'"),
    (dict(sparse_mode=12), "must be 0-4"),
    (dict(inner_precise=4), "inner_precise=4"),
    (dict(softmax_lse_flag=True, input_layout="BNSD_BSND", query_len=1), "BNSD_BSND is not supported"),
    (dict(int4=True), "int4"),
    (dict(query_rope_only=True), "query_rope and key_rope go together"),
    (dict(actual_shared_prefix_len=[2]), "needs key_shared_prefix"),
    (dict(token_without_lengths=True), "cumulative lengths"),
    (dict(block_table_without_lengths=True), "required with block_table"),
    (dict(scale=float("nan")), "scale"),
    (dict(unknown_kwarg=True), "unexpected keyword"),
])
def test_rejected(device, change, fragment):
    q, k, v, kw = make_inputs(BASE, device)
    change = dict(change)
    if change.pop("query_len", None):
        q = q[:, :, :1]
    if change.pop("int4", None):
        k = v = torch.zeros(1, 1, 6, 2, dtype=torch.int32, device=device)
    if change.pop("query_rope_only", None):
        change["query_rope"] = torch.zeros(1, 1, 4, 64, dtype=q.dtype, device=device)
    if change.pop("token_without_lengths", None):
        q, k, v = q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1)
        change["input_layout"] = "TND"
    if change.pop("block_table_without_lengths", None):
        change.update(block_table=torch.zeros(1, 1, dtype=torch.int32, device=device), block_size=128)
        k = v = torch.zeros(2, 1, 128, 16, dtype=q.dtype, device=device)
    kw.update(change)
    if kw.pop("unknown_kwarg", None):
        with pytest.raises(TypeError, match="unexpected keyword"):
            nk.reference.npu_fused_infer_attention_score(q, k, v, bogus=1, **kw)
        return
    with pytest.raises((ValueError, TypeError, RuntimeError)) as info:
        nk.npu_fused_infer_attention_score(q, k, v, **kw)
    assert fragment in str(info.value)


def test_out_rejects_wrong_outputs(device):
    q, k, v, kw = make_inputs(FCase(layout="BSND", S1=3, S2=5, lse=True), device)
    out, lse = nk.npu_fused_infer_attention_score(q, k, v, **kw)
    with pytest.raises(ValueError, match="attention_out"):
        nk.npu_fused_infer_attention_score.out(q, k, v, out=[out[:, :1], lse], **kw)
    with pytest.raises(ValueError, match="softmax_lse"):
        nk.npu_fused_infer_attention_score.out(q, k, v, out=[out, lse.half()], **kw)
    with pytest.raises(ValueError, match="workspace"):
        nk.npu_fused_infer_attention_score.out(q, k, v, workspace=torch.empty(1, device=device), out=[out, lse], **kw)
    with pytest.raises(ValueError, match=r"attention_out=.*elements share memory"):
        nk.npu_fused_infer_attention_score.out(q, k, v, out=[out[:, :1].expand(out.shape), lse], **kw)
    ws = nk._npu_fused_infer_attention_score_get_max_workspace(q, k, v, **kw)
    with pytest.raises(ValueError, match=r"workspace=.*shares memory with attention_out"):
        nk.npu_fused_infer_attention_score.out(q, k, v, workspace=out.view(-1)[:ws.numel()], out=[out, lse], **kw)
    on_out = out.view(-1).view(torch.float32)[:lse.numel()].view(lse.shape)
    with pytest.raises(ValueError, match=r"softmax_lse=.*shares memory with attention_out"):
        nk.npu_fused_infer_attention_score.out(q, k, v, out=[out, on_out], **kw)


def test_compiled_call_not_specialised_to_lengths(device):
    """Length lists are traced symbolically: after the first dynamic recompile, new lengths reuse the graph
    (what task update of a compiled graph relies on)."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    q = torch.randn(2, 4, 1, 32, device=device).half()
    k = torch.randn(2, 4, 48, 32, device=device).half()

    def fn(q, k, lens):
        return nk.npu_fused_infer_attention_score(q, k, k, num_heads=4, input_layout="BNSD",
                                                  actual_seq_lengths_kv=lens)[0]

    torch._dynamo.reset()
    compiled = torch.compile(fn, backend=backend, fullgraph=True)
    for lens in ([10, 20], [30, 40], [48, 7], [1, 0]):
        torch.testing.assert_close(compiled(q, k, lens), fn(q, k, lens), atol=0, rtol=0)
    assert len(graphs) == 2


@pytest.mark.parametrize("layout", ["TND", "BNSD"])
def test_paged_prefill_caches_match_the_table(layout, device):
    """A paged prefill reads value blocks by the key cache's ids and tokens by block_size: the value cache
    must have the key cache's blocks, and the caches' block axis must be block_size (else an error, never a
    read past the value cache)."""
    n, kv_n, d, bs = 4, 2, 64, 128
    cache = lambda blocks, size=bs: torch.zeros(blocks, size, kv_n * d, dtype=torch.float16, device=device)  # noqa: E731
    q = torch.zeros(10, n, d, dtype=torch.float16, device=device) if layout == "TND" else \
        torch.zeros(2, n, 5, d, dtype=torch.float16, device=device)
    lens = dict(actual_seq_lengths=[4, 10]) if layout == "TND" else {}
    kw = dict(num_heads=n, num_key_value_heads=kv_n, input_layout=layout, sparse_mode=3, block_size=bs,
              atten_mask=torch.ones(2048, 2048, dtype=torch.bool, device=device).triu(1), actual_seq_lengths_kv=[200, 200],
              block_table=torch.tensor([[0, 5], [2, 3]], dtype=torch.int32, device=device), **lens)
    nk.npu_fused_infer_attention_score(q, cache(6), cache(6), **kw)
    with pytest.raises(ValueError, match=r"value=.*must have the key cache's 6 blocks"):
        nk.npu_fused_infer_attention_score(q, cache(6), cache(5), **kw)
    with pytest.raises(ValueError, match=r"key=.*block axis must hold block_size=128 tokens, got 256"):
        nk.npu_fused_infer_attention_score(q, cache(6, 256), cache(6, 256), **kw)
