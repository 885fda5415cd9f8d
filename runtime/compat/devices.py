"""The "npu" device: device strings mapped to the real device, ``Tensor.npu()``, ``Module.npu()``, pinned
memory, and ``torch.npu``'s device functions.

torch has no "npu" device type here, and ``torch.utils.rename_privateuse1_backend`` cannot be undone, so
``NpuDeviceMode`` (a ``TorchFunctionMode``) rewrites ``"npu"`` / ``"npu:N"`` wherever a torch function
receives a device: the ``device=`` keyword of factories and ``Tensor.to/new_*``, and positional string
arguments (``x.to("npu")``, ``torch.device("npu", 0)``; in torch 2.13 ``torch.device(...)`` itself goes
through the mode, so ``torch.device("npu")`` is the real device). Dynamo traces through the mode, so
compiled graphs hold the real device and ``torch.compile(fullgraph=True)`` does not break; but Dynamo
builds a ``torch.device(...)`` written inside a compiled function without the mode, so there
``torch.device("npu")`` fails (device strings work). The mode stack is per thread: the mapping
applies to the thread that called ``install()``.

Pinned host memory needs an accelerator: on a machine without one (the npu device is the CPU) the mode
makes ``Tensor.pin_memory()`` a copy and drops ``pin_memory=True`` from factories, where torch would
raise "Cannot access accelerator device".
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


def check_index(device=None) -> int:
    """The NPU index of ``device`` (None: the current one; an int, ``"npu"``, ``"npu:N"``, a
    ``torch.device`` of the real device), checked against ``device_count()``."""
    if device is None:
        return current_device()
    if isinstance(device, str):
        name, _, tail = device.partition(":")
        if name != "npu" or (tail and not tail.isdigit()):
            raise ValueError(f"device={device!r}: expected 'npu' or 'npu:<index>'")
        index = int(tail) if tail else current_device()
    elif isinstance(device, int) and not isinstance(device, bool):
        index = device
    elif isinstance(device, torch.device) and device.type == npu_device().type:
        index = current_device() if device.index is None else device.index
    else:
        raise TypeError(f"device={device!r}: expected an int, a string 'npu:<index>' or a {npu_device().type} "
                        f"torch.device")
    if not 0 <= index < device_count():
        raise ValueError(f"device={device!r}: index {index} is out of range, {device_count()} npu device(s)")
    return index


def set_device(device) -> None:
    """``torch.npu.set_device``: on CUDA the current CUDA device; on the CPU only index 0 exists."""
    index = check_index(device)
    if npu_device().type == "cuda":
        torch.cuda.set_device(index)


def device_names() -> dict:
    """Each npu device string -> the real device string (a plain dict, so Dynamo traces the lookup)."""
    real = npu_device().type
    names = {f"npu:{i}": f"cuda:{i}" if real == "cuda" else "cpu" for i in range(device_count())}
    names["npu"] = real
    return names


def lookup(names: dict, value: str) -> str:
    """The real device string of the npu device string ``value`` (``names``: ``device_names()``)."""
    if value not in names:
        raise ValueError(f"device {value!r}: the npu devices are {', '.join(sorted(names))}")
    return names[value]


class NpuDeviceMode(TorchFunctionMode):
    """Rewrites npu device strings in the arguments of every torch function to the real device, and
    pinned memory where there is no accelerator."""

    def __init__(self, names: dict):
        super().__init__()
        self.names = names
        self.unpinned = not torch.accelerator.is_available()

    def _mapped(self, value):
        if isinstance(value, str) and (value == "npu" or value.startswith("npu:")):
            return lookup(self.names, value)
        return value

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if "device" in kwargs:
            kwargs = dict(kwargs, device=self._mapped(kwargs["device"]))
        if self.unpinned:
            if func is torch.Tensor.pin_memory:
                return args[0].clone()
            if kwargs.get("pin_memory"):
                kwargs = dict(kwargs, pin_memory=False)
        args = tuple(self._mapped(a) for a in args)
        return func(*args, **kwargs)


def tensor_methods(names: dict) -> dict:
    """``Tensor.npu()`` and ``Tensor.is_npu`` over ``names`` (plain closures, so Dynamo traces them)."""
    real_type = names["npu"]

    def npu(self: torch.Tensor, device=None, non_blocking: bool = False,
            memory_format: torch.memory_format = torch.preserve_format) -> torch.Tensor:
        """``Tensor.npu()``: the tensor on the npu device (``device``: an index or ``"npu:N"``)."""
        if device is None:
            device = "npu"
        elif isinstance(device, int):
            device = f"npu:{device}"
        target = device if isinstance(device, torch.device) else lookup(names, device)
        return self.to(target, non_blocking=non_blocking, memory_format=memory_format)

    def is_npu(self: torch.Tensor) -> bool:
        """``Tensor.is_npu``: the tensor lives on the npu device."""
        return self.device.type == real_type

    return {"npu": npu, "is_npu": property(is_npu)}


def module_npu(self: torch.nn.Module, device=None) -> torch.nn.Module:
    """``Module.npu()``: move the module's parameters and buffers to the npu device (as ``Module.cuda``)."""
    return self._apply(lambda t: t.npu(device))
