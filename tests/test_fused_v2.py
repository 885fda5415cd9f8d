"""npu_fused_infer_attention_score_v2 (spec ops §4.5): the fused operator under v2's names (the same result,
bit for bit), the learnable sink against a sink-softmax computed in float64 from the scores (as torch_npu's
v2 test does), ``.out`` with its workspace and infer-output helpers, registration, capture and task update
in both orders, and one error per rule."""

from __future__ import annotations

from dataclasses import replace

import pytest
import runtime
import torch
from hypothesis import example, given
from hypothesis import strategies as st

import npu_kernels as nk
from npu_kernels.masks import COMPRESSED_MASK
from npu_kernels.ops import fused_v2

from .conftest import assert_close
from .fused_cases import FCase, fcases, make_inputs
from .runtime.backend_setup import active
from .test_fused import assert_matches, lse_tolerance

V2_NAMES = {v1: v2 for v2, v1 in fused_v2.V1_NAMES.items()}
TRIU = torch.ones(COMPRESSED_MASK, COMPRESSED_MASK, dtype=torch.bool).triu(1)


def v2_arguments(kw: dict) -> dict:
    return {V2_NAMES.get(name, name): value for name, value in kw.items()}


def sink_for(case: FCase, device) -> torch.Tensor:
    g = torch.Generator().manual_seed(case.seed + 1)
    return (torch.randn(case.N, generator=g) * 2).bfloat16().to(device)


@st.composite
def v2cases(draw) -> tuple[FCase, bool]:
    """A fused case v2 can express (no shared prefix, left padding or combined anti-quant parameters), and
    whether it takes a learnable sink (where the NPU allows one). BNSD_NBSD takes at most 16 query rows."""
    case = draw(fcases().filter(lambda c: not c.prefix and c.q_pad is None and c.kv_pad is None
                                and not (c.layout == "BNSD_NBSD" and c.S1 > 16)))
    if case.antiquant:
        case = replace(case, separated=True)
    sink = case.layout in fused_v2.SINK_LAYOUTS and not (case.antiquant or case.pse) and draw(st.booleans())
    return case, sink


def check(case: FCase, sink: bool, device) -> None:
    q, k, v, kw = make_inputs(case, device)
    kw2 = v2_arguments(kw)
    if sink:
        kw2["learnable_sink"] = sink_for(case, device)
    out, lse = nk.npu_fused_infer_attention_score_v2(q, k, v, **kw2)
    assert_matches(case, (out, lse), nk.reference.npu_fused_infer_attention_score_v2(q, k, v, **kw2),
                   lse_tolerance(fused_v2.validate(q, k, v, **kw2)[0]))
    if not sink:
        v1_out, v1_lse = nk.npu_fused_infer_attention_score(q, k, v, **kw)
        assert torch.equal(out, v1_out) and torch.equal(lse, v1_lse)


@given(case=v2cases())
@example(case=(FCase(layout="TND", B=2, qlens=(5, 3), kvlens=(7, 2), S2=7, sparse_mode=3), True))
@example(case=(FCase(layout="NTD_TND", B=2, qlens=(4, 0), kvlens=(6, 3), S2=6, mask_p=1.0, lse=True), True))
@example(case=(FCase(layout="TND", B=2, qlens=(3, 4), kvlens=(20, 9), S2=20, paged="3d", lse=False), True))
@example(case=(FCase(layout="BSH", B=2, S1=1, S2=40, paged="3d", kvlens=(40, 7), antiquant="channel",
                     separated=True), False))
@example(case=(FCase(layout="BNSD", B=2, S1=6, S2=30, D=128, Dv=128, paged="4d", kvlens=(30, 17), rope=True), False))
def test_matches_reference(case, device):
    check(*case, device)


