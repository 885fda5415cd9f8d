"""The one place where Triton kernels are launched.

``run(kernel, grid, args, ...)`` takes every argument of ``kernel`` positionally, in signature order
(constexprs included). ``set_recorder`` replaces the launch by a call ``recorder(kernel, grid, args,
options)``, so that the host work in front of a launch can be measured on any machine
(``python -m bench host``).
"""

from __future__ import annotations

from typing import Callable, Optional

Recorder = Callable[[object, tuple, tuple, dict], None]

_recorder: Optional[Recorder] = None


def set_recorder(fn: Optional[Recorder]) -> Optional[Recorder]:
    """Install ``fn`` in place of launching (``None`` launches again); returns the previous recorder."""
    global _recorder
    previous, _recorder = _recorder, fn
    return previous


def run(kernel, grid: tuple, args: tuple, *, num_warps: int, num_stages: int, enable_fp_fusion: bool = True) -> None:
    options = {"num_warps": num_warps, "num_stages": num_stages, "enable_fp_fusion": enable_fp_fusion}
    if _recorder is not None:
        _recorder(kernel, grid, args, options)
        return
    kernel[grid](*args, **options)
