"""bench report: one prefill variant compiled for sm_90 in the compile-only subprocess (no GPU needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench import report

ROOT = Path(__file__).resolve().parent.parent


def test_report_on_one_variant(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "1"}          # the report must unset it for the compiler
    p = subprocess.run([sys.executable, "-m", "bench", "report", "--arch", "90", "--variant", "fp16-d128",
                        "--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    (jpath,) = tmp_path.glob("report-*.json")
    rows = json.loads(jpath.read_text())["rows"]
    assert len(rows) == 1
    row = rows[0]
    assert row["kernel"] == "prefill" and row["variant"] == "fp16-d128" and row["arch"] == 90
    assert row["error"] is None and row["status"] in ("ok", "SPILLS")
    assert 0 < row["registers"] <= 255 and row["shared_bytes"] > 0
    assert row["compile_s"] > 0.5                           # a cold compile, not a cache hit
    assert row["tensor_cores"] == "wgmma"                    # sm_90 flash attention must use wgmma
    assert row["status"] == ("SPILLS" if row["spill_bytes"] else "ok")
    assert "| prefill | fp16-d128 | sm_90 |" in p.stdout
    assert jpath.with_suffix(".md").exists() and jpath.with_suffix(".csv").exists()


def test_failures_and_spills_are_flagged():
    ok = {"kernel": "prefill", "variant": "a", "arch": 90, "num_warps": 4, "num_stages": 2, "registers": 100,
          "spill_bytes": 0, "shared_bytes": 1024, "tensor_cores": "wgmma", "compile_s": 1.0, "error": None}
    spill = {**ok, "variant": "b", "spill_bytes": 64}
    bad = {"kernel": "prefill", "variant": "c", "arch": 80, "error": "CompilationError: out of resources"}
    assert [report.status(r) for r in (ok, spill, bad)] == ["ok", "SPILLS", "FAILED"]
    again = {**ok, "variant": "d", "compile_s": 0.01}
    text = report.markdown([ok, spill, bad, again])
    assert "**64**" in text and "**SPILLS**" in text and "**FAILED**: CompilationError" in text
    assert text.count("same binary") == 1 and "| d |" in text.splitlines()[-1]


def test_unknown_variant_is_a_failure():
    (row,) = report.compile_all([90], ["no-such-variant"])
    assert report.status(row) == "FAILED" and "unknown variant" in row["error"] and "fp16-d128" in row["error"]


def test_a_dead_worker_is_a_failure(monkeypatch):
    monkeypatch.setattr(sys, "executable", "false")              # exits 1 at once, prints nothing
    (row,) = report.compile_all([80, 90], ["fp16-d128"])
    assert report.status(row) == "FAILED" and "worker exited with 1" in row["error"]
