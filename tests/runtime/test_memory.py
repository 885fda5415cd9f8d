"""What the runtime keeps in memory: bounded bookkeeping (issue 18, 10), graphs that own the memory
their capture allocated, and ``empty_cache`` (issue 17)."""

import gc

import pytest
import torch
from torch.multiprocessing.reductions import StorageWeakRef

import npu_kernels.caches
from runtime.backends import recording


def test_inferred_shapes_are_bounded(host_rt, monkeypatch):
    monkeypatch.setattr(recording, "INFERRED_LIMIT", 4)
    recording.inferred.clear()
    g = host_rt.NPUGraph()
    with host_rt.graph(g):
        outs = [torch.ones(n) * 2 for n in range(1, 11)]      # 10 signatures of ones and of mul
    assert len(recording.inferred) == 4
    g.replay()
    assert [o.sum().item() for o in outs] == [2.0 * n for n in range(1, 11)]


def test_waits_leave_no_trace_per_wait(rt):
    ev = rt.ExternalEvent()
    s, u = rt.Stream(), rt.Stream()
    for _ in range(50):
        ev.wait(s)
        ev.record(u)
        s.synchronize()
    assert ev._flag.wait_places == {"eager"}


def test_empty_cache_releases_the_caches(rt, device, monkeypatch):
    released = []
    monkeypatch.setattr(npu_kernels.caches, "_clearers", [lambda: released.append(True)])
    x = torch.ones(3, device=device)
    with rt.graph(rt.NPUGraph()):
        x.mul_(2)
    assert released == []                # a capture keeps the plans of its warm-up
    rt.backend().empty_cache()
    assert released == [True]


def test_host_empty_cache_releases_inferred_shapes(host_rt):
    with host_rt.graph(host_rt.NPUGraph()):
        torch.ones(3) * 2
    assert len(recording.inferred) > 0
    host_rt.backend().empty_cache()
    assert len(recording.inferred) == 0


def test_graph_keeps_the_memory_its_capture_allocated(host_rt):
    """As a graph's private pool on the device: a buffer only borrowed after the capture (vLLM-Ascend's
    weak references) stays valid until the graph is reset."""
    g = host_rt.NPUGraph()
    with host_rt.graph(g):
        workspace = torch.empty(64)
        out = torch.empty(8)
        out.fill_(1.0)
    refs = [StorageWeakRef(t.untyped_storage()) for t in (workspace, out)]
    del workspace, out
    gc.collect()
    assert not any(r.expired() for r in refs)
    g.reset()
    gc.collect()
    assert all(r.expired() for r in refs)


@pytest.mark.parametrize("auto_dispatch_capture", [False, True])
def test_graph_dispatch_mode(rt, device, auto_dispatch_capture):
    """``NPUGraph.graph_dispatch_mode`` as in torch_npu: made with the graph, entered by an auto-dispatch
    capture."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    g = rt.NPUGraph()
    mode = g.graph_dispatch_mode
    with rt.graph(g, auto_dispatch_capture=auto_dispatch_capture):
        assert (mode in _get_current_dispatch_mode_stack()) == auto_dispatch_capture
    assert g.graph_dispatch_mode is mode and mode not in _get_current_dispatch_mode_stack()
