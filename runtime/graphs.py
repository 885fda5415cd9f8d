"""``NPUGraph`` and ``graph(...)``: capture and replay with torch_npu's checks, on the active backend.

The semantics mirror ``torch.npu.NPUGraph`` (spec/runtime.md §1.3): capture on a non-default stream,
one captured graph per instance until ``reset()``, capture ends on the stream it began on, replay on
the current stream (any stream). One capture at a time per process
(``NPUGraph.get_currently_capturing_graph``): captures cannot nest. A graph owns the parameter blocks of
the operator calls it captured and writes their initial content when the capture ends; the memory its
capture allocated stays valid until ``reset()`` (the backend graph keeps it). ``graph_dispatch_mode``
is the graph's auto-dispatch mode (spec/runtime.md §1.7), entered by ``graph(...,
auto_dispatch_capture=True)``.
"""

from __future__ import annotations

import gc
import itertools
import os

from . import auto_dispatch
from .backends import backend
from .streams import current_stream, default_stream, shared_stream, stream, synchronize

CAPTURE_ERROR_MODES = ("global", "thread_local", "relaxed")

_ids = itertools.count(1)
_capturing = None  # the NPUGraph capturing now


def capturing_graph():
    return _capturing


def _refuse_nested(graph: "NPUGraph") -> None:
    if _capturing is not None:
        raise RuntimeError(
            f"{graph.name} cannot begin a capture while {_capturing.name} is capturing: captures cannot "
            "nest (one NPUGraph capture at a time per process); end the running capture first"
        )


class NPUGraph:
    """A captured sequence of device work, replayable on any stream."""

    def __init__(self):
        self.name = f"NPUGraph#{next(_ids)}"
        self.auto_dispatch_capture = False
        self._impl = None            # backend graph, present from capture_begin to reset
        self._stream = None          # capture stream while capturing
        self._captured = False
        self._blocks = []            # (device block, initial params) of the captured operator calls
        self._groups = []            # task groups captured in this graph
        self._records = []           # auto-dispatch records, in capture order
        self._debug = False          # keep what debug_dump needs (set before the capture)
        self.graph_dispatch_mode = auto_dispatch.GraphDispatchMode(self)

    def __repr__(self) -> str:
        state = "capturing" if self.capturing else "captured" if self._captured else "empty"
        return f"<{self.name} ({state})>"

    @property
    def capturing(self) -> bool:
        return self._stream is not None

    @staticmethod
    def get_currently_capturing_graph():
        return _capturing

    def capture_begin(self, pool=None, capture_error_mode: str = "global") -> None:
        global _capturing
        if os.environ.get("TASK_QUEUE_ENABLE") == "2":
            raise RuntimeError("Do not support TASK_QUEUE_ENABLE = 2 during NPU graph capture")
        if capture_error_mode not in CAPTURE_ERROR_MODES:
            raise RuntimeError(
                "Unknown capture error mode. Expected `global`, `thread_local`, or `relaxed`, "
                f"got {capture_error_mode!r}"
            )
        if self._impl is not None:
            raise RuntimeError(
                f"This NPUGraph instance already owns a captured graph ({self.name}). To capture a new "
                "graph, create a new instance, or call reset() first."
            )
        s = current_stream()
        if s == default_stream():
            raise RuntimeError(
                "NPU graphs must be captured on a non-default stream. (However, after capture, it's ok "
                "to replay them on the default stream.)"
            )
        _refuse_nested(self)
        self._impl = backend().new_graph(self.name, self._debug)
        self._impl.capture_begin(s, pool, capture_error_mode)
        self._stream = s
        _capturing = self

    def capture_end(self) -> None:
        global _capturing
        if not self.capturing:
            raise RuntimeError(f"capture_end: {self.name} is not capturing")
        s = current_stream()
        if s != self._stream:
            raise RuntimeError(
                f"Capture must end on the same stream it began on. (began on {self._stream!r}, "
                f"current stream is {s!r})"
            )
        from . import tasks

        self._stream = None
        _capturing = None
        unclosed = tasks.drop_open_groups(self)
        try:
            self._impl.capture_end(s)
        except BaseException:
            self._impl = None
            raise
        if unclosed:
            self._impl = None
            raise RuntimeError(f"capture_end: graph_task_group_begin on {unclosed[0]!r} has no graph_task_group_end")
        backend().write_blocks(self._blocks)
        self._captured = True

    def replay(self) -> None:
        if not self._captured:
            raise RuntimeError("Called NPUGraph::replay without a preceding successful capture.")
        for group in self._groups:     # an update in progress: the blocks it rewrote so far
            group.flush()
        self._impl.replay(current_stream())
        if os.environ.get("ASCEND_LAUNCH_BLOCKING") == "1":
            synchronize()

    def reset(self) -> None:
        """Drop the captured graph, its blocks, task groups and records; the instance can capture again."""
        if self.capturing:
            raise RuntimeError(f"reset: {self.name} is capturing; end the capture first")
        for group in self._groups:
            group.valid = False
        self._impl = None
        self._captured = False
        self._blocks, self._groups, self._records = [], [], []

    def pool(self):
        if not self._captured:
            raise RuntimeError("Called NPUGraph::pool() without a preceding successful capture.")
        return self._impl.pool()

    def enable_debug_mode(self) -> None:
        """Keep the captured graph's structure for ``debug_dump`` (call before the capture)."""
        self._debug = True

    def debug_dump(self, debug_path: str) -> None:
        """Write the captured graph's structure: a DOT file on CUDA, JSON (nodes per stream) on the host."""
        if not self._captured or not self._debug:
            raise RuntimeError("debug_dump needs enable_debug_mode() before a successful capture")
        self._impl.debug_dump(debug_path)

    def update(self, cpu_update_input: list) -> None:
        """Re-issue the auto-dispatched calls with new host arguments (spec/runtime.md §1.7)."""
        auto_dispatch.update(self, cpu_update_input)


