"""The device the runtime drives: CUDA when present, else the host backend on the CPU.

Chosen by ``npu_kernels.device.npu_device`` (environment variable ``NPUK_DEVICE``), so operators and
graphs always agree on it.
"""

from npu_kernels.device import npu_device

__all__ = ["npu_device"]
