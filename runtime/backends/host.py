"""Host backend: the CPU plays the device.

Streams are FIFO queues of thunks run by a scheduler. After every host action the scheduler runs each
stream as far as it can, so a stream holds queued work only while it is parked at a wait (an
ExternalEvent not yet recorded, or an event of a parked stream). Host synchronisation points
(``synchronize``, ``.item()``, ``torch.equal``, ``tolist()``, ``numpy()``, printing ...) run the
scheduler and raise ``DeadlockError``, naming the events and graphs, where the device would hang.

While a stream captures, a stream is parked, or a task group / task update is open, a
``TorchDispatchMode`` sees every aten call of the threads that use the runtime:
- capture: the call is recorded, not executed (``recording``); views are applied at once (metadata
  only), so views of recorded outputs see replay results. Memory allocated during a capture belongs to
  the graph until it is reset, as a private pool on the device.
- a parked current stream: the call is queued the same way, so stream order holds.
- operators of task namespaces (``npu``) run their Python implementation, which ends in
  ``tasks.submit``; the runtime's submitter records, queues or launches the task's launch closure.
Reads of tensor memory that do not dispatch (``tolist``, ``numpy``, ``__array__``, printing) go through
a ``TorchFunctionMode`` while the current stream captures or is parked, and are host reads like
``.item()``: they wait for the current stream, and raise where it captures or would hang. torch.compile
traces with the dispatch mode off and runs compiled code with it on (``ignore_compile_internals``), so
a compiled function is captured too.
A replay enqueues the recorded program on the current stream; a capture that forked other streams
replays them on streams the graph owns, with the captured event edges.

Threads: each thread has its own current stream (the default stream at first), as on the device. The
scheduler's state is guarded by one lock and thunks run under it, one at a time, in whichever thread
runs the scheduler, so concurrent replays and records lose no work. A host synchronisation that finds
nothing able to run raises at once when no other thread is alive (or all others wait too); otherwise it
waits for another thread to release the work, at most ``wait_timeout_s`` seconds. The dispatch modes
are per thread: a thread's tensor work is intercepted once it has called the runtime (a stream, event,
graph or task call) since the backend had something to intercept.

Limits: CPU tensor work that is host-side planning on a real device is device work here: an operator
must issue its device work from its ``launch`` closure (``npu_kernels.tasks``), and code between a
replay and the records that release it should not compute with tensors on the parked stream.
"""

from __future__ import annotations

import collections
import itertools
import json
import threading
import time

import torch
from torch import overrides
from torch.overrides import TorchFunctionMode
from torch.utils import _python_dispatch as dispatch
from torch.utils._python_dispatch import TorchDispatchMode

from ..errors import DeadlockError, FlagMergeError
from ..opkinds import op_kind
from . import interface
from .recording import inferred, poison_, record

_stream_ids = itertools.count(0)
_pool_ids = itertools.count(1)


class _ThreadState(threading.local):
    def __init__(self):
        self.current = None       # the thread's current stream (None: the default stream)
        self.executing = False    # a thunk runs in this thread: its aten calls execute directly
        self.in_mode = 0          # inside a mode's handler: the mode stacks must not change
        self.mode_on = False      # HostMode is on this thread's dispatch mode stack
        self.reads_on = False     # HostReads is on this thread's torch function mode stack


_thread = _ThreadState()


def _switch(mode, want: bool, push, pop, top) -> bool:
    """Push ``mode``, or pop it if it is on top; returns whether it is on the stack (under a mode pushed
    after it, it stays, passing calls through, until a later switch finds it on top)."""
    if want:
        push(mode)
        return True
    if top() is mode:
        pop()
        return False
    return True


class _Direct:
    """Context: the calling thread's aten calls run directly (thunks at their turn, the runtime's own
    bookkeeping), past the torch function modes, which saw the calls when they were issued."""

    def __enter__(self):
        self.previous, _thread.executing = _thread.executing, True
        self.no_modes = torch._C.DisableTorchFunction()
        self.no_modes.__enter__()

    def __exit__(self, *exc):
        self.no_modes.__exit__(*exc)
        _thread.executing = self.previous


class Wait:
    """A thunk that blocks its stream until ``ready()``; ``describe()`` says what it waits for."""

    def ready(self) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def __call__(self) -> None:
        pass