def sink_softmax(q, k, v, sink, scale, starts, q_lens, kv_starts, kv_lens, causal):
    """The sink-softmax in float64 from the scores, TND tensors, per batch: softmax over [scores, sink]."""
    outs, lses = [], []
    group = q.shape[1] // k.shape[1]
    for s0, ql, k0, kl in zip(starts, q_lens, kv_starts, kv_lens):
        qb = q[s0:s0 + ql].double().transpose(0, 1)                              # (N, ql, D)
        kb, vb = (t[k0:k0 + kl].double().transpose(0, 1).repeat_interleave(group, 0) for t in (k, v))
        s = scale * qb @ kb.transpose(1, 2)
        if causal:
            i = torch.arange(ql)[:, None]
            s = s.masked_fill(torch.arange(kl)[None, :] > i + kl - ql, float("-inf"))
        x = torch.cat([s, sink.double()[:, None, None].expand(*s.shape[:2], 1)], -1)
        outs.append((torch.softmax(x, -1)[..., :kl] @ vb).transpose(0, 1))
        lses.append(torch.logsumexp(x, -1).transpose(0, 1))
    return torch.cat(outs), torch.cat(lses)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sink_against_float64(device, causal, dtype):
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(11, n, 32, generator=g).to(dtype) for n in (4, 2, 2))
    sink = (torch.randn(4, generator=g) * 3).bfloat16()
    kw = dict(num_query_heads=4, num_key_value_heads=2, input_layout="TND", softmax_scale=0.4,
              actual_seq_qlen=[4, 11], actual_seq_kvlen=[4, 11], return_softmax_lse=True,
              learnable_sink=sink.to(device))
    if causal:
        kw.update(sparse_mode=3, atten_mask=TRIU.to(device))
    out, lse = nk.npu_fused_infer_attention_score_v2(q.to(device), k.to(device), v.to(device), **kw)
    want, want_lse = sink_softmax(q, k, v, sink, 0.4, [0, 4], [4, 7], [0, 4], [4, 7], causal)
    assert_close(out.cpu(), want, dtype)
    torch.testing.assert_close(lse.cpu()[..., 0].double(), want_lse, atol=1e-5, rtol=1e-5)


def test_sink_leaves_rows_without_keys(device):
    """A batch without keys keeps 0 and lse +inf (the prefill path's sentinel); a fully masked row becomes
    0 with lse = sink, the softmax over the sink alone."""
    case = FCase(layout="TND", B=3, qlens=(2, 3, 2), kvlens=(4, 0, 5), S2=5, mask_p=1.0, sparse_mode=1, lse=True)
    q, k, v, kw = make_inputs(case, device)
    kw2 = v2_arguments(kw)
    kw2["learnable_sink"] = sink_for(case, device)
    out, lse = nk.npu_fused_infer_attention_score_v2(q, k, v, **kw2)
    assert torch.equal(out[2:5], torch.zeros_like(out[2:5])) and torch.all(lse[2:5] == float("inf"))
    assert torch.equal(out[:2], torch.zeros_like(out[:2]))
    torch.testing.assert_close(lse[:2, :, 0], kw2["learnable_sink"].float().expand(2, -1))


@pytest.mark.parametrize("sink", [False, True])
def test_out_workspace_and_infer_output(device, sink):
    case = FCase(layout="TND", B=2, qlens=(3, 4), kvlens=(20, 9), S2=20, paged="3d", lse=True)
    q, k, v, kw = make_inputs(case, device)
    kw2 = v2_arguments(kw)
    if sink:
        kw2["learnable_sink"] = sink_for(case, device)
    want = nk.npu_fused_infer_attention_score_v2(q, k, v, **kw2)
    ws = nk._npu_fused_infer_attention_score_v2_get_max_workspace(q, k, v, **kw2)
    o, lse = nk._npu_fused_infer_attention_score_v2_infer_output(
        q, v, input_layout="TND", block_table=kw2["block_table"], num_query_heads=case.N,
        num_key_value_heads=kw2["num_key_value_heads"], return_softmax_lse=True)
    got = nk.npu_fused_infer_attention_score_v2.out(q, k, v, workspace=ws, out=[o, lse], **kw2)
    assert got[0] is o and got[1] is lse
    assert torch.equal(o, want[0]) and torch.equal(lse, want[1])
    kw2["return_softmax_lse"] = False                       # the lse passed is left as it is
    o2, dummy = nk._npu_fused_infer_attention_score_v2_infer_output(q, v, input_layout="TND",
                                                                     block_table=kw2["block_table"],
                                                                     num_query_heads=case.N,
                                                                     num_key_value_heads=kw2["num_key_value_heads"])
    assert dummy.shape == (0,)
    nk.npu_fused_infer_attention_score_v2.out(q, k, v, workspace=ws, out=[o2, dummy], **kw2)
    assert torch.equal(o2, want[0])
    with pytest.raises(ValueError, match=r"attention_out=.*elements share memory"):
        nk.npu_fused_infer_attention_score_v2.out(q, k, v, workspace=ws, out=[o2[:1].expand(o2.shape), dummy], **kw2)


