"""Task groups and task update, and the submitter every operator call goes through.

``graph_task_group_begin(s)`` / ``graph_task_group_end(s)`` bracket operator calls on a capturing
stream; each such call owns its parameter block (allocated during capture, its initial content written
when the capture ends, so that only updates write it afterwards). Between
``graph_task_update_begin(u, h)`` and ``graph_task_update_end(u)`` an operator call on ``u`` is not
launched: it is matched, in capture order, to the next task of the group; its static plan must equal
the captured one, its parameter block is written into the captured block on ``u`` (the group's blocks
together, at ``graph_task_update_end`` or before a replay of the graph), and its tensors are the captured
ones (another tensor of the same shape and dtype is copied into the captured input on
``u``). Errors and messages follow the CANN runtime (spec/runtime.md §1.4, §1.5, §1.9).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch

from npu_kernels import tasks as _tasks
from npu_kernels.tasks import Task

from . import graphs
from .backends import backend


class _Launch:
    """The captured launch of a task, ``run(block, args)``: a task update may replace its run and
    tensors (for views of the same memory; the host backend replays it)."""

    __slots__ = ("run", "block", "args", "label")

    def __init__(self, task: Task, block: torch.Tensor):
        self.run, self.block, self.args, self.label = task.run, block, task.args, task.op

    def __call__(self) -> None:
        self.run(self.block, self.args)


@dataclass(eq=False)
class _CapturedTask(_tasks.Captured):
    task: Task                         # as captured
    launch: _Launch
    group: "_Group"
    passed: object = None              # passed(args): the tensors the caller passes (all but OWN), as a tuple

    def __post_init__(self):
        idx = [i for i, r in enumerate(self.task.roles) if r != _tasks.OWN]
        self.passed = operator.itemgetter(*idx) if len(idx) > 1 else lambda args: tuple(args[i] for i in idx)
        self.given = None                  # made from ``task.given`` at the first update (a capture is slower)
        self.size = self.launch.block.shape

    def rewrite(self, params: torch.Tensor, copies: tuple = (), run=None, args: tuple = ()) -> None:
        """Write ``params`` into the task's block (with the group's others, ``_Group.flush``) and copy each
        (captured, new) input of ``copies`` on the updating stream; the launch runs ``run`` over ``args``
        from now on (``_update``; None: the captured ones, where an earlier update passed views of other
        sizes); the update goes on to the next task."""
        group, launch = self.group, self.launch
        if params.shape != self.size:
            _block_error(self, params, self.task.op, group.matched)
        group.pending.append((launch, params))
        if copies:
            be = backend()
            for dst, src in copies:
                be.copy_into(dst, src, group.updating)
        if run is not None:
            launch.run, launch.args = run, args
        elif launch.args is not self.task.args:
            launch.run, launch.args = self.task.run, self.task.args
        group.matched += 1

    def spare(self, shape, dtype: torch.dtype, device: torch.device, slot: int = 0) -> torch.Tensor:
        spares, key = self.group.spares, (shape, dtype, device, slot)
        out = spares.get(key)
        if out is None:
            with backend().direct():
                out = spares[key] = torch.empty(shape, dtype=dtype, device=device)
        return out

    def same_tensors(self, task: Task) -> bool:
        """``task`` passes the captured tensors themselves (the usual update)."""
        return task.roles == self.task.roles and all(map(operator.is_, self.passed(task.args),
                                                         self.passed(self.task.args)))


@dataclass(eq=False)
class _Group:
    graph: "graphs.NPUGraph"
    stream: object
    tasks: list = field(default_factory=list)
    write: object = None               # the backend's ``blocks_writer()``
    updating: object = None            # the stream updating the group, if any
    matched: int = 0                   # tasks of that update matched so far
    valid: bool = True                 # False once the graph is reset
    pending: list = field(default_factory=list)   # (launch, params) of the update not yet written
    spares: dict = field(default_factory=dict)    # (shape, dtype, device, slot) -> _CapturedTask.spare

    def flush(self) -> None:
        """Write the blocks of the update in progress on its stream, at once: at its end, or before a
        replay of the graph reads them."""
        if self.pending:
            pairs, self.pending = self.pending, []
            self.write(pairs, self.updating)


class TaskGroupHandle:
    """Handle of a captured task group (``torch_npu._C._NPUTaskGroupHandle``)."""

    def __init__(self, group: _Group):
        self._group = group

    @property
    def task_group(self) -> int:
        return id(self._group)

    def __repr__(self) -> str:
        return f"<TaskGroupHandle of {self._group.graph.name}: {len(self._group.tasks)} task(s)>"


_open: dict = {}       # stream -> _Group being captured
_updating: dict = {}   # stream -> _Group being updated


def guarding() -> bool:
    """True while some stream has an open group or is in update mode (only tasks may be issued there)."""
    return bool(_open or _updating)


def _guard_changed() -> None:
    be = backend()
    be.guard_changed(guarding(), check_device_op)
    _tasks.set_captured(_captured(be.current_stream) if _updating else None)


def _captured(current_stream):
    """``npu_kernels.tasks.captured``: ``captured(op)`` is the next task to update on the current stream
    (``current_stream()``), if of ``op`` with a ``given``."""
    def captured(op: str):
        group = _updating.get(current_stream())
        if group is None:
            return None
        try:
            cap = group.tasks[group.matched]
        except IndexError:             # more calls than tasks: the submitter's update says so
            return None
        task = cap.task
        if task.op == op and task.given is not None:
            if cap.given is None:
                cap.given = task.given[0](*task.given[1:])
            return cap
        return None

    return captured


def check_device_op(stream, what) -> None:
    """Device work other than an operator task is not allowed in a group or in update mode."""
    if stream in _updating:
        raise RuntimeError(
            f"{what} issued on {stream!r} in task-update mode: only tasks running on Cube Core or "
            "Vector Core support task group update (RT_ERROR_TASK_NOT_SUPPORT); only operator calls "
            "of the group may be issued between graph_task_update_begin and graph_task_update_end"
        )
    if stream in _open:
        raise RuntimeError(
            f"{what} issued on {stream!r} inside a task group: only single-operator kernel launches "
            "are supported in a task group (ACL_ERROR_RT_TASK_TYPE_NOT_SUPPORT)"
        )


def graph_task_group_begin(stream) -> None:
    if not backend().is_capturing(stream):
        raise RuntimeError(
            f"graph_task_group_begin: {stream!r} is not capturing (RT_ERROR_STREAM_NOT_CAPTURED); "
            "call it inside the capture, on the capturing stream"
        )
    if stream in _open or stream in _updating:
        raise RuntimeError("Task group is repeatedly started, or a task group is being updated")
    graph = graphs.capturing_graph()
    if graph is None:
        raise RuntimeError("graph_task_group_begin: the capture was not begun by an NPUGraph")
    _open[stream] = _Group(graph, stream, write=backend().blocks_writer())
    _guard_changed()


def graph_task_group_end(stream) -> TaskGroupHandle:
    group = _open.pop(stream, None)
    if group is None:
        raise RuntimeError(f"graph_task_group_end: no task group was begun on {stream!r}")
    _guard_changed()
    group.graph._groups.append(group)
    return TaskGroupHandle(group)


def drop_open_groups(graph) -> list:
    """Forget the groups of ``graph`` still open (its capture ends); returns their streams."""
    streams = [s for s, g in _open.items() if g.graph is graph]
    for s in streams:
        del _open[s]
    _guard_changed()
    return streams


def graph_task_update_begin(stream, handle: TaskGroupHandle) -> None:
    if not isinstance(handle, TaskGroupHandle):
        raise TypeError(f"graph_task_update_begin: handle must come from graph_task_group_end, got {handle!r}")
    group = handle._group
    if backend().is_capturing(stream):
        raise RuntimeError(
            f"graph_task_update_begin: {stream!r} is capturing; tasks are updated from an ordinary "
            "stream, not from the capture stream"
        )
    if stream in _open or stream in _updating:
        raise RuntimeError("Task group is repeatedly started, or a task group is being updated")
    if not group.valid:
        raise RuntimeError(f"graph_task_update_begin: {handle!r} is invalid: its graph was reset")
    if group.graph.capturing:
        raise RuntimeError(f"graph_task_update_begin: {group.graph.name} is still capturing")
    if group.updating is not None:
        raise RuntimeError(
            f"The handle only can be updated by one stream ({handle!r} is being updated on "
            f"{group.updating!r})"
        )
    group.updating, group.matched = stream, 0
    _updating[stream] = group
    _guard_changed()


def graph_task_update_end(stream) -> None:
    group = _updating.pop(stream, None)
    if group is None:
        raise RuntimeError(f"graph_task_update_end: {stream!r} is not in task-update mode")
    group.flush()
    group.updating = None
    _guard_changed()
    total = len(group.tasks)
    if group.matched != total:
        raise RuntimeError(
            "The task group under this stream contains unupdated tasks. "
            f"total_num={total}, matched_num={group.matched}"
        )


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a is b or (
        a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride() and a.dtype == b.dtype
    )


def _same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """``b`` views ``a``'s memory from the same address with the same strides (other sizes allowed)."""
    return a.data_ptr() == b.data_ptr() and a.stride() == b.stride() and a.dtype == b.dtype and a.device == b.device


