"""``npu_attention_update`` (spec vllm-ascend-ops §3): validate → plan → run.

Merges SP partial attention outputs with their log-sum-exp, as CANN's A2/A3 kernel of the G1 generation
(+inf lse replaced by -inf; SP <= 16): ``npu_kernels.reference.attention_update`` holds the exact
computation, which is also the CPU's native path. ``update_type`` 1 also returns the merged lse; with 0
the NPU returns an undefined tensor (``None`` from the Python entry point), while the registered operator
returns an unwritten float32 tensor shaped like ``lse[0]``, as torch_npu's fake implementation does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import alloc, checks, tasks
from ..errors import require
from ..kernels import attention_update as kernel
from ..reference.attention_update import merge
from .kv_cache import NO_PARAMS, native

OP = "npu_attention_update"
OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_SP = 16
MIN_H, MAX_H, H_MULTIPLE = 8, 512, 8


@dataclass(frozen=True)
class UpdateCall:
    lse: tuple[torch.Tensor, ...]         # SP x [R] float32
    local_out: tuple[torch.Tensor, ...]   # SP x [R, H]
    with_lse: bool                        # update_type == 1

    @property
    def rows(self) -> int:
        return self.local_out[0].shape[0]


def validate(lse, local_out, update_type) -> UpdateCall:
    require(1 <= len(lse) <= MAX_SP, "lse", len(lse), f"needs 1 to {MAX_SP} partials (SP)")
    require(len(local_out) == len(lse), "local_out", len(local_out), f"needs one tensor per lse ({len(lse)})")
    for i, t in enumerate(lse):
        checks.tensor(f"lse[{i}]", t, ndim=(1,), dtypes=(torch.float32,))
        require(t.shape == lse[0].shape, f"lse[{i}]", t, f"all lse share one shape {tuple(lse[0].shape)}")
    for i, t in enumerate(local_out):
        checks.tensor(f"local_out[{i}]", t, ndim=(2,), dtypes=OUT_DTYPES)
        require(t.shape == local_out[0].shape, f"local_out[{i}]", t,
                f"all local_out share one shape {tuple(local_out[0].shape)}")
        require(t.dtype == local_out[0].dtype, f"local_out[{i}]", t,
                f"all local_out share one dtype ({local_out[0].dtype}; mixing is undefined on the NPU)", TypeError)
    rows, h = local_out[0].shape
    require(lse[0].shape[0] == rows, "lse[0]", lse[0], f"needs one value per row of local_out[0] ({rows})")
    require(MIN_H <= h <= MAX_H and h % H_MULTIPLE == 0, "local_out[0]", local_out[0],
            f"head dim {h} must be a multiple of {H_MULTIPLE} in [{MIN_H}, {MAX_H}]")
    require(isinstance(update_type, int) and update_type in (0, 1), "update_type", update_type,
            "must be 0 (out only) or 1 (out and lse_out)")
    return UpdateCall(tuple(lse), tuple(local_out), update_type == 1)


def outputs(call: UpdateCall) -> tuple[torch.Tensor, torch.Tensor]:
    first = call.local_out[0]
    return alloc.empty(first.shape, first.dtype, first.device), \
        alloc.empty(call.lse[0].shape, torch.float32, first.device)


def submit(call: UpdateCall, out: torch.Tensor, lse_out: torch.Tensor) -> None:
    if out.numel() == 0:
        return
    device = out.device
    on_native = native(device)

    def launch(block: torch.Tensor) -> None:
        if on_native:
            merged, merged_lse = merge(call.lse, call.local_out)
            out.copy_(merged)
            if call.with_lse:
                lse_out.copy_(merged_lse)
        else:
            kernel.launch(call.lse, call.local_out, out, lse_out, call.with_lse)

    static = (OP, on_native, call.with_lse, out.dtype, tuple(out.shape),
              tuple(t.stride() for t in call.lse + call.local_out))
    tasks.submit(tasks.Task(OP, static, NO_PARAMS, device, launch, call.lse + call.local_out))


def npu_attention_update(lse, local_out, update_type) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager implementation behind ``torch.ops.npu.npu_attention_update`` (lse_out unwritten for type 0)."""
    call = validate(lse, local_out, update_type)
    out, lse_out = outputs(call)
    submit(call, out, lse_out)
    return out, lse_out
