"""Plan once, launch many: the static part of an operator call, cached per call signature.

A call's *signature* holds everything that selects kernels and their launch: shapes, strides, dtypes and
devices of every tensor argument, and the scalar arguments that select kernels. The per-call integers
(lengths, padding, band limits) are not part of it. The first call of a signature validates everything
and builds the operator's plan; later calls look the plan up, validate and pack only their per-call
integers, and bind the plan's tensors to their own arguments.

Binding: every tensor of a plan (a kernel operand, a view in the validated call) is a view of one of the
call's tensor arguments, recorded as a ``View`` (which argument, dtype, sizes, strides, element offset)
when the plan is built. A compiled kernel needs only the address: ``View.operand`` gives the argument
itself where the view starts at its address with its dtype, else a ``Pointer``. The CPU execution path
and Triton's interpreter need real tensors: ``View.tensor``. A tensor that is a view of no argument (a
copy made while validating) makes the signature uncacheable (``views_of``).
"""

from __future__ import annotations

import dataclasses
import itertools
import operator
from typing import Optional

import torch

from . import caches, fill, launcher, tasks
from .checks import extent
from .env import check_block_table

MAX_PLANS = 4096


class Pointer:
    """The address and dtype of a kernel operand: what a compiled Triton kernel reads of a tensor."""

    __slots__ = ("ptr", "dtype")

    def __init__(self, ptr: int, dtype: torch.dtype):
        self.ptr, self.dtype = ptr, dtype

    def data_ptr(self) -> int:
        return self.ptr


class View:
    """A tensor as a view of argument ``arg`` of a call."""

    __slots__ = ("arg", "dtype", "size", "stride", "offset", "same")

    def __init__(self, arg: int, dtype: torch.dtype, size: tuple, stride: tuple, offset: int, same: bool):
        self.arg, self.dtype, self.size, self.stride, self.offset = arg, dtype, size, stride, offset
        self.same = same          # starts at the argument's address, with its dtype

    @property
    def byte_offset(self) -> int:
        """Bytes from the argument's address to the view's (0 for a ``same`` view)."""
        return self.offset * self.dtype.itemsize

    def operand(self, args: tuple):
        a = args[self.arg]
        if self.same:
            return a
        return Pointer(a.data_ptr() + self.byte_offset, self.dtype)

    def tensor(self, args: tuple) -> torch.Tensor:
        a = args[self.arg]
        if a.dtype != self.dtype:
            a = a.view(self.dtype)
        return a.as_strided(self.size, self.stride, a.storage_offset() + self.offset)