def _tensors(where: str, cap: Task, task: Task) -> tuple[tuple, list]:
    """The tensors the captured launch uses after the update, and the (captured, new) input pairs to copy.

    An input may be the captured tensor, a view of the same memory (same address and strides; other sizes,
    e.g. a block table with fewer rows), or a tensor of the captured one's shape, dtype and device, which
    is copied in. Outputs the caller passes must be the captured ones; the operator's own tensors stay
    the captured ones."""
    if len(task.args) != len(cap.args) or task.roles != cap.roles:
        raise RuntimeError(f"{where}: {len(task.args)} tensors, captured {len(cap.args)}")
    args, copies = [], []
    for i, (c, n, role) in enumerate(zip(cap.args, task.args, cap.roles)):
        if role == _tasks.OWN or n is c:
            args.append(c)
            continue
        if (c is None) != (n is None):
            raise RuntimeError(f"{where}: tensor {i} is {'absent' if n is None else 'present'}, unlike at capture")
        if role == _tasks.OUTPUT:
            if not _same(c, n):
                raise RuntimeError(f"{where}: output tensors must be the captured ones (replays write those)")
            args.append(c)
        elif _same(c, n):
            args.append(c)
        elif _same_memory(c, n):
            args.append(n)
        elif n.shape == c.shape and n.dtype == c.dtype and n.device == c.device:
            copies.append((c, n))
            args.append(c)
        else:
            raise RuntimeError(
                f"{where}: input {i} is {tuple(n.shape)} {n.dtype} on {n.device}, but the captured one is "
                f"{tuple(c.shape)} {c.dtype} on {c.device}; an update may pass the captured tensor, a view of "
                "its memory, or a tensor of the same shape, dtype and device (copied in)"
            )
    return tuple(args), copies


