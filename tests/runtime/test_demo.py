"""The main job (``python -m runtime.demo``, ``make demo``) runs to its end: operators within tolerance,
requests joining a running graph, every graph step equal to its eager run (it exits non-zero otherwise)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_serves_with_the_graph_equal_to_eager():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "runtime.demo"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout
    assert len(re.findall(r"max \|operator - reference\| = \S+\n", out)) == 4, out     # each within tolerance
    assert re.search(r"decode: 20 steps, \d+ tokens, [1-9]\d* requests joined", out), out
    assert "max |graph - eager| over the logits of every step: 0.00e+00" in out, out
