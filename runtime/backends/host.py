"""Host backend: the CPU plays the device.

Streams are FIFO queues of thunks run by a cooperative scheduler in the host thread. After every host
action the scheduler runs each stream as far as it can, so a stream holds queued work only while it is
parked at a wait (an ExternalEvent not yet recorded, or an event of a parked stream). Host
synchronisation points (``synchronize``, ``.item()``, ``torch.equal`` ...) run the scheduler and raise
``DeadlockError``, naming the events and graphs, where the device would hang.

While a stream captures, a stream is parked, or a task group / task update is open, a
``TorchDispatchMode`` sees every aten call:
- capture: the call is recorded, not executed; its outputs are allocated from shape inference (meta
  kernels) and filled with poison (NaN, or the dtype's maximum) until a replay computes them. Views are
  applied at once (metadata only), so views of recorded outputs see replay results; in-place and
  ``out=`` calls return the tensors they write, as on the device.
- a parked current stream: the call is queued the same way, so stream order holds.
- operators of task namespaces (``npu``) run their Python implementation, which ends in
  ``tasks.submit``; the runtime's submitter records, queues or launches the task's launch closure.
A replay enqueues the recorded program on the current stream; a capture that forked other streams
replays them on streams the graph owns, with the captured event edges.

Limits: one host thread. ``Tensor.numpy()``/``tolist()`` read memory without dispatching, so they do
not wait for queued work (``.item()``, comparisons and printing do). CPU tensor work that is host-side
planning on a real device is device work here: an operator must issue its device work from its
``launch`` closure (``npu_kernels.tasks``), and code between a replay and the records that release it
should not compute with tensors on the parked stream.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode, _pop_mode, _push_mode

from .. import events, streams
from ..errors import DeadlockError, FlagMergeError
from ..opkinds import op_kind

_stream_ids = itertools.count(0)
_pool_ids = itertools.count(1)


def poison_(t: torch.Tensor) -> None:
    if t.dtype.is_floating_point or t.dtype.is_complex:
        t.fill_(float("nan"))
    elif t.dtype == torch.bool:
        t.fill_(True)
    else:
        t.fill_(torch.iinfo(t.dtype).max)


class Wait:
    """A thunk that blocks its stream until ``ready()``; ``describe()`` says what it waits for."""

    def ready(self) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def __call__(self) -> None:
        pass


class FlagWait(Wait):
    def __init__(self, event: "HostExternalEvent", where: str):
        self.event, self.where = event, where

    def ready(self) -> bool:
        return self.event.flag == 1

    def __call__(self) -> None:
        if self.event.consuming:
            self.event.flag = 0

    def describe(self) -> str:
        return f"{self.event.name}.wait() in {self.where}, which no queued work records"

    @property
    def label(self) -> str:
        return f"{self.event.name}.wait"


class EventWait(Wait):
    def __init__(self, stream: "HostStream", target: int, where: str):
        self.stream, self.target, self.where = stream, target, where

    def ready(self) -> bool:
        return self.stream.done >= self.target

    def describe(self) -> str:
        return f"a wait in {self.where} for an event recorded on {self.stream!r}, which is parked"


class Scheduler:
    def __init__(self):
        self.busy: dict = {}       # streams with queued work, in the order they got it
        self.executing = False     # a thunk runs: its aten calls execute directly
        self.current = None        # current stream

    def enqueue(self, stream: "HostStream", thunk) -> None:
        stream.queue.append(thunk)
        stream.issued += 1
        self.busy[stream] = None

    def issue(self, stream: "HostStream", thunk) -> None:
        """Add ``thunk`` to the capture ``stream`` takes part in, or queue it and run what can run."""
        if stream.lane is not None:
            stream.lane.capture.add(stream.lane.index, thunk)
            return
        self.enqueue(stream, thunk)
        self.pump()

    @contextlib.contextmanager
    def direct(self):
        """Aten calls inside run directly: thunks at their turn, and the runtime's own bookkeeping."""
        previous, self.executing = self.executing, True
        try:
            yield
        finally:
            self.executing = previous

    def pump(self) -> None:
        """Run every stream until it is empty or parked."""
        progress = True
        while progress and self.busy:
            progress = False
            for stream in list(self.busy):
                queue = stream.queue
                while queue:
                    thunk = queue[0]
                    if isinstance(thunk, Wait) and not thunk.ready():
                        break
                    queue.popleft()
                    try:
                        with self.direct():
                            thunk()
                    finally:
                        stream.done += 1
                    progress = True
                if not queue:
                    del self.busy[stream]
        _backend.sync_mode()

    def drain(self, finished, what: str) -> None:
        """Run until ``finished()``; raise DeadlockError when nothing can make progress."""
        self.pump()
        if not finished():
            parked = "; ".join(f"{s!r} is parked at {s.queue[0].describe()}" for s in self.busy)
            raise DeadlockError(f"{what} would hang: {parked}")


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
    stream, other lanes are streams that joined through an event recorded in the capture."""

    def __init__(self, name: str, stream: "HostStream"):
        self.name = name
        self.program: list = []
        self.streams = []
        self.lengths: list[int] = []   # instructions per lane
        self.joined: list[int] = []    # per lane: how many of its instructions another lane waited for
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


class HostStream(streams.Stream):
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


class HostEvent(streams.Event):
    def __init__(self, enable_timing: bool = False, blocking: bool = False, interprocess: bool = False):
        self.stream = None       # stream of the last record outside a capture
        self.target = 0          # that stream's position at the record
        self.captured = None     # (capture, lane, position) of a record inside a capture

    def record(self, stream=None) -> None:
        s = _sched.current if stream is None else stream
        if s.lane is not None:
            s.lane.capture.record_event(self, s.lane.index)
            return
        self.captured = None
        self.stream, self.target = s, s.issued

    def wait(self, stream=None) -> None:
        s = _sched.current if stream is None else stream
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


class HostExternalEvent(events.ExternalEvent):
    def __init__(self):
        super().__init__()
        self.flag = 0
        self.waiters: list[str] = []   # where waits were issued (graph names), for error messages

    def _where(self, stream) -> str:
        return stream.lane.capture.name if stream.lane is not None else "eager"

    def _record(self, stream) -> None:
        where = self._where(stream)

        def set_flag():
            if self.consuming and self.flag == 1:
                raise FlagMergeError(
                    f"flag merge: {self.name} recorded ({where}) while an earlier record was not yet "
                    f"consumed by a wait (waits in: {', '.join(self.waiters) or 'none'}); the signal is "
                    "lost and the next wait would block forever (device hang). Order the steps, e.g. "
                    "synchronize before each replay"
                )
            self.flag = 1

        set_flag.label = f"{self.name}.record"
        _sched.issue(stream, set_flag)

    def _wait(self, stream) -> None:
        where = self._where(stream)
        self.waiters.append(where)
        _sched.issue(stream, FlagWait(self, where))

    def _reset(self, stream) -> None:
        def clear():
            self.flag = 0

        clear.label = f"{self.name}.reset"
        _sched.issue(stream, clear)


def _signature(func, leaves: list):
    """Cache key of a call's shape inference, and the distinct tensors among ``leaves`` in order."""
    tensors: dict = {}
    key = [func]
    for x in leaves:
        if isinstance(x, torch.Tensor):
            index = tensors.setdefault(id(x), (len(tensors), x))[0]
            key.append((index, x.shape, x.stride(), x.dtype))
        elif isinstance(x, torch.device):
            key.append("device")
        else:
            key.append((type(x), x))  # 1, 1.0 and True are equal keys but give other dtypes
    return tuple(key), [x for _, x in tensors.values()]


