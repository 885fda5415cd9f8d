"""``python -m bench cpu``: the operators on the CPU execution path against torch SDPA on the same CPU.

Cases (``cases``):

- prefill, ``nk.npu_prompt_flash_attention`` (BNSD): B ∈ {1, 4}; 8/8 and 32/8 (GQA) heads; S ∈ {256, 1024,
  4096}; D ∈ {64, 128}; no mask, causal (sparse mode 3) and a band (sparse mode 4: ``BAND`` keys back, none
  ahead); float16 (the operator's default precision there is the NPU's fp16 high-performance path, which
  the CPU path emulates) and bfloat16 (float32 math);
- decode: B ∈ {1, 8}; 32/8 heads, D = 128; KV ∈ {1k, 8k, 32k}; contiguous (``nk.npu_incre_flash_attention``)
  and paged in blocks of 128 (``nk.npu_fused_infer_attention_score``); float16 and bfloat16.

Baseline: ``torch.nn.functional.scaled_dot_product_attention`` on float32 copies of the same inputs
(causal: ``is_causal``; band: a boolean mask; GQA: ``enable_gqa``). A case first compares the operator's
output with the baseline's (``err``: the largest error in units of the dtype's tolerance), then runs the
operator and the baseline in turn: the ratio is the median of the per-pair time ratios, each time the
median of its runs; with one torch thread the times are the calling thread's CPU time (stable on a shared
machine; wall times are recorded too), else wall time. Peak memory: a 16k-token causal prefill (B=1, 8 heads,
D=128) in a new process, the growth of its peak resident set during the call (``peak_memory``). Results:
JSON and CSV under ``bench/results/`` named with the CPU model, and a PNG of the ratios beside them.

Threads: the fp16-path emulation runs many small operations, each a parallel region when torch has more
than one thread. On a CPU shared with other work, GNU OpenMP's default active wait then stalls every
region on a descheduled thread (measured here at a load of 4 on 2 cores: fp16 prefill S=1024 5.9 s, and
0.14 s with ``OMP_WAIT_POLICY=PASSIVE`` set before Python starts); ``--threads 1`` measures the work
itself (thread CPU time).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch

from . import results
from .progress import progress

BAND = 512
BLOCK = 128
MASK_SIDE = 2048
BUDGET_S = 30.0           # timed seconds per case beyond the first pair
MIN_S = 2.0               # timed seconds per case at least (more pairs for short calls)
MAX_PAIRS = 50
PEAK_TARGET_BYTES = 2 << 30


@dataclass(frozen=True)
class Case:
    kind: str                 # "prefill" or "decode"
    dtype: str
    B: int
    N: int
    KV_N: int
    S: int                    # query and key length (prefill) or keys (decode)
    D: int
    mode: str = "none"        # prefill: none, causal, band; decode: contiguous, paged

    @property
    def name(self) -> str:
        return f"{self.kind} {self.dtype} B={self.B} N={self.N}/{self.KV_N} S={self.S} D={self.D} {self.mode}"


def cases(quick: bool) -> list[Case]:
    dtypes = ("float16", "bfloat16")
    if quick:
        return ([Case("prefill", dt, 1, 8, 8, 256, 64, mode) for dt in dtypes for mode in ("none", "causal", "band")]
                + [Case("decode", dt, 1, 32, 8, 1024, 128, mode) for dt in dtypes for mode in ("contiguous", "paged")])
    prefill = [Case("prefill", dt, b, n, 8, s, d, mode) for dt in dtypes for b in (1, 4) for n in (8, 32)
               for s in (256, 1024, 4096) for d in (64, 128) for mode in ("none", "causal", "band")]
    decode = [Case("decode", dt, b, 32, 8, s, 128, mode) for dt in dtypes for b in (1, 8)
              for s in (1024, 8192, 32768) for mode in ("contiguous", "paged")]
    return prefill + decode


def _inputs(c: Case):
    """(ours, baseline): the operator call and the SDPA call on float32 copies of its inputs."""
    import torch.nn.functional as F

    import npu_kernels as nk

    g = torch.Generator().manual_seed(0)
    dt = getattr(torch, c.dtype)
    rows = 1 if c.kind == "decode" else c.S
    q = torch.randn(c.B, c.N, rows, c.D, generator=g).to(dt)
    k = torch.randn(c.B, c.KV_N, c.S, c.D, generator=g).to(dt)
    v = torch.randn(c.B, c.KV_N, c.S, c.D, generator=g).to(dt)
    qf, kf, vf = q.float(), k.float(), v.float()
    scale = c.D ** -0.5
    sdpa_kw = dict(scale=scale, enable_gqa=c.N != c.KV_N)
    heads = dict(num_heads=c.N, num_key_value_heads=c.KV_N, input_layout="BNSD")
    if c.kind == "decode":
        if c.mode == "contiguous":
            def ours():
                return nk.npu_incre_flash_attention(q, k, v, scale_value=scale, **heads)
        else:
            per_seq = c.S // BLOCK
            order = torch.randperm(c.B * per_seq, generator=g)
            table = order.reshape(c.B, per_seq).to(torch.int32)
            kc, vc = (torch.empty(c.B * per_seq, c.KV_N, BLOCK, c.D, dtype=dt) for _ in range(2))
            for cache, t in ((kc, k), (vc, v)):
                cache[order] = t.unflatten(2, (per_seq, BLOCK)).transpose(1, 2).flatten(0, 1)

            def ours():
                return nk.npu_fused_infer_attention_score(q, kc, vc, scale=scale, block_table=table, block_size=BLOCK,
                                                          actual_seq_lengths_kv=[c.S] * c.B, **heads)[0]
    else:
        kw = dict(scale_value=scale, **heads)
        triu = torch.ones(MASK_SIDE, MASK_SIDE, dtype=torch.bool).triu(1)
        if c.mode == "none":
            kw["next_tokens"] = 65535
        elif c.mode == "causal":
            kw.update(sparse_mode=3, atten_mask=triu)
            sdpa_kw["is_causal"] = True
        else:
            kw.update(sparse_mode=4, atten_mask=triu, pre_tokens=BAND, next_tokens=0)
            i, j = torch.arange(c.S)[:, None], torch.arange(c.S)[None, :]
            sdpa_kw["attn_mask"] = (j <= i) & (i - j <= BAND)

        def ours():
            return nk.npu_prompt_flash_attention(q, k, v, **kw)

    def baseline():
        return F.scaled_dot_product_attention(qf, kf, vf, **sdpa_kw)

    return ours, baseline


def _error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest |out - ref| in units of the dtype's tolerance (``nk.reference.tolerance``)."""
    import npu_kernels as nk

    atol, rtol = nk.reference.tolerance(out.dtype)
    return float(((out.float() - ref).abs() / (atol + rtol * ref.abs())).max())


