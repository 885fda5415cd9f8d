"""CUDA backend: NPUGraph over ``torch.cuda.CUDAGraph``, CUDA streams and events.

An ExternalEvent's flag (``CudaFlag``) is an int32 word in a slab allocated when the backend starts (so
that an event created during a capture is not zeroed by a captured memset at every replay), driven by
three tiny capturable Triton kernels, one program each:
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

As on the host backend: each thread has its own current stream (CUDA's own rule); ``synchronize`` waits,
at most ``wait_timeout_s``, for a record another live thread may still issue before it calls a consuming
wait without a record a deadlock; memory allocated during a capture stays in the graph's private pool
until the graph is reset. Host reads of device memory (``.item()``, ``tolist()``, printing) are copies
to the host on the current stream, so CUDA itself makes them wait for a parked stream (the spinning
wait gives up after ``wait_timeout_s`` and the next synchronize raises) and refuses them during a
capture; there is nothing to intercept. Shape inference does not exist here (work runs or is captured
by CUDA), so there is no inferred-shape cache.
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref

import torch
from npu_kernels.device import interpreted, use_interpreter
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode, _pop_mode, _push_mode

from ..errors import DeadlockError, FlagMergeError
from ..opkinds import op_kind
from . import interface

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


class CudaStream(interface.Stream):
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


class CudaEvent(interface.Event):
    def __init__(self, enable_timing: bool = False, blocking: bool = False, interprocess: bool = False):
        self.cuda = torch.cuda.Event(enable_timing=enable_timing, blocking=blocking, interprocess=interprocess)

    def record(self, stream=None) -> None:
        s = _backend.current_stream() if stream is None else stream
        _backend.check_stream(s, "Event.record()")
        self.cuda.record(s.cuda)

    def wait(self, stream=None) -> None:
        s = _backend.current_stream() if stream is None else stream
        _backend.check_stream(s, "Event.wait()")
        self.cuda.wait(s.cuda)

    def query(self) -> bool:
        return self.cuda.query()

    def synchronize(self) -> None:
        self.cuda.synchronize()
        _backend.raise_errors()

    def elapsed_time(self, end: "CudaEvent") -> float:
        return self.cuda.elapsed_time(end.cuda)


class CudaFlag(interface.Flag):
    def __init__(self, name: str, consuming: bool):
        self.name, self.consuming = name, consuming
        self.slot = _backend.allocate_flag()
        self.waits = 0          # waits and records issued to the device (eager, and by replays)
        self.records = 0
        self.wait_places: set = set()
        _backend.flags_made.add(self)

    def _count(self, stream, kind: str) -> None:
        """Count an issued record or wait; captured ones count at each replay of their graph."""
        graph = _backend.capturing if _backend.is_capturing(stream) else None
        with _backend.lock:
            if graph is None:
                setattr(self, kind, getattr(self, kind) + 1)
            else:
                graph.counted.append((self, kind))

    def record(self, stream, where: str) -> None:
        site = _backend.site(
            FlagMergeError,
            f"flag merge: {self.name} recorded ({where}) while an earlier record was not yet consumed by "
            "a wait; the signal is lost and the next wait would block forever (device hang). Order the "
            "steps, e.g. synchronize before each replay",
        )
        self._count(stream, "records")
        with torch.cuda.stream(stream.cuda):
            flag_record_kernel[(1,)](_backend.flags, self.slot, _backend.error, site, self.consuming, num_warps=1)

    def wait(self, stream, where: str) -> None:
        site = _backend.site(
            DeadlockError,
            f"{self.name}.wait() in {where} timed out after {_backend.wait_timeout_s} s: no record arrived "
            "(the device would hang here)",
        )
        self.wait_places.add(where)
        self._count(stream, "waits")
        with torch.cuda.stream(stream.cuda):
            flag_wait_kernel[(1,)](_backend.flags, self.slot, _backend.error, site,
                                   int(_backend.wait_timeout_s * 1e6), self.consuming, num_warps=1)

    def reset(self, stream, where: str) -> None:
        with torch.cuda.stream(stream.cuda):
            flag_reset_kernel[(1,)](_backend.flags, self.slot, num_warps=1)


class GuardMode(TorchDispatchMode):
    """Refuses device work other than operator tasks on a stream with an open group or update."""

    npu_transparent = True        # npu operators run as they are, without the dispatcher (npu_kernels.library)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not getattr(_backend.internal, "depth", 0) and op_kind(func) in ("device", "host_read"):
            tensors = [a for a in pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
            if any(t.is_cuda for t in tensors):
                _backend.check_stream(_backend.current_stream(), func)
        return func(*args, **kwargs)


class CudaGraph(interface.Graph):
    """A ``torch.cuda.CUDAGraph``; its private memory pool keeps what the capture allocated."""

    def __init__(self, name: str, debug: bool):
        self.name = name
        self.graph = torch.cuda.CUDAGraph()
        if debug:
            self.graph.enable_debug_mode()
        self.counted: list = []     # (CudaFlag, "waits" | "records") captured in the graph

    def capture_begin(self, stream, pool, capture_error_mode: str) -> None:
        self.graph.capture_begin(pool=pool, capture_error_mode=capture_error_mode)
        _backend.capturing = self

    def capture_end(self, stream) -> None:
        _backend.capturing = None
        self.graph.capture_end()

    def replay(self, stream) -> None:
        self.graph.replay()
        with _backend.lock:
            for flag, kind in self.counted:
                setattr(flag, kind, getattr(flag, kind) + 1)

    def pool(self):
        return self.graph.pool()

    def debug_dump(self, path: str) -> None:
        self.graph.debug_dump(path)


class CudaBackend(interface.Backend):
    name = "cuda"
    Stream = CudaStream
    Event = CudaEvent

    def __init__(self):
        global _backend
        super().__init__()
        _backend = self
        self.device = torch.device("cuda", torch.cuda.current_device())
        self.flags = torch.zeros(FLAG_SLOTS, dtype=torch.int32, device=self.device)
        self.error = torch.zeros(1, dtype=torch.int32, device=self.device)
        self.error_host = torch.zeros(1, dtype=torch.int32).pin_memory()
        self.private = torch.cuda.Stream()
        self.next_slot = 1
        self.sites: list = [None]          # site number -> (error class, message)
        self.site_ids: dict = {}
        self.lock = threading.RLock()      # slots, sites and the record/wait counts
        self.internal = threading.local()  # .depth > 0 while the runtime itself issues device work
        self.guard = GuardMode()
        self.guarded = threading.local()   # .on: the guard mode is on this thread's stack
        self.flags_made = weakref.WeakSet()
        self.capturing = None              # the CudaGraph capturing now
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
        with self.lock:
            if self.next_slot >= FLAG_SLOTS:
                raise RuntimeError(f"too many ExternalEvents (limit {FLAG_SLOTS - 1} per process); reuse them")
            self.next_slot += 1
            return self.next_slot - 1

    def site(self, error: type, message: str) -> int:
        key = (error, message)
        with self.lock:
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

    def discard_pending_work(self) -> None:
        """Wait for every stream (pending waits run into their timeout), forget reported errors and
        the waits that had no record."""
        torch.cuda.synchronize()
        self.error.zero_()
        torch.cuda.synchronize()
        with self.lock:
            for flag in self.flags_made:
                flag.records = max(flag.records, flag.waits)

    @contextlib.contextmanager
    def direct(self):
        depth = getattr(self.internal, "depth", 0)
        self.internal.depth = depth + 1
        try:
            yield
        finally:
            self.internal.depth = depth

    def update_modes(self) -> None:
        """The guard mode is on the calling thread's stack while a task group or update is open."""
        on = getattr(self.guarded, "on", False)
        if self.guarding and not on:
            _push_mode(self.guard)
            self.guarded.on = True
        elif not self.guarding and on and _get_current_dispatch_mode() is self.guard:
            _pop_mode()
            self.guarded.on = False

    def current_stream(self) -> CudaStream:
        return CudaStream.of(torch.cuda.current_stream())

    def default_stream(self) -> CudaStream:
        return CudaStream.of(torch.cuda.default_stream())

    def set_current_stream(self, stream) -> None:
        if not isinstance(stream, CudaStream):
            raise TypeError(f"cuda backend: {stream!r} is not a CUDA stream")
        torch.cuda.set_stream(stream.cuda)
        self.update_modes()

    def _unrecorded(self) -> "CudaFlag | None":
        with self.lock:
            return next((f for f in self.flags_made if f.consuming and f.waits > f.records), None)

    def synchronize(self) -> None:
        """Where a consuming wait has no record issued for it: raise at once if no other thread may
        issue it, else wait for one at most ``wait_timeout_s`` (instead of spinning into the device
        timeout). Then wait for the device and raise what the flag kernels reported."""
        flag = self._unrecorded()
        if flag is not None:
            deadline = time.monotonic() + self.wait_timeout_s
            with self.blocked():
                while flag is not None and self.others_may_release() and time.monotonic() < deadline:
                    time.sleep(0.001)
                    flag = self._unrecorded()
        if flag is not None:
            raise DeadlockError(
                f"synchronize() would hang: {flag.name} has {flag.waits} wait(s) issued (in "
                f"{', '.join(sorted(flag.wait_places))}) and {flag.records} record(s); each consuming "
                "wait needs its own record"
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

    def new_flag(self, name: str, consuming: bool) -> CudaFlag:
        return CudaFlag(name, consuming)

    def empty_cache(self, release_caches: bool = True) -> None:
        super().empty_cache(release_caches)
        torch.cuda.empty_cache()

    def host_empty_cache(self) -> None:
        """Pinned memory cached by torch's host allocator (staging buffers of dropped task groups)."""
        release = getattr(torch.accelerator, "empty_host_cache", None) or torch._C._host_emptyCache
        release()

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

    def blocks_writer(self):
        """Writes an update's blocks with one host-to-device copy: their contents gathered in a pinned
        staging buffer, copied straight into the block when there is one, else to a device buffer, then
        into the blocks (one multi-tensor copy). The buffers are made at the first update (pinned
        allocation is not allowed during a capture) and grow."""
        staging, copied = [], torch.cuda.Event()

        def write(pairs: list, stream) -> None:
            blocks, params = [launch.block for launch, _ in pairs], [p for _, p in pairs]
            sizes = [p.numel() for p in params]
            words = sum(sizes)
            copied.synchronize()  # the previous write is done with the staging buffers
            with torch._C.DisableTorchFunction(), torch._C._DisableTorchDispatch():   # the runtime's tensors
                if not staging or staging[0].numel() < words:
                    staging[:] = [torch.empty(words, dtype=torch.int32).pin_memory(),
                                  torch.empty(words, dtype=torch.int32, device=self.device)]
                pinned, device = staging[0][:words], staging[1][:words]
                torch.cat(params, out=pinned)
                with torch.cuda.stream(stream.cuda):
                    if len(blocks) == 1:
                        blocks[0].copy_(pinned, non_blocking=True)
                    else:
                        device.copy_(pinned, non_blocking=True)
                        torch._foreach_copy_(blocks, list(device.split(sizes)))
                    copied.record()

        return write

    def copy_into(self, dst: torch.Tensor, src: torch.Tensor, stream) -> None:
        with self.direct(), torch.cuda.stream(stream.cuda):
            dst.copy_(src, non_blocking=True)

    def record_stream(self, tensor: torch.Tensor, stream) -> None:
        tensor.record_stream(stream.cuda)


_backend: CudaBackend = None  # the instance (one per process, created by runtime.backends)
