"""The one interface between the runtime's front-end and its backends.

The front-end (``runtime.graphs``, ``streams``, ``events``, ``tasks``, ``auto_dispatch``, ``torchair``,
``compat``) calls what is declared here; a backend implements it and never imports a front-end module,
so the dependencies run one way (tests/runtime/test_backend_imports.py checks it).

- ``Backend``: streams and host synchronisation, graphs, ExternalEvent flags, memory, and the task
  primitives of ``runtime.tasks`` (launch, parameter blocks, copies, the task-group guard).
- ``Stream`` and ``Event``: a backend's streams and ordinary events are the objects users hold. A
  backend makes streams itself (its default stream; on CUDA the current stream of the device, which
  torch code may set), so these classes live here, not in the front-end; ``Stream()`` and ``Event()``
  make one of the active backend.
- ``Graph``: the backend side of an ``NPUGraph``; ``Flag``: the backend side of an ``ExternalEvent``
  (its flag word). The front-end objects own the checks and the names, these own the device work.

Where the device would hang, a backend raises ``DeadlockError``: at once when no other thread is alive
to release the work a host synchronisation waits for, else after waiting ``wait_timeout_s`` seconds
for one to do so.
"""

from __future__ import annotations

import abc
import contextlib
import threading

import torch

from npu_kernels import caches

from . import backend as active_backend


class Stream(abc.ABC):
    """An ordered queue of device work. Equal streams are the same queue; usable as a dict key."""

    def __new__(cls, device=None, priority: int = 0):
        if cls is Stream:
            cls = active_backend().Stream
        return super().__new__(cls)

    @property
    @abc.abstractmethod
    def stream_id(self) -> int:
        """A number naming the stream (graphs and torchair carry it as a string)."""

    @abc.abstractmethod
    def query(self) -> bool:
        """True when all work issued to the stream has run."""

    @abc.abstractmethod
    def synchronize(self) -> None:
        """Wait for the stream's work (``DeadlockError`` where the device would hang)."""

    def wait_event(self, event: "Event") -> None:
        event.wait(self)

    def wait_stream(self, stream: "Stream") -> None:
        self.wait_event(stream.record_event())

    def record_event(self, event: "Event | None" = None) -> "Event":
        event = Event() if event is None else event
        event.record(self)
        return event


class Event(abc.ABC):
    """An ordinary event with snapshot semantics: a wait binds to the last record issued before it and
    is a no-op when the event was never recorded. ``stream=None`` means the current stream."""

    def __new__(cls, enable_timing: bool = False, blocking: bool = False, interprocess: bool = False):
        if cls is Event:
            cls = active_backend().Event
        return super().__new__(cls)

    @abc.abstractmethod
    def record(self, stream: Stream | None = None) -> None: ...

    @abc.abstractmethod
    def wait(self, stream: Stream | None = None) -> None: ...

    @abc.abstractmethod
    def query(self) -> bool: ...

    @abc.abstractmethod
    def synchronize(self) -> None: ...


class Flag(abc.ABC):
    """The flag word of one ExternalEvent. Each call issues its operation on ``stream`` (a node of the
    graph when ``stream`` captures); ``where`` names the graph capturing it, or ``"eager"``, for messages."""

    @abc.abstractmethod
    def record(self, stream: Stream, where: str) -> None:
        """Set the flag (consuming semantics: finding it set is a lost signal, ``FlagMergeError``)."""

    @abc.abstractmethod
    def wait(self, stream: Stream, where: str) -> None:
        """Block ``stream`` until the flag is set; consuming semantics then clear it."""

    @abc.abstractmethod
    def reset(self, stream: Stream, where: str) -> None:
        """Clear the flag."""


class Graph(abc.ABC):
    """The backend side of one NPUGraph capture. Memory allocated during the capture belongs to the graph
    until it is dropped (``NPUGraph.reset``), as a graph's private pool does on the device, so tensors
    that only borrow it (``torch_npu._C._weak_ref_tensor``) stay valid while the graph lives."""

    @abc.abstractmethod
    def capture_begin(self, stream: Stream, pool, capture_error_mode: str) -> None: ...

    @abc.abstractmethod
    def capture_end(self, stream: Stream) -> None: ...

    @abc.abstractmethod
    def replay(self, stream: Stream) -> None:
        """Issue the captured work on ``stream``."""

    @abc.abstractmethod
    def pool(self):
        """The handle of the memory pool the capture used."""

    @abc.abstractmethod
    def debug_dump(self, path: str) -> None: ...