def measure(c: Case, reps: int) -> dict:
    """At least ``reps`` pairs and ``MIN_S`` seconds, at most ``MAX_PAIRS`` pairs and, past the first pair,
    ``BUDGET_S`` seconds."""
    ours, baseline = _inputs(c)
    err = _error(ours(), baseline())
    clock = _clock()
    wall: list[tuple[float, float]] = []
    spent: list[tuple[float, float]] = []
    start = time.perf_counter()
    while len(wall) < MAX_PAIRS:
        elapsed = time.perf_counter() - start
        if wall and (elapsed > BUDGET_S or (len(wall) >= reps and elapsed > MIN_S)):
            break
        pair = []
        for fn in (ours, baseline):
            w0, c0 = time.perf_counter(), clock()
            fn()
            pair.append((time.perf_counter() - w0, clock() - c0))
        wall.append((pair[0][0], pair[1][0]))
        spent.append((pair[0][1], pair[1][1]))
    ratio = statistics.median(a / b for a, b in spent)
    return {**asdict(c), "case": c.name, "ours_ms": 1e3 * statistics.median(a for a, _ in spent),
            "sdpa_ms": 1e3 * statistics.median(b for _, b in spent), "ratio": ratio,
            "ours_wall_ms": 1e3 * statistics.median(a for a, _ in wall),
            "sdpa_wall_ms": 1e3 * statistics.median(b for _, b in wall), "pairs": len(wall), "err": err}


def _clock():
    """The timer of the ratios: with one torch thread the calling thread's CPU time (the work done, whatever
    else runs on the machine), else wall time."""
    return time.thread_time if torch.get_num_threads() == 1 else time.perf_counter


PEAK_SCRIPT = r"""
import json, os, sys, torch
os.environ["NPUK_CPU_KERNELS"] = "native"
import npu_kernels as nk
S, N, D, mode, threads, band = (int(x) for x in sys.argv[1:7])
dtype = getattr(torch, sys.argv[7])
torch.set_num_threads(threads)
q, k, v = (torch.randn(1, N, S, D, dtype=dtype) for _ in range(3))
triu = torch.ones(2048, 2048, dtype=torch.bool).triu(1)


def high_water_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))


with open("/proc/self/clear_refs", "w") as f:                # the peak resident set restarts from here
    f.write("5")
before = high_water_kib()
nk.npu_prompt_flash_attention(q, k, v, num_heads=N, input_layout="BNSD", scale_value=D ** -0.5, sparse_mode=mode,
                              atten_mask=triu, pre_tokens=band, next_tokens=0)
print(json.dumps({"growth_bytes": (high_water_kib() - before) * 1024, "peak_bytes": high_water_kib() * 1024}))
"""


