"""How an operator call hands its device work over: eager launch, graph capture or task update.

Every operator ends in ``submit(Task(...))``. A task carries the static part of the plan (what selects
the kernels and their grid; it must compare equal between a captured call and its update), the
parameter block (the per-call integers: lengths, padding offsets, band limits) as a CPU int32 tensor,
and a ``launch`` closure that enqueues all device work of the call, reading the integers from a
device-resident copy of the block. The kernels never see the host values, so the block can be
rewritten after capture.

Without a runtime, ``submit`` copies the block to the device and launches. ``runtime`` installs its own
submitter with ``set_submitter``: on a capturing stream it gives each task a block it owns, in update
mode it writes the new block into the captured task's block on the update stream instead of launching.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Hashable, Optional

import torch


@dataclass(frozen=True, eq=False)
class Task:
    op: str                                   # operator name, e.g. "npu_prompt_flash_attention"
    static: Hashable                          # static plan; equal ⇔ same kernels, same grid
    params: torch.Tensor                      # [P] int32, CPU: the parameter block's content
    device: torch.device
    launch: Callable[[torch.Tensor], None]    # launch(block) enqueues the call's device work
    inputs: tuple[torch.Tensor, ...] = field(default=())   # tensors the launch reads
    # tensors the caller passed for the launch to write (``.out`` overloads); empty when the operator
    # allocated its outputs itself (a functional call in update mode then returns unwritten tensors:
    # the results land in the captured outputs at replay)
    outputs: tuple[torch.Tensor, ...] = field(default=())
    # [P] int32 on the device to hold the block in eager calls (carved from a caller's workspace), so
    # that the call allocates nothing on the device; None: a fresh block per call
    block_buffer: Optional[torch.Tensor] = None


Submitter = Callable[[Task], None]

# Pinned staging buffers of blocks copied inside a CUDA graph captured without ``runtime``: the
# captured copy node reads them at every replay, so they live as long as the process.
_captured_staging: list[torch.Tensor] = []


def device_block(params: torch.Tensor, device: torch.device, into: Optional[torch.Tensor] = None) -> torch.Tensor:
    """A device copy of a parameter block (into ``into`` when given), enqueued on the current stream
    (capturable on CUDA)."""
    if device.type != "cuda":
        return params.clone() if into is None else into.copy_(params)
    staged = params.pin_memory()
    if torch.cuda.is_current_stream_capturing():
        _captured_staging.append(staged)
    if into is not None:
        return into.copy_(staged, non_blocking=True)
    return staged.to(device, non_blocking=True)


def eager_submit(task: Task) -> None:
    task.launch(device_block(task.params, task.device, task.block_buffer))


_submitter: Submitter = eager_submit


def set_submitter(fn: Optional[Submitter]) -> Submitter:
    """Install ``fn`` (``None`` restores eager submission); returns the previous submitter."""
    global _submitter
    previous = _submitter
    _submitter = fn if fn is not None else eager_submit
    return previous


def submit(task: Task) -> None:
    _submitter(task)
