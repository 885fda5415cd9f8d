"""torch_npu's runtime names beyond the operators, as vLLM-Ascend and torch_npu's own graph tests use them
(spec/vllm-ascend-ops.md §4, spec/runtime.md §1.7), on the active backend: auto dispatch and update,
task-group handles, weak tensor references, caches, memory, platform queries, seeds, pinned memory and
torch_npu.testing."""

import dataclasses
import gc
import unittest

import pytest
import torch
from packaging.version import Version
from torch.multiprocessing.reductions import StorageWeakRef

import npu_kernels as nk
import runtime
from runtime import auto_dispatch, compat


@pytest.fixture(scope="module")
def torch_npu():
    with compat.install():
        import torch_npu

        yield torch_npu


@pytest.fixture(autouse=True)
def clean_runtime(torch_npu):
    """A failed test leaves no queued work (host backend) and no other current stream behind."""
    yield
    runtime.set_stream(runtime.default_stream())
    if runtime.backend().name == "host":
        runtime.backend().discard_pending_work()


def decode_state(lengths):
    """Decode attention operands (B=2, N=2, one query token, D=16, 64 keys) and a call of the fused
    operator's keyword arguments with key/value lengths ``lengths``."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, s, 16, generator=g).half().npu() for s in (1, 64, 64))
    kw = dict(num_heads=2, input_layout="BNSD", scale=0.25, softmax_lse_flag=False, actual_seq_lengths_kv=lengths)
    return q, k, v, kw


def reference(q, k, v, kw, lengths):
    return nk.reference.npu_fused_infer_attention_score(q, k, v, **dict(kw, actual_seq_lengths_kv=lengths))[0]


def assert_attention(out, q, k, v, kw, lengths):
    torch.testing.assert_close(out.float(), reference(q, k, v, kw, lengths).float(), atol=2e-3, rtol=2e-3)


def test_out_form_inside_auto_dispatch_capture(torch_npu):
    """Regression: ``.out`` of the fused operator in ``graph(..., auto_dispatch_capture=True)`` failed with
    "Expected __torch_dispatch__ for npu::_npu_fused_infer_attention_score_into to return None"."""
    q, k, v, kw = decode_state([29, 3])
    workspace = torch_npu._npu_fused_infer_attention_score_get_max_workspace(q, k, v, **kw)
    out, lse = torch.empty(2, 2, 1, 16, dtype=torch.float16).npu(), torch.empty(1, dtype=torch.float16).npu()
    g = torch.npu.NPUGraph()
    with torch.npu.graph(g, auto_dispatch_capture=True):
        returned = torch_npu.npu_fused_infer_attention_score.out(q, k, v, workspace=workspace, out=[out, lse], **kw)
    assert returned[0] is out and returned[1] is lse
    for lengths in ([64, 40], [5, 64]):
        g.update(cpu_update_input=[{"actual_seq_lengths_kv": lengths}])
        g.replay()
        torch.npu.synchronize()
        assert_attention(out, q, k, v, kw, lengths)


def test_functional_call_inside_auto_dispatch_capture_returns_its_outputs(torch_npu):
    q, k, v, kw = decode_state([29, 3])
    g = torch.npu.NPUGraph()
    with torch.npu.graph(g, auto_dispatch_capture=True):
        out, _ = torch_npu.npu_fused_infer_attention_score(q, k, v, **kw)
    g.replay()                                          # vLLM-Ascend's order: the replay waits for
    g.update([{"actual_seq_lengths_kv": [64, 40]}])     # the update issued after it
    torch.npu.synchronize()
    assert_attention(out, q, k, v, kw, [64, 40])


@pytest.fixture
def registry():
    """The handler registry, restored after the test."""
    saved = dict(auto_dispatch._handlers)
    yield auto_dispatch._handlers
    auto_dispatch._handlers.clear()
    auto_dispatch._handlers.update(saved)


def test_register_handler_under_one_name_or_a_list(torch_npu, registry):
    """Regression: a single name was registered under each of its characters."""
    from torch_npu.npu import NpuGraphOpHandler, register_npu_graph_handler
    from torch_npu.npu._npugraph_handlers.npugraph_handler import _NPU_GRAPH_OP_HANDLERS

    before = set(_NPU_GRAPH_OP_HANDLERS)

    @register_npu_graph_handler("my_op_single")
    class Single(NpuGraphOpHandler):
        pass

    @register_npu_graph_handler(["my_op", "my_op.default"])
    class Listed(NpuGraphOpHandler):
        pass

    assert set(_NPU_GRAPH_OP_HANDLERS) - before == {"my_op_single", "my_op", "my_op.default"}
    assert _NPU_GRAPH_OP_HANDLERS["my_op_single"] is Single and _NPU_GRAPH_OP_HANDLERS["my_op.default"] is Listed
    with pytest.raises(TypeError, match=r"op_names=3: expected a str or a list of str"):
        register_npu_graph_handler(3)


@pytest.mark.parametrize("names, specs", [
    (("npu_fused_infer_attention_score", "npu_fused_infer_attention_score.default",
      "npu_fused_infer_attention_score.out"), [("arg", 5, "actual_seq_lengths"), ("arg", 6, "actual_seq_lengths_kv")]),
    (("npu_fused_infer_attention_score_v2", "npu_fused_infer_attention_score_v2.default",
      "npu_fused_infer_attention_score_v2.out"), [("arg", 7, "actual_seq_qlen"), ("arg", 8, "actual_seq_kvlen")]),
    (("_npu_paged_attention.default",), [("arg", 7, "context_lens")]),
    (("npu_multi_head_latent_attention.out",), [("arg", 5, "context_lens")])])
def test_builtin_handler_names_and_specs(torch_npu, names, specs):
    """torch_npu's built-in handlers (``_npugraph_handlers``), under its names and update specs."""
    from torch_npu.npu._npugraph_handlers.npugraph_handler import _NPU_GRAPH_OP_HANDLERS

    for name in names:
        assert _NPU_GRAPH_OP_HANDLERS[name].get_update_specs(name) == specs