class graph:
    """Context manager capturing into ``npu_graph`` (torch_npu's argument order)."""

    def __init__(self, npu_graph: NPUGraph, pool=None, stream=None, auto_dispatch_capture: bool = False,
                 capture_error_mode: str = "global"):
        self.npu_graph = npu_graph
        self.pool = pool
        self.capture_stream = shared_stream("capture") if stream is None else stream
        self.auto_dispatch_capture = auto_dispatch_capture
        self.capture_error_mode = capture_error_mode

    def __enter__(self):
        _refuse_nested(self.npu_graph)
        synchronize()
        if os.environ.get("TORCH_NPUGRAPH_GC") == "1":
            gc.collect()
        be = backend()
        be.empty_cache(release_caches=False)
        be.host_empty_cache()
        self._stream_ctx = stream(self.capture_stream)
        self._stream_ctx.__enter__()
        self._dispatch = self.npu_graph.graph_dispatch_mode if self.auto_dispatch_capture else None
        try:
            if self._dispatch is not None:
                self._dispatch.__enter__()
            self.npu_graph.auto_dispatch_capture = self.auto_dispatch_capture
            self.npu_graph.capture_begin(self.pool, capture_error_mode=self.capture_error_mode)
        except BaseException:
            self._leave()
            raise
        return self

    def _leave(self):
        if self._dispatch is not None:
            self._dispatch.__exit__(None, None, None)
        self._stream_ctx.__exit__(None, None, None)

    def __exit__(self, exc_type, exc, tb):
        try:
            self.npu_graph.capture_end()
        except Exception:
            if exc is None:
                raise  # else the body's error propagates, not the failed capture's consequence
        finally:
            self._leave()
        return False


def graph_pool_handle():
    """An opaque handle of a memory pool that several graphs may share (``pool=``)."""
    return backend().graph_pool_handle()


def is_current_stream_capturing() -> bool:
    return backend().is_capturing(current_stream())


def make_graphed_callables(callables, sample_args, num_warmup_iters: int = 3, allow_unused_input: bool = False,
                           pool=None):
    """Capture each callable once with its sample arguments; calls copy inputs in and replay.

    Inference only (nothing may require grad), as on the host there is no backward capture; on CUDA
    with autograd use ``torch.cuda.make_graphed_callables``.
    """
    single = not isinstance(callables, tuple)
    if single:
        callables, sample_args = (callables,), (sample_args,)
    for args in sample_args:
        if any(getattr(a, "requires_grad", False) for a in args):
            raise RuntimeError("make_graphed_callables: inference only; a sample argument requires grad")
    side = backend().Stream()
    side.wait_stream(current_stream())
    with stream(side):
        for fn, args in zip(callables, sample_args):
            for _ in range(num_warmup_iters):
                fn(*args)
    current_stream().wait_stream(side)
    graphed = []
    for fn, args in zip(callables, sample_args):
        g = NPUGraph()
        with graph(g, pool=pool):
            static_out = fn(*args)
        graphed.append(_Graphed(g, args, static_out))
    return graphed[0] if single else tuple(graphed)


class _Graphed:
    def __init__(self, g: NPUGraph, static_args, static_out):
        self.graph, self.static_args, self.static_out = g, static_args, static_out

    def __call__(self, *args):
        for dst, src in zip(self.static_args, args):
            if dst is not src and hasattr(dst, "copy_"):
                dst.copy_(src)
        self.graph.replay()
        return self.static_out
