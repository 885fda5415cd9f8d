"""torchair layer: multi-stream scopes, tagged events and the reduce-overhead backend (spec §3; §6.4
scenario 8), on each backend present. Seed programs of seeds/*.md with small operands."""

import collections
import itertools
import json
import re
import warnings

import pytest
import torch

import npu_kernels as nk
from runtime import torchair as tng

_tags = itertools.count()


def tag(name: str) -> str:
    """A process-unique event tag (tags cannot be reused)."""
    return f"{name}_{next(_tags)}"


def compiled(fn, dynamic=False, mode="reduce-overhead", **config):
    """``fn`` compiled by the torchair backend in ``mode``; ``config`` sets fields (``debug__run_eagerly``)."""
    cfg = tng.CompilerConfig()
    cfg.mode = mode
    for path, value in config.items():
        obj, *names = [cfg, *path.split("__")]
        for name in names[:-1]:
            obj = getattr(obj, name)
        setattr(obj, names[-1], value)
    torch._dynamo.reset()
    return torch.compile(fn, backend=tng.get_npu_backend(compiler_config=cfg), dynamic=dynamic, fullgraph=True)


@pytest.fixture
def runners(monkeypatch):
    """The reduce-overhead runners the backend makes, in order."""
    made = []

    class Recorded(tng.backend.GraphRunner):
        def __init__(self, *args):
            super().__init__(*args)
            made.append(self)

    monkeypatch.setattr(tng.backend, "GraphRunner", Recorded)
    return made


class MultiStreamModel(torch.nn.Module):
    """seeds/multi_stream_in_graph_aclgraph.md."""

    def __init__(self, device):
        super().__init__()
        self.device = device
        self.tagged_event1 = tng.ops.npu_create_tagged_event(tag=tag("66"))
        self.tagged_event2 = tng.ops.npu_create_tagged_event(tag=tag("77"))

    def forward(self, in1, in2, in3, in4):
        add_result = torch.add(in1, in2)
        tng.ops.npu_tagged_event_record(self.tagged_event1)
        with tng.scope.npu_stream_switch("1"):
            tng.ops.npu_tagged_event_wait(self.tagged_event1)
            mm_result = torch.mm(in3, in4)
            tng.ops.npu_tagged_event_record(self.tagged_event2)
            B = in3 + in4
            tng.ops.npu_record_tagged_stream(B, "1")
        mm1 = torch.mm(in3, in4)
        del B
        C = torch.ones(16, 16, dtype=in1.dtype, device=self.device)
        C.add_(2)
        with tng.scope.npu_stream_switch("2"):
            tng.ops.npu_tagged_event_wait(self.tagged_event2)
            add2 = torch.add(in3, in4)
        return add_result, mm_result, mm1, add2, C


def _inputs(device, n=4, size=16):
    return [torch.randn(size, size, device=device) for _ in range(n)]


