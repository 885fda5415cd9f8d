"""Every representative kernel variant compiles ahead of time for sm_80 and sm_90 (no GPU needed).

The interpreter accepts programs the compiler rejects (and the reverse), so this runs the real
compiler in a subprocess with the interpreter off.
"""

from __future__ import annotations

import pytest

from .conftest import compile_only


@pytest.fixture(scope="module")
def compiled() -> list[dict]:
    return compile_only("-m", "npu_kernels.aot")


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
