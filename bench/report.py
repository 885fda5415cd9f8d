"""``python -m bench report``: the static kernel report, on any machine (no GPU needed).

Compiles every kernel variant that ``npu_kernels.aot.all_variants()`` lists exactly as the launcher
would (``aot.compile_launch``: the launch's own specialisation, constexprs and options), for sm_80 and
sm_90, in a subprocess where Triton is in compiled mode (``NPUK_COMPILE_ONLY=1``, ``TRITON_INTERPRET``
unset: interpret mode replaces the jitted functions the compiler needs) with an empty Triton cache.
Tabulates, per launched kernel and arch: registers, spills (and those inside the main loop), shared memory,
tensor-core instructions (wgmma / mma), the main loop's load kinds (TMA / cp.async / ldg) and barriers, and its SASS
instructions per warp per 32 keys (``npu_kernels.kernels.sass``): on its shortest path (no optional work: for the
mask variants an all-visible tile of the mask summary) and its longest (every optional step: a mixed tile).
Spills and variants that fail to compile or need more shared memory than the arch has (which fails at
launch) are flagged; a binary identical to an earlier row's (same cubin hash) is marked. Exit status 1 when
a variant fails to compile or does not fit.

Instruction counts are static: what the binary issues per loop iteration, not a measured speed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from . import results

ARCHS = (80, 90)
TIMEOUT_PER_COMPILE_S = 300
MAX_COMPILES = 160               # bounds the worker's total time when no names are given


def worker(archs: Sequence[int], names: Sequence[str]) -> None:
    """In the compile-only subprocess: one JSON line per (variant, launched kernel, arch)."""
    from npu_kernels import aot

    known = aot.all_variants()
    variants = [v for v in known if not names or v.name in names]
    unknown = sorted(set(names) - {v.name for v in known})
    compiles = sum(len(v.launches(arch)) for v in variants for arch in archs) + len(unknown) * len(archs)
    print(json.dumps({"compiles": compiles}), flush=True)
    for name in unknown:
        for arch in archs:
            print(json.dumps({"kernel": "?", "variant": name, "arch": arch,
                              "error": f"unknown variant (known: {', '.join(v.name for v in known)})"}), flush=True)
    for row in aot.rows(variants, archs):
        print(json.dumps(row), flush=True)


def compile_all(archs: Sequence[int] = ARCHS, names: Sequence[str] = ()) -> list[dict]:
    """Run ``worker`` in a compile-only subprocess and collect its rows; a worker that dies leaves a
    failure row naming its exit status and the end of its stderr."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["NPUK_COMPILE_ONLY"] = "1"
    cmd = [sys.executable, "-m", "bench.report", "--worker", "--arch", ",".join(map(str, archs))]
    if names:
        cmd += ["--variant", ",".join(names)]
    root = Path(__file__).resolve().parent.parent
    rows, expected = [], None
    with tempfile.TemporaryDirectory(prefix="bench-report-cache-") as cache:
        env["TRITON_CACHE_DIR"] = cache           # cold compiles: the compile time is not a cache hit
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=TIMEOUT_PER_COMPILE_S * (2 * len(names) * len(archs) or MAX_COMPILES))
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            err = f"timed out\n{err}"
    for line in out.splitlines():
        if not line.startswith("{"):
            continue
        data = json.loads(line)
        if "compiles" in data:
            expected = data["compiles"]
        else:
            rows.append(data)
    if proc.returncode != 0 or expected is None or len(rows) < (expected or 0):
        tail = " | ".join(err.strip().splitlines()[-3:])
        rows.append({"kernel": "?", "variant": "(compile worker)", "arch": 0,
                     "error": f"worker exited with {proc.returncode} after {len(rows)} of {expected} compiles: {tail}"})
    return rows


SHARED_LIMIT = {80: 166912, 90: 232448}      # bytes of shared memory a block may use (A100, H100/H200)


