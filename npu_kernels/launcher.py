"""The one place where Triton kernels are launched.

``run(kernel, grid, args, ...)`` takes every argument of ``kernel`` positionally, in signature order
(constexprs included), and launches through Triton (argument binding, specialisation, compile or cache
lookup, launch). ``Launch`` is one launch of a traced plan (``plans.Traced``), repeated with other
tensors: its first launch goes through Triton and keeps the compiled kernel; a later one whose pointer
arguments (tensors and ``plans.Pointer``: whatever has ``data_ptr``) have the 16-byte alignment the
kernel was specialised for (the plan fixes every other argument: ints, floats, dtypes, None) launches
that compiled kernel directly, as Triton would after its binder, with
the same arguments (``CompiledKernel[grid](*args)``); any other alignment goes through Triton again.
``NPUK_TRITON_LAUNCH=1`` keeps every launch on Triton's path. ``set_recorder`` replaces launching by a
call ``recorder(kernel, grid, args, options)`` (tracing, ahead-of-time compiles); ``dry_run`` does all
the host work of a launch but the driver's launch call (``python -m bench host``). ``target_arch``
tells the kernel modules which GPU a launch compiles for (tile sizes and tensor descriptors depend on it).

Device-side tensor descriptors (``tl.make_tensor_descriptor``) need global scratch, 128 bytes per
descriptor and program, which Triton's launcher asks for at every launch through the allocator set with
``triton.set_allocator`` (a context variable: set once per thread here). It comes from torch's caching
allocator on the launch's stream, so under CUDA graph capture it is taken from the capture's private
pool and belongs to the graph like any other temporary of the capture; a replay reuses it, and the
kernel rewrites the descriptors at every run, so a task update of the parameter block needs nothing else.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Callable, Iterator, Optional

import torch
import triton

from .env import triton_launch

Recorder = Callable[[object, tuple, tuple, dict], None]

ALIGNMENT = 16                    # bytes: Triton specialises pointer arguments on it

_recorder: Optional[Recorder] = None
_dry = False
_archs: dict = {}
_thread = threading.local()


def _scratch(size: int, alignment: int, stream):
    """Global scratch for one launch (Triton's allocator protocol); torch aligns to at least 256 bytes."""
    return torch.empty(size, dtype=torch.int8, device="cuda")


def set_recorder(fn: Optional[Recorder]) -> Optional[Recorder]:
    """Install ``fn`` in place of launching (``None`` launches again); returns the previous recorder."""
    global _recorder
    previous, _recorder = _recorder, fn
    return previous


def target_arch() -> Optional[int]:
    """SM version (e.g. 90) that launches compile for: the active Triton driver's target (the current
    GPU, or the compile-only target of ``npu_kernels.aot``); None when Triton interprets the kernels."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return None
    from triton.runtime import driver

    active = driver.active
    key = (id(active), active.get_current_device())
    arch = _archs.get(key)
    if arch is None:
        arch = _archs[key] = int(active.get_current_target().arch)
    return arch


@contextlib.contextmanager
def dry_run() -> Iterator[None]:
    """Launches inside do all their host work but the driver's launch call: Triton binds the arguments and
    looks the kernel up (compiling it the first time) without launching; a direct launch stops before it."""
    global _dry
    previous, _dry = _dry, True
    try:
        yield
    finally:
        _dry = previous


def _allocator() -> None:
    if not getattr(_thread, "allocator", False):
        triton.set_allocator(_scratch)
        _thread.allocator = True


def _triton(kernel, grid: tuple, args: tuple, options: dict):
    """Triton's own launch; returns the compiled kernel (None from the interpreter)."""
    _allocator()
    if _dry:
        return kernel.run(*args, grid=grid, warmup=True, **options)
    return kernel[grid](*args, **options)


def run(kernel, grid: tuple, args: tuple, *, num_warps: int, num_stages: int, enable_fp_fusion: bool = True) -> None:
    options = {"num_warps": num_warps, "num_stages": num_stages, "enable_fp_fusion": enable_fp_fusion}
    if _recorder is not None:
        _recorder(kernel, grid, args, options)
        return
    _triton(kernel, grid, args, options)


def _alignment(args: tuple, positions: tuple) -> tuple:
    return tuple(args[i].data_ptr() % ALIGNMENT == 0 for i in positions)


def _aligned_as(args: tuple, positions: tuple, aligned: tuple) -> bool:
    """The pointer arguments at ``positions`` (tensors, ``plans.Pointer``) align as ``aligned`` says."""
    if all(aligned):                                     # the usual case: every pointer aligned
        for i in positions:
            if args[i].data_ptr() % ALIGNMENT:
                return False
        return True
    return _alignment(args, positions) == aligned


def recording() -> bool:
    """A recorder replaces launching (``set_recorder``)."""
    return _recorder is not None


class Launch:
    """One launch of a traced plan (see the module doc): ``launch(args)`` with every argument of ``kernel``;
    ``launch.aligned(args)`` without the alignment check, once ``compiled_aligned`` (the caller checked that
    every pointer argument is 16-byte aligned, and that no recorder is installed)."""

    __slots__ = ("kernel", "grid", "options", "compiled")

    def __init__(self, kernel, grid: tuple, options: dict):
        self.kernel, self.options = kernel, options
        self.grid = tuple(grid) + (1,) * (3 - len(grid))      # a compiled kernel's launch takes all three
        # (kernel Triton compiled, positions of the pointer arguments, their alignment then), set at once
        self.compiled: Optional[tuple] = None

    def __call__(self, args: tuple) -> None:
        if _recorder is not None:
            _recorder(self.kernel, self.grid, args, self.options)
            return
        compiled = self.compiled
        if compiled is not None and _aligned_as(args, compiled[1], compiled[2]):
            self._launch_kept(args)
            return
        kernel = _triton(self.kernel, self.grid, args, self.options)
        if kernel is not None and not triton_launch() and len(args) == len(getattr(self.kernel, "params", ())):
            pointers = tuple(i for i, a in enumerate(args) if hasattr(a, "data_ptr"))   # as Triton tells them
            self.compiled = (kernel, pointers, _alignment(args, pointers))

    @property
    def compiled_aligned(self) -> bool:
        """The kept kernel is the one for every pointer argument aligned."""
        return self.compiled is not None and all(self.compiled[2])

    def _launch_kept(self, args: tuple) -> None:
        """The kept kernel's launch (its host work only, in ``dry_run``)."""
        if not _dry:
            _allocator()
            self.compiled[0][self.grid](*args)

    aligned = _launch_kept
