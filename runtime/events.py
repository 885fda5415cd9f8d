"""``torch_npu.npu.ExternalEvent``: a flag word on the device that synchronises with work outside a graph.

``record(s)`` sets the flag on ``s``; ``wait(s)`` blocks ``s`` until the flag is set and may come before
the record (unlike an ordinary event); ``reset(s)`` clears it. Recorded, waited or reset on a capturing
stream, each becomes a node of the graph that acts on the same flag at every replay.

Two semantics, chosen per event when it is created (``set_external_event_semantics``):

``"consuming"`` (default; torch_npu 26.x with value wait/write): a wait clears the flag once it passes,
    so one record releases exactly one wait; two waits issued with no record between them are an
    error, and a record that finds the flag still set is a lost signal (flag merge) that the backends
    report where the device would hang.
``"reset"`` (torch_npu 7.x and earlier, ``ACL_EVENT_EXTERNAL``): a wait leaves the flag set, several
    streams may wait for one record, and the flag is cleared only by ``reset``.

The flag itself is the backend's (``backend().new_flag``). Record, wait and reset are no kernel
launches, so a stream with an open task group or in task-update mode refuses them with CANN's errors.
"""

from __future__ import annotations

import itertools

from . import graphs
from .backends import backend
from .streams import current_stream

SEMANTICS = ("consuming", "reset")
_semantics = "consuming"
_ids = itertools.count(1)


def set_external_event_semantics(name: str) -> str:
    """Semantics of ExternalEvents created from now on; returns the previous setting."""
    global _semantics
    if name not in SEMANTICS:
        raise ValueError(f"external event semantics {name!r}: expected one of {', '.join(SEMANTICS)}")
    previous, _semantics = _semantics, name
    return previous


class ExternalEvent:
    """Event synchronising with work outside a graph; ``stream`` defaults to the current stream."""

    def __init__(self):
        self.consuming = _semantics == "consuming"
        self.name = f"ExternalEvent#{next(_ids)}"
        self._waited = False  # a wait was issued and no record since (single-waiter check)
        self._flag = backend().new_flag(self.name, self.consuming)

    def __repr__(self) -> str:
        return f"<{self.name} ({'consuming' if self.consuming else 'reset'} wait)>"

    def record(self, stream=None) -> None:
        s, where = self._on(stream, "record")
        self._waited = False
        self._flag.record(s, where)

    def wait(self, stream=None) -> None:
        s, where = self._on(stream, "wait")
        if self.consuming and self._waited:
            raise RuntimeError(
                "External event: A single record operation cannot be associated with multiple wait "
                f"operations. ({self.name} was waited twice with no record in between; with consuming "
                "waits each record releases one wait)"
            )
        self._waited = True
        self._flag.wait(s, where)

    def reset(self, stream=None) -> None:
        s, where = self._on(stream, "reset")
        self._flag.reset(s, where)

    def _on(self, stream, op: str):
        """The stream to issue ``op`` on, checked, and where it is issued (the capturing graph or eager)."""
        be = backend()
        s = current_stream() if stream is None else stream
        be.check_stream(s, f"{self.name}.{op}()")
        graph = graphs.capturing_graph() if be.is_capturing(s) else None
        return s, "eager" if graph is None else graph.name
