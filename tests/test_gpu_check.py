"""make gpu-check without a GPU: a dry run that lists its steps and writes nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import gpu_check

ROOT = Path(__file__).resolve().parent.parent


def test_steps_fit_the_budget(tmp_path):
    """Tests, the four sanitized calls and the quick benchmark, together under 8 minutes."""
    steps = gpu_check.steps(tmp_path)
    assert [s.name for s in steps] == ["tests", *(f"sanitizer-{c}" for c in gpu_check.CASES), "bench"]
    assert sum(s.budget_s for s in steps) < 8 * 60
    assert all("memcheck" in s.argv for s in steps if s.name.startswith("sanitizer"))
    assert str(tmp_path) in " ".join(steps[-1].argv) and "--quick" in steps[-1].argv


@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is what a machine without a GPU does")
def test_dry_run_without_a_gpu():
    before = set((ROOT / "bench" / "results").iterdir())
    p = subprocess.run([sys.executable, "-m", "bench.gpu_check"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "dry run" in p.stdout and "sanitizer-graph" in p.stdout and "bench run --quick" in p.stdout
    assert set((ROOT / "bench" / "results").iterdir()) == before