def test_infer_output_shapes(device):
    q = torch.empty(2, 8, 5, 64, dtype=torch.bfloat16, device=device)
    v = torch.empty(2, 2, 7, 32, dtype=torch.bfloat16, device=device)
    o, lse = nk._npu_fused_infer_attention_score_v2_infer_output(
        q, v, input_layout="BNSD_BSND", num_query_heads=8, num_key_value_heads=2, return_softmax_lse=True)
    assert o.shape == (2, 5, 8, 32) and o.dtype == torch.bfloat16 and lse.shape == (2, 8, 5, 1)
    o, _ = nk._npu_fused_infer_attention_score_v2_infer_output(q, v, input_layout="BNSD", num_query_heads=8,
                                                                num_key_value_heads=2,
                                                                quant_scale_out=torch.ones(1, device=device))
    assert o.dtype == torch.int8
    t = torch.empty(8, 9, 64, dtype=torch.float16, device=device)                 # NTD_TND
    o, lse = nk._npu_fused_infer_attention_score_v2_infer_output(t, t[:2], input_layout="NTD_TND",
                                                                num_query_heads=8, num_key_value_heads=2,
                                                                return_softmax_lse=True)
    assert o.shape == (9, 8, 64) and lse.shape == (9, 8, 1)


def test_schema():
    schema = torch.ops.npu.npu_fused_infer_attention_score_v2.default._schema
    defaults = {a.name: a.default_value for a in schema.arguments if a.kwarg_only}
    assert defaults["pre_tokens"] == 2147483647 and defaults["next_tokens"] == 2147483647
    assert defaults["softmax_scale"] == 1.0 and defaults["input_layout"] == "BSH"
    assert defaults["return_softmax_lse"] is False and defaults["num_key_value_heads"] == 0
    assert list(defaults) == list(fused_v2.DEFAULTS)
    out_args = [a.name for a in torch.ops.npu.npu_fused_infer_attention_score_v2.out._schema.arguments[-3:]]
    assert out_args == ["workspace", "attention_out", "softmax_lse"]


@pytest.mark.parametrize("sink", [False, True])
def test_opcheck_and_compile(device, sink):
    case = FCase(layout="TND", B=2, qlens=(3, 4), kvlens=(5, 9), S2=9, lse=True)
    q, k, v, kw = make_inputs(case, device)
    kw2 = v2_arguments(kw)
    if sink:
        kw2["learnable_sink"] = sink_for(case, device)
    torch.library.opcheck(torch.ops.npu.npu_fused_infer_attention_score_v2.default, (q, k, v), kw2)
    out, lse = nk.npu_fused_infer_attention_score_v2(q, k, v, **kw2)
    torch.library.opcheck(torch.ops.npu.npu_fused_infer_attention_score_v2.out, (q, k, v),
                          {**kw2, "attention_out": torch.empty_like(out), "softmax_lse": torch.empty_like(lse)})

    def functional(q, k, v):
        o, l = nk.npu_fused_infer_attention_score_v2(q, k, v, **kw2)
        return o * 2, l

    def out_variant(q, k, v, o, l):
        nk.npu_fused_infer_attention_score_v2.out(q, k, v, out=[o, l], **kw2)
        return o + 1

    compiled = torch.compile(functional, fullgraph=True, backend="aot_eager")(q, k, v)
    assert torch.equal(compiled[0], out * 2) and torch.equal(compiled[1], lse)
    o, l = torch.empty_like(out), torch.empty_like(lse)
    res = torch.compile(out_variant, fullgraph=True, backend="aot_eager")(q, k, v, o, l)
    assert torch.equal(res, out + 1) and torch.equal(l, lse)


@pytest.fixture(params=runtime.available_backends())
def rt(request):
    yield from active(request.param)


N, KV_N, D, T, PAGE, BLOCKS = 4, 2, 16, 8, 16, 24
STEPS = [                      # (cumulative query lengths, kv lengths per sequence)
    ([1, 2, 3, 4, 5, 6, 7, 8], [5, 17, 3, 40, 9, 1, 33, 12]),
    ([4, 8], [20, 4]),
    ([8], [30]),
    ([1, 2, 3, 4, 5, 6, 7, 8], [6, 18, 4, 41, 10, 2, 34, 13]),
]