def peak_memory(tokens: int, dtype: str, threads: int, heads: int = 8, dim: int = 128, mode: int = 3) -> dict:
    """Peak memory of one prefill of ``tokens`` tokens (B=1; sparse mode 3 causal, 4 the band) in a new
    process: its peak resident set (Linux ``VmHWM``) and the growth of it during the call."""
    root = Path(__file__).resolve().parent.parent
    args = [str(x) for x in (tokens, heads, dim, mode, threads, BAND, dtype)]
    proc = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, *args], cwd=root, capture_output=True, text=True,
                          timeout=3600)
    if proc.returncode:
        raise RuntimeError(f"peak memory run failed: {proc.stderr[-2000:]}")
    got = json.loads(proc.stdout.splitlines()[-1])
    what = "causal" if mode == 3 else "band"
    return {"kind": "memory", "dtype": dtype, "S": tokens, "N": heads, "D": dim, "mode": what,
            "case": f"memory {dtype} {what} prefill S={tokens} N={heads} D={dim}", **got,
            "ok": got["growth_bytes"] < PEAK_TARGET_BYTES}


def summary(rows: list[dict]) -> list[str]:
    """Geometric mean and maximum of the ratios per kind and dtype, and over all timed cases."""
    timed = [r for r in rows if "ratio" in r]
    groups = {(r["kind"], r["dtype"]) for r in timed}
    lines = []
    for key in sorted(groups) + [("all", "")]:
        rs = [r["ratio"] for r in timed if key == ("all", "") or (r["kind"], r["dtype"]) == key]
        if rs:
            gm = math.exp(sum(map(math.log, rs)) / len(rs))
            lines.append(f"{' '.join(key).strip():18} {len(rs):3} cases  geomean {gm:5.2f}x  max {max(rs):5.2f}x  "
                         f"over 2x: {sum(r > 2 for r in rs)}")
    return lines


def plot(rows: list[dict], env: dict, path: Path) -> Optional[Path]:
    """Ratio against the baseline's time, per case (log-log); None without matplotlib."""
    try:
        from .plot import _pyplot
        plt = _pyplot()
    except SystemExit:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for (kind, dtype), marker in zip(sorted({(r["kind"], r["dtype"]) for r in rows if "ratio" in r}), "osD^"):
        pts = [(r["sdpa_ms"], r["ratio"]) for r in rows if r.get("kind") == kind and r.get("dtype") == dtype]
        ax.scatter(*zip(*pts), marker=marker, s=18, label=f"{kind} {dtype}")
    for y, style in ((1.0, "-"), (2.0, "--")):
        ax.axhline(y, color="grey", linestyle=style, linewidth=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log", base=2)
    ax.set_xlabel(f"torch SDPA (float32) {env['timer']} per call, ms")
    ax.set_ylabel("ours / SDPA")
    ax.set_title(f"CPU execution path vs torch SDPA: {env['cpu']}, {env['threads']} threads\n"
                 f"torch {env['torch']}, git {env['git_sha']}, load avg {env['load_avg_1min']}", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(quick: bool = False, match: str = "", out_dir=None, threads: int = 0, reps: int = 3) -> int:
    os.environ["NPUK_CPU_KERNELS"] = "native"
    from npu_kernels.device import execution

    if execution(torch.device("cpu")) != "native":
        print("the CPU execution path is not available (NPUK_CPU_KERNELS=native is not honoured)", file=sys.stderr)
        return 2
    if threads:
        torch.set_num_threads(threads)
    todo = [c for c in cases(quick) if match in c.name]
    rows = [measure(c, reps) for c in progress(todo, len(todo), "cpu")]
    if not match:
        rows += [peak_memory(2048 if quick else 16384, dt, torch.get_num_threads()) for dt in ("float16", "bfloat16")]
    env = results.environment()
    env.update(gpu=env["cpu"], device="cpu", threads=torch.get_num_threads(),
               timer="thread CPU time" if _clock() is time.thread_time else "wall time")
    jpath, cpath = results.write("cpu", rows, env, out_dir)
    png = plot(rows, env, jpath.with_suffix(".png"))
    print(f"CPU execution path vs torch SDPA (float32) on {env['cpu']}, {env['threads']} threads ({env['timer']}), "
          f"torch {env['torch']}, load average {env['load_avg_1min']} on {env['cpus']} CPUs")
    for r in rows:
        if "ratio" in r:
            print(f"{r['case']:52} ours {r['ours_ms']:10.2f} ms  sdpa {r['sdpa_ms']:10.2f} ms  {r['ratio']:5.2f}x  "
                  f"err {r['err']:.2f} tol")
        else:
            print(f"{r['case']:52} grew by {r['growth_bytes'] / 2**20:7.1f} MiB during the call (target < "
                  f"{PEAK_TARGET_BYTES >> 20} MiB), process peak {r['peak_bytes'] / 2**20:7.1f} MiB")
    print("\n".join(summary(rows)))
    print(f"wrote {jpath}, {cpath}" + (f" and {png}" if png else ""))
    return 0
