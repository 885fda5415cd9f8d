"""vLLM-Ascend's graph code paths, unmodified, through ``python -m runtime.compat``
(``vllm_ascend_full_graph.py``). They need a vLLM-Ascend checkout, whose path ``NPUK_VLLM_ASCEND`` names;
vllm itself stays a stand-in (``vllm_stub``)."""

from pathlib import Path

import pytest

from npu_kernels.env import vllm_ascend_checkout

from .launch import run_compat

CHECKOUT = vllm_ascend_checkout()


@pytest.mark.skipif(not CHECKOUT, reason="needs a vLLM-Ascend checkout: NPUK_VLLM_ASCEND=<path>")
def test_full_decode_graphs_and_torchair_fallback():
    proc = run_compat(str(Path(__file__).parent / "vllm_ascend_full_graph.py"), CHECKOUT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    lines = proc.stdout.splitlines()
    assert sum(line.startswith("step ") for line in lines) == 3
    assert sum(line.startswith("paged step ") for line in lines) == 3
    assert lines[-2:] == ["torchair fallback compiled", "ok"]
