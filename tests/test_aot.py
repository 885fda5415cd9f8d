"""Every representative kernel variant compiles ahead of time for sm_80 and sm_90 (no GPU needed).

The interpreter accepts programs the compiler rejects (and the reverse), so this runs the real
compiler in a subprocess with the interpreter off.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from .conftest import compile_only


@pytest.fixture(scope="module")
def compiled() -> list[dict]:
    """Each arch compiled in its own process, the two at once."""
    with ThreadPoolExecutor(2) as pool:
        per_arch = pool.map(lambda arch: compile_only("-m", "npu_kernels.aot", "--arch", str(arch)), (80, 90))
        return [row for rows in per_arch for row in rows]


def test_every_variant_compiles(compiled):
    assert compiled, "no variant was compiled"
    failures = [f"{r['kernel']}/{r['variant']}/sm_{r['arch']}: {r['error']}" for r in compiled if r["error"]]
    assert not failures, "\n".join(failures)
    assert {r["arch"] for r in compiled} == {80, 90}


def test_tensor_cores_used(compiled):
    """Every kernel with a matmul uses tensor cores: mma on sm_80; on sm_90 the prefill kernel wgmma,
    the decode split kernel (small GQA-packed tiles) mma or wgmma. The combine step and the mask summary
    pass have no matmul."""
    for r in compiled:
        if r["kernel"] in ("decode_combine", "mask_summary"):
            continue
        expected = {"mma"} if r["arch"] == 80 else {"wgmma"} if r["kernel"] == "prefill" else {"mma", "wgmma"}
        assert r["tensor_cores"] in expected, r


def test_dense_prefill_targets_on_sm90(compiled):
    """The dense float prefill kernels on sm_90 as compiled for a launch: fp16 (the fp32 compute path:
    FIA's default, PFA's high precision) and bf16 at D = 128, without mask and causal, issue at most 160
    instructions per warp per 32 keys in the main loop, read K/V through TMA and do not spill; D = 64 and
    D = 256 do not spill."""
    rows = {(r["variant"], r["arch"]): r for r in compiled if r["kernel"] == "prefill" and not r["error"]}
    for name in ("bsnd-fp16-hp-d128", "fp16-d128-causal-hp", "bf16-d128", "bf16-d128-causal"):
        r = rows[(name, 90)]
        assert r["per_32_keys"] <= 160 and r["spill_bytes"] == 0 and r["loop_loads"]["tma"] > 0, r
    for name in ("bf16-d64-causal", "bf16-d256"):
        assert rows[(name, 90)]["spill_bytes"] == 0, rows[(name, 90)]


def test_shared_memory_fits(compiled):
    """No launch asks for more shared memory than its arch has (it would fail at launch)."""
    from bench.report import SHARED_LIMIT

    over = [f"{r['kernel']}/{r['variant']}/sm_{r['arch']}: {r['shared_bytes']}" for r in compiled
            if not r["error"] and r["shared_bytes"] > SHARED_LIMIT[r["arch"]]]
    assert not over, "\n".join(over)
