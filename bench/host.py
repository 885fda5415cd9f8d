"""``python -m bench host``: host time per call of everything an operator does before its launch.

Every operator ends in ``npu_kernels.tasks.submit``; here the submitter records the task instead of
launching it, so one call costs exactly validate + output allocation + plan + building the task, the
host work that precedes every launch (target: <= 30 µs). Output allocation is served from a cache, as
the CUDA caching allocator serves it on a GPU. For the prompt operator, validate and plan are also
timed on their own. Runs on any machine; tensor contents are never read.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager

from npu_kernels import alloc, tasks

from . import inputs, results, timing
from .progress import progress
from .cases import PFA, Case, select

TARGET_US = 30.0


@contextmanager
def recording(sink: list):
    """Tasks go to ``sink`` instead of the device; outputs come from a per-shape cache."""
    cache: dict = {}
    real_empty = alloc.empty

    def cached(shape, dtype, device):
        key = (tuple(shape), dtype, str(device))
        if key not in cache:
            cache[key] = real_empty(shape, dtype, device)
        return cache[key]

    previous = tasks.set_submitter(sink.append)
    alloc.empty = cached
    try:
        yield
    finally:
        tasks.set_submitter(previous)
        alloc.empty = real_empty


def measure(nk, case: Case, rounds: int = 15, per_round: int = 200) -> dict:
    row = {"case": case.name, "suite": case.suite, "op": case.op, "B": case.B, "N": case.N, "KV_N": case.KV_N,
           "S1": case.S1, "S2": case.S2, "D": case.D, "sparse_mode": case.sparse_mode,
           "block_size": case.block_size, "kv_int8": case.kv_int8}
    if not hasattr(nk, case.op):
        return {**row, "status": "skipped", "note": f"operator not available: npu_kernels.{case.op}"}
    op = getattr(nk, case.op)
    call, _ = inputs.make(case, nk.npu_device(), values=False)
    sink: list = []
    with recording(sink):
        try:
            op(*call.args, **call.kwargs)
        except NotImplementedError as exc:
            return {**row, "status": "skipped", "note": f"not implemented: {exc}"}
        if not sink or sink[-1].op != case.op:
            return {**row, "status": "failed", "note": "the call submitted no task of its operator"}
        per_call = len(sink)
        row["host_us"], row["host_us_best"] = timing.host_us(lambda: op(*call.args, **call.kwargs), rounds=rounds,
                                                             per_round=per_round)
        if case.op == PFA:
            from npu_kernels.ops import prompt

            validated = prompt.validate(*call.args, **call.kwargs)
            out = prompt.output(validated)
            row["validate_us"], _ = timing.host_us(lambda: prompt.validate(*call.args, **call.kwargs),
                                                   rounds=rounds, per_round=per_round)
            row["plan_us"], _ = timing.host_us(lambda: prompt.plan(validated, out, None),
                                               rounds=rounds, per_round=per_round)
    row.update(status="ok", tasks_per_call=per_call, within_target=row["host_us_best"] <= TARGET_US, note="")
    return row


def default_cases() -> list[Case]:
    """The quick prefill, decode and int8 cases."""
    return [c for suite in ("prefill", "decode", "int8") for c in select(suite, quick=True)]


def run(cases: list[Case], rounds: int = 15, per_round: int = 200) -> list[dict]:
    import npu_kernels as nk

    return [measure(nk, c, rounds, per_round) for c in progress(cases, len(cases), "bench host")]


def table(rows: list[dict]) -> str:
    lines = [f"{'case':44} {'status':8} {'host us':>8} {'best':>7} {'validate':>9} {'plan':>7}  note"]
    for r in rows:
        def f(key):
            return format(r[key], ".1f") if key in r else ""
        flag = "" if r.get("within_target", True) else f"  over the {TARGET_US:.0f} µs target"
        lines.append(f"{r['case']:44} {r['status']:8} {f('host_us'):>8} {f('host_us_best'):>7} {f('validate_us'):>9} "
                     f"{f('plan_us'):>7}"
                     f"  {r['note']}{flag}")
    return "\n".join(lines)


def main(suite: str, quick: bool, match: str = "", out_dir=None, rounds: int = 15, per_round: int = 200) -> int:
    cases = default_cases() if suite == "default" else select(suite, quick, match)
    cases = [c for c in cases if match in c.name and not c.graph]
    rows = run(cases, rounds, per_round)
    env = results.environment()
    jpath, cpath = results.write("host", rows, env, out_dir)
    print(f"host time per call (validate + plan + task, launch excluded) on {env['gpu']}, torch {env['torch']}; "
          f"µs, median and best of the rounds; load average {env['load_avg_1min']} on {env['cpus']} CPUs")
    print(table(rows))
    print(f"wrote {jpath} and {cpath}")
    failed = [r for r in rows if r["status"] == "failed"]
    for r in failed:
        print(f"{r['case']}: {r['note']}", file=sys.stderr)
    return 1 if failed else 0

