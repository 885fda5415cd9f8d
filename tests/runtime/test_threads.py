"""The runtime used from several host threads: no lost work, waits another thread releases (issue 18, 7)."""

import sys
import threading
import time

import pytest
import torch


@pytest.fixture
def fast_switching():
    """Switch threads every microsecond, so that races show in a short test."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(previous)


def _run_threads(*targets):
    """Run the targets in threads started together; re-raise the first error one of them raised."""
    errors = []
    start = threading.Barrier(len(targets))

    def body(fn):
        try:
            start.wait()
            fn()
        except BaseException as e:  # handed to the test thread below
            errors.append(e)

    threads = [threading.Thread(target=body, args=(fn,)) for fn in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]


def test_concurrent_replays_lose_no_work(rt, device, fast_switching):
    x = torch.zeros(4, device=device)
    g = rt.NPUGraph()
    with rt.graph(g):
        x.add_(1)
    per_thread = 200

    def replays():
        for _ in range(per_thread):
            g.replay()

    _run_threads(replays, replays)
    rt.synchronize()
    assert x.tolist() == [2.0 * per_thread] * 4


def test_concurrent_replays_behind_an_external_event(host_rt, fast_switching):
    """Replays from two threads park at a gate; a third thread releases each replay with a record (on a
    device the records could merge: a record may land before the wait it is meant for runs)."""
    rt = host_rt
    x = torch.zeros(4)
    gate = rt.ExternalEvent()
    g = rt.NPUGraph()
    with rt.graph(g):
        gate.wait(rt.current_stream())
        x.add_(1)
    per_thread = 50
    replayed = threading.Semaphore(0)

    def replays():
        for _ in range(per_thread):
            g.replay()
            replayed.release()

    def records():
        u = rt.Stream()
        for _ in range(2 * per_thread):
            replayed.acquire()
            gate.record(u)
            u.synchronize()

    s1, s2 = rt.Stream(), rt.Stream()

    def on(s, fn):
        def run():
            with rt.stream(s):
                fn()
        return run

    _run_threads(on(s1, replays), on(s2, replays), records)
    rt.synchronize()
    assert x.tolist() == [2.0 * per_thread] * 4


def test_synchronize_waits_for_a_record_from_another_thread(rt, device):
    x = torch.ones(4, device=device)
    ev = rt.ExternalEvent()
    s = rt.Stream()
    ev.wait(s)
    with rt.stream(s):
        y = x * 3

    def record_later():
        time.sleep(0.2)
        ev.record(rt.Stream())

    recorder = threading.Thread(target=record_later)
    start = time.monotonic()
    recorder.start()
    rt.synchronize()
    waited = time.monotonic() - start
    recorder.join()
    assert waited >= 0.15
    assert y.tolist() == [3.0] * 4


def test_wait_no_thread_releases_is_bounded(rt):
    ev = rt.ExternalEvent()
    ev.wait(rt.Stream())
    rt.backend().wait_timeout_s = 0.3
    idle = threading.Event()
    bystander = threading.Thread(target=idle.wait)   # alive, but never records
    bystander.start()
    try:
        start = time.monotonic()
        with pytest.raises(rt.DeadlockError, match=ev.name):
            rt.synchronize()
        assert 0.25 <= time.monotonic() - start < 5
    finally:
        idle.set()
        bystander.join()


def test_each_thread_has_its_own_current_stream(rt):
    s = rt.Stream()
    entered, checked = threading.Event(), threading.Event()
    seen = []

    def other():
        with rt.stream(s):
            seen.append(rt.current_stream())
            entered.set()
            checked.wait(10)

    t = threading.Thread(target=other)
    t.start()
    entered.wait(10)
    try:
        assert seen == [s]
        assert rt.current_stream() == rt.default_stream()
    finally:
        checked.set()
        t.join()
