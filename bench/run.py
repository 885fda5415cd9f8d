"""``python -m bench run``: correctness check, then timings of our kernels and the baselines, on a GPU.

Per case: the operator must exist (else "operator not available"); its output must match the golden
reference on a slice of the case (else the case is reported as failed and not timed); then our kernel
and each baseline are timed in this process. Prefill: CUDA events around each call after an L2 flush,
median of >= 100 repetitions. Decode: CUDA-graph replay over rotating input sets (together at least
twice the L2). Graph suite: eager host and device time per call, graph replay per call, task update
per task. Rows carry FLOPs (FA3 definition), bytes, TFLOP/s, TB/s and the roofline.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
import time
from typing import Callable, Optional

import torch

from . import baselines, inputs, results, timing
from .cases import FIA, PFA, Case, select
from .flops import peaks, roofline_s
from .progress import progress

NO_GPU = ("bench run needs a CUDA device: torch.cuda.is_available() is False on this machine, so nothing "
          "was measured. 'python -m bench report' and 'python -m bench host' run without a GPU.")


def main(suite: str, quick: bool, match: str = "", out_dir=None) -> int:
    if not torch.cuda.is_available():
        print(NO_GPU, file=sys.stderr)
        return 2
    import npu_kernels as nk

    if nk.npu_device().type != "cuda":
        print(f"bench run needs the npu device to be CUDA, it is {nk.npu_device()} (check NPUK_DEVICE)",
              file=sys.stderr)
        return 2
    cases = select(suite, quick, match)
    env = results.environment()
    env["peak_flops"], env["peak_bw"] = peaks(env["gpu"])
    env["l2_bytes"] = torch.cuda.get_device_properties(0).L2_cache_size
    rows = []
    for case in progress(cases, len(cases), f"bench {suite}"):
        rows.extend(run_case(nk, case, env))
        torch.cuda.empty_cache()
    compare(rows)
    jpath, cpath = results.write(f"run-{suite}{'-quick' if quick else ''}", rows, env, out_dir)
    print(table(rows))
    print(f"wrote {jpath} and {cpath}")
    failed = [r["case"] for r in rows if r["status"] == "failed"]
    if failed:
        print(f"{len(failed)} case(s) failed the correctness check: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def _row(case: Case, impl: str, status: str, note: str = "", **values) -> dict:
    return {"case": case.name, "suite": case.suite, "series": case.series, "op": case.op, "impl": impl,
            "status": status, "note": note, "B": case.B, "N": case.N, "KV_N": case.KV_N, "S1": case.S1,
            "S2": case.S2, "D": case.D, "Dv": case.dv, "dtype": str(case.dtype).replace("torch.", ""),
            "sparse_mode": case.sparse_mode, "pre": case.pre, "next": case.next, "block_size": case.block_size,
            "kv_int8": case.kv_int8, "compare_to": case.compare_to, **values}


def _measured(case: Case, ms: float, env: dict, method: str) -> dict:
    f, b = case.flops(), case.bytes()
    s = ms * 1e-3
    roof = roofline_s(f, b, env["peak_flops"], env["peak_bw"])
    return {"time_us": ms * 1e3, "flops": f, "bytes": b, "tflops": f / s / 1e12, "tbps": b / s / 1e12,
            "roofline_us": None if roof is None else roof * 1e6,
            "pct_roofline": None if roof is None else 100 * roof / s, "timing": method}


class Timer:
    """How cases are timed: ``device_ms`` (events, cold L2) and ``graph_ms`` (graph replay)."""

    device_ms = staticmethod(timing.device_ms)
    graph_ms = staticmethod(timing.graph_ms)


def run_case(nk, case: Case, env: dict, device=None, timer=Timer) -> list[dict]:
    """Rows of one case: ours, then each baseline. ``env`` needs ``peak_flops``, ``peak_bw``, ``l2_bytes``."""
    device = torch.device("cuda") if device is None else device
    if not hasattr(nk, case.op) or not hasattr(nk.reference, case.op):
        return [_row(case, "ours", "skipped", f"operator not available: npu_kernels.{case.op}")]
    op = getattr(nk, case.op)

    def run(c: inputs.Call):
        return op(*c.args, **c.kwargs)

    try:
        call, problem = inputs.make(case, device)
        error = inputs.check(case, call, run, lambda c: getattr(nk.reference, case.op)(*c.args, **c.kwargs))
    except NotImplementedError as exc:
        return [_row(case, "ours", "skipped", f"not implemented: {exc}")]
    except (ValueError, TypeError, RuntimeError) as exc:     # torch.cuda.OutOfMemoryError is a RuntimeError
        error = f"{type(exc).__name__}: {exc}"
    if error is not None:
        return [_row(case, "ours", "failed", f"correctness: {error}")]
    if case.graph:
        return [_graph_case(nk, case, op, call, env)]
    if case.decode:
        sets = [(call, problem)] + [inputs.make(case, device, seed=r)
                                    for r in range(1, timing.rotations(case.bytes(), env["l2_bytes"]))]
        method = f"graph replay, {len(sets)} rotating input sets"

        def measure(fns: list[Callable]) -> float:
            return timer.graph_ms(fns)
    else:
        sets = [(call, problem)]
        method = "events, cold L2, median"

        def measure(fns: list[Callable]) -> float:
            return timer.device_ms(fns[0])

    rows = [_row(case, "ours", "ok", **_measured(case, measure([functools.partial(run, c) for c, _ in sets]),
                                                  env, method))]
    for name in case.baselines:
        try:
            fns = [baselines.prepare(name, p) for _, p in sets]
            rows.append(_row(case, name, "ok", **_measured(case, measure(fns), env, method)))
        except baselines.Unsupported as exc:
            rows.append(_row(case, name, "unsupported", str(exc)))
        except (RuntimeError, ValueError, TypeError) as exc:
            rows.append(_row(case, name, "error", f"{type(exc).__name__}: {str(exc)[:300]}"))
    return rows


def _graph_case(nk, case: Case, op, call: inputs.Call, env: dict) -> dict:
    """Eager host/device time per call, graph replay per call, and (``update``) task update per task."""
    def one():
        return op(*call.args, **call.kwargs)

    n = 200
    for _ in range(10):
        one()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t0 = time.perf_counter()
    start.record()
    for _ in range(n):
        one()
    end.record()
    host = (time.perf_counter() - t0) / n * 1e6
    torch.cuda.synchronize()
    values = {"host_us": host, "eager_us": start.elapsed_time(end) / n * 1e3, "layers": case.layers}
    if case.graph == "replay":
        values["replay_us"] = timing.graph_ms([one] * case.layers) * 1e3
        return _row(case, "ours", "ok", **values)
    if importlib.util.find_spec("runtime.backends.cuda") is None:
        return _row(case, "ours", "skipped", "task update needs the runtime's CUDA backend (runtime.backends.cuda)",
                    **values)
    update_us, replay_us, error = _task_update(nk, case, op, call)
    values.update(update_us=update_us, replay_us=replay_us)
    if error:
        return _row(case, "ours", "failed", error, **values)
    return _row(case, "ours", "ok", **values)


def updated_lengths(case: Case, call: inputs.Call) -> dict:
    """``call``'s keyword arguments with every length 7 shorter (at least 1): what a task update sets."""
    key = "actual_seq_lengths_kv" if case.op == FIA else "actual_seq_lengths"    # PFA: query, IFA: kv
    full = call.kwargs.get(key) or [case.S1 if case.op == PFA else case.S2] * case.B
    return dict(call.kwargs, **{key: [max(1, x - 7) for x in full]})


