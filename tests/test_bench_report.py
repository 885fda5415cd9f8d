"""bench report: one prefill variant compiled for sm_90 in the compile-only subprocess (no GPU needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import report

from .conftest import compile_only

ROOT = Path(__file__).resolve().parent.parent

# An operator call planned for a GPU and sm_90 like the report's variant "fp16-d128", whose launch is
# compiled instead of run (``launcher`` recorder + the kernel's own warmup on a compile-only target).
LAUNCH_PROBE = r"""
import atexit, hashlib, json, os, shutil, tempfile, torch
os.environ["NPUK_CPU_KERNELS"] = "triton"               # the operator launches its kernel (recorded here)
os.environ["TRITON_CACHE_DIR"] = cache = tempfile.mkdtemp()     # cold, as the report's: a cubin's line info
atexit.register(shutil.rmtree, cache, True)                     # names the source path (another checkout's differs)
import npu_kernels as nk
from npu_kernels import aot, launcher
from npu_kernels.ops import prompt

plan = prompt.plan
prompt.plan = lambda call, out, lse, on_gpu=None: plan(call, out, lse, on_gpu=True)
built = []

def compile_instead(kernel, grid, args, options):
    with aot.compile_only_target(90):
        built.append(kernel.warmup(*args, grid=grid, **options))

launcher.set_recorder(compile_instead)
q, k, v = (torch.zeros(1, 2, 64, 128, dtype=torch.float16) for _ in range(3))
with aot.compile_only_target(90):                       # plans (tiles, descriptors) for sm_90
    nk.npu_prompt_flash_attention(q, k, v, num_heads=2, input_layout="BNSD", next_tokens=65535)
print(json.dumps({"launches": len(built), "sha": hashlib.sha256(built[0].asm["cubin"]).hexdigest()}))
"""


@pytest.fixture(scope="module")
def one_variant(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    env = {**os.environ, "TRITON_INTERPRET": "1"}          # the report must unset it for the compiler
    p = subprocess.run([sys.executable, "-m", "bench", "report", "--arch", "90", "--variant", "fp16-d128",
                        "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return p, out


def test_report_on_one_variant(one_variant):
    p, out = one_variant
    assert p.returncode == 0, p.stderr
    (jpath,) = out.glob("report-*.json")
    rows = json.loads(jpath.read_text())["rows"]
    assert len(rows) == 1
    row = rows[0]
    assert row["kernel"] == "prefill" and row["variant"] == "fp16-d128" and row["arch"] == 90
    assert row["error"] is None and row["status"] in ("ok", "SPILLS")
    assert 0 < row["registers"] <= 255 and row["shared_bytes"] > 0
    assert row["compile_s"] > 0.5                           # a cold compile, not a cache hit
    assert row["tensor_cores"] == "wgmma" and row["mma"] > 0    # sm_90 flash attention must use wgmma
    assert row["loop_keys"] > 0 and 0 < row["loop_instructions"]
    assert row["per_32_keys"] == round(row["loop_instructions"] * 32 / row["loop_keys"], 1)
    assert set(row["loop_loads"]) == {"tma", "cp.async", "ldg"} and sum(row["loop_loads"].values()) > 0
    assert len(row["cubin_sha256"]) == 64
    assert row["status"] == ("SPILLS" if row["spill_bytes"] else "ok")
    assert "| prefill | fp16-d128 | sm_90 |" in p.stdout
    assert jpath.with_suffix(".md").exists() and jpath.with_suffix(".csv").exists()


def test_report_compiles_what_a_launch_builds(one_variant):
    """The report's binary for "fp16-d128" is the one the operator's own launch builds (same cubin)."""
    p, out = one_variant
    (row,) = json.loads(next(out.glob("report-*.json")).read_text())["rows"]
    (probe,) = compile_only("-c", LAUNCH_PROBE, timeout=300)
    assert probe["launches"] == 1
    assert probe["sha"] == row["cubin_sha256"]


def test_failures_spills_and_repeats_are_flagged():
    ok = {"kernel": "prefill", "variant": "a", "arch": 90, "num_warps": 4, "num_stages": 2, "registers": 100,
          "spill_bytes": 0, "shared_bytes": 1024, "tensor_cores": "wgmma", "mma": 8, "loop_keys": 64,
          "loop_instructions": 300, "per_32_keys": 150.0, "loop_loads": {"tma": 2, "cp.async": 0, "ldg": 0},
          "loop_barriers": 1, "loop_spill_bytes": 0, "cubin_sha256": "1" * 64, "compile_s": 1.0, "error": None}
    spill = {**ok, "variant": "b", "spill_bytes": 64, "loop_spill_bytes": 8, "cubin_sha256": "2" * 64}
    bad = {"kernel": "prefill", "variant": "c", "arch": 80, "error": "CompilationError: out of resources"}
    big = {**ok, "variant": "e", "shared_bytes": 240 * 1024, "cubin_sha256": "3" * 64}
    assert [report.status(r) for r in (ok, spill, bad, big)] == ["ok", "SPILLS", "FAILED", "SHARED"]
    assert report.status({**big, "arch": 80, "shared_bytes": 160 * 1024}) == "ok"
    again = {**ok, "variant": "d"}
    text = report.markdown([ok, spill, bad, big, again])
    assert "**64** (8 in loop)" in text and "**SPILLS**" in text and "**FAILED**: CompilationError" in text
    assert "**SHARED MEMORY**" in text
    assert "| 150 (300 per 64) | tma:2 | 1 |" in text
    assert text.count("same binary") == 1 and "same binary as prefill:a@sm_90" in text.splitlines()[-1]


def test_unknown_variant_is_a_failure():
    (row,) = report.compile_all([90], ["no-such-variant"])
    assert report.status(row) == "FAILED" and "unknown variant" in row["error"] and "fp16-d128" in row["error"]


def test_a_dead_worker_is_a_failure(monkeypatch):
    monkeypatch.setattr(sys, "executable", "false")              # exits 1 at once, prints nothing
    (row,) = report.compile_all([80, 90], ["fp16-d128"])
    assert report.status(row) == "FAILED" and "worker exited with 1" in row["error"]
