"""``python -m runtime.compat ARGS`` in a fresh interpreter, from the repository root, and the seed
scripts of tests/compat/seeds/ run that way."""

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SEEDS = Path(__file__).parent / "seeds"


def run_compat(*args, cwd=ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "runtime.compat", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def start_seeds(runs: dict):
    """Start every seed of ``runs`` (file name -> arguments before it), two at a time: each run pays
    the import of torch and the kernels, so one after another they take twice as long. Yields
    file name -> future of the finished process."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield {name: pool.submit(run_compat, *args, str(SEEDS / name)) for name, args in runs.items()}


def seed_output(runs: dict, name: str) -> str:
    """The seed's standard output; it exited with 0 and printed no NaN (but the lse buffer that the
    task-update example prints without ever writing it: softmax_lse_flag=False)."""
    proc = runs[name].result()
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "nan" not in proc.stdout.replace("softmax_lse: tensor([nan]", "")
    return proc.stdout


def printed_tensors(text: str) -> list:
    """The tensor reprs printed in ``text``."""
    return [m.strip().rstrip(",)") for m in re.split(r"tensor\(", text)[1:]]
