"""Capture and replay semantics and their errors (spec/runtime.md §1.3, §1.9; §6.4 scenario 1)."""

import pytest
import torch

from backend_setup import randn


def test_outputs_come_from_replay_and_follow_inputs(rt, device):
    x = randn(4, 3, device=device)
    w = randn(3, 3, device=device)
    g = rt.NPUGraph()
    with rt.graph(g):
        y = torch.relu(x @ w) + 1.0
    x.copy_(randn(4, 3, device=device))
    g.replay()
    torch.testing.assert_close(y, torch.relu(x @ w) + 1.0)
    x.mul_(-1)
    g.replay()
    torch.testing.assert_close(y, torch.relu(x @ w) + 1.0)


def test_host_outputs_are_poisoned_until_replay(host_rt):
    x = torch.ones(2, 2)
    i = torch.zeros(3, dtype=torch.int64)
    g = host_rt.NPUGraph()
    with host_rt.graph(g):
        y = x * 2
        j = i + 1
        e = torch.empty(5)
    assert torch.isnan(y).all() and torch.isnan(e).all()
    assert (j == torch.iinfo(torch.int64).max).all()
    g.replay()
    assert torch.equal(y, torch.full((2, 2), 2.0)) and torch.equal(j, torch.ones(3, dtype=torch.int64))


def test_in_place_ops_and_views_act_on_the_captured_tensors(rt, device):
    x = torch.arange(6.0, device=device)
    g = rt.NPUGraph()
    with rt.graph(g):
        v = x.view(2, 3)
        v[:, 1].mul_(10)
        x.add_(1)
        t = v.t()
    expected = torch.arange(6.0, device=device).view(2, 3)
    expected[:, 1] *= 10
    expected += 1
    g.replay()
    torch.testing.assert_close(v, expected)
    torch.testing.assert_close(t, expected.t())
    g.replay()
    expected[:, 1] *= 10
    expected += 1
    torch.testing.assert_close(x.view(2, 3), expected)


def test_replay_on_default_stream_and_side_stream(rt, device):
    x = randn(3, device=device)
    g = rt.NPUGraph()
    s = rt.Stream()
    with rt.graph(g, stream=s):
        y = x.exp()
    assert rt.current_stream() == rt.default_stream()
    g.replay()
    torch.testing.assert_close(y, x.exp())
    x.fill_(0.5)
    side = rt.Stream()
    side.wait_stream(rt.current_stream())
    with rt.stream(side):
        g.replay()
    rt.current_stream().wait_stream(side)
    torch.testing.assert_close(y, x.exp())


def test_capture_on_default_stream_is_an_error(rt):
    g = rt.NPUGraph()
    with pytest.raises(RuntimeError, match="NPU graphs must be captured on a non-default stream"):
        g.capture_begin()


def test_capture_must_end_on_its_stream(rt, device):
    g = rt.NPUGraph()
    s, other = rt.Stream(), rt.Stream()
    with rt.stream(s):
        g.capture_begin()
        with rt.stream(other):
            with pytest.raises(RuntimeError, match="Capture must end on the same stream it began on"):
                g.capture_end()
        g.capture_end()


def test_recapture_needs_reset(rt, device):
    x = randn(3, device=device)
    g = rt.NPUGraph()
    with rt.graph(g):
        y = x * 2
    with pytest.raises(RuntimeError, match="already owns a captured graph"):
        with rt.graph(g):
            pass
    assert not rt.is_current_stream_capturing()
    g.reset()
    with rt.graph(g):
        z = x * 3
    g.replay()
    torch.testing.assert_close(z, x * 3)


def test_replay_and_pool_before_capture(rt):
    g = rt.NPUGraph()
    with pytest.raises(RuntimeError, match="Called NPUGraph::replay without a preceding successful capture"):
        g.replay()
    with pytest.raises(RuntimeError, match=r"pool\(\) without a preceding successful capture"):
        g.pool()


def test_bad_capture_error_mode(rt):
    with pytest.raises(RuntimeError, match="Unknown capture error mode. Expected `global`, `thread_local`, or `relaxed`"):
        with rt.graph(rt.NPUGraph(), capture_error_mode="strict"):
            pass
    assert rt.current_stream() == rt.default_stream()


def test_launch_blocking_replay_synchronizes(host_rt, monkeypatch):
    ev = host_rt.ExternalEvent()
    g = host_rt.NPUGraph()
    with host_rt.graph(g):
        ev.wait(host_rt.current_stream())
    monkeypatch.setenv("ASCEND_LAUNCH_BLOCKING", "1")
    with pytest.raises(host_rt.DeadlockError, match=ev.name):
        g.replay()


def test_task_queue_enable_2_is_refused(rt, monkeypatch):
    monkeypatch.setenv("TASK_QUEUE_ENABLE", "2")
    with pytest.raises(RuntimeError, match="Do not support TASK_QUEUE_ENABLE = 2"):
        with rt.graph(rt.NPUGraph()):
            pass


