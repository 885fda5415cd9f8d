"""Environment knobs of the project, all with the prefix ``NPUK_``.

``NPUK_DEVICE``      ``auto`` (default), ``cuda`` or ``cpu``: the device that "npu" means. ``auto`` picks
                     CUDA when a GPU is visible, else the CPU (operators on ``NPUK_CPU_KERNELS``'s
                     path, graphs on the host backend).
``NPUK_COMPILE_ONLY`` ``1``: never switch Triton to the interpreter, even on the CPU, so that kernels can
                     be compiled ahead of time for a GPU target (``npu_kernels.aot``); nothing can run.
``NPUK_CPU_KERNELS`` ``native`` (default) or ``triton``: how operators run when the device is the CPU.
                     ``native`` runs the vectorised PyTorch execution path (``npu_kernels.reference.execute``)
                     from the same plan and parameter block; ``triton`` runs the Triton kernels through
                     Triton's interpreter (slow; how the kernel tests check the kernels without a GPU).
                     Plans record it: a change within a process applies to calls planned after
                     ``npu_kernels.caches.release()``.
``NPUK_CHECK_BLOCK_TABLE`` ``1``: check every block id that a paged call reads (inside a batch's kv
                     length) and raise an error naming the batch, the position and the id when it is
                     outside [0, number of blocks). Off by default: an invalid id then reads as a zero
                     key and value and never dereferences memory outside the cache.
``NPUK_VLLM_ASCEND`` path of a vLLM-Ascend checkout: the tests that run its graph code unmodified
                     through ``runtime.compat`` (skipped without it).
``NPUK_HYPOTHESIS``  hypothesis profile of the test suite: ``ci`` (default, derandomised) or ``thorough``.
``NPUK_TRITON_LAUNCH`` ``1``: every kernel launch goes through Triton's launch path (argument binding and
                     specialisation at each call) instead of a traced plan's compiled kernel
                     (``npu_kernels.launcher.Launch``); read at a plan's first launch, so a change within
                     a process applies to calls planned after ``npu_kernels.caches.release()``.
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


_CPU_KERNELS = ("native", "triton")


def cpu_kernels() -> str:
    """Value of ``NPUK_CPU_KERNELS``, checked."""
    value = os.environ.get("NPUK_CPU_KERNELS", "native").strip().lower() or "native"
    if value not in _CPU_KERNELS:
        raise ValueError(f"NPUK_CPU_KERNELS={value!r}: expected one of {', '.join(_CPU_KERNELS)}")
    return value


def check_block_table() -> bool:
    return os.environ.get("NPUK_CHECK_BLOCK_TABLE", "0") == "1"


def vllm_ascend_checkout() -> str:
    return os.environ.get("NPUK_VLLM_ASCEND", "")


def hypothesis_profile() -> str:
    return os.environ.get("NPUK_HYPOTHESIS", "ci")


def compile_only() -> bool:
    return os.environ.get("NPUK_COMPILE_ONLY", "0") == "1"


def triton_launch() -> bool:
    return os.environ.get("NPUK_TRITON_LAUNCH", "0") == "1"
