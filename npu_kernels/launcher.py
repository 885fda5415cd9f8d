"""The one place where Triton kernels are launched.

``run(kernel, grid, args, ...)`` takes every argument of ``kernel`` positionally, in signature order
(constexprs included). ``set_recorder`` replaces the launch by a call ``recorder(kernel, grid, args,
options)``, so that the host work in front of a launch can be measured on any machine
(``python -m bench host``). ``target_arch`` tells the kernel modules which GPU a launch compiles for
(tile sizes and tensor descriptors depend on it).

Device-side tensor descriptors (``tl.make_tensor_descriptor``) need global scratch, 128 bytes per
descriptor and program, which Triton's launcher asks for at every launch through the allocator set with
``triton.set_allocator`` (a context variable: set once per thread here). It comes from torch's caching
allocator on the launch's stream, so under CUDA graph capture it is taken from the capture's private
pool and belongs to the graph like any other temporary of the capture; a replay reuses it, and the
kernel rewrites the descriptors at every run, so a task update of the parameter block needs nothing else.
"""

from __future__ import annotations

import os
import threading
from typing import Callable, Optional

import triton

Recorder = Callable[[object, tuple, tuple, dict], None]

_recorder: Optional[Recorder] = None
_archs: dict = {}
_thread = threading.local()


def _scratch(size: int, alignment: int, stream):
    """Global scratch for one launch (Triton's allocator protocol); torch aligns to at least 256 bytes."""
    import torch

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


def run(kernel, grid: tuple, args: tuple, *, num_warps: int, num_stages: int, enable_fp_fusion: bool = True) -> None:
    options = {"num_warps": num_warps, "num_stages": num_stages, "enable_fp_fusion": enable_fp_fusion}
    if _recorder is not None:
        _recorder(kernel, grid, args, options)
        return
    if not getattr(_thread, "allocator", False):
        triton.set_allocator(_scratch)
        _thread.allocator = True
    kernel[grid](*args, **options)
