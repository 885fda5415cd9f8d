"""CUDA backend: NPUGraph over ``torch.cuda.CUDAGraph``, CUDA streams and events.

``ExternalEvent`` is an int32 flag word in a slab allocated when the backend starts (so that an event
created during a capture is not zeroed by a captured memset at every replay), driven by three tiny
capturable Triton kernels, one program each:
- record: swap in 1; with consuming semantics, finding 1 already there is a lost signal (flag merge);
- wait: spin until the flag is 1, then (consuming) swap in 0; bounded by ``wait_timeout_s`` measured
  with the GPU's global timer;
- reset: swap in 0.
A flag merge or a wait that times out writes the number of its call site into an error word; the host
reads that word (on a private stream, so it never waits behind a parked stream) after every
synchronisation and raises ``FlagMergeError`` or ``DeadlockError`` naming the event and the graph.

Parameter blocks: allocated on the capture stream (in the graph's pool), written after ``capture_end``
from pinned memory; an update copies the new block from a pinned staging buffer of the task with a
``non_blocking`` copy on the update stream, after the previous copy out of that buffer finished.
While a task group or update is open, a dispatch mode refuses other device work on that stream.
"""

from __future__ import annotations

import contextlib
import weakref

import torch
from npu_kernels.device import interpreted, use_interpreter
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode, _pop_mode, _push_mode

from .. import events, streams
from ..errors import DeadlockError, FlagMergeError
from ..opkinds import op_kind

if interpreted():
    use_interpreter()  # kernels must be defined after the switch (they never launch without a GPU)
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.language.extra.cuda import globaltimer  # noqa: E402

FLAG_SLOTS = 1 << 16  # ExternalEvents per process (256 KiB of flags); slot 0 warms the kernels up


# Slots, sites and the timeout are plain int32 arguments (no value specialisation), so each kernel
# compiles once, before any capture.
@triton.jit(do_not_specialize=["slot", "site"])
def flag_record_kernel(flags_ptr, slot, err_ptr, site, CONSUMING: tl.constexpr):
    old = tl.atomic_xchg(flags_ptr + slot, 1, sem="release")
    if CONSUMING:
        if old == 1:
            tl.atomic_cas(err_ptr, 0, site)


@triton.jit(do_not_specialize=["slot", "site", "timeout_us"])
def flag_wait_kernel(flags_ptr, slot, err_ptr, site, timeout_us, CONSUMING: tl.constexpr):
    timeout_ns = timeout_us.to(tl.int64) * 1000
    start = globaltimer()
    if CONSUMING:
        seen = tl.atomic_cas(flags_ptr + slot, 1, 0, sem="acquire")
    else:
        seen = tl.atomic_add(flags_ptr + slot, 0, sem="acquire")
    elapsed = globaltimer() - start
    while (seen != 1) & (elapsed < timeout_ns):
        if CONSUMING:
            seen = tl.atomic_cas(flags_ptr + slot, 1, 0, sem="acquire")
        else:
            seen = tl.atomic_add(flags_ptr + slot, 0, sem="acquire")
        elapsed = globaltimer() - start
    if seen != 1:
        tl.atomic_cas(err_ptr, 0, site)


@triton.jit(do_not_specialize=["slot"])
def flag_reset_kernel(flags_ptr, slot):
    tl.atomic_xchg(flags_ptr + slot, 0)


class CudaStream(streams.Stream):
    """A ``torch.cuda.Stream`` (``.cuda``); wrappers of the same CUDA stream compare equal, and
    ``current_stream()`` returns one wrapper per CUDA stream."""

    _wrappers: dict = {}

    def __init__(self, device=None, priority: int = 0):
        self.cuda = torch.cuda.Stream(priority=priority)
        self._wrappers[self.cuda.stream_id, self.cuda.device_index] = self

    @classmethod
    def of(cls, cuda_stream: torch.cuda.Stream) -> "CudaStream":
        key = (cuda_stream.stream_id, cuda_stream.device_index)
        wrapper = cls._wrappers.get(key)
        if wrapper is None:
            wrapper = cls._wrappers[key] = object.__new__(cls)
            wrapper.cuda = cuda_stream
        return wrapper

    def __eq__(self, other) -> bool:
        return isinstance(other, CudaStream) and self.cuda == other.cuda

    def __hash__(self) -> int:
        return hash((self.cuda.stream_id, self.cuda.device_index))

    def __repr__(self) -> str:
        return f"<cuda Stream {self.cuda.stream_id:#x} on cuda:{self.cuda.device_index}>"

    @property
    def stream_id(self) -> int:
        return self.cuda.stream_id

    def query(self) -> bool:
        return self.cuda.query()

    def synchronize(self) -> None:
        self.cuda.synchronize()
        _backend.raise_errors()


