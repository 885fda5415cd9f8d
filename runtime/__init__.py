"""NPUGraph, streams, events and task update on CUDA graphs or on the host (see runtime/device.py)."""

from .device import npu_device

__all__ = ["npu_device"]
