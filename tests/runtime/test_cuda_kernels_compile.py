"""The CUDA backend's flag kernels compile for sm_80 and sm_90 on any machine (no GPU needed).

Runs the real compiler in a subprocess with the interpreter off (``NPUK_COMPILE_ONLY=1``), since
interpret mode replaces the jitted functions the compiler needs.
"""

from __future__ import annotations

from tests.conftest import compile_only

SCRIPT = r"""
import json
import torch
from npu_kernels.aot import compile_kernel
from runtime.backends import cuda

flags, err = torch.zeros(8, dtype=torch.int32), torch.zeros(1, dtype=torch.int32)
cases = []
for consuming in (True, False):
    cases.append(("record", cuda.flag_record_kernel, dict(flags_ptr=flags, slot=3, err_ptr=err, site=5),
                  {"CONSUMING": consuming}))
    cases.append(("wait", cuda.flag_wait_kernel,
                  dict(flags_ptr=flags, slot=3, err_ptr=err, site=5, timeout_us=10**7), {"CONSUMING": consuming}))
cases.append(("reset", cuda.flag_reset_kernel, dict(flags_ptr=flags, slot=3), {}))
for name, fn, args, constexprs in cases:
    for arch in (80, 90):
        try:
            c = compile_kernel(fn, args, constexprs, arch, num_warps=1, num_stages=1)
            row = {"kernel": name, "arch": arch, "registers": c.registers, "error": None}
        except Exception as exc:
            row = {"kernel": name, "arch": arch, "error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(row), flush=True)
"""


def test_flag_kernels_compile_for_gpu_targets():
    rows = compile_only("-c", SCRIPT, timeout=600)
    assert len(rows) == 10
    failures = [f"{r['kernel']}/sm_{r['arch']}: {r['error']}" for r in rows if r["error"]]
    assert not failures, "\n".join(failures)