def test_update_dict_serves_the_records_that_take_its_keys(torch_npu):
    """One dict, broadcast to every record, updates the calls that have the key and leaves the others;
    a key no captured call has is left out, as torch_npu does, with a warning naming it."""
    q, k, v, kw = decode_state([29, 3])
    full = {key: value for key, value in kw.items() if key != "actual_seq_lengths_kv"}
    g = torch.npu.NPUGraph()
    with torch.npu.graph(g, auto_dispatch_capture=True):
        with_lengths, _ = torch_npu.npu_fused_infer_attention_score(q, k, v, **kw)
        without, _ = torch_npu.npu_fused_infer_attention_score(q, k, v, **full)
    g.update([{"actual_seq_lengths_kv": [64, 40]}])
    g.replay()
    torch.npu.synchronize()
    assert_attention(with_lengths, q, k, v, kw, [64, 40])
    assert_attention(without, q, k, v, kw, [64, 64])
    with pytest.warns(UserWarning, match=r"no captured call has an argument named \['actual_seq_lenghts_kv'\]"):
        g.update([{"actual_seq_lenghts_kv": [1, 1], "actual_seq_lengths_kv": [3, 64]}])
    g.replay()
    torch.npu.synchronize()
    assert_attention(with_lengths, q, k, v, kw, [3, 64])