class FlagWait(Wait):
    def __init__(self, flag: "HostFlag", where: str):
        self.flag, self.where = flag, where

    def ready(self) -> bool:
        return self.flag.value == 1

    def __call__(self) -> None:
        if self.flag.consuming:
            self.flag.value = 0

    def describe(self) -> str:
        return f"{self.flag.name}.wait() in {self.where}, which no queued work records"

    @property
    def label(self) -> str:
        return f"{self.flag.name}.wait"


class EventWait(Wait):
    def __init__(self, stream: "HostStream", target: int, where: str):
        self.stream, self.target, self.where = stream, target, where

    def ready(self) -> bool:
        return self.stream.done >= self.target

    def describe(self) -> str:
        return f"a wait in {self.where} for an event recorded on {self.stream!r}, which is parked"


class Scheduler:
    """Runs the streams' queues. ``lock`` guards the queues and stream positions; ``progress`` is
    notified whenever the scheduler ran something, for threads waiting in ``drain``."""

    def __init__(self):
        self.busy: dict = {}       # streams with queued work, in the order they got it
        self.lock = threading.RLock()
        self.progress = threading.Condition(self.lock)

    def enqueue(self, stream: "HostStream", thunk) -> None:
        with self.lock:
            stream.queue.append(thunk)
            stream.issued += 1
            self.busy[stream] = None

    def issue(self, stream: "HostStream", thunk) -> None:
        """Add ``thunk`` to the capture ``stream`` takes part in, or queue it and run what can run."""
        with self.lock:
            if stream.lane is not None:
                stream.lane.capture.add(stream.lane.index, thunk)
                return
            self.enqueue(stream, thunk)
            self.pump()

    @staticmethod
    def direct() -> _Direct:
        return _Direct()

    def pump(self) -> None:
        """Run every stream until it is empty or parked."""
        with self.lock:
            if self.busy:
                self._run()
        _backend.update_modes()

    def _run(self) -> None:
        progress = True
        try:
            with self.direct():
                while progress and self.busy:
                    progress = False
                    for stream in list(self.busy):
                        queue = stream.queue
                        while queue:
                            thunk = queue[0]
                            if isinstance(thunk, Wait) and not thunk.ready():
                                break
                            queue.popleft()
                            progress = True
                            try:
                                thunk()
                            finally:
                                stream.done += 1
                        if not queue:
                            del self.busy[stream]
        finally:
            self.progress.notify_all()   # waiting threads look again (also after a thunk's error)

    def parked(self) -> str:
        return "; ".join(f"{s!r} is parked at {s.queue[0].describe()}" for s in self.busy if s.queue)

    def drain(self, finished, what: str) -> None:
        """Run until ``finished()``. When nothing can run: raise ``DeadlockError`` at once if no other
        thread may release the work, else wait for one, at most ``wait_timeout_s``."""
        with self.lock:
            self.pump()
            if finished():
                return
            deadline = time.monotonic() + _backend.wait_timeout_s
            with _backend.blocked():
                while not finished():
                    if not _backend.others_may_release():
                        raise DeadlockError(f"{what} would hang: {self.parked()}")
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise DeadlockError(
                            f"{what} would hang: {self.parked()}; no other thread released it within "
                            f"{_backend.wait_timeout_s} s (runtime.backend().wait_timeout_s)"
                        )
                    self.progress.wait(remaining)
                    self.pump()


_sched = Scheduler()


class _Lane:
    __slots__ = ("capture", "index")

    def __init__(self, capture: "Capture", index: int):
        self.capture, self.index = capture, index


class _RecordMark:
    """Captured ordinary event record: at replay it snapshots the lane's stream position."""

    def __init__(self, event):
        self.event = event


class _WaitMark:
    def __init__(self, event, where: str):
        self.event, self.where = event, where


