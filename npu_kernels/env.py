"""Environment knobs of the project, all with the prefix ``NPUK_``.

``NPUK_DEVICE``      ``auto`` (default), ``cuda`` or ``cpu``: the device that "npu" means. ``auto`` picks
                     CUDA when a GPU is visible, else the CPU (kernels through Triton's interpreter,
                     graphs on the host backend).
``NPUK_COMPILE_ONLY`` ``1``: never switch Triton to the interpreter, even on the CPU, so that kernels can
                     be compiled ahead of time for a GPU target (``npu_kernels.aot``); nothing can run.
``NPUK_HYPOTHESIS``  hypothesis profile of the test suite: ``ci`` (default, derandomised) or ``thorough``.
"""

from __future__ import annotations

import os

_DEVICES = ("auto", "cuda", "cpu")


def device_choice() -> str:
    """Value of ``NPUK_DEVICE``, checked."""
    value = os.environ.get("NPUK_DEVICE", "auto").strip().lower() or "auto"
    if value not in _DEVICES:
        raise ValueError(f"NPUK_DEVICE={value!r}: expected one of {', '.join(_DEVICES)}")
    return value


def hypothesis_profile() -> str:
    return os.environ.get("NPUK_HYPOTHESIS", "ci")


def compile_only() -> bool:
    return os.environ.get("NPUK_COMPILE_ONLY", "0") == "1"
