"""Device timing: CUDA events, warm-up, medians, a flushed L2 and CUDA-graph replay; host timing.

``device_ms`` times each repetition between two events recorded around the call, after writing a buffer
larger than the L2 cache, so every repetition starts cold (as ``triton.testing.do_bench`` does), and
after a GPU-side sleep that outlasts the host's validate + plan + launch, so the events bracket device
work only (host time is measured on its own: ``bench host`` and the graph suite).
``graph_ms`` captures ``calls`` (one per rotating input set, so that the sets together exceed the L2)
in one CUDA graph and replays it; the time per call is the replay time divided by the number of calls.
``host_us`` is CPU time of the host thread (median and best round), for code that launches nothing.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence

import torch

L2_FLUSH_BYTES = 256 << 20          # larger than the L2 of every current GPU (H100: 50 MB)
HOST_COVER_CYCLES = 2_000_000       # GPU sleep before each repetition: ~1 ms at 1.8 GHz


def _reps(estimate_ms: float, budget_ms: float, min_reps: int, max_reps: int) -> int:
    return int(max(min_reps, min(max_reps, budget_ms / max(estimate_ms, 1e-3))))


def device_ms(fn: Callable[[], object], warmup: int = 5, min_reps: int = 100, max_reps: int = 1000,
              budget_ms: float = 2000.0) -> float:
    """Median device time of ``fn()`` in milliseconds, cold L2 at every repetition."""
    flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device="cuda")
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    n = _reps(start.elapsed_time(end), budget_ms, min_reps, max_reps)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for s, e in zip(starts, ends):
        flush.zero_()
        torch.cuda._sleep(HOST_COVER_CYCLES)
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


def graph_ms(calls: Sequence[Callable[[], object]], warmup: int = 3, reps: int = 50) -> float:
    """Median time per call, in milliseconds, of ``calls`` captured together in one CUDA graph."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):                       # warm-up (compiles, allocator) off the capture
        for _ in range(warmup):
            for fn in calls:
                fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for fn in calls:
            fn()
    for _ in range(warmup):
        graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / len(calls))
    return statistics.median(times)


def rotations(nbytes: int, l2_bytes: int, limit: int = 32) -> int:
    """Number of input sets whose total size is at least twice the L2 (at most ``limit``)."""
    return max(1, min(limit, -(-2 * l2_bytes // max(nbytes, 1))))


def host_us(fn: Callable[[], object], warmup: int = 50, rounds: int = 15, per_round: int = 200) -> tuple[float, float]:
    """(median, best) over ``rounds`` of the mean time of ``fn()`` in microseconds, as CPU time of the
    calling thread: for host work that launches nothing (or only on the host) it equals the wall time on
    an idle machine, and other processes sharing the cores do not inflate it. The best round is the one
    least disturbed (caches, frequency)."""
    for _ in range(warmup):
        fn()
    means = []
    for _ in range(rounds):
        t0 = time.thread_time()
        for _ in range(per_round):
            fn()
        means.append((time.thread_time() - t0) / per_round * 1e6)
    return statistics.median(means), min(means)