class CudaEvent(streams.Event):
    def __init__(self, enable_timing: bool = False, blocking: bool = False, interprocess: bool = False):
        self.cuda = torch.cuda.Event(enable_timing=enable_timing, blocking=blocking, interprocess=interprocess)

    def record(self, stream=None) -> None:
        self.cuda.record(None if stream is None else stream.cuda)

    def wait(self, stream=None) -> None:
        self.cuda.wait(None if stream is None else stream.cuda)

    def query(self) -> bool:
        return self.cuda.query()

    def synchronize(self) -> None:
        self.cuda.synchronize()
        _backend.raise_errors()

    def elapsed_time(self, end: "CudaEvent") -> float:
        return self.cuda.elapsed_time(end.cuda)


class CudaExternalEvent(events.ExternalEvent):
    def __init__(self):
        super().__init__()
        self.slot = _backend.allocate_flag()
        self.waits = 0          # waits and records issued to the device (eager, and by replays)
        self.records = 0
        self.wait_places: set = set()
        _backend.external_events.add(self)

    def _count(self, stream, kind: str) -> None:
        """Count an issued record or wait; captured ones count at each replay of their graph."""
        from ..graphs import capturing_graph

        graph = capturing_graph() if _backend.is_capturing(stream) else None
        if kind == "waits":
            self.wait_places.add(graph.name if graph is not None else "eager")
        if graph is None:
            setattr(self, kind, getattr(self, kind) + 1)
        else:
            graph._impl.counted.append((self, kind))

    def _where(self, stream) -> str:
        from ..graphs import capturing_graph

        graph = capturing_graph() if _backend.is_capturing(stream) else None
        return graph.name if graph is not None else "eager"

    def _record(self, stream) -> None:
        site = _backend.site(
            FlagMergeError,
            f"flag merge: {self.name} recorded ({self._where(stream)}) while an earlier record was not "
            "yet consumed by a wait; the signal is lost and the next wait would block forever (device "
            "hang). Order the steps, e.g. synchronize before each replay",
        )
        self._count(stream, "records")
        with torch.cuda.stream(stream.cuda):
            flag_record_kernel[(1,)](_backend.flags, self.slot, _backend.error, site, self.consuming, num_warps=1)

    def _wait(self, stream) -> None:
        site = _backend.site(
            DeadlockError,
            f"{self.name}.wait() in {self._where(stream)} timed out after {_backend.wait_timeout_s} s: no "
            "record arrived (the device would hang here)",
        )
        self._count(stream, "waits")
        with torch.cuda.stream(stream.cuda):
            flag_wait_kernel[(1,)](_backend.flags, self.slot, _backend.error, site,
                                   int(_backend.wait_timeout_s * 1e6), self.consuming, num_warps=1)

    def _reset(self, stream) -> None:
        with torch.cuda.stream(stream.cuda):
            flag_reset_kernel[(1,)](_backend.flags, self.slot, num_warps=1)