def test_v2_functional_and_out_forms_inside_auto_dispatch_capture(torch_npu):
    """The fused operator v2, functional (captured as ``.out`` with the maximal workspace) and ``.out``:
    ``actual_seq_kvlen`` updates both."""
    q, k, v, _ = decode_state(None)
    kw = dict(num_query_heads=2, input_layout="BNSD", softmax_scale=0.25, actual_seq_kvlen=[29, 3])
    workspace = torch_npu._npu_fused_infer_attention_score_v2_get_max_workspace(q, k, v, **kw)
    out, lse = torch_npu._npu_fused_infer_attention_score_v2_infer_output(q, v, num_query_heads=2,
                                                                           input_layout="BNSD")
    g = torch.npu.NPUGraph()
    with torch.npu.graph(g, auto_dispatch_capture=True):
        functional, _ = torch_npu.npu_fused_infer_attention_score_v2(q, k, v, **kw)
        returned = torch_npu.npu_fused_infer_attention_score_v2.out(q, k, v, workspace=workspace, out=[out, lse], **kw)
    assert returned[0] is out and returned[1] is lse
    for lengths in ([64, 40], [5, 64]):
        g.update(cpu_update_input=[{"actual_seq_kvlen": lengths}])
        g.replay()
        torch.npu.synchronize()
        want = nk.reference.npu_fused_infer_attention_score_v2(q, k, v, **dict(kw, actual_seq_kvlen=lengths))[0]
        for got in (functional, out):
            torch.testing.assert_close(got.float(), want.float(), atol=2e-3, rtol=2e-3)


FILL = 7.0     # what ``out`` holds before a replay: rows of empty requests keep it