def _block_error(cap: _CapturedTask, params: torch.Tensor, op: str, index: int) -> None:
    raise RuntimeError(
        f"task update of {op} (task {index} of the group): parameter block of {params.numel()} words, "
        f"captured {cap.launch.block.numel()}"
    )


def _update(stream, group: _Group, task: Task) -> None:
    tasks = group.tasks
    if group.matched >= len(tasks):
        raise RuntimeError(
            "The number of tasks cannot exceed the size of the task group "
            f"(size {len(tasks)}; extra call of {task.op} on {stream!r})"
        )
    cap = tasks[group.matched]

    def where() -> str:
        return f"task update of {task.op} (task {group.matched} of the group)"

    if task.op != cap.task.op:
        raise RuntimeError(
            f"{where()}: the captured task is {cap.task.op}; calls must repeat the captured ops in order"
        )
    if task.static is not cap.task.static and task.static != cap.task.static:
        raise RuntimeError(
            f"{where()}: the static plan differs from the captured one (shapes, dtypes, flags or grid "
            f"changed); captured {cap.task.static!r}, got {task.static!r}"
        )
    args, copies = (cap.task.args, []) if cap.same_tensors(task) else _tensors(where(), cap.task, task)
    if task.launch is None:
        cap.rewrite(task.params, copies, task.run, args)
    else:                              # a closure (``Task.launch``) holds its own tensors: keep the captured one
        cap.rewrite(task.params, copies, cap.launch.run, cap.launch.args)


def submit(task: Task) -> None:
    """The runtime's submitter (installed in ``npu_kernels.tasks``)."""
    be = backend()
    stream = be.current_stream()
    if _updating:
        group = _updating.get(stream)
        if group is not None:
            _update(stream, group, task)
            return
    graph = graphs.capturing_graph() if be.is_capturing(stream) else None
    if graph is None:
        be.launch(stream, lambda: _tasks.eager_submit(task))
        return
    busy = [s for s in _open if s != stream]
    if busy:
        raise RuntimeError(
            f"{task.op} issued on {stream!r} while {busy[0]!r} has an open task group: no other "
            "capturing stream may issue tasks then"
        )
    with be.direct():
        block = be.new_block(task.params)
        initial = task.params.clone()
    launch = _Launch(task, block)
    be.launch(stream, launch)
    graph._blocks.append((block, initial))
    group = _open.get(stream)
    if group is not None:
        group.tasks.append(_CapturedTask(task, launch, group))


def install() -> None:
    _tasks.set_submitter(submit)
