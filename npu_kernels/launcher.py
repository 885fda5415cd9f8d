"""The one place where Triton kernels are launched.

``run(kernel, grid, args, ...)`` takes every argument of ``kernel`` positionally, in signature order
(constexprs included). ``set_recorder`` replaces the launch by a call ``recorder(kernel, grid, args,
options)``, so that the host work in front of a launch can be measured on any machine
(``python -m bench host``). ``target_arch`` tells the kernel modules which GPU a launch compiles for
(tile sizes and tensor descriptors depend on it).
"""

from __future__ import annotations

import os
from typing import Callable, Optional

Recorder = Callable[[object, tuple, tuple, dict], None]

_recorder: Optional[Recorder] = None
_archs: dict = {}


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
    kernel[grid](*args, **options)
