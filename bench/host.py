"""``python -m bench host``: host time of everything in front of a kernel launch, per operator call.

The compiled-kernel path is measured on any machine: plans are made for compiled kernels
(``npu_kernels.device.forced_execution``) and launches run in ``npu_kernels.launcher.dry_run``: all of
their host work but the driver's launch call (a traced plan's guard and compiled kernel; otherwise
Triton's argument binding, specialisation key and kernel lookup). So a call costs exactly the Python
entry point, the plan cache lookup, the per-call validation and parameter block, output allocation, the
task, its eager submission (the block's device copy: a CPU copy here) and the launch's host work.
Without a GPU the kernels are bound for sm_90 in a compile-only child process (Triton interprets in
this one; the first call of each kernel compiles it). Outputs are served from a per-shape cache
(``recording``). Per case:

- ``first``: a call whose signature is new (plan caches emptied before each): full validation, planning
  and tracing the launches, through Triton's launch path;
- ``cached``: the same call again (the layers of one serving step: same lengths);
- ``new lengths``: a cached signature with other lengths each time (validated and packed anew);
- ``update``: a task update on the host backend, per operator: a task group of ``LAYERS`` calls captured
  in one graph, all updated between one ``graph_task_update_begin``/``end`` with new lengths;
- ``views``: the same update passing other tensor objects that view the captured tensors' memory (vLLM
  keeps weak references to a captured call's tensors and updates with those);
- ``groups``: the same calls each captured in a task group of its own and updated between its own
  ``graph_task_update_begin``/``end`` (vLLM-Ascend's update loop, less its event records).

Targets: cached ≤ 15 µs, update ≤ 5 µs per operator. Tensor contents are never read.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from contextlib import contextmanager

import torch

import runtime
from npu_kernels import aot, alloc, caches, launcher, tasks
from npu_kernels.device import forced_execution, interpreted
from npu_kernels.env import compile_only

from . import inputs, results, timing
from .cases import IFA, Case, select
from .progress import progress

CACHED_TARGET_US = 15.0
UPDATE_TARGET_US = 5.0
LAYERS = 32
BIND_ARCH = 90          # the target a compile-only measurement binds for


@contextmanager
def recording():
    """Plans for compiled kernels, launches recorded (dropped), tasks submitted eagerly; outputs come from
    a per-shape cache, as the CUDA caching allocator serves them on a GPU (a CPU allocation of a large
    output maps fresh pages every time)."""
    cache: dict = {}
    real_empty = alloc.empty

    def cached(shape, dtype, device):
        key = (tuple(shape), dtype, str(device))
        if key not in cache:
            cache[key] = real_empty(shape, dtype, device)
        return cache[key]

    binds = not interpreted()        # interpreted kernels (tests in this process) have no launch path to run
    previous_recorder = launcher.set_recorder(None if binds else lambda kernel, grid, args, options: None)
    previous_submitter = tasks.set_submitter(None)
    alloc.empty = cached
    caches.release()
    try:
        target = aot.compile_only_target(BIND_ARCH) if binds and compile_only() else contextlib.nullcontext()
        with forced_execution("compiled"), launcher.dry_run(), target:
            yield
    finally:
        caches.release()                       # plans made inside are for compiled kernels
        alloc.empty = real_empty
        launcher.set_recorder(previous_recorder)
        tasks.set_submitter(previous_submitter)


def _lengths(case: Case, kwargs: dict) -> tuple[dict, dict]:
    """The call's keyword arguments with two different sets of kv lengths."""
    name = "actual_seq_lengths" if case.op == IFA else "actual_seq_lengths_kv"
    full = case.kv_lengths()
    return {**kwargs, name: full}, {**kwargs, name: [max(1, n - 1) for n in full]}