def _assert_all_close(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_multi_stream_seed(rt, device, runners):
    model = MultiStreamModel(device)
    cm = compiled(model)
    for _ in range(2):
        ins = _inputs(device)
        _assert_all_close(cm(*ins), model(*ins))
    (runner,) = runners
    assert runner.stream_scopes == 2 and runner.capture_count == 1


@pytest.fixture
def debug_graphs(monkeypatch):
    """The NPUGraphs the backend makes, in debug mode (their structure can be dumped)."""
    import runtime

    made = []

    class DebugGraph(runtime.NPUGraph):
        def __init__(self):
            super().__init__()
            self.enable_debug_mode()
            made.append(self)

    monkeypatch.setattr(runtime.graphs, "NPUGraph", DebugGraph)
    return made


def test_scoped_ops_are_captured_on_their_streams(host_rt, debug_graphs, tmp_path):
    model = MultiStreamModel("cpu")
    compiled(model)(*_inputs("cpu"))
    (g,) = debug_graphs
    g.debug_dump(str(tmp_path / "graph.json"))
    dump = json.loads((tmp_path / "graph.json").read_text())
    assert dump["lanes"] == 3                          # streams '1' and '2' joined the capture
    ops = [[n["node"] for n in dump["nodes"] if n["lane"] == lane and n["node"].startswith("aten.")]
           for lane in range(3)]
    assert ops[1] == ["aten.mm.default", "aten.add.Tensor"]
    assert ops[2] == ["aten.add.Tensor"]
    assert {"aten.mm.default", "aten.ones.default"} <= set(ops[0])   # the graph is functional: C.add_ is an add


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_forks_to_the_tag_streams(debug_graphs, tmp_path):
    """The captured CUDA graph is not a chain: the scoped kernels hang off a fork, as branches."""
    from backend_setup import active

    for rt in active("cuda"):
        model = MultiStreamModel(rt.backend().device)
        compiled(model)(*_inputs(rt.backend().device))
        (g,) = debug_graphs
        g.debug_dump(str(tmp_path / "graph.dot"))
        edges = re.findall(r'"([^"]+)"\s*->\s*"([^"]+)"', (tmp_path / "graph.dot").read_text())
        fan_out = collections.Counter(a for a, _ in edges)
        assert edges and max(fan_out.values()) >= 2


def test_create_tagged_event_seed(rt, device):
    event = tng.ops.npu_create_tagged_event(tag=tag("66"))

    def forward(in1, in2, in3, in4):
        add_result = torch.add(in1, in2)
        tng.ops.npu_tagged_event_record(event)
        with tng.scope.npu_stream_switch("1"):
            tng.ops.npu_tagged_event_wait(event)
            mm_result = torch.mm(in3, in4)
        mm1 = torch.mm(in3, in4)
        add2 = torch.add(in3, in4)
        return add_result, mm_result, mm1, add2

    cm = compiled(forward)
    ins = _inputs(device)
    _assert_all_close(cm(*ins), forward(*ins))


def test_record_tagged_stream_seed(rt, device):
    state = {"mm_input": torch.randn(16, 16, device=device) / 16}

    def func(x):
        A = torch.zeros([8, 8], device=x.device)
        with tng.scope.npu_stream_switch("second_stream", 3):
            m = state["mm_input"]
            for _ in range(3):
                m = m @ m
            B = A.add(1)
            tng.ops.npu_record_tagged_stream(A, "second_stream")
        del A
        C = torch.ones([8, 8], device=x.device)
        C.add_(100)
        return B, C, m

    cm = compiled(func)
    B, C, m = cm(torch.ones(8, 8, device=device))
    assert torch.equal(B, torch.ones(8, 8, device=device))
    assert torch.equal(C, torch.full((8, 8), 101.0, device=device))


def test_eager_stream_switch_has_no_effect(rt):
    before = rt.current_stream()
    with tng.scope.npu_stream_switch("eager_tag"):
        assert rt.current_stream() == before


def test_tag_reuse_is_refused(rt):
    t = tag("dup")
    tng.ops.npu_create_tagged_event(t)
    with pytest.raises(ValueError, match="already used"):
        tng.ops.npu_create_tagged_event(t)


def test_one_capture_per_shape(rt, device, runners):
    cm = compiled(lambda a, b: (a @ b).relu() + 1, dynamic=True)
    for size in (8, 8, 12, 8, 12, 16):
        a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
        torch.testing.assert_close(cm(a, b), (a @ b).relu() + 1)
    (runner,) = runners                     # one graph with a symbolic size: a capture per size
    assert runner.capture_count == 3 and len(runner.captures) == 3


def test_capture_limit_falls_back_to_eager(rt, device, runners):
    cm = compiled(lambda a: a * 2 + 1, dynamic=True, debug__aclgraph__static_capture_size_limit=1)
    a = torch.randn(4, device=device)
    torch.testing.assert_close(cm(a), a * 2 + 1)
    b = torch.randn(5, device=device)     # another shape: a second capture is over the limit
    with pytest.warns(UserWarning, match="static_capture_size_limit=1"):
        torch.testing.assert_close(cm(b), b * 2 + 1)
    (runner,) = runners
    assert runner.eager and runner.capture_count == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(cm(a), a * 2 + 1)


def test_inputs_used_as_they_are_recapture_when_they_move(rt, device, runners):
    cm = compiled(lambda a: a * 2, debug__aclgraph__clone_input=False)
    a1, a2 = torch.randn(4, device=device), torch.randn(4, device=device)
    torch.testing.assert_close(cm(a1), a1 * 2)
    a1.add_(1)
    torch.testing.assert_close(cm(a1), a1 * 2)
    torch.testing.assert_close(cm(a2), a2 * 2)
    (runner,) = runners
    assert runner.capture_count == 2


def test_outputs_are_the_captured_buffers_unless_cloned(rt, device):
    f = lambda a: a + 1  # noqa: E731
    a = torch.randn(4, device=device)
    shared = compiled(f)
    assert shared(a) is shared(a)
    cloned = compiled(f, debug__aclgraph__enable_output_clone=True)
    assert cloned(a) is not cloned(a)


def test_wait_of_an_event_never_recorded_is_an_error(rt, device):
    event = tng.ops.npu_create_tagged_event(tag=tag("never"))

    def forward(a):
        with tng.scope.npu_stream_switch("w"):
            tng.ops.npu_tagged_event_wait(event)
            b = a * 2
        return b

    with pytest.raises(Exception, match="waited in the compiled graph but never recorded"):
        compiled(forward)(torch.randn(4, device=device))


def test_missing_join_is_an_error(rt, device):
    """A stream scope that forks from the capture but is not joined back (no closure pass) fails."""
    fork = tng.ops.npu_create_tagged_event(tag("fork"))

    def forward(a):
        torch.ops.air.tagged_event_record(fork.tag)
        torch.ops.air.scope_enter(["_user_stream_label"], ["unjoined"], need_execute=True)
        torch.ops.air.tagged_event_wait(fork.tag)
        b = a * 2
        torch.ops.air.scope_exit(need_execute=True)
        return b

    a = torch.randn(4, device=device)
    with pytest.raises(RuntimeError, match="not joined"):
        with rt.graph(rt.NPUGraph()):
            forward(a)
    assert rt.current_stream() == rt.default_stream()


def test_run_eagerly(rt, device, runners):
    cm = compiled(lambda a: a.exp(), debug__run_eagerly=True)
    a = torch.randn(3, device=device)
    torch.testing.assert_close(cm(a), a.exp())
    assert runners == []


def test_max_autotune_uses_the_standard_compiler(rt, device, monkeypatch):
    import torch._inductor.compile_fx as inductor

    seen = []

    def fake_compile_fx(gm, example_inputs, decompositions=None):
        seen.append(gm)
        return gm.forward

    monkeypatch.setattr(inductor, "compile_fx", fake_compile_fx)
    cfg = tng.CompilerConfig()
    torch._dynamo.reset()
    cm = torch.compile(lambda a: a + 1, backend=tng.get_npu_backend(compiler_config=cfg), fullgraph=True)
    a = torch.randn(3, device=device)
    torch.testing.assert_close(cm(a), a + 1)
    assert len(seen) == 1


def test_unknown_mode_is_refused():
    cfg = tng.CompilerConfig()
    cfg.mode = "fast"
    with pytest.raises(ValueError, match="expected one of max-autotune, reduce-overhead, npugraph_ex"):
        tng.get_npu_backend(compiler_config=cfg)


def test_lengths_are_updated_without_recapture(rt, device):
    """An operator call whose length list holds graph inputs is captured once and task-updated at
    every call (§3.4 step 4). The FX graph is traced directly: through Dynamo the operator's fake
    implementation currently specialises the lengths, so each new value recompiles."""
    kw = dict(num_heads=2, input_layout="BNSD", scale_value=0.25)
    q = torch.randn(2, 2, 1, 16, dtype=torch.float16, device=device)
    k = torch.randn(2, 2, 64, 16, dtype=torch.float16, device=device)

    def decode(q, k, l0, l1):
        return torch.ops.npu.npu_incre_flash_attention(q, k, k, actual_seq_lengths=[l0, l1], **kw) * 2

    cfg = tng.CompilerConfig()
    cfg.mode = "reduce-overhead"
    runner = tng.backend.GraphRunner(torch.fx.symbolic_trace(decode), cfg)
    assert len(runner.updatable) == 1
    for lengths in ([3, 5], [7, 9], [64, 1], [30, 2]):
        want = nk.reference.npu_incre_flash_attention(q, k, k, actual_seq_lengths=lengths, **kw) * 2
        got = runner(q, k, *lengths)
        torch.testing.assert_close(got.float(), want.float(), atol=2e-3, rtol=2e-3)
    assert runner.capture_count == 1


def _scoped_use_then_free(rt, device, protect: bool):
    """Capture: A made on the capture stream, read on a tag stream, freed, then C of A's size made on
    the capture stream. Returns whether C got A's memory, and the replayed B (= A + 1 = 1)."""
    t = tag("second_stream")
    fork, join = tng.ops.npu_create_tagged_event(tag("fork")), tng.ops.npu_create_tagged_event(tag("join"))
    g = rt.NPUGraph()
    with rt.graph(g):
        A = torch.zeros(1 << 16, device=device)
        address = A.data_ptr()
        fork.record()
        torch.ops.air.scope_enter([tng.ops.STREAM_LABEL], [t], need_execute=True)
        fork.wait()
        B = A.add(1)
        if protect:
            tng.ops.npu_record_tagged_stream(A, t)
        join.record()
        torch.ops.air.scope_exit(need_execute=True)
        del A
        C = torch.empty(1 << 16, device=device)
        reused = C.data_ptr() == address
        C.fill_(100)
        join.wait()
    g.replay()
    rt.synchronize()
    return reused, B


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("protect", [False, True])
def test_record_tagged_stream_keeps_memory_from_reuse(protect):
    """On CUDA the capture's pool hands A's memory to C unless A is recorded on the tag stream."""
    from backend_setup import active

    for rt in active("cuda"):
        reused, B = _scoped_use_then_free(rt, rt.backend().device, protect)
        assert reused == (not protect)
        if protect:
            assert torch.equal(B, torch.ones_like(B))


def test_host_queued_work_keeps_its_tensors(host_rt):
    """On the host backend captured work holds its tensors, so memory is never reused under it."""
    reused, B = _scoped_use_then_free(host_rt, "cpu", protect=False)
    assert not reused
    assert torch.equal(B, torch.ones_like(B))


def test_dynamic_batch_and_float_scale_are_graph_inputs(rt, device, runners):
    """``dynamic=True``: the batch is a symbolic size and the float a 0-d tensor input; a replay reads the
    float from the captured input, so each batch size is captured once and replayed with every scale."""
    w = torch.randn(8, 8, device=device)

    def attend(x, scale):
        return torch.softmax((x @ w) * scale, dim=-1) + x.shape[0]

    cm = compiled(attend, dynamic=True)
    for batch, scale in ((2, 0.5), (3, 0.25), (2, 0.125), (5, 2.0), (3, 1.5), (2, 3.0)):
        x = torch.randn(batch, 8, device=device)
        torch.testing.assert_close(cm(x, scale), attend(x, scale))
    (runner,) = runners
    assert runner.capture_count == 3 and len(runner.captures) == 3


def test_inputs_the_graph_writes_are_written(rt, device, runners):
    """A cache the compiled function writes is captured as it is, so every replay writes the caller's
    tensor; another cache tensor is a recapture."""
    def write(cache, slots, values):
        cache.index_copy_(0, slots, values)
        return cache.sum(0)

    cm = compiled(write)
    cache = torch.zeros(6, 4, device=device)
    for slots in ([0, 3], [5, 1]):
        values = torch.randn(2, 4, device=device)
        want = cache.clone().index_copy_(0, torch.tensor(slots, device=device), values)
        got = cm(cache, torch.tensor(slots, device=device), values)
        assert torch.equal(cache, want)
        torch.testing.assert_close(got, want.sum(0))
    other = torch.zeros(6, 4, device=device)
    cm(other, torch.tensor([2, 4], device=device), torch.ones(2, 4, device=device))
    assert other[2].sum() == 4 and other[4].sum() == 4 and runners[0].capture_count == 2


def test_npu_wait_tensor(rt, device, monkeypatch):
    """``npu_wait_tensor`` raises outside a graph-engine graph, as torchair's; in max-autotune (one
    stream) it is its first argument."""
    import torch._inductor.compile_fx as inductor

    x, dependency = torch.randn(4, device=device), torch.randn(4, device=device)
    with pytest.raises(NotImplementedError, match="air.wait_tensor is only converted by the GE graph engine"):
        tng.scope.npu_wait_tensor(x, dependency)
    assert tng.ops.npu_wait_tensor is tng.scope.npu_wait_tensor

    def f(a, b):
        return tng.scope.npu_wait_tensor(a * 2, b + 1) + 1

    graphs = []
    monkeypatch.setattr(inductor, "compile_fx", lambda gm, example_inputs, decompositions=None:
                        graphs.append(gm) or gm.forward)
    torch.testing.assert_close(compiled(f, mode="max-autotune")(x, dependency), x * 2 + 1)
    assert "wait_tensor" not in graphs[0].code
    with pytest.raises(NotImplementedError, match="air.wait_tensor"):
        compiled(f)(x, dependency)


def test_old_stream_switch_raises_when_run_eagerly(rt):
    with pytest.raises(NotImplementedError, match="air.stream_in"):
        with tng.ops.NpuStreamSwitch("old", 0):
            pass


def test_old_stream_switch_block_runs_on_the_tag_stream(host_rt, debug_graphs, tmp_path):
    """``ops.NpuStreamSwitch`` (torchair before 2025) compiled in reduce-overhead: as
    ``scope.npu_stream_switch``, its block is captured on the tag's stream."""
    def f(a):
        b = a + 1
        with tng.ops.NpuStreamSwitch("old_tag", 0):
            c = a @ a
        return b, c

    a = torch.randn(8, 8)
    _assert_all_close(compiled(f)(a), (a + 1, a @ a))
    (g,) = debug_graphs
    g.debug_dump(str(tmp_path / "graph.json"))
    dump = json.loads((tmp_path / "graph.json").read_text())
    lanes = [[n["node"] for n in dump["nodes"] if n["lane"] == lane and n["node"].startswith("aten.")]
             for lane in range(dump["lanes"])]
    assert lanes == [["aten.add.Tensor"], ["aten.mm.default"]]


def test_super_kernel_scope_is_neutral(rt, device):
    def f(a):
        with tng.scope.super_kernel("moe", "stream-fusion=1"):
            return a.exp() * 2

    a = torch.randn(5, device=device)
    torch.testing.assert_close(f(a), a.exp() * 2)
    torch.testing.assert_close(compiled(f)(a), a.exp() * 2)


def test_static_kernel_options_are_accepted(rt, device):
    """vLLM-Ascend sets torchair's static-shape kernel options; kernels here do not depend on them."""
    cm = compiled(lambda a: a * 3, experimental_config__aclgraph___aclnn_static_shape_kernel=True,
                  experimental_config__aclgraph___aclnn_static_shape_kernel_sym_value_range=[1, 2, 4])
    a = torch.randn(4, device=device)
    torch.testing.assert_close(cm(a), a * 3)


def test_out_form_writes_the_callers_outputs_and_is_task_updated(rt, device, runners):
    """A fused operator's ``.out`` in a compiled function: the functional graph is run in place again, so
    the call writes the caller's ``out`` and its symbolic lengths are task-updated without a recapture."""
    kw = dict(num_heads=2, input_layout="BNSD", scale=0.25)
    q = torch.randn(2, 2, 1, 16, device=device).half()
    k = torch.randn(2, 2, 64, 16, device=device).half()
    workspace = nk._npu_fused_infer_attention_score_get_max_workspace(q, k, k, actual_seq_lengths_kv=[64, 64], **kw)

    def decode(q, k, out, lse, n0, n1):
        nk.npu_fused_infer_attention_score.out(q, k, k, workspace=workspace, out=[out, lse],
                                               actual_seq_lengths_kv=[n0, n1], **kw)
        return out * 2

    cm = compiled(decode, dynamic=True)
    out, lse = torch.empty(2, 2, 1, 16, device=device).half(), torch.empty(1, device=device).half()
    for lengths in ([5, 6], [64, 3], [10, 20]):
        got = cm(q, k, out, lse, *lengths)
        want = nk.reference.npu_fused_infer_attention_score(q, k, k, actual_seq_lengths_kv=lengths, **kw)[0]
        torch.testing.assert_close(out.float(), want.float(), atol=2e-3, rtol=2e-3)
        torch.testing.assert_close(got.float(), 2 * want.float(), atol=4e-3, rtol=2e-3)
    (runner,) = runners
    assert runner.capture_count == 1 and len(runner.updatable) == 1


def test_v2_lengths_are_task_updated(rt, device, runners):
    """The fused operator v2 with symbolic kv lengths: captured once, its lengths task-updated per call."""
    kw = dict(num_query_heads=2, input_layout="BNSD", softmax_scale=0.25)
    q = torch.randn(2, 2, 1, 16, device=device).half()
    k, v = torch.randn(2, 2, 64, 16, device=device).half(), torch.randn(2, 2, 64, 16, device=device).half()

    def decode(q, k, v, n0, n1):
        return nk.npu_fused_infer_attention_score_v2(q, k, v, actual_seq_kvlen=[n0, n1], **kw)[0] * 2

    cm = compiled(decode, dynamic=True)
    for lengths in ([5, 6], [64, 3], [10, 20]):
        want = nk.reference.npu_fused_infer_attention_score_v2(q, k, v, actual_seq_kvlen=lengths, **kw)[0]
        torch.testing.assert_close(cm(q, k, v, *lengths).float(), 2 * want.float(), atol=4e-3, rtol=2e-3)
    (runner,) = runners
    assert runner.capture_count == 1 and len(runner.updatable) == 1


def test_paged_attention_context_lens_are_task_updated(rt, device, runners):
    """``_npu_paged_attention`` whose ``context_lens`` (argument 7, a host tensor) is a graph input: captured
    once, the lengths of each call task-updated; rows of empty requests keep what ``out`` held."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(4, 4, 16, generator=g).half().to(device)
    kc, vc = (torch.randn(8, 16, 2, 16, generator=g).half().to(device) for _ in range(2))
    table = torch.randperm(8, generator=g)[:8].reshape(4, 2).int().to(device)
    out = torch.empty(4, 4, 16, device=device).half()

    def decode(q, kc, vc, table, context_lens, out):
        torch.ops.npu._npu_paged_attention(q, kc, vc, 2, 4, 0.25, table, context_lens, out)
        return out + 1

    cm = compiled(decode)
    for lens in ([32, 5, 17, 1], [3, 30, 0, 0], [1, 1, 1, 32]):
        context_lens = torch.tensor(lens, dtype=torch.int32)
        want = torch.full_like(out, 7.0)
        nk.reference._npu_paged_attention(q, kc, vc, 2, 4, 0.25, table, context_lens, want)
        out.fill_(7.0)
        got = cm(q, kc, vc, table, context_lens, out)
        torch.testing.assert_close(out.float(), want.float(), atol=2e-3, rtol=2e-3)
        torch.testing.assert_close(got.float(), want.float() + 1, atol=2e-3, rtol=2e-3)
    (runner,) = runners
    assert runner.capture_count == 1 and len(runner.updatable) == 1


def test_a_length_read_elsewhere_keeps_its_captures_apart(rt, device, runners):
    """A length that the graph also reads outside the operator's length list is part of the capture's
    signature: a new value gets its own capture (the updated call alone would not change the rest)."""
    kw = dict(num_heads=2, input_layout="BNSD", scale=0.25)
    q, k = torch.randn(2, 2, 1, 16, device=device).half(), torch.randn(2, 2, 64, 16, device=device).half()

    def decode(q, k, n0, n1):
        return nk.npu_fused_infer_attention_score(q, k, k, actual_seq_lengths_kv=[n0, n1], **kw)[0] * n0

    cm = compiled(decode, dynamic=True)
    for lengths in ([5, 6], [9, 6], [5, 40]):
        want = nk.reference.npu_fused_infer_attention_score(q, k, k, actual_seq_lengths_kv=lengths, **kw)[0]
        torch.testing.assert_close(cm(q, k, *lengths).float(), lengths[0] * want.float(), atol=4e-2, rtol=2e-3)
    (runner,) = runners
    assert runner.capture_count == 2 and len(runner.updatable) == 1