@pytest.mark.parametrize("sink", [True, False])
@pytest.mark.parametrize("order", ["update_then_replay", "replay_then_update"])
def test_capture_and_update(rt, order, sink):
    """vLLM-Ascend's sink path in FULL graph mode: ``.out`` into buffers from the infer-output helper with
    the max workspace, TND queries on a paged cache, causal; updates change the number of sequences."""
    device = rt.backend().device
    g = torch.Generator().manual_seed(0)
    q = torch.randn(T, N, D, generator=g).half().to(device)
    k, v = (torch.randn(BLOCKS, PAGE, KV_N * D, generator=g).half().to(device) for _ in range(2))
    table = torch.randperm(BLOCKS, generator=g)[:T * 3].reshape(T, 3).int().to(device)
    kw = dict(num_query_heads=N, num_key_value_heads=KV_N, input_layout="TND", softmax_scale=D ** -0.5,
              sparse_mode=3, atten_mask=TRIU.to(device), block_table=table, block_size=PAGE,
              learnable_sink=(torch.randn(N, generator=g) * 2).bfloat16().to(device) if sink else None)
    out, lse = nk._npu_fused_infer_attention_score_v2_infer_output(q, v, input_layout="TND", block_table=table,
                                                                   num_query_heads=N, num_key_value_heads=KV_N)
    ws = nk._npu_fused_infer_attention_score_v2_get_max_workspace(q, k, v, actual_seq_qlen=STEPS[0][0],
                                                                 actual_seq_kvlen=STEPS[0][1], **kw)

    def call(q_cum, kv_lens):
        nk.npu_fused_infer_attention_score_v2.out(q, k, v, actual_seq_qlen=q_cum, actual_seq_kvlen=kv_lens,
                                                  workspace=ws, out=[out, lse], **kw)

    eager = []
    for step in STEPS:
        call(*step)
        eager.append(out.clone())
    graph = rt.NPUGraph()
    with rt.graph(graph):
        s = rt.current_stream()
        rt.graph_task_group_begin(s)
        call(*STEPS[0])
        handle = rt.graph_task_group_end(s)
    u = rt.Stream()
    for step, want in zip(STEPS[1:] + STEPS[:1], eager[1:] + eager[:1]):
        if order == "replay_then_update":
            graph.replay()
        with rt.stream(u):
            rt.graph_task_update_begin(u, handle)
            call(*step)
            rt.graph_task_update_end(u)
        if order == "replay_then_update":
            rt.synchronize()
        graph.replay()
        rt.synchronize()
        assert torch.equal(out, want), step


BASE = FCase(layout="TND", B=2, kv_heads=2, qlens=(3, 4), kvlens=(5, 9), S2=9)


@pytest.mark.parametrize("change, error, fragment", [
    (dict(query_dtype=290), ValueError, "query_dtype=290"),
    (dict(dequant_scale_key_dtype=1), ValueError, "dequant_scale_key_dtype=1"),
    (dict(out_dtype=1), ValueError, "out_dtype=1"),
    (dict(quant_scale_p="tensor"), ValueError, "quant_scale_p="),
    (dict(dequant_scale_key_rope="tensor"), ValueError, "dequant_scale_key_rope="),
    (dict(query_quant_mode=1), ValueError, "query_quant_mode=1"),
    (dict(query_quant_mode=3), NotImplementedError, "MLA full quantisation"),
    (dict(dequant_scale_query="tensor"), NotImplementedError, "dequant_scale_query"),
    (dict(sparse_mode=9), NotImplementedError, "tree mask"),
    (dict(input_layout="BSND_BNSD"), NotImplementedError, "BSND_BNSD"),
    (dict(learnable_sink="float32"), TypeError, "learnable_sink="),
    (dict(learnable_sink="short"), ValueError, "one logit per query head"),
    (dict(learnable_sink="bf16", input_layout="BNSD"), ValueError, "TND and NTD_TND only"),
    (dict(learnable_sink="bf16", value="wide"), ValueError, "value head dim <= 128"),
    (dict(learnable_sink="bf16", quant_scale_out="tensor"), ValueError, "quant_scale_out"),
    (dict(num_key_value_heads=3), ValueError, "num_query_heads (2) must be divisible"),
    (dict(actual_seq_qlen=None), ValueError, "actual_seq_qlen=None"),
    (dict(bogus=1), TypeError, "unexpected keyword"),
])
def test_rejected(device, change, error, fragment):
    q, k, v, kw = make_inputs(BASE, device)
    kw2 = v2_arguments(kw)
    change = dict(change)
    tensors = {"tensor": torch.ones(1, device=device), "float32": torch.zeros(BASE.N, device=device),
               "short": torch.zeros(1, dtype=torch.bfloat16, device=device),
               "bf16": torch.zeros(BASE.N, dtype=torch.bfloat16, device=device)}
    if change.pop("value", None):
        v = torch.zeros(v.shape[0], v.shape[1], 144, dtype=v.dtype, device=device)
    if change.get("input_layout") == "BNSD":
        q, k, v = (t.transpose(0, 1)[None] for t in (q, k, v))
        change.update(actual_seq_qlen=None, actual_seq_kvlen=None)
    kw2.update({name: tensors.get(val, val) if isinstance(val, str) and name != "input_layout" else val
                for name, val in change.items()})
    with pytest.raises(error) as info:
        nk.npu_fused_infer_attention_score_v2(q, k, v, **kw2)
    assert fragment in str(info.value)