class Capture:
    """The program of one capture: (lane, thunk or event mark) in issue order; lane 0 is the capture
    stream, other lanes are streams that joined through an event recorded in the capture. ``buffers``:
    the tensors allocated during the capture (the program holds the outputs it records)."""

    def __init__(self, name: str, stream: "HostStream"):
        self.name = name
        self.program: list = []
        self.streams = []
        self.lengths: list[int] = []   # instructions per lane
        self.joined: list[int] = []    # per lane: how many of its instructions another lane waited for
        self.buffers: list = []
        self.ended = False
        self._join(stream)

    def _join(self, stream: "HostStream") -> int:
        stream.lane = _Lane(self, len(self.streams))
        self.streams.append(stream)
        self.lengths.append(0)
        self.joined.append(0)
        return stream.lane.index

    def add(self, lane: int, item) -> None:
        self.program.append((lane, item))
        self.lengths[lane] += 1

    def record_event(self, event: "HostEvent", lane: int) -> None:
        event.captured = (self, lane, self.lengths[lane])
        self.program.append((lane, _RecordMark(event)))

    def wait_event(self, event: "HostEvent", stream: "HostStream") -> None:
        capture, source, length = event.captured
        if stream.lane is None:
            lane = self._join(stream)
        elif stream.lane.capture is self:
            lane = stream.lane.index
        else:
            raise RuntimeError(f"{stream!r} waits for an event of {self.name} but captures {stream.lane.capture.name}")
        if lane != source:
            self.joined[source] = max(self.joined[source], length)
            self.add(lane, _WaitMark(event, f"{self.name} replay"))

    def end(self) -> None:
        unjoined = [s for i, s in enumerate(self.streams) if i and self.joined[i] < self.lengths[i]]
        self.ended = True
        for s in self.streams:
            s.lane = None
        if unjoined:
            raise RuntimeError(
                f"capture of {self.name} ended with {unjoined[0]!r} not joined back to the capture "
                "stream (operation not permitted: unjoined work); record an event on it after its last "
                "work and wait for that event on the capture stream"
            )


def _label(item) -> str:
    """What a program entry does, for debug dumps."""
    if isinstance(item, _RecordMark):
        return "Event.record"
    if isinstance(item, _WaitMark):
        return "Event.wait"
    return getattr(item, "label", type(item).__name__)


def _enqueue_program(program: list, lanes: list, where: str) -> None:
    with _sched.lock:
        marks = {}
        for lane, item in program:
            stream = lanes[lane]
            if type(item) is _RecordMark:
                marks[item.event] = (stream, stream.issued)
            elif type(item) is _WaitMark:
                source, target = marks[item.event]
                _sched.enqueue(stream, EventWait(source, target, where))
            else:
                _sched.enqueue(stream, item)
        _sched.pump()


class HostStream(interface.Stream):
    def __init__(self, device=None, priority: int = 0):
        self.priority = priority
        self.id = next(_stream_ids)
        self.queue = collections.deque()
        self.issued = 0     # thunks ever queued
        self.done = 0       # thunks completed
        self.lane = None    # _Lane while the stream takes part in a capture

    def __repr__(self) -> str:
        return f"<host Stream {self.id}>"

    @property
    def stream_id(self) -> int:
        return self.id

    def query(self) -> bool:
        return not self.queue

    def synchronize(self) -> None:
        _sched.drain(self.query, f"{self!r}.synchronize()")


class HostEvent(interface.Event):
    def __init__(self, enable_timing: bool = False, blocking: bool = False, interprocess: bool = False):
        self.stream = None       # stream of the last record outside a capture
        self.target = 0          # that stream's position at the record
        self.captured = None     # (capture, lane, position) of a record inside a capture

    def record(self, stream=None) -> None:
        s = _backend.current_stream() if stream is None else stream
        _backend.check_stream(s, "Event.record()")
        with _sched.lock:
            if s.lane is not None:
                s.lane.capture.record_event(self, s.lane.index)
                return
            self.captured = None
            self.stream, self.target = s, s.issued

    def wait(self, stream=None) -> None:
        s = _backend.current_stream() if stream is None else stream
        _backend.check_stream(s, "Event.wait()")
        with _sched.lock:
            if self.captured is not None:
                if self.captured[0].ended:
                    raise RuntimeError("Event.wait: the event was recorded in a capture that has ended")
                self.captured[0].wait_event(self, s)
                return
            if s.lane is not None and self.stream is not None:
                raise RuntimeError(
                    f"Event.wait on capturing {s!r}: the event was recorded outside the capture "
                    "(operation not permitted when stream is capturing); use an ExternalEvent"
                )
            if self.stream is not None and self.stream is not s:
                _sched.issue(s, EventWait(self.stream, self.target, "eager"))

    def query(self) -> bool:
        return self.stream is None or self.stream.done >= self.target

    def synchronize(self) -> None:
        _sched.drain(self.query, "Event.synchronize()")


