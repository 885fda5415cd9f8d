"""Backend choice: ``cuda`` when the npu device is CUDA, else ``host`` (the CPU).

Both implement ``interface.Backend``, the one interface the front-end calls. ``set_backend`` overrides
the choice (the test suite runs every backend present). A backend is created once per process and
keeps its state (streams, scheduler) when another one is selected for a while.
"""

from __future__ import annotations

import torch

from ..device import npu_device

BACKENDS = ("host", "cuda")

_instances: dict = {}
_active = None


def _create(name: str):
    if name == "host":
        from .host import HostBackend

        return HostBackend()
    if not torch.cuda.is_available():
        raise RuntimeError("backend 'cuda' needs a CUDA device, and torch.cuda.is_available() is False")
    from .cuda import CudaBackend

    return CudaBackend()


def backend():
    """The active backend."""
    global _active
    if _active is None:
        _active = _get("cuda" if npu_device().type == "cuda" else "host")
    return _active


def _get(name: str):
    if name not in BACKENDS:
        raise ValueError(f"backend {name!r}: expected one of {', '.join(BACKENDS)}")
    if name not in _instances:
        _instances[name] = _create(name)
    return _instances[name]


def available_backends() -> tuple[str, ...]:
    return BACKENDS if torch.cuda.is_available() else ("host",)


def set_backend(name: str) -> str:
    """Make ``name`` (``"host"`` or ``"cuda"``) the active backend; returns the previous one's name."""
    global _active
    previous = backend().name
    _active = _get(name)
    return previous