class Backend(abc.ABC):
    """A device that plays the NPU. One instance per process and kind (``runtime.backends.backend()``)."""

    name: str
    device: torch.device
    Stream: type[Stream]
    Event: type[Event]

    def __init__(self):
        self.wait_timeout_s = 10.0   # longest wait for a release that may come from another thread
        self.guarding = False        # some stream has an open task group or is in task-update mode
        self.check_device_op = None  # check(stream, what) of runtime.tasks, set with ``guarding``
        self._waiting = 0            # threads blocked in a host synchronisation of this backend
        self._waiting_lock = threading.Lock()

    # streams and host synchronisation
    @abc.abstractmethod
    def current_stream(self) -> Stream:
        """The calling thread's current stream (each thread has its own, the default stream at first)."""

    @abc.abstractmethod
    def default_stream(self) -> Stream: ...

    @abc.abstractmethod
    def set_current_stream(self, stream: Stream) -> None: ...

    @abc.abstractmethod
    def is_capturing(self, stream: Stream) -> bool:
        """True while ``stream`` takes part in a capture (the capture stream or one forked from it)."""

    @abc.abstractmethod
    def synchronize(self) -> None:
        """Wait for all work of every stream."""

    @abc.abstractmethod
    def discard_pending_work(self) -> None:
        """After a ``DeadlockError`` or ``FlagMergeError``, where the device would be hung: drop what waits
        for a release that will not come, so that the backend is usable again."""

    # graphs and ExternalEvents
    @abc.abstractmethod
    def new_graph(self, name: str, debug: bool) -> Graph: ...

    @abc.abstractmethod
    def graph_pool_handle(self): ...

    @abc.abstractmethod
    def new_flag(self, name: str, consuming: bool) -> Flag:
        """The flag of a new ExternalEvent called ``name``; cleared."""

    # memory
    def empty_cache(self, release_caches: bool = True) -> None:
        """``torch.npu.empty_cache``: cached device memory goes back to the system; with
        ``release_caches`` the runtime's caches and the package's (``npu_kernels.caches``: plans,
        launchers) are emptied too. A graph capture begins with ``release_caches=False``, so that it
        reuses the plans and compiled kernels of the warm-up calls."""
        if release_caches:
            caches.release()

    @abc.abstractmethod
    def host_empty_cache(self) -> None:
        """``torch.npu.host_empty_cache``: cached pinned host memory goes back to the system."""

    # task primitives (runtime.tasks)
    @abc.abstractmethod
    def launch(self, stream: Stream, fn) -> None:
        """Issue ``fn()`` (device work of an operator) on ``stream``: run, queued or captured."""

    @abc.abstractmethod
    def direct(self):
        """Context manager: tensor work inside is the runtime's own and runs at once, unintercepted."""

    @abc.abstractmethod
    def new_block(self, params: torch.Tensor) -> torch.Tensor:
        """A device tensor to hold a parameter block like ``params`` (made during a capture)."""

    @abc.abstractmethod
    def write_blocks(self, blocks) -> None:
        """Write each (device block, params) pair, once, when a capture ends."""

    @abc.abstractmethod
    def blocks_writer(self):
        """``write(pairs, stream)``: for each (launch, params) pair of a task update, ordered on ``stream``,
        the captured launch's parameter block ``launch.block`` holds ``params`` (a tensor nothing writes
        afterwards): written into it, or, where the launch reads ``launch.block`` when it runs, ``params``
        itself; one writer per task group."""

    @abc.abstractmethod
    def copy_into(self, dst: torch.Tensor, src: torch.Tensor, stream: Stream) -> None:
        """``dst.copy_(src)`` ordered on ``stream``."""

    @abc.abstractmethod
    def record_stream(self, tensor: torch.Tensor, stream: Stream) -> None:
        """``tensor``'s memory is not reused before the work issued on ``stream`` so far has run."""

    def guard_changed(self, active: bool, check) -> None:
        """A task group or task update opened or closed somewhere; while ``active``, ``check(stream,
        what)`` refuses device work that does not belong on ``stream``."""
        self.guarding, self.check_device_op = active, check
        self.update_modes()

    @abc.abstractmethod
    def update_modes(self) -> None:
        """Start or stop intercepting the calling thread's tensor work as the backend's state requires."""

    def check_stream(self, stream: Stream, what: str) -> None:
        """Refuse ``what`` (an event operation, or other work that is no kernel launch) on ``stream``
        while it has an open task group or is in task-update mode (CANN's errors)."""
        if self.guarding:
            self.check_device_op(stream, what)

    # threads
    def others_may_release(self) -> bool:
        """Called inside ``blocked()``: another thread is alive and not itself blocked in a host
        synchronisation of this backend, so it may still release the work the caller waits for."""
        return threading.active_count() > self._waiting

    @contextlib.contextmanager
    def blocked(self):
        """Count the calling thread as blocked in a host synchronisation inside the block."""
        with self._waiting_lock:
            self._waiting += 1
        try:
            yield
        finally:
            with self._waiting_lock:
                self._waiting -= 1
