"""Streams and ordinary events (``torch_npu.npu.Stream`` / ``Event``), and the current stream.

``Stream`` and ``Event`` are the classes of the backend interface (runtime/backends/interface.py): a
backend makes streams itself (its default stream, the device's current stream), so the objects users
hold are the backend's. ``Stream()`` and ``Event()`` make one of the active backend, so user code never
names a backend. An ordinary event has snapshot semantics, as on the device: a wait binds to the last
record issued before it and is a no-op when the event was never recorded. The current stream is per
thread.
"""

from __future__ import annotations

from .backends import backend
from .backends.interface import Event, Stream

__all__ = ["Event", "Stream", "by_id", "current_stream", "default_stream", "set_stream", "shared_stream", "stream",
           "synchronize"]


def current_stream(device=None) -> Stream:
    return backend().current_stream()


def default_stream(device=None) -> Stream:
    return backend().default_stream()


def set_stream(stream: Stream) -> None:
    backend().set_current_stream(stream)


class stream:
    """Context manager: make ``s`` the current stream inside the block (``None``: no change)."""

    __slots__ = ("s", "previous")

    def __init__(self, s: "Stream | None"):
        self.s = s

    def __enter__(self) -> None:
        if self.s is not None:
            be = backend()
            self.previous = be.current_stream()
            be.set_current_stream(self.s)

    def __exit__(self, *exc) -> None:
        if self.s is not None:
            backend().set_current_stream(self.previous)


_shared: dict = {}  # (backend name, purpose) -> Stream


def shared_stream(purpose, priority: int = 0) -> Stream:
    """The process-wide stream for ``purpose`` on the active backend (made at first use)."""
    key = (backend().name, purpose)
    if key not in _shared:
        _shared[key] = Stream(priority=priority)
    return _shared[key]


def by_id(stream_id: str) -> Stream:
    """The current, default or a process-wide stream whose ``stream_id`` is ``stream_id`` (a string, as
    graphs carry it)."""
    candidates = [current_stream(), default_stream(), *(s for (name, _), s in _shared.items() if name == backend().name)]
    for s in candidates:
        if str(s.stream_id) == str(stream_id):
            return s
    raise RuntimeError(f"no stream with id {stream_id!r}: known are {sorted({str(s.stream_id) for s in candidates})}")


def synchronize(device=None) -> None:
    """Wait for all work of every stream (raises instead of hanging where the device would hang)."""
    backend().synchronize()