def views_in(t: torch.Tensor, args: tuple) -> list[View]:
    """``t`` as a ``View`` of each argument whose memory holds its first element (usually one)."""
    storage = t.untyped_storage().data_ptr()
    ptr = t.data_ptr()
    found = []
    for i, a in enumerate(args):
        if not isinstance(a, torch.Tensor) or a.untyped_storage().data_ptr() != storage:
            continue
        start = a.data_ptr()
        delta = ptr - start
        if (ptr == start or start <= ptr < start + extent(a)) and delta % t.element_size() == 0:
            same = delta == 0 and t.dtype == a.dtype
            found.append(View(i, t.dtype, tuple(t.shape), tuple(t.stride()), delta // t.element_size(), same))
    return found


def views_of(tensors, args: tuple) -> tuple[tuple, tuple, bool]:
    """(``View`` of each tensor (None entries stay None), extras, ambiguous). A tensor that is a view of no
    argument (a copy made while validating) is appended to the extras and viewed there; the views then
    index ``(*args, *extras)``. ``ambiguous``: some tensor lies in the memory of several arguments, so which
    one it belongs to is not known (unless they are the same query/key/value tensor, which signatures
    tell). A plan with extras, or ambiguous, serves only the call that made it."""
    views, extras, ambiguous = [], [], False
    for t in tensors:
        if t is None:
            views.append(None)
            continue
        found = views_in(t, (*args, *extras))
        if not found:
            extras.append(t)
            found = views_in(t, (*args, *extras))
        first = found[0].arg
        ambiguous = ambiguous or any(not (v.arg < IDENTIFIED and first < IDENTIFIED and args[v.arg] is args[first])
                                     for v in found[1:])
        views.append(found[0])
    return tuple(views), tuple(extras), ambiguous


# The tensors inside a validated call (frozen dataclasses, tuples and tensors), as (path, tensor) leaves.

def leaves(obj, path: tuple = ()) -> list:
    if isinstance(obj, torch.Tensor):
        return [(path, obj)]
    if dataclasses.is_dataclass(obj):
        return [leaf for f in dataclasses.fields(obj) for leaf in leaves(getattr(obj, f.name), path + (f.name,))]
    if isinstance(obj, tuple):
        return [leaf for i, x in enumerate(obj) for leaf in leaves(x, path + (i,))]
    return []


def rebind(obj, new: dict, path: tuple = ()):
    """``obj`` with the tensor at each path of ``new`` replaced by its value."""
    if isinstance(obj, torch.Tensor):
        return new[path]
    if dataclasses.is_dataclass(obj):
        changes = {f.name: rebind(getattr(obj, f.name), new, path + (f.name,)) for f in dataclasses.fields(obj)
                   if any(p[:len(path) + 1] == path + (f.name,) for p in new)}
        return dataclasses.replace(obj, **changes) if changes else obj
    if isinstance(obj, tuple):
        return tuple(rebind(x, new, path + (i,)) for i, x in enumerate(obj))
    return obj


class Bound:
    """The tensors of a validated call as views of the call's arguments: ``bind(args)`` gives the same
    call over other arguments with the same signature."""

    __slots__ = ("call", "paths", "views")

    def __init__(self, call, paths: tuple, views: tuple):
        self.call, self.paths, self.views = call, paths, views

    def bind(self, args: tuple):
        return rebind(self.call, {p: v.tensor(args) for p, v in zip(self.paths, self.views)})


class _Slot:
    """Stands for operand ``index`` while a launch is traced; forwards attribute reads to the operand and
    notes when its address is read (the launch then depends on the address's alignment)."""

    __slots__ = ("index", "operand", "addressed")

    def __init__(self, index: int, operand, addressed: set):
        self.index, self.operand, self.addressed = index, operand, addressed

    def data_ptr(self) -> int:
        self.addressed.add(self.index)
        return self.operand.data_ptr()

    def __getattr__(self, name):
        return getattr(self.operand, name)


class Traced:
    """The kernel launches of a call, traced once: each kernel's arguments with the places where a call's
    tensors go, so that a call fills them in and launches (``launcher.Launch``) without rebuilding the
    arguments. Operands that are their argument itself are taken from the call's arguments directly. A
    launch whose arguments depend on an operand's address alignment is traced for the alignment seen; a
    call whose operands align otherwise launches untraced."""

    __slots__ = ("launches", "launch", "views", "traced_alignment", "pointers_aligned", "fast")

    def __init__(self, launch, operands: tuple, views: tuple):
        """``launch(operands, block)`` issues the launches through ``launcher.run`` (traced, not run);
        ``views``: the operands as views of the call's arguments."""
        addressed: set = set()
        slots = [None if t is None else _Slot(i, t, addressed) for i, t in enumerate(operands)]
        block = _Slot(len(operands), operands[0], set())
        recorded = []
        previous = launcher.set_recorder(lambda kernel, grid, args, options: recorded.append((kernel, grid, args, options)))
        try:
            launch(tuple(slots), block)
        finally:
            launcher.set_recorder(previous)
        self.launch, self.views = launch, views
        # the operands whose address the launches read keep the alignment they were traced with
        self.traced_alignment = fill.alignment_check(
            [(views[i].arg, views[i].byte_offset, operands[i].data_ptr() % launcher.ALIGNMENT == 0)
             for i in sorted(addressed)], launcher.ALIGNMENT)
        self.launches, pointer_args = [], set()
        for kernel, grid, args, options in recorded:
            if any(hasattr(a, "data_ptr") and not isinstance(a, _Slot) for a in args):
                raise RuntimeError(f"{kernel}: a launch argument is built from a tensor; it cannot be traced")
            direct, computed, blocks = [], [], []
            for pos, a in enumerate(args):
                if a is block:
                    blocks.append(pos)
                elif isinstance(a, _Slot):
                    view = views[a.index]
                    if view.same:
                        direct.append((pos, view.arg))
                    else:
                        computed.append((pos, view))
            fill_args = fill.filler(list(args), direct, computed, blocks, Pointer, launcher.ALIGNMENT)
            self.launches.append((launcher.Launch(kernel, grid, options), fill_args))
            pointer_args.update(i for _, i in direct)
        # every pointer a launch takes is a call argument (``direct``), a ``Pointer`` into one, or the block
        self.pointers_aligned = fill.alignment_check([(i, 0, True) for i in sorted(pointer_args)], launcher.ALIGNMENT)
        self.fast = False         # every launch keeps its kernel for aligned pointers

    def __call__(self, args: tuple, block) -> None:
        if not self.traced_alignment(args):
            self.launch(tuple(None if v is None else v.operand(args) for v in self.views), block)
            return
        # aligned pointers launch the kept kernels without each launch checking its own
        fast = self.fast and block.data_ptr() % launcher.ALIGNMENT == 0 and not launcher.recording() and \
            self.pointers_aligned(args)
        for launch, fill_args in self.launches:
            values, aligned = fill_args(args, block)
            if fast and aligned:
                launch.aligned(values)
            else:
                launch(values)
        if not self.fast:
            self.fast = all(launch.compiled_aligned for launch, _ in self.launches)


class Prepared:
    """A kernel call planned for one signature: its static configuration, its kernel operands as views of
    the call's tensors (arguments, outputs, scratch), and the validated call for the CPU execution path.
    ``extras``: tensors of the call that are views of no argument; the arguments must be extended with
    them (``(*args, *extras)``). Only a ``cacheable`` plan (see ``views_of``) serves other calls."""

    __slots__ = ("static", "views", "bound", "execution", "extras", "cacheable", "launch", "checked")

    def __init__(self, call, static, ops: tuple, args: tuple, execution: str, launch):
        """``launch(operands, block)``: the call's kernel launches (traced once for compiled kernels)."""
        found = leaves(call)
        views, self.extras, ambiguous = views_of([*ops, *(t for _, t in found)], args)
        self.cacheable = not self.extras and not ambiguous
        self.static, self.execution = static, execution
        self.views = views[:len(ops)]
        self.bound = Bound(call, tuple(p for p, _ in found), views[len(ops):])
        self.launch = Traced(launch, ops, self.views) if execution == "compiled" else launch
        # NPUK_CHECK_BLOCK_TABLE on the kernels' path (the CPU path checks the ids it reads itself)
        self.checked = check_block_table() and execution != "native"

    def run(self, block, args: tuple) -> None:
        """Enqueue the call's work over ``args`` (``tasks.Task.run``)."""
        if self.checked:
            self.check_blocks(block, self.bound.bind(args))
        if self.execution == "compiled":
            self.launch(args, block)
            return
        ops = tuple(None if v is None else v.tensor(args) for v in self.views)
        if self.execution == "native":
            self.native(ops, block, args)
        else:
            self.launch(ops, block)

    def native(self, ops: tuple, block, args: tuple) -> None:
        """The call on the CPU execution path (``npu_kernels.reference.execute``)."""
        raise NotImplementedError

    def check_blocks(self, block, call) -> None:
        """The block ids a paged ``call`` reads (``checks.block_table_ids``); nothing to check otherwise."""


class Entry:
    """What an operator's plan cache holds for a signature: the ``prepared`` kernel call, the validated
    ``call`` (its per-call lists recomputed by every call), the output's ``shape`` and ``dtype``, the last
    per-call values' block (``recent``), and ``fill.picker``s of the call's tensor arguments (``pick``) and
    of its per-call values, defaults filled in (``dynamic``)."""

    __slots__ = ("prepared", "call", "shape", "dtype", "recent", "pick", "dynamic", "dynamic_names",
                 "dynamic_defaults")

    def __init__(self, prepared: "Prepared", call, out: torch.Tensor, kwargs: dict, tensor_names: tuple,
                 dynamic_names: tuple, dynamic_defaults: tuple):
        """``kwargs``: the call's keyword arguments (those its signature holds)."""
        self.prepared, self.call, self.shape, self.dtype = prepared, call, out.shape, out.dtype
        self.recent = Recent(len(dynamic_names))
        self.pick = fill.picker(tensor_names, kwargs)
        self.dynamic = fill.picker(dynamic_names, kwargs, dynamic_defaults)
        self.dynamic_names, self.dynamic_defaults = dynamic_names, dynamic_defaults


class Recent:
    """The last per-call integers a plan saw and their parameter block: the layers of one step call an
    operator with the same values, and the validated block is a function of them. Values match the last
    ones when they are the objects passed then with equal contents (one list passed to every layer; an
    element replaced in place by an equal value of another type goes unnoticed), or plain values
    (``_plain``: ints compared with their types, so that a value that would fail validation never
    matches) equal to them."""

    __slots__ = ("last",)

    def __init__(self, size: int):
        """``size``: how many per-call values a call has."""
        self.last = ((), None, (_UNSET,) * size)    # a copy of the values, their block, the values as passed

    def comparable(self, values: tuple) -> bool:
        """``values`` are the objects passed last or plain: they may be compared (no tensor among them)."""
        return all(map(operator.is_, values, self.last[2])) or _plain(values)

    def block(self, values: tuple, make):
        """``make()`` (validates ``values`` and packs the block) unless ``values`` (no tensor among them)
        are the last ones, which they then stand for (a match by their identity next)."""
        copy, block, _ = self.last
        if values == copy and self.comparable(values):     # new values cost no type check
            self.last = (copy, block, values)
            return block
        block = make()
        self.last = (tuple(list(v) if type(v) is list else v for v in values), block, values)
        return block


_UNSET = object()


def _plain(values: tuple) -> bool:
    """Every value is None, an int, or a list/tuple of ints (no bool, float or SymInt)."""
    for v in values:
        if type(v) in (list, tuple):
            if v and set(map(type, v)) != _INT:
                return False
        elif v is not None and type(v) is not int:
            return False
    return True


_INT = {int}


# Signatures

def meta(t) -> Optional[tuple]:
    """What a signature holds of a tensor argument: shape, strides, dtype, device index."""
    if type(t) is not torch.Tensor and not isinstance(t, torch.Tensor):   # a plain tensor skips isinstance
        return None if t is None else (type(t),)      # validation rejects it; the key differs from a tensor's
    return (t.shape, t.stride(), t.dtype, t.get_device())


IDENTIFIED = 3         # query, key, value: a signature tells when they are the same tensor


def signature(query, key, value, kwargs: dict, per_call: frozenset) -> list:
    """A call's signature (extend it, then make it a tuple): ``meta`` of query, key and value, which of them
    are the same tensor (``key is value``), and per keyword argument given: a tensor's ``meta``, for the
    per-call arguments ``per_call`` only whether they are given, else the value and its type (1, 1.0 and
    True are equal keys but not equally valid). The same arguments given in another order, or given at
    their defaults, are other signatures of the same plan."""
    if type(query) is torch.Tensor and type(key) is torch.Tensor and type(value) is torch.Tensor:   # ``meta``s
        sig = [query.shape, query.stride(), query.dtype, query.get_device(), key.shape, key.stride(), key.dtype,
               key.get_device(), value.shape, value.stride(), value.dtype, value.get_device()]
    else:
        sig = [meta(query), meta(key), meta(value)]
    sig += (key is query, value is key, value is query)
    append = sig.append
    for name, v in kwargs.items():
        kind = type(v)
        if kind is torch.Tensor:
            append((name, v.shape, v.stride(), v.dtype, v.get_device()))
        elif name in per_call:
            append((name, v is None))
        else:
            append((name, kind, v if v is None or kind in _SCALARS else meta(v)))
    return sig


_SCALARS = (int, float, bool, str)


class Given:
    """A cached call as its caller gave it (``tasks.Task.given`` is ``(Given, *its arguments)``): its ``plan``
    (what the operator's cache holds for the signature), the tensors it passed outside its keywords
    (``args``; those at ``outputs`` are the outputs it passed), its keyword arguments, of which ``per_call``
    are the per-call values, and ``extra`` (what else the operator's signature holds).

    ``match``: a call with the same keywords, equal static scalars of the same types, per-call values given
    where they were, the same ``extra``, and, for each tensor, the same one, a tensor viewing its memory
    alike (vLLM keeps weak references to a captured call's tensors and updates with those) or, for an
    input, a tensor of its shape, dtype and device to be copied in, has the given call's signature, so its
    plan, found without computing the signature (task update, ``tasks.captured``)."""

    __slots__ = ("plan", "extra", "names", "order", "objects", "given_objects", "given_views", "outputs", "scalars",
                 "given_scalars", "scalar_types", "per_call", "absent", "fixed", "scope", "same")

    def __init__(self, plan, args: tuple, kwargs: dict, per_call: frozenset, extra: tuple = (),
                 outputs: tuple = ()):
        self.plan, self.extra, self.names, self.outputs = plan, extra, frozenset(kwargs), outputs
        self.order = tuple(kwargs)
        scalar = [n for n in kwargs if n not in per_call and type(kwargs[n]) in _SCALARS]
        objects = [n for n in kwargs if n not in per_call and n not in scalar]   # tensors, None, other objects
        self.objects, self.scalars = _getter(objects), _getter(scalar)
        self.per_call = _getter([n for n in kwargs if n in per_call])
        self.given_objects = (*args, *self.objects(kwargs))
        self.given_views = tuple(map(_view, self.given_objects))
        self.given_scalars = self.scalars(kwargs)
        self.scalar_types = tuple(map(type, self.given_scalars))
        self.absent = tuple(map(operator.is_, self.per_call(kwargs), _NONE))
        # ``fixed``: the positions in (*args, *kwargs.values()) of all but the per-call values given; ``L`` in
        # ``scope``: what the last match passed there
        present = frozenset(n for n in self.order if n in per_call and kwargs[n] is not None)
        self.fixed = _getter([*range(len(args)), *(i for i, n in enumerate(self.order, len(args)) if n not in present)])
        self.scope = {"L": self.fixed((*args, *kwargs.values())), "R": plan.recent}
        # ``same(*args, kwargs)``: the call passes the objects of the last match (vLLM's every update); see
        # ``fill.matcher``
        self.same = fill.matcher(len(args), self.order, present, plan.dynamic_names, plan.dynamic_defaults,
                                 self.scope)

    def match(self, args: tuple, kwargs: dict, extra: tuple) -> Optional[tuple]:
        """None, or the (given, new) input tensors to copy (usually none)."""
        if extra != self.extra:
            return None
        if self.same(*args, kwargs) is not None:
            return ()
        if kwargs.keys() != self.names:
            return None
        scalars = self.scalars(kwargs)
        if tuple(map(type, scalars)) != self.scalar_types or scalars != self.given_scalars or \
                tuple(map(operator.is_, self.per_call(kwargs), _NONE)) != self.absent:
            return None
        objects = (*args, *self.objects(kwargs))
        copies = []
        for i, (new, given, view) in enumerate(zip(objects, self.given_objects, self.given_views)):
            if new is given or (view is not None and _view(new) == view):
                continue
            if i in self.outputs or type(new) is not torch.Tensor or type(given) is not torch.Tensor or \
                    new.shape != given.shape or new.dtype != given.dtype or new.device != given.device:
                return None
            copies.append((given, new))
        if not copies and tuple(kwargs) == self.order:
            self.scope["L"] = self.fixed((*args, *kwargs.values()))
        return tuple(copies)


_NONE = itertools.repeat(None)


def _view(t) -> Optional[tuple]:
    """How a plain tensor views memory (address and ``meta``); None for others."""
    return (t.data_ptr(), *meta(t)) if type(t) is torch.Tensor else None


def _getter(keys: list):
    """``values`` (a dict or tuple) → the tuple of its items at ``keys``."""
    if len(keys) > 1:
        return operator.itemgetter(*keys)
    if keys:
        key = keys[0]
        return lambda values: (values[key],)
    return lambda values: ()


def rewritten(op: str, args: tuple, kwargs: dict, block, extra: tuple = ()) -> Optional[tasks.Captured]:
    """In task-update mode (``tasks.captured`` set), when this call matches the ``given`` one of the next
    captured task (``Given.match``): its parameter block ``block(entry, kwargs)`` (``entry``: the plan-cache
    entry) and the inputs to copy written into that task (``tasks.Captured.rewrite``), and the task
    returned; else None: the call is planned and submitted."""
    cap = tasks.captured(op)
    if cap is None:
        return None
    copies = cap.given.match(args, kwargs, extra)
    if copies is None:
        return None
    cap.rewrite(block(cap.given.plan, kwargs), copies)
    return cap


def fresh(cap: tasks.Captured, values, kwargs: dict, block) -> Optional[torch.Tensor]:
    """The block of a task update's call whose ``Given.same`` gave ``values`` (its per-call values, not the
    plan's last objects) or None: ``block(entry, kwargs)`` (the plan's last block where the values are equal
    to its last ones), with the runtime's guard mode bypassed. None where the values are not plain (e.g. a
    tensor for a list: the entry's ``host_lists`` reads it) or ``values`` is None: the update takes the
    entry point's path."""
    if values is None or not cap.given.plan.recent.comparable(values):
        return None
    with torch._C._DisableTorchDispatch():
        return block(cap.given.plan, kwargs)


def spare_output(cap: tasks.Captured, device: torch.device) -> torch.Tensor:
    """What the updates of a prompt or incremental operator's task return: its group's spare output
    (``tasks.Captured.spare``), kept on the task."""
    if cap.spared is None:
        entry = cap.given.plan
        cap.spared = cap.spare(entry.shape, entry.dtype, device)
    return cap.spared


class Cache:
    """Plans by signature, the oldest dropped past ``MAX_PLANS``; emptied by ``caches.release()``."""

    def __init__(self):
        self.plans: dict = {}
        caches.register(self.plans.clear)

    def get(self, key):
        try:
            return self.plans.get(key)
        except TypeError:         # an unhashable argument (e.g. a SymInt while tracing)
            return None

    def put(self, key, plan) -> None:
        try:
            hash(key)
        except TypeError:
            return
        if len(self.plans) >= MAX_PLANS:
            del self.plans[next(iter(self.plans))]
        self.plans[key] = plan
