"""``launcher.Launch``: a traced plan's launch reuses the kernel Triton compiled for it while its tensors
keep their alignment, and that kernel is the one Triton's own launch path would pick. Compiled for sm_90
in a compile-only subprocess, in ``launcher.dry_run`` (no GPU: nothing is launched)."""

from __future__ import annotations

import pytest

from npu_kernels import launcher

from .conftest import compile_only

SCRIPT = r"""
import json, os
import torch
from triton.runtime.jit import JITFunction
from npu_kernels import aot, launcher
from npu_kernels.plans import Pointer

calls = []
triton_run = JITFunction.run


def counted(self, *args, **kwargs):
    calls.append(self.fn.__name__)
    return triton_run(self, *args, **kwargs)


JITFunction.run = counted
variants = {v.name: v for v in aot.prefill_variants() + aot.decode_variants()}


def moved(t, offset):
    # the same values ``offset`` elements into a new buffer (offset 0: another, aligned, address)
    buf = torch.zeros(t.numel() + 64, dtype=t.dtype)
    out = buf[offset:offset + t.numel()].view(t.shape)
    return out.copy_(t)


def triton_pick(rec, args):
    # the compiled kernel Triton's own launch path picks for ``args``
    return triton_run(rec.kernel, *args, grid=rec.grid, warmup=True, **rec.options)


rows = []
with aot.compile_only_target(90), launcher.dry_run():
    for name in ("bf16-d128-causal", "fp16-d128-gqa8"):
        rec = variants[name].launches(90)[0]
        first = next(i for i, a in enumerate(rec.args) if isinstance(a, torch.Tensor))
        launch = launcher.Launch(rec.kernel, rec.grid, rec.options)
        pointers = launcher.Launch(rec.kernel, rec.grid, rec.options)
        aligned = list(rec.args)
        aligned[first] = moved(rec.args[first], 0)
        misaligned = list(rec.args)
        misaligned[first] = moved(rec.args[first], 1)
        t = rec.args[first]
        pointer, pointer_off = list(rec.args), list(rec.args)       # a view's address, as plans pass it
        pointer[first] = Pointer(t.data_ptr(), t.dtype)
        pointer_off[first] = Pointer(t.data_ptr() + t.element_size(), t.dtype)
        counts = []
        for one, args in ((launch, rec.args), (launch, rec.args), (launch, aligned), (launch, misaligned),
                          (pointers, pointer), (pointers, pointer), (pointers, pointer_off)):
            before = len(calls)
            one(tuple(args))
            counts.append(len(calls) - before)
        rows.append({"variant": name, "triton_calls": counts,
                     "same_kernel_aligned": triton_pick(rec, tuple(aligned)) is triton_pick(rec, rec.args),
                     "other_kernel_misaligned": triton_pick(rec, tuple(misaligned)) is not triton_pick(rec, rec.args),
                     "kept_misaligned": launch.compiled[0] is triton_pick(rec, tuple(misaligned))})
    # an operator's traced plan: its launches' pointers checked once per call (``plans.Traced``)
    import npu_kernels as nk
    from npu_kernels.device import forced_execution
    direct = []
    kept = launcher.Launch.aligned
    launcher.Launch.aligned = lambda self, args: direct.append(1) or kept(self, args)
    q = torch.randn(1, 8, 1, 128).half()
    k, v = (torch.randn(1, 2, 256, 128).half() for _ in range(2))
    counts = []
    with forced_execution("compiled"):
        for query, key in ((q, k), (q, k), (moved(q, 0), k), (q, moved(k, 1)), (q, k)):
            before, fast = len(calls), len(direct)
            nk.npu_incre_flash_attention(query, key, v, num_heads=8, num_key_value_heads=2, input_layout="BNSD",
                                         actual_seq_lengths=[256])
            counts.append([len(calls) - before, len(direct) - fast])
    launcher.Launch.aligned = kept
    rows.append({"variant": "plan", "calls": counts})
    os.environ["NPUK_TRITON_LAUNCH"] = "1"
    rec = variants["fp16-d128-gqa8"].launches(90)[0]
    launch = launcher.Launch(rec.kernel, rec.grid, rec.options)
    before = len(calls)
    for _ in range(3):
        launch(rec.args)
    rows.append({"variant": "NPUK_TRITON_LAUNCH=1", "triton_calls": [len(calls) - before]})
for row in rows:
    print(json.dumps(row))
"""


@pytest.fixture(scope="module")
def rows() -> dict:
    return {r["variant"]: r for r in compile_only("-c", SCRIPT)}


@pytest.mark.parametrize("variant", ["bf16-d128-causal", "fp16-d128-gqa8"])
def test_compiled_kernel_reused_while_aligned(rows, variant):
    """First launch through Triton; the same tensors, and tensors at another 16-byte aligned address, launch
    the kept kernel (Triton would pick that same kernel); a misaligned tensor goes through Triton again,
    which picks another specialisation, and that one is kept. An operand passed as a ``plans.Pointer``
    (a view's address) is guarded as a tensor is."""
    r = rows[variant]
    assert r["triton_calls"] == [1, 0, 0, 1] + [1, 0, 1]      # tensors; then a Pointer, again, misaligned
    assert r["same_kernel_aligned"] and r["other_kernel_misaligned"] and r["kept_misaligned"]


def test_traced_plan_checks_its_pointers_once(rows):
    """A cached incremental call (split and combine launches): the first goes through Triton; later ones
    with aligned tensors (also a query at another aligned address) launch both kept kernels directly, the
    plan having checked every pointer once; a misaligned key sends the split launch, which reads it,
    through Triton, and the combine launch through its own check to its kept kernel."""
    assert rows["plan"]["calls"] == [[2, 0], [0, 2], [0, 2], [1, 0], [0, 2]]


def test_triton_launch_switch(rows):
    """``NPUK_TRITON_LAUNCH=1``: every launch goes through Triton's launch path."""
    assert rows["NPUK_TRITON_LAUNCH=1"]["triton_calls"] == [3]


def test_recorder_takes_the_launch():
    """With a recorder set, a launch is recorded and Triton is not called."""
    seen = []
    launch = launcher.Launch("kernel", (1, 1, 1), {"num_warps": 4})
    previous = launcher.set_recorder(lambda kernel, grid, args, options: seen.append((kernel, grid, args)))
    try:
        launch((1, 2))
    finally:
        launcher.set_recorder(previous)
    assert seen == [("kernel", (1, 1, 1), (1, 2))] and launch.compiled is None