def paged_state():
    """Paged attention operands: 4 query rows, N=4, KV_N=2, D=16, 8 blocks of 16 tokens, 2 blocks per request."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(4, 4, 16, generator=g).half().npu()
    key_cache, value_cache = (torch.randn(8, 16, 2, 16, generator=g).half().npu() for _ in range(2))
    table = torch.randperm(8, generator=g).reshape(4, 2).int().npu()
    return dict(query=q, key_cache=key_cache, value_cache=value_cache, num_kv_heads=2, num_heads=4,
                scale_value=0.25, block_table=table)


def paged_reference(params, lens):
    want = torch.full((4, 4, 16), FILL, dtype=torch.float16).npu()
    nk.reference._npu_paged_attention(*params.values(), torch.tensor(lens, dtype=torch.int32), want)
    return want


@pytest.mark.parametrize("order", ["update_then_replay", "replay_then_update"])
def test_paged_attention_inside_auto_dispatch_capture(torch_npu, order):
    """``_npu_paged_attention`` under torch_npu's name and under ``torch.ops.atb`` (keywords, as vLLM-Ascend
    calls it): each call is recorded, ``context_lens`` (argument 7) updated; rows of empty requests are
    left as they were."""
    params = paged_state()
    outs = [torch.empty(4, 4, 16, dtype=torch.float16).npu() for _ in range(2)]
    lens = torch.tensor([32, 32, 32, 32], dtype=torch.int32)
    g = torch.npu.NPUGraph()
    with torch.npu.graph(g, auto_dispatch_capture=True):
        torch_npu._npu_paged_attention(**params, context_lens=lens, out=outs[0])
        torch.ops.atb._npu_paged_attention(**params, context_lens=lens, out=outs[1])
    assert [str(r.func) for r in g._records] == ["npu._npu_paged_attention.default"] * 2    # atb's is an alias
    for step in ([3, 30, 0, 0], [1, 17, 32, 2], [32, 5, 17, 0]):
        for out in outs:
            out.fill_(FILL)
        update = [{"context_lens": torch.tensor(step, dtype=torch.int32)}]
        if order == "replay_then_update":
            g.replay()
            g.update(cpu_update_input=update)
        else:
            g.update(cpu_update_input=update)
            g.replay()
        torch.npu.synchronize()
        for out in outs:
            torch.testing.assert_close(out.float(), paged_reference(params, step).float(), atol=2e-3, rtol=2e-3)


def test_atb_namespace_holds_the_atb_operators(torch_npu):
    """``torch.ops.atb.<name>``: the ``npu`` operator's schema under torch_npu's ATB namespace, same results."""
    from runtime.compat import atb

    for name in atb.OPERATORS:
        npu_schema = str(getattr(torch.ops.npu, name).default._schema)
        assert str(getattr(torch.ops.atb, name).default._schema) == npu_schema.replace("npu::", "atb::", 1)
    g = torch.Generator().manual_seed(1)
    key, value = (torch.randn(3, 2, 16, generator=g).half().npu() for _ in range(2))
    slots = torch.tensor([0, 17, 33], dtype=torch.int32).npu()
    caches = [torch.zeros(4, 16, 2, 16, dtype=torch.float16).npu() for _ in range(4)]
    torch.ops.atb._npu_reshape_and_cache(key, value, caches[0], caches[1], slots)
    torch.ops.atb._npu_reshape_and_cache_siso(key, caches[2], slots)
    torch_npu._npu_reshape_and_cache(key, value, caches[3], caches[3].clone(), slots)
    assert torch.equal(caches[0].view(-1, 2, 16)[slots.long()], key)
    assert torch.equal(caches[1].view(-1, 2, 16)[slots.long()], value)
    assert torch.equal(caches[2], caches[0]) and torch.equal(caches[3], caches[0])
    params = paged_state()
    lens = torch.tensor([5, 32, 0, 0], dtype=torch.int32)
    out = torch.full((4, 4, 16), FILL, dtype=torch.float16).npu()
    workspace = torch.ops.atb._npu_paged_attention_get_workspace(*params.values(), lens, out)
    torch.ops.atb._npu_paged_attention(*params.values(), lens, out, workspace=workspace)
    torch.testing.assert_close(out.float(), paged_reference(params, [5, 32, 0, 0]).float(), atol=2e-3, rtol=2e-3)


def test_graph_dispatch_mode_update_stream_is_shared(torch_npu):
    g1, g2 = torch.npu.NPUGraph(), torch.npu.NPUGraph()
    assert g1.graph_dispatch_mode.update_stream == g2.graph_dispatch_mode.update_stream
    assert g1.graph_dispatch_mode.update_stream != torch.npu.current_stream()


def test_fused_out_graph_updates_and_records(torch_npu):
    """``torch_npu._C._npu_fused_infer_attention_score_out_graph``: update_begin, the ``.out`` call,
    update_end and the event record on the update stream, in one call."""
    q, k, v, kw = decode_state([29, 3])
    workspace = torch_npu._npu_fused_infer_attention_score_get_max_workspace(q, k, v, **kw)
    out, lse = torch.empty(2, 2, 1, 16, dtype=torch.float16).npu(), torch.empty(1, dtype=torch.float16).npu()
    g, event, update_stream = torch.npu.NPUGraph(), torch.npu.ExternalEvent(), torch.npu.Stream()
    with torch.npu.graph(g):
        stream = torch.npu.current_stream()
        event.wait(stream)
        event.reset(stream)
        torch.npu.graph_task_group_begin(stream)
        torch_npu.npu_fused_infer_attention_score.out(q, k, v, workspace=workspace, out=[out, lse], **kw)
        handle = torch.npu.graph_task_group_end(stream)
    returned = torch_npu._C._npu_fused_infer_attention_score_out_graph(
        update_stream, handle, event, q, k, v, workspace=workspace, out=[out, lse],
        **dict(kw, actual_seq_lengths_kv=[64, 40]))
    assert returned[0] is out
    g.replay()
    torch.npu.synchronize()
    assert_attention(out, q, k, v, kw, [64, 40])


def test_task_group_handle_is_torch_npu_C_class(torch_npu):
    @dataclasses.dataclass
    class GraphParams:     # vLLM-Ascend's annotation
        handles: dict[int, list[torch_npu._C._NPUTaskGroupHandle]]

    q, k, v, kw = decode_state([29, 3])
    with torch.npu.graph(torch.npu.NPUGraph()):
        stream = torch.npu.current_stream()
        torch.npu.graph_task_group_begin(stream)
        torch_npu.npu_fused_infer_attention_score(q, k, v, **kw)
        handle = torch.npu.graph_task_group_end(stream)
    params = GraphParams({1: [handle]})
    assert isinstance(params.handles[1][0], torch_npu._C._NPUTaskGroupHandle)
    assert isinstance(handle.task_group, int) and handle.task_group == handle.task_group


def test_weak_ref_tensor_aliases_without_owning(torch_npu):
    base = torch.arange(24.0).npu()
    view = base.view(4, 6)[1:, ::2]
    weak = torch_npu._C._weak_ref_tensor(view)
    assert (weak.data_ptr(), weak.shape, weak.stride(), weak.dtype) == (view.data_ptr(), view.shape,
                                                                        view.stride(), view.dtype)
    weak.fill_(-1)
    assert torch.equal(base.view(4, 6)[1:, ::2].cpu(), torch.full((3, 3), -1.0))
    storage = StorageWeakRef(base.untyped_storage())
    del base, view
    gc.collect()
    assert storage.expired()       # the weak tensor did not keep the memory alive


def test_captured_graph_keeps_its_buffers_behind_weak_refs(torch_npu):
    """vLLM-Ascend keeps only weak references to a capture's output; the graph keeps the memory, and
    each replay writes it."""
    x = torch.ones(8).npu()
    g = torch.npu.NPUGraph()
    with torch.npu.graph(g):
        y = x * 2
        weak = torch_npu._C._weak_ref_tensor(y)
    del y
    gc.collect()
    x.fill_(3)
    g.replay()
    torch.npu.synchronize()
    assert torch.equal(weak.cpu(), torch.full((8,), 6.0))


@pytest.mark.skipif(runtime.backend().name != "host", reason="the host backend's graphs own their buffers' "
                    "storages; a CUDA graph's pool owns memory, not storages")
def test_host_graph_releases_its_buffers_at_reset(torch_npu):
    x = torch.ones(8).npu()
    g = torch.npu.NPUGraph()
    with torch.npu.graph(g):
        y = x * 2
    storage = StorageWeakRef(y.untyped_storage())
    del y
    gc.collect()
    assert not storage.expired()
    g.reset()
    gc.collect()
    assert storage.expired()


def test_empty_caches_call_the_backend_outside_captures(torch_npu, monkeypatch):
    calls = []
    be = runtime.backend()
    monkeypatch.setattr(be, "empty_cache", lambda **kwargs: calls.append("device"))
    monkeypatch.setattr(be, "host_empty_cache", lambda: calls.append("host"))
    torch.npu.empty_cache()
    torch_npu.npu.host_empty_cache()
    assert calls == ["device", "host"]
    with torch.npu.graph(torch.npu.NPUGraph()):     # releases before it captures, as torch_npu's
        calls.clear()
        torch.npu.empty_cache()
        torch.npu.host_empty_cache()
    assert calls == []


def test_empty_cache_releases_the_operator_caches(torch_npu, monkeypatch):
    from npu_kernels import caches

    released = []
    monkeypatch.setattr(caches, "_clearers", [lambda: released.append(True)])
    torch.npu.empty_cache()
    assert released == [True]


def test_mem_get_info(torch_npu):
    free, total = torch.npu.mem_get_info()
    assert isinstance(free, int) and isinstance(total, int) and 0 < free <= total
    assert torch.npu.mem_get_info("npu:0") == pytest.approx((free, total), rel=0.5)
    with pytest.raises(ValueError, match="index 3 is out of range"):
        torch.npu.mem_get_info(3)


def test_platform_answers_an_a2_part(torch_npu):
    """vLLM-Ascend maps SoC versions 220-225 to A2 and 250-255 to A3 and hashes ``__version__``."""
    assert torch_npu.npu.get_soc_version() == 220 and torch.npu.get_device_name() == "Ascend910B1"
    assert torch_npu.npu.utils.get_soc_version is torch_npu.npu.get_soc_version
    version = Version(torch_npu.__version__)
    assert version.public == torch.__version__.split("+")[0] and version.local.startswith("npu.kernels")
    previous = compat.set_soc_version(250)
    try:
        assert previous == 220 and torch.npu.get_device_name(0) == "Ascend910_9391"
    finally:
        compat.set_soc_version(previous)
    with pytest.raises(ValueError, match=r"version=200: the emulated parts are the A2 and A3 SoC versions"):
        compat.set_soc_version(200)


def test_compile_mode(torch_npu):
    torch_npu.npu.set_compile_mode(jit_compile=True)
    assert not torch.npu.is_jit_compile_false()
    torch.npu.set_compile_mode(jit_compile=False)
    assert torch.npu.is_jit_compile_false()


def test_manual_seed_and_npu_generator(torch_npu):
    torch.npu.manual_seed(7)
    a = torch.randn(4, device="npu")
    torch.npu.manual_seed_all(7)
    assert torch.equal(a, torch.randn(4, device="npu"))
    g = torch.Generator(device="npu")
    assert isinstance(g, torch._C.Generator) and g.device.type == nk.npu_device().type
    g.manual_seed(3)
    b = torch.randn(4, device="npu", generator=g)
    assert torch.equal(b, torch.randn(4, device="npu", generator=torch.Generator("npu:0").manual_seed(3)))


def test_module_npu(torch_npu):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    assert model.npu() is model
    assert all(t.is_npu for t in [*model.parameters(), *model.buffers()])


@pytest.mark.skipif(torch.accelerator.is_available(), reason="with an accelerator torch pins memory itself")
def test_pinned_memory_without_an_accelerator(torch_npu):
    x = torch.arange(6.0).view(2, 3).t()
    pinned = x.pin_memory()
    assert pinned is not x and torch.equal(pinned, x) and pinned.stride() == x.stride()
    assert torch.equal(torch.zeros(3, pin_memory=True), torch.zeros(3))
    assert torch.empty(2, dtype=torch.int32, pin_memory=True).shape == (2,)


def test_submodules_hold_the_torch_npu_objects(torch_npu):
    import torch_npu.npu.graphs
    import torch_npu.npu.streams
    import torch_npu.npu.utils
    from torch_npu.npu._npugraph_handlers import register_npu_graph_handler

    assert torch_npu.npu.streams.ExternalEvent is torch.npu.ExternalEvent
    assert torch_npu.npu.graphs.NPUGraph is torch.npu.NPUGraph and torch_npu.npu.utils.stream is torch.npu.stream
    assert register_npu_graph_handler is torch.npu.register_npu_graph_handler


def test_operators_come_from_npu_kernels(torch_npu):
    assert {"npu_fused_infer_attention_score_v2", "_npu_fused_infer_attention_score_v2_get_max_workspace",
            "_npu_fused_infer_attention_score_v2_infer_output", "_npu_paged_attention",
            "_npu_paged_attention_get_workspace"} <= set(nk.OPERATORS)
    assert all(getattr(torch_npu, n) is getattr(nk, n) for n in nk.OPERATORS)
    assert "npu_device" not in vars(torch_npu) and "reference" not in vars(torch_npu)


def test_supported_devices_runs_or_skips_by_part_family(torch_npu):
    from torch_npu.testing.common_utils import SupportedDevices
    from torch_npu.testing.testcase import TestCase

    class Case(TestCase):
        @SupportedDevices(["Ascend910B"])
        def test_a2(self):
            self.assertRtolEqual(torch.ones(3).npu(), torch.ones(3))

        @SupportedDevices(["Ascend910_93"])
        def test_a3(self):
            pass

    result = unittest.TestResult()
    unittest.defaultTestLoader.loadTestsFromTestCase(Case).run(result)
    assert result.testsRun == 2 and not result.failures and not result.errors
    assert [reason for _, reason in result.skipped] == [
        "Only run on ['Ascend910_93'], current device is Ascend910B."]


def test_testcase_comparisons(torch_npu):
    from torch_npu.testing.testcase import TestCase

    case = TestCase()
    x = torch.tensor([1.0, 2.0, float("nan")])
    case.assertEqual(x, x.clone())
    case.assertEqual(torch.tensor([1.0]), 1.0)
    with pytest.raises(AssertionError):
        case.assertEqual(x, torch.tensor([1.0, 2.001, float("nan")]))
    case.assertRtolEqual(torch.full((1000,), 1.0, dtype=torch.float16),
                         torch.full((1000,), 1.0005, dtype=torch.float16))
    with pytest.raises(AssertionError, match="result error"):
        case.assertRtolEqual(torch.ones(10), torch.ones(10) * 1.1)
    with pytest.raises(AssertionError, match="dtype error"):
        case.assertRtolEqual(torch.ones(2), torch.ones(2, dtype=torch.float64))