def capture_and_update(rt, op, call: inputs.Call, shorter: dict, layers: int, reps: int):
    """Capture ``layers`` calls of ``op``, one task group each, then update every task to ``shorter``
    ``reps`` times from a side stream. Returns (graph, captured outputs, host µs per task update)."""
    g = rt.NPUGraph()
    outs, handles = [], []
    with rt.graph(g):
        s = rt.current_stream()
        for _ in range(layers):
            rt.graph_task_group_begin(s)
            outs.append(op(*call.args, **call.kwargs))
            handles.append(rt.graph_task_group_end(s))
    u = rt.Stream()
    t0 = time.perf_counter()
    for _ in range(reps):
        with rt.stream(u):
            for h in handles:
                rt.graph_task_update_begin(u, h)
                op(*call.args, **shorter)
                rt.graph_task_update_end(u)
    update_us = (time.perf_counter() - t0) / (reps * layers) * 1e6
    rt.synchronize()
    return g, outs, update_us


def _task_update(nk, case: Case, op, call: inputs.Call) -> tuple[float, float, Optional[str]]:
    """Task update per task (host µs), replay per call (device µs), and layer 0 against an eager call."""
    import runtime as rt

    shorter = updated_lengths(case, call)
    g, outs, update_us = capture_and_update(rt, op, call, shorter, case.layers, reps=20)
    g.replay()
    rt.synchronize()
    expected = call.out(op(*call.args, **shorter))
    error = None if torch.equal(call.out(outs[0]), expected) else "graph output after task update differs from eager"
    times = []
    for _ in range(20):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        g.replay()
        end.record()
        rt.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / case.layers)
    times.sort()
    return update_us, times[len(times) // 2], error


def compare(rows: list[dict]) -> None:
    """Add to our rows ``rel_to_compare`` (our TFLOP/s over ours on the case named by ``compare_to``),
    ``best_baseline`` and ``vs_best_baseline`` (the fastest baseline's time over ours)."""
    ours = {r["case"]: r for r in rows if r["impl"] == "ours" and r["status"] == "ok"}
    for r in rows:
        other = ours.get(r.get("compare_to") or "")
        if r["impl"] == "ours" and r["status"] == "ok" and other and r.get("tflops") and other.get("tflops"):
            r["rel_to_compare"] = r["tflops"] / other["tflops"]
    for name, mine in ours.items():
        timed = [r for r in rows if r["case"] == name and r["impl"] != "ours" and r["status"] == "ok"]
        if timed and mine.get("time_us"):
            best = min(timed, key=lambda r: r["time_us"])
            mine["best_baseline"] = best["impl"]
            mine["vs_best_baseline"] = best["time_us"] / mine["time_us"]


def _fmt(x, spec: str) -> str:
    """``x`` formatted with ``spec`` ("10.1f"), or blanks of the same width when absent."""
    return " " * int(spec.split(".")[0]) if x is None else format(x, spec)


def table(rows: list[dict]) -> str:
    """Plain-text summary: one line per (case, implementation); for ours, the fastest baseline's time
    over ours (x base) and our TFLOP/s over the compared case's (x cmp)."""
    lines = [f"{'case':44} {'impl':15} {'status':11} {'us':>10} {'TFLOP/s':>8} {'TB/s':>6} {'%roof':>6} "
             f"{'x base':>6} {'x cmp':>6}  note"]
    for r in rows:
        us = r.get("time_us", r.get("replay_us"))
        lines.append(f"{r['case']:44} {r['impl']:15} {r['status']:11} {_fmt(us, '10.1f')} "
                     f"{_fmt(r.get('tflops'), '8.1f')} {_fmt(r.get('tbps'), '6.2f')} "
                     f"{_fmt(r.get('pct_roofline'), '6.1f')} {_fmt(r.get('vs_best_baseline'), '6.2f')} "
                     f"{_fmt(r.get('rel_to_compare'), '6.2f')}  {r['note']}")
    return "\n".join(lines)