def _infer(func, leaves: list, spec, tensors: list):
    """Output description: per output leaf ("arg", index of the tensor it is), ("new", shape, stride,
    dtype) or ("value", v); from the meta kernels."""
    metas = [torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta") for t in tensors]
    index = {id(t): i for i, t in enumerate(tensors)}
    meta_leaves = [metas[index[id(x)]] if isinstance(x, torch.Tensor)
                   else torch.device("meta") if isinstance(x, torch.device) else x for x in leaves]
    args, kwargs = pytree.tree_unflatten(meta_leaves, spec)
    try:
        out = func(*args, **kwargs)
    except Exception as e:
        raise RuntimeError(f"host backend cannot queue {func}: no shape inference for it on 'meta' ({e})") from e
    arg_of = {id(m): i for i, m in enumerate(metas)}
    out_leaves, out_spec = pytree.tree_flatten(out)
    desc = tuple(("arg", arg_of[id(m)]) if isinstance(m, torch.Tensor) and id(m) in arg_of
                 else ("new", m.shape, m.stride(), m.dtype) if isinstance(m, torch.Tensor)
                 else ("value", m) for m in out_leaves)
    return desc, out_spec


_inferred: dict = {}  # call signature -> output description (shape inference is costly: Python refs)


def record(func, args: tuple, kwargs: dict):
    """Outputs of ``func`` from shape inference (poisoned, or the tensors it writes) and a thunk
    computing them."""
    leaves, spec = pytree.tree_flatten((args, kwargs))
    key, tensors = _signature(func, leaves)
    try:
        desc, out_spec = _inferred[key]
    except KeyError:
        desc, out_spec = _inferred[key] = _infer(func, leaves, spec, tensors)
    except TypeError:  # an unhashable argument
        desc, out_spec = _infer(func, leaves, spec, tensors)
    outs, fresh = [], []
    for i, d in enumerate(desc):
        if d[0] == "arg":
            outs.append(tensors[d[1]])
        elif d[0] == "new":
            t = torch.empty_strided(d[1], d[2], dtype=d[3])
            poison_(t)
            outs.append(t)
            fresh.append((i, t))
        else:
            outs.append(d[1])

    def thunk():
        results = pytree.tree_leaves(func(*args, **kwargs))
        for i, t in fresh:
            t.copy_(results[i])

    thunk.label = str(func)
    return pytree.tree_unflatten(outs, out_spec), thunk


class HostMode(TorchDispatchMode):
    """Intercepts aten calls while the host backend captures, is parked or guards task groups."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        _backend.in_dispatch += 1
        try:
            return self._dispatch(func, args, kwargs or {})
        finally:
            _backend.in_dispatch -= 1

    def _dispatch(self, func, args, kwargs):
        kind = op_kind(func)
        if _sched.executing or kind in ("task", "view"):
            return func(*args, **kwargs)
        stream = _sched.current
        if kind == "alloc":
            out = func(*args, **kwargs)
            if stream.lane is not None:
                poison_(out)
            return out
        if _backend.guarding:
            _backend.check_device_op(stream, func)
        if stream.lane is not None:
            if kind == "host_read":
                raise RuntimeError(
                    f"{func}: operation not permitted when stream is capturing (it reads device data "
                    f"on the host while {stream.lane.capture.name} captures)"
                )
            out, thunk = record(func, args, kwargs)
            stream.lane.capture.add(stream.lane.index, thunk)
            return out
        if kind == "host_read":
            _sched.drain(stream.query, f"{func} on {stream!r}")
            return func(*args, **kwargs)
        if stream.queue:
            out, thunk = record(func, args, kwargs)
            _sched.enqueue(stream, thunk)
            return out
        return func(*args, **kwargs)


class HostGraph:
    def __init__(self, name: str):
        self.name = name
        self.capture = None
        self.program: list = []
        self.lanes: list = []      # streams the graph owns for forked lanes (lane 0 is the replay stream)
        self.pool_handle = None

    def capture_begin(self, stream, pool, capture_error_mode: str) -> None:
        self.pool_handle = pool if pool is not None else (0, next(_pool_ids))
        self.capture = Capture(self.name, stream)
        _backend.captures += 1
        _backend.sync_mode()

    def capture_end(self, stream) -> None:
        capture, self.capture = self.capture, None
        _backend.captures -= 1
        try:
            capture.end()
        finally:
            _backend.sync_mode()
        self.program = capture.program
        self.lanes = [HostStream() for _ in capture.streams[1:]]

    def replay(self, stream) -> None:
        _enqueue_program(self.program, [stream, *self.lanes], f"{self.name} replay")

    def pool(self):
        return self.pool_handle

    def debug_dump(self, path: str) -> None:
        nodes = [{"lane": lane, "node": _label(item)} for lane, item in self.program]
        with open(path, "w") as f:
            json.dump({"graph": self.name, "lanes": 1 + len(self.lanes), "nodes": nodes}, f, indent=1)


class HostBackend:
    name = "host"
    device = torch.device("cpu")
    Stream = HostStream
    Event = HostEvent
    ExternalEvent = HostExternalEvent

    def __init__(self):
        global _backend
        _backend = self
        self.default = HostStream()
        _sched.current = self.default
        self.mode = HostMode()
        self.pushed = False
        self.captures = 0
        self.guarding = False
        self.check_device_op = None    # set with ``guarding`` (see guard_changed)
        self.in_dispatch = 0

    def sync_mode(self) -> None:
        """Push the dispatch mode while there is something to intercept, pop it when idle."""
        want = bool(_sched.busy or self.captures or self.guarding)
        if want == self.pushed or self.in_dispatch:
            return
        if want:
            _push_mode(self.mode)
            self.pushed = True
        elif _get_current_dispatch_mode() is self.mode:
            _pop_mode()
            self.pushed = False

    def guard_changed(self, active: bool, check) -> None:
        """A task group or update opened or closed somewhere; ``check(stream, what)`` refuses device
        work that does not belong on ``stream`` then."""
        self.guarding, self.check_device_op = active, check
        self.sync_mode()

    def current_stream(self) -> HostStream:
        return _sched.current

    def default_stream(self) -> HostStream:
        return self.default

    def set_current_stream(self, stream) -> None:
        if not isinstance(stream, HostStream):
            raise TypeError(f"host backend: {stream!r} is not a host stream")
        _sched.current = stream

    def synchronize(self) -> None:
        if self.captures:
            raise RuntimeError("synchronize(): operation not permitted when stream is capturing")
        _sched.drain(lambda: not _sched.busy, "synchronize()")

    def discard_pending_work(self) -> None:
        """Drop the queued work of every stream (after a DeadlockError, where the device would be hung)."""
        for stream in _sched.busy:
            stream.done += len(stream.queue)
            stream.queue.clear()
        _sched.busy.clear()
        self.sync_mode()

    def is_capturing(self, stream) -> bool:
        return stream.lane is not None

    def new_graph(self, name: str, debug: bool) -> HostGraph:
        return HostGraph(name)

    def graph_pool_handle(self):
        return (0, next(_pool_ids))

    def empty_cache(self) -> None:
        pass

    def launch(self, stream, fn) -> None:
        _sched.issue(stream, fn)

    def new_block(self, params: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(params)

    def direct(self):
        return _sched.direct()

    def write_blocks(self, blocks) -> None:
        with _sched.direct():
            for block, params in blocks:
                block.copy_(params)

    def block_writer(self, block: torch.Tensor):
        def write(params: torch.Tensor, stream) -> None:
            with _sched.direct():
                staged = params.clone()
            _sched.issue(stream, lambda: block.copy_(staged))

        return write

    def copy_into(self, dst: torch.Tensor, src: torch.Tensor, stream) -> None:
        _sched.issue(stream, lambda: dst.copy_(src))

    def record_stream(self, tensor: torch.Tensor, stream) -> None:
        """Nothing to do: queued and captured work holds references to the tensors it uses, so their
        memory cannot be reused before that work has run."""


_backend: HostBackend = None  # the instance (one per process, created by runtime.backends)
