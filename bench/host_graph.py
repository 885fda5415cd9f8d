"""``python -m bench graph-host``: the host backend's own cost (runs on any machine, no GPU).

Per recorded aten op: eager issue, capture and replay of a chain of small in-place ops. A decode step of
``LAYERS`` incremental-attention calls captured in one task group: a task update of all of them (new kv
lengths) against re-capturing the same graph. The shapes are tiny, so the numbers are host work, not
kernel time.
"""

from __future__ import annotations

import time

import torch

from . import results, timing

OPS_PER_GRAPH = 64
LAYERS = 32


def _chain(x: torch.Tensor) -> None:
    for _ in range(OPS_PER_GRAPH):
        x.add_(1)


def measure(rounds: int = 5, per_round: int = 20) -> list[dict]:
    import npu_kernels as nk
    import runtime

    previous = runtime.set_backend("host")
    try:
        dev = torch.device("cpu")
        x = torch.zeros(8, device=dev)
        eager, _ = timing.host_us(lambda: _chain(x), warmup=2, rounds=rounds, per_round=per_round)

        def capture() -> "runtime.NPUGraph":
            g = runtime.NPUGraph()
            with runtime.graph(g, stream=runtime.Stream()):
                _chain(x)
            return g

        graph = capture()
        cap, _ = timing.host_us(capture, warmup=1, rounds=rounds, per_round=per_round)
        replay, _ = timing.host_us(lambda: (graph.replay(), runtime.synchronize()), warmup=2, rounds=rounds,
                                   per_round=per_round)

        q = torch.randn(1, 2, 1, 16, device=dev).half()
        k = torch.randn(1, 2, 32, 16, device=dev).half()
        kw = dict(num_heads=2, input_layout="BNSD", scale_value=0.25)
        s, u = runtime.Stream(), runtime.Stream()

        def attention_graph():
            g = runtime.NPUGraph()
            with runtime.graph(g, stream=s):
                runtime.graph_task_group_begin(s)
                for _ in range(LAYERS):
                    nk.npu_incre_flash_attention(q, k, k, actual_seq_lengths=[16], **kw)
                handle = runtime.graph_task_group_end(s)
            return g, handle

        g, handle = attention_graph()
        lengths = iter(range(10**9))

        def update() -> None:
            n = [1 + next(lengths) % 32]
            with runtime.stream(u):
                runtime.graph_task_update_begin(u, handle)
                for _ in range(LAYERS):
                    nk.npu_incre_flash_attention(q, k, k, actual_seq_lengths=n, **kw)
                runtime.graph_task_update_end(u)
            u.synchronize()

        upd, _ = timing.host_us(update, warmup=2, rounds=rounds, per_round=per_round)
        recap, _ = timing.host_us(attention_graph, warmup=1, rounds=rounds, per_round=per_round)
        del g
    finally:
        runtime.set_backend(previous)
    return [
        {"case": "eager issue", "unit": "µs per op", "value": eager / OPS_PER_GRAPH},
        {"case": "capture", "unit": "µs per recorded op", "value": cap / OPS_PER_GRAPH},
        {"case": "replay", "unit": "µs per replayed op", "value": replay / OPS_PER_GRAPH},
        {"case": f"task update of {LAYERS} incremental-attention calls", "unit": "µs per task", "value": upd / LAYERS},
        {"case": "re-capture of the same graph", "unit": "µs per task", "value": recap / LAYERS},
        {"case": "re-capture / task update", "unit": "ratio", "value": recap / upd},
    ]


def main(out_dir=None, rounds: int = 5, per_round: int = 20) -> int:
    start = time.perf_counter()
    rows = measure(rounds, per_round)
    env = results.environment()
    jpath, cpath = results.write("graph-host", rows, env, out_dir)
    print(f"host backend overhead (median of {rounds} rounds; load average {env['load_avg_1min']} on "
          f"{env['cpus']} CPUs; {time.perf_counter() - start:.0f} s)")
    for r in rows:
        print(f"{r['case']:40} {r['value']:10.1f} {r['unit']}")
    print(f"wrote {jpath} and {cpath}")
    return 0