class HostFlag(interface.Flag):
    def __init__(self, name: str, consuming: bool):
        self.name, self.consuming = name, consuming
        self.value = 0
        self.wait_places: set = set()   # where waits were issued ("eager", graph names), for messages

    def record(self, stream, where: str) -> None:
        def set_flag():
            if self.consuming and self.value == 1:
                raise FlagMergeError(
                    f"flag merge: {self.name} recorded ({where}) while an earlier record was not yet "
                    f"consumed by a wait (waits in: {', '.join(sorted(self.wait_places)) or 'none'}); the "
                    "signal is lost and the next wait would block forever (device hang). Order the "
                    "steps, e.g. synchronize before each replay"
                )
            self.value = 1

        set_flag.label = f"{self.name}.record"
        _sched.issue(stream, set_flag)

    def wait(self, stream, where: str) -> None:
        self.wait_places.add(where)
        _sched.issue(stream, FlagWait(self, where))

    def reset(self, stream, where: str) -> None:
        def clear():
            self.value = 0

        clear.label = f"{self.name}.reset"
        _sched.issue(stream, clear)


def _give_blocks(pairs: list) -> None:
    """Each (launch, params) pair: the launch reads ``params`` as its block from now on."""
    for launch, params in pairs:
        launch.block = params


class HostMode(TorchDispatchMode):
    """Intercepts aten calls while the host backend captures, is parked or guards task groups."""

    npu_transparent = True        # npu operators run as they are, without the dispatcher (npu_kernels.library)

    @classmethod
    def ignore_compile_internals(cls) -> bool:
        """torch.compile may trace while the mode is on (it is off while compiling, on while the compiled
        code runs), so a compiled function called in a capture is compiled and captured."""
        return True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        _thread.in_mode += 1
        try:
            with torch._C.DisableTorchFunction():  # the call went through the torch function modes
                return self._dispatch(func, args, kwargs or {})
        finally:
            _thread.in_mode -= 1

    def _dispatch(self, func, args, kwargs):
        kind = op_kind(func)
        if _thread.executing or kind in ("task", "view"):
            return func(*args, **kwargs)
        stream = _backend.current_stream()
        if kind == "alloc":
            out = func(*args, **kwargs)
            if stream.lane is not None:
                poison_(out)
                stream.lane.capture.buffers.append(out)
            return out
        _backend.check_stream(stream, func)
        if kind == "host_read":
            _backend.host_read(str(func))
            return func(*args, **kwargs)
        if stream.lane is not None:
            out, thunk = record(func, args, kwargs)
            _sched.issue(stream, thunk)
            return out
        with _sched.lock:
            if stream.queue:
                out, thunk = record(func, args, kwargs)
                _sched.enqueue(stream, thunk)
                return out
        return func(*args, **kwargs)


_READS = frozenset({torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.__array__, torch.Tensor.__repr__,
                    torch.Tensor.__format__})


