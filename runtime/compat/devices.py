"""The "npu" device: device strings mapped to the real device, ``Tensor.npu()`` and ``torch.npu``'s
device functions.

torch has no "npu" device type here, and ``torch.utils.rename_privateuse1_backend`` cannot be undone, so
``NpuDeviceMode`` (a ``TorchFunctionMode``) rewrites ``"npu"`` / ``"npu:N"`` wherever a torch function
receives a device: the ``device=`` keyword of factories and ``Tensor.to/new_*``, and positional string
arguments (``x.to("npu")``). Dynamo traces through the mode, so compiled graphs hold the real device and
``torch.compile(fullgraph=True)`` does not break. The mode stack is per thread: the mapping applies to
the thread that called ``install()``. A ``torch.device("npu")`` object cannot be built.
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

from ..device import npu_device


def device_count() -> int:
    """NPUs visible: the CUDA devices, or one (the CPU)."""
    return torch.cuda.device_count() if npu_device().type == "cuda" else 1


def is_available() -> bool:
    return True


def current_device() -> int:
    return torch.cuda.current_device() if npu_device().type == "cuda" else 0


def _index(device) -> int:
    """The NPU index of ``device`` (int, ``"npu"``, ``"npu:N"``), checked against ``device_count()``."""
    if isinstance(device, str):
        name, _, tail = device.partition(":")
        if name != "npu" or (tail and not tail.isdigit()):
            raise ValueError(f"device={device!r}: expected 'npu' or 'npu:<index>'")
        index = int(tail) if tail else current_device()
    elif isinstance(device, int) and not isinstance(device, bool):
        index = device
    else:
        raise TypeError(f"device={device!r}: expected an int or a string 'npu:<index>'")
    if not 0 <= index < device_count():
        raise ValueError(f"device={device!r}: index {index} is out of range, {device_count()} npu device(s)")
    return index


def set_device(device) -> None:
    """``torch.npu.set_device``: on CUDA the current CUDA device; on the CPU only index 0 exists."""
    index = _index(device)
    if npu_device().type == "cuda":
        torch.cuda.set_device(index)


def real_device(device) -> torch.device:
    """The real device that ``"npu"``, ``"npu:N"`` or an index stands for."""
    index = _index(device)
    return torch.device("cuda", index) if npu_device().type == "cuda" else torch.device("cpu")


def device_names() -> dict:
    """Each npu device string -> the real device string (a plain dict, so Dynamo traces the lookup)."""
    names = {f"npu:{i}": str(real_device(i)) for i in range(device_count())}
    names["npu"] = npu_device().type
    return names


class NpuDeviceMode(TorchFunctionMode):
    """Rewrites npu device strings in the arguments of every torch function to the real device."""

    def __init__(self):
        super().__init__()
        self.names = device_names()

    def _mapped(self, value):
        if isinstance(value, str) and (value == "npu" or value.startswith("npu:")):
            if value not in self.names:
                raise ValueError(f"device {value!r}: the npu devices are {', '.join(sorted(self.names))}")
            return self.names[value]
        return value

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if "device" in kwargs:
            kwargs = dict(kwargs, device=self._mapped(kwargs["device"]))
        args = tuple(self._mapped(a) for a in args)
        return func(*args, **kwargs)


def tensor_npu(self: torch.Tensor, device=None, non_blocking: bool = False,
               memory_format: torch.memory_format = torch.preserve_format) -> torch.Tensor:
    """``Tensor.npu()``: the tensor on the npu device (``device``: an index or ``"npu:N"``)."""
    target = npu_device() if device is None else real_device(device)
    return self.to(target, non_blocking=non_blocking, memory_format=memory_format)


def tensor_is_npu(self: torch.Tensor) -> bool:
    """``Tensor.is_npu``: the tensor lives on the npu device."""
    return self.device.type == npu_device().type
