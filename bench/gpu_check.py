"""``make gpu-check``: what a lent GPU runs, as one script that finishes in under 8 minutes.

Steps, each under a wall-clock budget, their output in ``bench/results/gpu-check-<gpu>-<date>/``:

1. ``tests``: the kernel and runtime tests on CUDA (the device tests and a sample of the property tests:
   hypothesis profile ``ci``, derandomised), junit XML and log;
2. ``sanitizer-<case>``: ``compute-sanitizer --tool memcheck`` on one prefill, one decode, one paged and one
   graph-replay call (``python -m bench.gpu_check --case NAME``), each run once first so that the
   sanitized run takes its kernels from Triton's cache;
3. ``bench``: ``python -m bench run --quick`` (our kernels and the baselines in the same process).

``summary.json`` names the GPU, driver, versions and git sha, and each step's command, status and seconds.
Without a CUDA device (or with ``--dry-run``) it prints the steps and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST_FILES = ("tests/test_kernels_prefill.py", "tests/test_kernels_decode.py", "tests/test_prompt.py",
              "tests/test_incre.py", "tests/test_fused.py", "tests/test_prompt_int8.py", "tests/test_quant.py",
              "tests/test_mask_summary.py", "tests/runtime")
CASES = ("prefill", "decode", "paged", "graph")
BUDGET_S = {"tests": 240, "sanitizer": 35, "bench": 60}      # 240 + 4 * 35 + 60 = 440 s


@dataclass(frozen=True)
class Step:
    name: str
    argv: tuple[str, ...]
    budget_s: int
    log: str


def sanitizer() -> str:
    """Path of compute-sanitizer: on PATH or in a CUDA toolkit; '' when there is none."""
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    for base in sorted(Path("/usr/local").glob("cuda*"), reverse=True):
        path = base / "bin" / "compute-sanitizer"
        if path.exists():
            return str(path)
    return ""


def steps(out: Path) -> list[Step]:
    py = sys.executable
    plan = [Step("tests", (py, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={out / 'tests.xml'}",
                           *TEST_FILES), BUDGET_S["tests"], "tests.log")]
    tool = sanitizer() or "compute-sanitizer"
    for case in CASES:
        plan.append(Step(f"sanitizer-{case}", (tool, "--tool", "memcheck", "--error-exitcode", "1", py, "-m",
                                               "bench.gpu_check", "--case", case),
                         BUDGET_S["sanitizer"], f"sanitizer-{case}.log"))
    plan.append(Step("bench", (py, "-m", "bench", "run", "--quick", "--out", str(out)), BUDGET_S["bench"],
                     "bench.log"))
    return plan


def run_step(step: Step, out: Path, env: dict) -> dict:
    """Run one step under its budget (a sanitizer step's plain warm-up run included); its stdout and
    stderr go to its log."""
    row = {"step": step.name, "command": " ".join(step.argv), "budget_s": step.budget_s}
    sanitized = step.name.startswith("sanitizer")
    if sanitized and not sanitizer():
        return {**row, "status": "unavailable", "seconds": 0.0, "note": "compute-sanitizer not found"}
    start = time.perf_counter()
    with open(out / step.log, "w") as log:
        try:
            if sanitized:                                # compile outside the sanitizer first
                subprocess.run(step.argv[5:], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                               timeout=step.budget_s)
            left = step.budget_s - (time.perf_counter() - start)
            rc = subprocess.run(step.argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                timeout=max(left, 1)).returncode
            status = "passed" if rc == 0 else f"failed (exit {rc})"
        except subprocess.TimeoutExpired:
            status = "timed out"
    return {**row, "status": status, "seconds": round(time.perf_counter() - start, 1)}


def main(dry_run: bool = False) -> int:
    import torch

    from . import results

    if dry_run or not torch.cuda.is_available():
        print("gpu-check (dry run: no CUDA device)" if not dry_run else "gpu-check (dry run)")
        for step in steps(results.RESULTS / "gpu-check-<gpu>-<date>"):
            print(f"  {step.name:<20} budget {step.budget_s:>3} s: {' '.join(step.argv)}")
        print(f"  total budget {sum(s.budget_s for s in steps(Path('.')))} s; results in "
              f"{results.RESULTS}/gpu-check-<gpu>-<date>/ (summary.json, logs, junit XML, bench run)")
        return 0
    info = results.environment()
    out = results.RESULTS / f"gpu-check-{results.slug(info['gpu'])}-{results.slug(info['date'])}"
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "NPUK_DEVICE": "cuda", "NPUK_HYPOTHESIS": "ci"}
    rows = []
    for step in steps(out):
        rows.append(run_step(step, out, env))
        print(f"{step.name}: {rows[-1]['status']} ({rows[-1]['seconds']} s)", flush=True)
    (out / "summary.json").write_text(json.dumps({"env": info, "steps": rows}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0 if all(r["status"] in ("passed", "unavailable") for r in rows) else 1


def case(name: str) -> None:
    """One small call per kind on the npu device, checked finite (what the sanitizer watches)."""
    import torch

    import npu_kernels as nk
    import runtime

    dev = nk.npu_device()
    g = torch.Generator(device=dev).manual_seed(0)

    def randn(*shape, dtype=torch.float16):
        return torch.randn(*shape, generator=g, device=dev).to(dtype)

    if name == "prefill":
        q, k, v = randn(1, 4, 300, 128), randn(1, 4, 300, 128), randn(1, 4, 300, 128)
        mask = torch.ones(2048, 2048, dtype=torch.bool, device=dev).triu(1)
        out = nk.npu_prompt_flash_attention(q, k, v, num_heads=4, input_layout="BNSD", scale_value=128 ** -0.5,
                                            sparse_mode=3, atten_mask=mask)
    elif name == "decode":
        q, k, v = randn(2, 1, 8 * 128), randn(2, 1000, 2 * 128), randn(2, 1000, 2 * 128)
        out = nk.npu_incre_flash_attention(q, k, v, num_heads=8, num_key_value_heads=2, input_layout="BSH",
                                           actual_seq_lengths=[1000, 513], scale_value=128 ** -0.5)
    elif name == "paged":
        q = randn(300, 8, 128, dtype=torch.bfloat16)
        cache = randn(12, 128, 2 * 128, dtype=torch.bfloat16)
        table = torch.tensor([[3, 1, 7, 0], [5, 2, 11, 9]], dtype=torch.int32, device=dev)
        out, _ = nk.npu_fused_infer_attention_score(
            q, cache, cache, num_heads=8, num_key_value_heads=2, input_layout="TND", actual_seq_lengths=[100, 300],
            actual_seq_lengths_kv=[400, 250], block_table=table, block_size=128, scale=128 ** -0.5, sparse_mode=3,
            atten_mask=torch.ones(2048, 2048, dtype=torch.bool, device=dev).triu(1))
    else:                                               # graph: capture, replay
        q, k = randn(4, 8, 1, 128), randn(4, 2, 512, 128)
        kw = dict(num_heads=8, num_key_value_heads=2, input_layout="BNSD", actual_seq_lengths=[512, 300, 1, 77])
        nk.npu_incre_flash_attention(q, k, k, **kw)
        graph = runtime.NPUGraph()
        with runtime.graph(graph):
            out = nk.npu_incre_flash_attention(q, k, k, **kw)
        graph.replay()
        graph.replay()
    runtime.synchronize()
    assert torch.isfinite(out.float()).all(), f"{name}: non-finite output"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="list the steps, run nothing")
    ap.add_argument("--case", choices=CASES, help="run one call (what the sanitizer steps run)")
    a = ap.parse_args()
    if a.case:
        case(a.case)
        sys.exit(0)
    sys.exit(main(a.dry_run))