class GuardMode(TorchDispatchMode):
    """Refuses device work other than operator tasks on a stream with an open group or update."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not _backend.internal and op_kind(func) in ("device", "host_read"):
            tensors = [a for a in pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
            if any(t.is_cuda for t in tensors):
                _backend.check_device_op(_backend.current_stream(), func)
        return func(*args, **kwargs)


class CudaGraph:
    def __init__(self, name: str, debug: bool):
        self.name = name
        self.graph = torch.cuda.CUDAGraph()
        if debug:
            self.graph.enable_debug_mode()
        self.counted: list = []     # (ExternalEvent, "waits" | "records") captured in the graph

    def capture_begin(self, stream, pool, capture_error_mode: str) -> None:
        self.graph.capture_begin(pool=pool, capture_error_mode=capture_error_mode)

    def capture_end(self, stream) -> None:
        self.graph.capture_end()

    def replay(self, stream) -> None:
        self.graph.replay()
        for event, kind in self.counted:
            setattr(event, kind, getattr(event, kind) + 1)

    def pool(self):
        return self.graph.pool()

    def debug_dump(self, path: str) -> None:
        self.graph.debug_dump(path)


class CudaBackend:
    name = "cuda"
    Stream = CudaStream
    Event = CudaEvent
    ExternalEvent = CudaExternalEvent

    def __init__(self):
        global _backend
        _backend = self
        self.device = torch.device("cuda", torch.cuda.current_device())
        self.flags = torch.zeros(FLAG_SLOTS, dtype=torch.int32, device=self.device)
        self.error = torch.zeros(1, dtype=torch.int32, device=self.device)
        self.error_host = torch.zeros(1, dtype=torch.int32).pin_memory()
        self.private = torch.cuda.Stream()
        self.next_slot = 1
        self.sites: list = [None]          # site number -> (error class, message)
        self.site_ids: dict = {}
        self.wait_timeout_s = 10.0
        self.internal = 0                  # > 0 while the runtime itself issues device work
        self.guard = GuardMode()
        self.external_events = weakref.WeakSet()
        self.guarded = False
        self._warm_up()

    def _warm_up(self) -> None:
        """Compile the flag kernels now: a first compilation inside a capture could break it."""
        with torch.cuda.stream(self.private):
            for consuming in (True, False):
                flag_record_kernel[(1,)](self.flags, 0, self.error, 0, consuming, num_warps=1)
                flag_wait_kernel[(1,)](self.flags, 0, self.error, 0, 0, consuming, num_warps=1)
            flag_reset_kernel[(1,)](self.flags, 0, num_warps=1)
        self.private.synchronize()
        self.error.zero_()

    def allocate_flag(self) -> int:
        if self.next_slot >= FLAG_SLOTS:
            raise RuntimeError(f"too many ExternalEvents (limit {FLAG_SLOTS - 1} per process); reuse them")
        self.next_slot += 1
        return self.next_slot - 1

    def site(self, error: type, message: str) -> int:
        key = (error, message)
        if key not in self.site_ids:
            self.site_ids[key] = len(self.sites)
            self.sites.append(key)
        return self.site_ids[key]

    def raise_errors(self) -> None:
        """Raise the error a flag kernel reported, if any (read on the private stream)."""
        with self.direct(), torch.cuda.stream(self.private):
            self.error_host.copy_(self.error, non_blocking=True)
            self.private.synchronize()
            site = int(self.error_host[0])
            if site:
                self.error.zero_()
                self.private.synchronize()
        if site:
            error, message = self.sites[site]
            raise error(message)

    def clear_errors(self) -> None:
        """Wait for every stream (pending waits run into their timeout), forget reported errors and
        the waits that had no record."""
        torch.cuda.synchronize()
        self.error.zero_()
        torch.cuda.synchronize()
        for event in self.external_events:
            event.records = max(event.records, event.waits)

    @contextlib.contextmanager
    def direct(self):
        self.internal += 1
        try:
            yield
        finally:
            self.internal -= 1

    def guard_changed(self, active: bool, check) -> None:
        """A task group or update opened or closed somewhere; ``check(stream, what)`` refuses device
        work that does not belong on ``stream`` then."""
        self.check_device_op = check
        if active and not self.guarded:
            _push_mode(self.guard)
            self.guarded = True
        elif not active and self.guarded and _get_current_dispatch_mode() is self.guard:
            _pop_mode()
            self.guarded = False

    def current_stream(self) -> CudaStream:
        return CudaStream.of(torch.cuda.current_stream())

    def default_stream(self) -> CudaStream:
        return CudaStream.of(torch.cuda.default_stream())

    def set_current_stream(self, stream) -> None:
        if not isinstance(stream, CudaStream):
            raise TypeError(f"cuda backend: {stream!r} is not a CUDA stream")
        torch.cuda.set_stream(stream.cuda)

    def synchronize(self) -> None:
        """Raise at once where a consuming wait has no record issued for it (instead of spinning
        into the timeout), else wait for the device and raise what the flag kernels reported."""
        for event in self.external_events:
            if event.consuming and event.waits > event.records:
                raise DeadlockError(
                    f"synchronize() would hang: {event.name} has {event.waits} wait(s) issued (in "
                    f"{', '.join(sorted(event.wait_places))}) and {event.records} record(s); each "
                    "consuming wait needs its own record"
                )
        torch.cuda.synchronize()
        self.raise_errors()

    def is_capturing(self, stream) -> bool:
        if stream.cuda == torch.cuda.current_stream():
            return torch.cuda.is_current_stream_capturing()
        with torch.cuda.stream(stream.cuda):
            return torch.cuda.is_current_stream_capturing()

    def new_graph(self, name: str, debug: bool) -> CudaGraph:
        return CudaGraph(name, debug)

    def graph_pool_handle(self):
        return torch.cuda.graph_pool_handle()

    def empty_cache(self) -> None:
        torch.cuda.empty_cache()

    def launch(self, stream, fn) -> None:
        with self.direct():
            fn()

    def new_block(self, params: torch.Tensor) -> torch.Tensor:
        return torch.empty(params.shape, dtype=params.dtype, device=self.device)

    def write_blocks(self, blocks) -> None:
        with self.direct():
            for block, params in blocks:
                block.copy_(params.pin_memory(), non_blocking=True)
        torch.cuda.current_stream().synchronize()

    def block_writer(self, block: torch.Tensor):
        """Writes into ``block`` through a pinned staging buffer, made at the first update (pinned
        allocation is not allowed during a capture)."""
        staging, copied = [], torch.cuda.Event()

        def write(params: torch.Tensor, stream) -> None:
            if not staging:
                staging.append(torch.empty(block.shape, dtype=block.dtype).pin_memory())
            copied.synchronize()  # the previous copy out of the staging buffer has finished
            staging[0].copy_(params)
            with self.direct(), torch.cuda.stream(stream.cuda):
                block.copy_(staging[0], non_blocking=True)
                copied.record()

        return write

    def copy_into(self, dst: torch.Tensor, src: torch.Tensor, stream) -> None:
        with self.direct(), torch.cuda.stream(stream.cuda):
            dst.copy_(src, non_blocking=True)

    def record_stream(self, tensor: torch.Tensor, stream) -> None:
        tensor.record_stream(stream.cuda)


_backend: CudaBackend = None  # the instance (one per process, created by runtime.backends)
