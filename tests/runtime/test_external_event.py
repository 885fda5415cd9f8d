"""ExternalEvent as a device flag, ordinary events, and what the device would hang on (§1.6; §6.4 scenario 2)."""

import pytest
import torch

from backend_setup import randn


def test_wait_before_record_blocks_until_a_record(rt, device):
    x = randn(8, device=device)
    ev = rt.ExternalEvent()
    s, u = rt.Stream(), rt.Stream()
    ev.wait(s)
    with rt.stream(s):
        y = x * 2
    assert not s.query()
    ev.record(u)
    s.synchronize()
    torch.testing.assert_close(y, x * 2)


def test_consuming_wait_needs_one_record_per_wait(rt, device):
    x = randn(8, device=device)
    ev = rt.ExternalEvent()
    s, u = rt.Stream(), rt.Stream()
    ev.wait(s)
    ev.record(u)
    s.synchronize()
    ev.wait(s)
    with rt.stream(s):
        y = x + 1
    assert not s.query()
    ev.record(u)
    s.synchronize()
    torch.testing.assert_close(y, x + 1)


def test_two_waits_without_a_record_are_refused(rt):
    ev = rt.ExternalEvent()
    s = rt.Stream()
    ev.record(rt.Stream())
    ev.wait(s)
    with pytest.raises(RuntimeError, match="A single record operation cannot be associated with multiple wait operations"):
        ev.wait(rt.Stream())


def test_reset_semantics_allow_several_waiters_and_need_reset(rt, device):
    rt.set_external_event_semantics("reset")
    ev = rt.ExternalEvent()
    s1, s2, u = rt.Stream(), rt.Stream(), rt.Stream()
    ev.record(u)
    ev.wait(s1)
    ev.wait(s2)
    s1.synchronize()
    s2.synchronize()
    ev.wait(s1)
    s1.synchronize()          # the flag stays set: no reset yet
    ev.reset(u)
    u.synchronize()
    ev.wait(s1)
    assert not s1.query()
    ev.record(u)
    s1.synchronize()


def test_semantics_name_is_checked(rt):
    with pytest.raises(ValueError, match="expected one of consuming, reset"):
        rt.set_external_event_semantics("sticky")


def test_missing_record_is_reported_with_event_and_graph(rt, device):
    x = randn(4, device=device)
    ev = rt.ExternalEvent()
    g = rt.NPUGraph()
    with rt.graph(g):
        ev.wait(rt.current_stream())
        y = x * 3
    g.replay()
    with pytest.raises(rt.DeadlockError, match=f"{ev.name}.*{g.name}"):
        rt.synchronize()


def test_missing_record_in_eager_wait_is_reported(rt):
    ev = rt.ExternalEvent()
    s = rt.Stream()
    ev.wait(s)
    with pytest.raises(rt.DeadlockError, match=ev.name):
        s.synchronize()


def test_flag_merge_is_reported(rt):
    ev = rt.ExternalEvent()
    u = rt.Stream()
    with pytest.raises(rt.FlagMergeError, match=f"flag merge: {ev.name}"):
        ev.record(u)
        ev.record(u)
        rt.synchronize()


def test_ordinary_event_has_snapshot_semantics(rt, device):
    x = randn(4, device=device)
    e = rt.Event()
    s = rt.Stream()
    s.wait_event(e)            # never recorded: no-op
    s.synchronize()
    gate = rt.ExternalEvent()
    side = rt.Stream()
    gate.wait(side)
    with rt.stream(side):
        y = x * 5
    e.record(side)
    assert not e.query()
    s.wait_event(e)
    with rt.stream(s):
        z = y + 1
    gate.record(rt.Stream())
    s.synchronize()
    assert e.query()
    torch.testing.assert_close(z, x * 5 + 1)


def test_host_read_waits_for_queued_work(host_rt):
    x = torch.ones(3)
    ev = host_rt.ExternalEvent()
    s = host_rt.current_stream()
    ev.wait(s)
    y = x * 7                  # queued behind the wait on the current stream
    with host_rt.stream(host_rt.Stream()):
        assert torch.isnan(y).all()   # read on an idle stream: the poison of a queued output
    ev.record(host_rt.Stream())
    assert y.sum().item() == 21.0
    ev.wait(s)
    z = x + 1
    with pytest.raises(host_rt.DeadlockError, match=ev.name):
        z.sum().item()


def test_reset_semantics_in_a_graph_need_a_record_per_replay(rt, device):
    """The older pattern: wait then reset captured in the graph; every replay needs a new record."""
    rt.set_external_event_semantics("reset")
    x = randn(4, device=device)
    ev = rt.ExternalEvent()
    g = rt.NPUGraph()
    with rt.graph(g):
        s = rt.current_stream()
        ev.wait(s)
        ev.reset(s)
        y = x * 2
    side, u = rt.Stream(), rt.Stream()
    for _ in range(2):
        ev.record(u)
        u.synchronize()
        side.wait_stream(rt.current_stream())
        with rt.stream(side):
            g.replay()
        side.synchronize()
        torch.testing.assert_close(y, x * 2)
        x.add_(1)
    with rt.stream(side):
        g.replay()
    assert not side.query()          # the flag was reset by the previous replay
    ev.record(u)
    side.synchronize()
