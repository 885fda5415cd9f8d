"""Every representative kernel variant compiles ahead of time for sm_80 and sm_90 (no GPU needed).

The interpreter accepts programs the compiler rejects (and the reverse), so this runs the real
compiler in a subprocess with the interpreter off.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def compiled() -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(NPUK_COMPILE_ONLY="1", TRITON_DEFAULT_FP_FUSION="1")
    proc = subprocess.run([sys.executable, "-m", "npu_kernels.aot"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def test_every_variant_compiles(compiled):
    assert compiled, "no variant was compiled"
    failures = [f"{r['kernel']}/{r['variant']}/sm_{r['arch']}: {r['error']}" for r in compiled if r["error"]]
    assert not failures, "\n".join(failures)
    assert {r["arch"] for r in compiled} == {80, 90}


def test_tensor_cores_used(compiled):
    """Every kernel with a matmul uses tensor cores: mma on sm_80; on sm_90 the prefill kernel wgmma,
    the decode split kernel (small GQA-packed tiles) mma or wgmma. The combine step has no matmul."""
    for r in compiled:
        if r["kernel"] == "decode_combine":
            continue
        expected = {"mma"} if r["arch"] == 80 else {"wgmma"} if r["kernel"] == "prefill" else {"mma", "wgmma"}
        assert r["tensor_cores"] in expected, r