class HostReads(TorchFunctionMode):
    """Tensor methods that read memory without an aten call are host reads, like ``.item()``."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _READS and not _thread.executing and type(args[0]) in (torch.Tensor, torch.nn.Parameter):
            _thread.in_mode += 1
            try:
                _backend.host_read(f"Tensor.{func.__name__}")
            finally:
                _thread.in_mode -= 1
        return func(*args, **(kwargs or {}))


class HostGraph(interface.Graph):
    def __init__(self, name: str):
        self.name = name
        self.capture = None
        self.program: list = []
        self.lanes: list = []      # streams the graph owns for forked lanes (lane 0 is the replay stream)
        self.buffers: list = []    # tensors allocated during the capture
        self.pool_handle = None

    def capture_begin(self, stream, pool, capture_error_mode: str) -> None:
        self.pool_handle = pool if pool is not None else (0, next(_pool_ids))
        with _sched.lock:
            self.capture = Capture(self.name, stream)
            _backend.captures += 1
        _backend.update_modes()

    def capture_end(self, stream) -> None:
        with _sched.lock:
            capture, self.capture = self.capture, None
            _backend.captures -= 1
            try:
                capture.end()
            finally:
                _backend.update_modes()
        self.program, self.buffers = capture.program, capture.buffers
        self.lanes = [HostStream() for _ in capture.streams[1:]]

    def replay(self, stream) -> None:
        _enqueue_program(self.program, [stream, *self.lanes], f"{self.name} replay")

    def pool(self):
        return self.pool_handle

    def debug_dump(self, path: str) -> None:
        nodes = [{"lane": lane, "node": _label(item)} for lane, item in self.program]
        with open(path, "w") as f:
            json.dump({"graph": self.name, "lanes": 1 + len(self.lanes), "nodes": nodes}, f, indent=1)


class HostBackend(interface.Backend):
    name = "host"
    device = torch.device("cpu")
    Stream = HostStream
    Event = HostEvent

    def __init__(self):
        global _backend
        super().__init__()
        _backend = self
        self.default = HostStream()
        self.mode = HostMode()
        self.reads = HostReads()
        self.captures = 0

    def update_modes(self) -> None:
        """On the calling thread (not from inside a mode's handler): ``HostMode`` while some stream
        captures or is parked or a task group is open; ``HostReads`` while its current stream captures
        or is parked (elsewhere a read waits for nothing)."""
        t = _thread
        mode = bool(_sched.busy or self.captures or self.guarding)
        if t.in_mode or not (mode or t.mode_on or t.reads_on):
            return
        stream = self.default if t.current is None else t.current
        reads = stream.lane is not None or bool(stream.queue)
        if mode != t.mode_on:
            t.mode_on = _switch(self.mode, mode, dispatch._push_mode, dispatch._pop_mode,
                                dispatch._get_current_dispatch_mode)
        if reads != t.reads_on:
            t.reads_on = _switch(self.reads, reads, overrides._push_mode, overrides._pop_mode,
                                 overrides._get_current_function_mode)

    def host_read(self, what: str) -> None:
        """Before the host reads device memory: raise while the current stream captures, else run the
        current stream's queued work (``DeadlockError`` where it would hang)."""
        stream = self.current_stream()
        if stream.lane is not None:
            raise RuntimeError(
                f"{what}: operation not permitted when stream is capturing (it reads device data on the "
                f"host while {stream.lane.capture.name} captures)"
            )
        _sched.drain(stream.query, f"{what} on {stream!r}")

    def current_stream(self) -> HostStream:
        current = _thread.current
        return self.default if current is None else current

    def default_stream(self) -> HostStream:
        return self.default

    def set_current_stream(self, stream) -> None:
        if not isinstance(stream, HostStream):
            raise TypeError(f"host backend: {stream!r} is not a host stream")
        _thread.current = stream
        self.update_modes()

    def synchronize(self) -> None:
        if self.captures:
            raise RuntimeError("synchronize(): operation not permitted when stream is capturing")
        _sched.drain(lambda: not _sched.busy, "synchronize()")

    def discard_pending_work(self) -> None:
        with _sched.lock:
            for stream in _sched.busy:
                stream.done += len(stream.queue)
                stream.queue.clear()
            _sched.busy.clear()
            _sched.progress.notify_all()
        self.update_modes()

    def is_capturing(self, stream) -> bool:
        return stream.lane is not None

    def new_graph(self, name: str, debug: bool) -> HostGraph:
        return HostGraph(name)

    def graph_pool_handle(self):
        return (0, next(_pool_ids))

    def new_flag(self, name: str, consuming: bool) -> HostFlag:
        return HostFlag(name, consuming)

    def empty_cache(self, release_caches: bool = True) -> None:
        """The CPU allocator caches no memory; with ``release_caches``, the inferred output shapes too."""
        super().empty_cache(release_caches)
        if release_caches:
            inferred.clear()

    def host_empty_cache(self) -> None:
        """Nothing to release: no pinned memory (host tensors are the device's)."""

    def launch(self, stream, fn) -> None:
        _sched.issue(stream, fn)

    def new_block(self, params: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(params)

    def direct(self):
        return _sched.direct()

    def write_blocks(self, blocks) -> None:
        pairs = list(blocks)
        if pairs:                      # (``_foreach_copy_`` refuses empty lists)
            with _sched.direct():
                torch._foreach_copy_([block for block, _ in pairs], [params for _, params in pairs])

    def blocks_writer(self):
        """Gives the launches their new parameter blocks (no copy: a launch reads its block when it runs) on
        a stream: at once when the stream has nothing queued and does not capture, else in its order."""
        def write(pairs: list, stream) -> None:
            if stream.lane is None and not stream.queue:
                _give_blocks(pairs)
            else:
                _sched.issue(stream, lambda: _give_blocks(pairs))

        return write

    def copy_into(self, dst: torch.Tensor, src: torch.Tensor, stream) -> None:
        _sched.issue(stream, lambda: dst.copy_(src))

    def record_stream(self, tensor: torch.Tensor, stream) -> None:
        """Nothing to do: queued and captured work holds references to the tensors it uses, so their
        memory cannot be reused before that work has run."""


_backend: HostBackend = None  # the instance (one per process, created by runtime.backends)
