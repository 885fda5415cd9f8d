"""How an operator call hands its device work over: eager launch, graph capture or task update.

Every operator ends in ``submit(Task(...))``. A task carries the static part of the plan (what selects
the kernels and their grid; it must compare equal between a captured call and its update), the
parameter block (the per-call integers: lengths, padding offsets, band limits) as a CPU int32 tensor,
and the launch: ``run(block, args)`` enqueues all device work of the call, reading the integers from a
device-resident copy of the block and its tensors from ``args``. The kernels never see the host values,
so the block can be rewritten after capture; the tensors are an explicit tuple, so a task update can
tell which of them are inputs, the caller's outputs or the operator's own (``roles``).

Without a runtime, ``submit`` copies the block to the device and launches. ``runtime`` installs its own
submitter with ``set_submitter``: on a capturing stream it gives each task a block it owns, in update
mode it writes the new block into the captured task's block on the update stream instead of launching.
"""

from __future__ import annotations

from typing import Callable, Hashable, Optional

import torch

INPUT, OUTPUT, OWN = "i", "o", "s"   # roles of a task's tensors


class Task:
    """One operator call's device work. Give either ``launch`` (a closure over the call's tensors; its
    ``inputs`` and ``outputs`` listed for task update) or ``run`` with ``args`` and ``roles``.

    - ``op``: operator name, e.g. "npu_prompt_flash_attention"
    - ``static``: the static plan; equal ⇔ same kernels, same grid
    - ``params``: [P] int32 on the CPU, the parameter block's content
    - ``launch(block)``, ``inputs`` (tensors it reads), ``outputs`` (tensors the caller passed for it to write)
    - ``block_buffer``: [P] int32 on the device to hold the block in eager calls (carved from a caller's
      workspace), so that the call allocates nothing on the device; None: a fresh block per call
    - ``run(block, args)`` enqueues the work on ``args`` (None where absent); ``roles``, per element of
      ``args``: INPUT (read), OUTPUT (passed by the caller to be written: ``.out`` overloads) or OWN
      (allocated by the operator: its functional outputs and scratch; a functional call in update mode
      returns such unwritten tensors, the results land in the captured ones)
    - ``given``: ``(make, *args)``: for a runtime that captures the task, ``make(*args)`` is the call as its
      operator recognises it again (``captured``); None: updates of the task are planned and submitted
    """

    __slots__ = ("op", "static", "params", "device", "launch", "block_buffer", "run", "args", "roles", "given")

    def __init__(self, op: str, static: Hashable, params: torch.Tensor, device: torch.device,
                 launch: Optional[Callable[[torch.Tensor], None]] = None, inputs: tuple = (), outputs: tuple = (),
                 block_buffer: Optional[torch.Tensor] = None, run: Optional[Callable[[torch.Tensor, tuple], None]] = None,
                 args: tuple = (), roles: str = "", given: object = None):
        self.op, self.static, self.params, self.device, self.given = op, static, params, device, given
        self.launch, self.block_buffer = launch, block_buffer
        if run is None:
            run = lambda block, args: launch(block)  # noqa: E731
            args, roles = (*inputs, *outputs), INPUT * len(inputs) + OUTPUT * len(outputs)
        self.run, self.args, self.roles = run, args, roles

    def tensors(self, role: str) -> tuple[torch.Tensor, ...]:
        return tuple(t for t, r in zip(self.args, self.roles) if r == role and t is not None)


Submitter = Callable[[Task], None]

# Pinned staging buffers of blocks copied inside a CUDA graph captured without ``runtime``: the
# captured copy node reads them at every replay, so they live as long as the process.
_captured_staging: list[torch.Tensor] = []


def device_block(params: torch.Tensor, device: torch.device, into: Optional[torch.Tensor] = None) -> torch.Tensor:
    """A device copy of a parameter block (into ``into`` when given), enqueued on the current stream
    (capturable on CUDA)."""
    if device.type != "cuda":
        return params if into is None else into.copy_(params)      # ``params`` is the call's own
    staged = params.pin_memory()
    if torch.cuda.is_current_stream_capturing():
        _captured_staging.append(staged)
    if into is not None:
        return into.copy_(staged, non_blocking=True)
    return staged.to(device, non_blocking=True)


def eager_submit(task: Task) -> None:
    task.run(device_block(task.params, task.device, task.block_buffer), task.args)


_submitter: Submitter = eager_submit


def set_submitter(fn: Optional[Submitter]) -> Submitter:
    """Install ``fn`` (``None`` restores eager submission); returns the previous submitter."""
    global _submitter
    previous = _submitter
    _submitter = fn if fn is not None else eager_submit
    return previous


def submit(task: Task) -> None:
    _submitter(task)


class Captured:
    """The next task to update on the current stream (``captured``): its ``given``, and ``rewrite``."""

    given: object
    spared: object = None      # what the operator's updates of the task return (its spare outputs), once made

    def rewrite(self, params: torch.Tensor, copies: tuple = ()) -> None:
        """Write ``params`` into the task's parameter block, copy each (captured, new) input of ``copies``,
        and go on to the next task, as the update of a submitted task with the same plan would."""
        raise NotImplementedError

    def spare(self, shape, dtype: torch.dtype, device: torch.device, slot: int = 0) -> torch.Tensor:
        """An uninitialised tensor that the operator returns from an update as its output ``slot``. torch_npu
        returns new outputs there that no kernel writes; a spare is one per shape, dtype, device and slot
        for the task group, so that an update allocates nothing. It is no captured tensor."""
        raise NotImplementedError


# Task update without planning: while a stream is in task-update mode a runtime sets ``captured``.
# ``captured(op)`` gives the next task to update on the current stream when it is a task of ``op``
# captured with a ``given``, else None. An operator whose call matches the ``given`` one (its tensors or
# inputs to copy in, the same static arguments) validates and packs its per-call integers and rewrites
# the block; any other call is planned and submitted, and the submitter updates the task.
captured: Optional[Callable[[str], Optional[Captured]]] = None


def set_captured(fn: Optional[Callable[[str], Optional[Captured]]]) -> None:
    global captured
    captured = fn