def status(row: dict) -> str:
    if row.get("error"):
        return "FAILED"
    if row["shared_bytes"] > SHARED_LIMIT.get(row["arch"], row["shared_bytes"]):
        return "SHARED"
    return "SPILLS" if row.get("spill_bytes") else "ok"


def _loop(r: dict) -> tuple[str, str, str, str]:
    """(instructions per 32 keys, load kinds, barriers, instructions per 32 keys on the longest path) of the
    main loop; dashes without one."""
    if not r.get("loop_keys"):
        return "-", "-", "-", "-"
    loads = " ".join(f"{k}:{v}" for k, v in r["loop_loads"].items() if v) or "none"
    return (f"{r['per_32_keys']:g} ({r['loop_instructions']} per {r['loop_keys']})", loads, str(r["loop_barriers"]),
            f"{r.get('longest_per_32_keys', 0):g}")


def markdown(rows: list[dict]) -> str:
    head = ("| kernel | variant | arch | blocks | warps/stages | registers | spill bytes | shared KiB "
            "| tensor cores | main loop: instr/warp per 32 keys | loop loads | loop barriers "
            "| longest path: instr/warp per 32 keys | status |")
    lines = [head, "|" + "---|" * 14]
    first: dict[str, str] = {}
    for r in rows:
        where = f"{r['kernel']}:{r['variant']}@sm_{r['arch']}"
        if r.get("error"):
            lines.append(f"| {r['kernel']} | {r['variant']} | sm_{r['arch']} | | | | | | | | | | | "
                         f"**FAILED**: {r['error'].splitlines()[0][:160]} |")
            continue
        same = first.setdefault(r["cubin_sha256"], where)
        note = f" (same binary as {same})" if same != where else ""
        spill = f"**{r['spill_bytes']}** ({r['loop_spill_bytes']} in loop)" if r["spill_bytes"] else "0"
        cores = f"{r['tensor_cores']} ×{r['mma']}" if r["tensor_cores"] else "none"
        loop, loads, bars, longest = _loop(r)
        lines.append(f"| {r['kernel']} | {r['variant']} | sm_{r['arch']} | {r.get('blocks', '')} "
                     f"| {r['num_warps']}/{r['num_stages']} | {r['registers']} | {spill} "
                     f"| {r['shared_bytes'] / 1024:.1f} | {cores} | {loop} | {loads} | {bars} | {longest} "
                     f"| {status(r).replace('SPILLS', '**SPILLS**').replace('SHARED', '**SHARED MEMORY**')}{note} |")
    return "\n".join(lines)


def main(archs: Sequence[int] = ARCHS, names: Sequence[str] = (), out_dir: Optional[Path] = None) -> int:
    rows = compile_all(archs, names)
    for r in rows:
        r["status"] = status(r)
    env = results.environment()
    jpath, cpath = results.write("report", rows, env, out_dir)
    text = markdown(rows)
    jpath.with_suffix(".md").write_text(
        f"Static kernel report: git {env['git_sha']}, torch {env['torch']}, triton {env['triton']}, "
        f"compiled on {env['gpu']}\n\n{text}\n")
    print(text)
    spills = [f"{r['kernel']}:{r['variant']}@sm_{r['arch']}" for r in rows if r["status"] == "SPILLS"]
    failed = [f"{r['kernel']}:{r['variant']}@sm_{r['arch']}" for r in rows if r["status"] in ("FAILED", "SHARED")]
    print(f"{len(rows)} compiles: {len(failed)} failed or over the shared memory limit, {len(spills)} with spills"
          + (f" ({', '.join(spills)})" if spills else ""))
    print(f"wrote {jpath}, {cpath} and {jpath.with_suffix('.md')}")
    if failed:
        print(f"failed to compile or to fit: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":                       # the compile worker: python -m bench.report --worker
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", action="store_true", required=True)
    ap.add_argument("--arch", default="80,90")
    ap.add_argument("--variant", default="")
    a = ap.parse_args()
    worker([int(x) for x in a.arch.split(",")], [x for x in a.variant.split(",") if x])