def _views(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Other tensor objects viewing the same memory (as vLLM passes its weak references to an update)."""
    def view(t):
        return t.view(t.shape) if isinstance(t, torch.Tensor) else t
    return tuple(map(view, args)), {k: view(v) for k, v in kwargs.items()}


def _update_us(op, call, a: dict, b: dict, rounds: int, views: bool = False, groups: bool = False) -> float:
    """µs per operator of a task update on the host backend (``LAYERS`` calls in one task group); ``views``:
    the updates pass other tensor objects viewing the captured tensors' memory; ``groups``: each call in a
    task group of its own, updated between its own begin and end (vLLM-Ascend's update loop, without its
    event records)."""
    args, turn = call.args, [a, b]
    if views:
        args, a_views = _views(args, a)
        turn = [a_views, {k: a_views[k] if isinstance(v, torch.Tensor) else v for k, v in b.items()}]
    previous, submitter = runtime.set_backend("host"), tasks.set_submitter(runtime.tasks.submit)
    per_group = 1 if groups else LAYERS
    try:
        g = runtime.NPUGraph()
        s, u = runtime.Stream(), runtime.Stream()
        with runtime.graph(g, stream=s):
            handles = []
            for _ in range(LAYERS // per_group):
                runtime.graph_task_group_begin(s)
                for _ in range(per_group):
                    op(*call.args, **a)
                handles.append(runtime.graph_task_group_end(s))

        def update() -> None:
            kw = turn[0]
            turn.reverse()
            with runtime.stream(u):
                for handle in handles:
                    runtime.graph_task_update_begin(u, handle)
                    for _ in range(per_group):
                        op(*args, **kw)
                    runtime.graph_task_update_end(u)
            u.synchronize()

        total, _ = timing.host_us(update, warmup=2, rounds=rounds, per_round=5)
        return total / LAYERS
    finally:
        tasks.set_submitter(submitter)
        runtime.set_backend(previous)


def measure(nk, case: Case, rounds: int = 15, per_round: int = 200) -> dict:
    row = {"case": case.name, "suite": case.suite, "op": case.op, "B": case.B, "N": case.N, "KV_N": case.KV_N,
           "S1": case.S1, "S2": case.S2, "D": case.D, "sparse_mode": case.sparse_mode,
           "block_size": case.block_size, "kv_int8": case.kv_int8}
    op = getattr(nk, case.op)
    call, _ = inputs.make(case, nk.npu_device(), values=False)
    a, b = _lengths(case, call.kwargs)
    with recording():
        def first():
            caches.release()
            op(*call.args, **a)

        row["first_us"], _ = timing.host_us(first, rounds=rounds, per_round=max(1, per_round // 20))
        row["cached_us"], row["cached_us_best"] = timing.host_us(lambda: op(*call.args, **a), rounds=rounds,
                                                                 per_round=per_round)
        turn = [a, b]

        def new_lengths():
            kw = turn[0]
            turn.reverse()
            op(*call.args, **kw)

        row["new_lengths_us"], _ = timing.host_us(new_lengths, rounds=rounds, per_round=per_round)
        row["update_us"] = _update_us(op, call, a, b, rounds)
        row["update_views_us"] = _update_us(op, call, a, b, rounds, views=True)
        row["update_groups_us"] = _update_us(op, call, a, b, rounds, groups=True)
    row.update(status="ok", cached_within_target=row["cached_us"] <= CACHED_TARGET_US,
               update_within_target=row["update_us"] <= UPDATE_TARGET_US, note="")
    return row


HOST_FIA = ("fia-fp16-d128-b4-s4k-causal", "fia-bf16-d128-h32x8-b8-kv4k", "fia-fp16-d128-h32x8-b8-kv4k-int8kv")


def default_cases() -> list[Case]:
    """The quick prefill, decode and int8 cases, and fused-operator prefill, decode and int8 ones."""
    quick = [c for suite in ("prefill", "decode", "int8") for c in select(suite, quick=True)]
    return quick + [c for c in select("all") if c.name in HOST_FIA]


def run(cases: list[Case], rounds: int = 15, per_round: int = 200) -> list[dict]:
    import npu_kernels as nk

    return [measure(nk, c, rounds, per_round) for c in progress(cases, len(cases), "bench host")]


def table(rows: list[dict]) -> str:
    lines = [f"{'case':44} {'first':>8} {'cached':>8} {'best':>7} {'new len':>8} {'update':>8} {'views':>6} "
             f"{'groups':>6}  note"]
    for r in rows:
        def f(key):
            return format(r[key], ".1f") if key in r else ""
        over = [f"cached over {CACHED_TARGET_US:.0f} µs" for _ in [0] if not r.get("cached_within_target", True)]
        over += [f"update over {UPDATE_TARGET_US:.0f} µs" for _ in [0] if not r.get("update_within_target", True)]
        lines.append(f"{r['case']:44} {f('first_us'):>8} {f('cached_us'):>8} {f('cached_us_best'):>7} "
                     f"{f('new_lengths_us'):>8} {f('update_us'):>8} {f('update_views_us'):>6} "
                     f"{f('update_groups_us'):>6}  "
                     f"{'; '.join([r['note'], *over]).strip('; ')}")
    return "\n".join(lines)


def main(suite: str, quick: bool, match: str = "", out_dir=None, rounds: int = 15, per_round: int = 200) -> int:
    if interpreted():                # no GPU: measure in a compile-only child, where the kernels bind for sm_90
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env["NPUK_COMPILE_ONLY"] = "1"
        args = ["host", "--suite", suite, "--match", match, "--rounds", str(rounds), "--per-round", str(per_round)]
        args += ["--quick"] * quick + (["--out", str(out_dir)] if out_dir else [])
        return subprocess.call([sys.executable, "-m", "bench", *args], env=env)
    cases = default_cases() if suite == "default" else select(suite, quick, match)
    cases = [c for c in cases if match in c.name and not c.graph]
    rows = run(cases, rounds, per_round)
    env = results.environment()
    jpath, cpath = results.write("host", rows, env, out_dir)
    print(f"host µs per call in front of the launch (compiled-kernel path up to the driver's launch call: "
          f"a traced plan's launch, or Triton's argument binding) on {env['cpu']}, "
          f"torch {env['torch']}; median of {rounds} rounds (cached: also the best); update: per operator of "
          f"{LAYERS} in a task group; load average {env['load_avg_1min']} on {env['cpus']} CPUs")
    print(table(rows))
    print(f"wrote {jpath} and {cpath}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1