def test_graph_argument_order_and_shared_pool(rt, device):
    x = randn(3, device=device)
    pool = rt.graph_pool_handle()
    g1, g2 = rt.NPUGraph(), rt.NPUGraph()
    with rt.graph(g1, pool, None, False, "thread_local"):
        assert rt.is_current_stream_capturing()
        assert rt.NPUGraph.get_currently_capturing_graph() is g1
        y = x + 1
    with rt.graph(g2, pool=g1.pool()):
        z = y * 2
    assert not rt.is_current_stream_capturing()
    g1.replay()
    g2.replay()
    torch.testing.assert_close(z, (x + 1) * 2)


def test_capture_end_runs_after_an_error_in_the_body(rt, device):
    g = rt.NPUGraph()
    with pytest.raises(ValueError, match="body"):
        with rt.graph(g):
            raise ValueError("body")
    assert not rt.is_current_stream_capturing()
    assert rt.current_stream() == rt.default_stream()


def test_forked_stream_is_replayed_with_its_edges(rt, device):
    a, b = randn(4, device=device), randn(4, device=device)
    g = rt.NPUGraph()
    with rt.graph(g):
        main = rt.current_stream()
        side = rt.Stream()
        side.wait_stream(main)
        with rt.stream(side):
            p = a * 2
        q = b + 1
        main.wait_stream(side)
        r = p + q
    g.replay()
    torch.testing.assert_close(r, a * 2 + b + 1)


def test_unjoined_forked_stream_fails_the_capture(rt, device):
    a = randn(4, device=device)
    g = rt.NPUGraph()
    with pytest.raises(RuntimeError, match="unjoined|not joined"):
        with rt.graph(g):
            side = rt.Stream()
            side.wait_stream(rt.current_stream())
            with rt.stream(side):
                a.mul_(2)
    with pytest.raises(RuntimeError, match="without a preceding successful capture"):
        g.replay()


def test_host_read_during_capture_is_an_error(host_rt):
    x = torch.ones(3)
    with pytest.raises(RuntimeError, match="not permitted when stream is capturing"):
        with host_rt.graph(host_rt.NPUGraph()):
            (x * 2).sum().item()


def test_scalar_type_decides_the_recorded_dtype(host_rt):
    x = torch.arange(3)
    g = host_rt.NPUGraph()
    with host_rt.graph(g):
        a = x * 2
        b = x * 2.0
    g.replay()
    assert a.dtype == torch.int64 and b.dtype == torch.float32
    assert torch.equal(b, x * 2.0)


def test_synchronize_during_capture_is_an_error(rt):
    with pytest.raises(RuntimeError, match="not permitted when stream is capturing"):
        with rt.graph(rt.NPUGraph()):
            rt.synchronize()


def test_make_graphed_callables(rt, device):
    lin = torch.nn.Linear(4, 4).to(device).requires_grad_(False)
    x = randn(2, 4, device=device)
    f = rt.make_graphed_callables(lin, (x,), num_warmup_iters=1)
    x2 = randn(2, 4, device=device)
    torch.testing.assert_close(f(x2), lin(x2))


def test_debug_dump(rt, device, tmp_path):
    x = randn(3, device=device)
    g = rt.NPUGraph()
    with rt.graph(g):
        x.mul_(2)
    with pytest.raises(RuntimeError, match="needs enable_debug_mode"):
        g.debug_dump(str(tmp_path / "none"))
    g = rt.NPUGraph()
    g.enable_debug_mode()
    with rt.graph(g):
        x.mul_(2)
    g.debug_dump(str(tmp_path / "graph"))
    assert "mul" in (tmp_path / "graph").read_text().lower()


def test_make_graphed_callables_is_inference_only(rt, device):
    x = randn(2, 4, device=device).requires_grad_()
    with pytest.raises(RuntimeError, match="inference only"):
        rt.make_graphed_callables(torch.nn.Linear(4, 4).to(device), (x,))


def test_compiled_function_in_a_capture_and_behind_a_wait(rt, device):
    """A torch.compile'd function runs in a capture (and on a parked stream) like its eager form, also
    where the backend's interception changes the torch function mode stack (a recompilation)."""
    f = torch.compile(lambda t: (t * 2).relu() + 1, backend="eager", fullgraph=True)
    x = randn(4, device=device)
    torch.testing.assert_close(f(x), (x * 2).relu() + 1)
    g = rt.NPUGraph()
    with rt.graph(g):
        y = f(x)
    x.fill_(0.5)
    g.replay()
    torch.testing.assert_close(y, torch.full_like(x, 2.0))
    ev = rt.ExternalEvent()
    s = rt.Stream()
    ev.wait(s)
    with rt.stream(s):
        z = f(x)
    ev.record(rt.Stream())
    s.synchronize()
    torch.testing.assert_close(z, torch.full_like(x, 2.0))
