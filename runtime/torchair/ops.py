"""torchair's multi-stream operators: the ``air::`` schemas (spec/runtime.md §3.2) and their wrappers.

Everything reaches an FX graph as a side-effecting ``air`` operator with string arguments (stream tags,
event tags), so Dynamo traces it on any torch version. Kernels:
- ``scope_enter/scope_exit`` act only with ``need_execute=True`` (set by the reduce-overhead backend):
  a stream scope makes the tag's stream current until its exit. Eager ``npu_stream_switch`` does nothing.
- ``tagged_event_record/wait`` record or wait the tag's event on the current stream (ordinary events).
- ``record_tagged_stream`` marks the tensor as used by the tag's stream (``"default"``: the main stream).
- ``tagged_event_*_on_stream`` / ``tagged_stream_wait_stream`` do the same on the stream named by its id;
  ``wait_tensor``, ``record`` and ``wait`` exist for the GE graph engine only and raise when run.
- ``stream_in/stream_out`` (torchair before 2025: ``ops.NpuStreamSwitch``) raise when run, as torchair's;
  the compile backend turns them into ``scope_enter/scope_exit`` of the tag's stream.
``wait_tensor`` (``npu_wait_tensor``: the consumer of the result runs after ``dependency`` is produced)
and the ``stream_in/out`` pair have fake kernels, so Dynamo traces them. One stream per tag, per
backend, for the whole process, created at first use.
"""

from __future__ import annotations

import torch

from .. import streams
from ..backends import backend

STREAM_LABEL = "_user_stream_label"
STREAM_PRIORITY = "_user_stream_priority"

_LIB = torch.library.Library("air", "DEF")
_events: dict = {}         # tag -> Event made by npu_create_tagged_event (or the backend's passes)
_scopes: list = []         # executed scopes: the stream current before each stream scope, or None
_recorded: set = set()     # tags of events recorded at least once


def tag_stream(tag: str) -> streams.Stream:
    """The stream of ``tag`` (``"default"``: the main stream, outside every stream scope)."""
    if tag == "default":
        outer = [s for s in _scopes if s is not None]
        return outer[0] if outer else streams.current_stream()
    return streams.shared_stream(("tag", tag))


def _define(schema: str, impl) -> None:
    name = schema.split("(", 1)[0]
    _LIB.define(schema)
    _LIB.impl(name, impl, "CompositeExplicitAutograd")
    torch.fx.node.has_side_effect(getattr(torch.ops.air, name).default)


def _scope_enter(keys: list[str], values: list[str], need_execute: bool = False) -> None:
    if not need_execute:
        return
    attrs = dict(zip(keys, values))
    if STREAM_LABEL not in attrs:
        _scopes.append(None)
        return
    _scopes.append(streams.current_stream())
    streams.set_stream(tag_stream(attrs[STREAM_LABEL]))


def _scope_exit(need_execute: bool = False) -> None:
    if not need_execute:
        return
    if not _scopes:
        raise RuntimeError("air.scope_exit without a matching scope_enter")
    previous = _scopes.pop()
    if previous is not None:
        streams.set_stream(previous)


def event_of(tag: str):
    if tag not in _events:
        raise RuntimeError(f"no tagged event {tag!r}: create it with npu_create_tagged_event({tag!r})")
    return _events[tag]


def _tagged_event_record(tag: str, created_inside: bool = False) -> None:
    event_of(tag).record(streams.current_stream())
    _recorded.add(tag)


def _tagged_event_wait(tag: str, created_inside: bool = False) -> None:
    event_of(tag).wait(streams.current_stream())


def _record_tagged_stream(input: torch.Tensor, tag: str) -> None:
    backend().record_stream(input, tag_stream(tag))


_define("scope_enter(str[] keys, str[] values, bool need_execute=False) -> ()", _scope_enter)
_define("scope_exit(bool need_execute=False) -> ()", _scope_exit)
_define("tagged_event_record(str tag, bool created_inside=False) -> ()", _tagged_event_record)
_define("tagged_event_wait(str tag, bool created_inside=False) -> ()", _tagged_event_wait)
_define("record_tagged_stream(Tensor input, str tag) -> ()", _record_tagged_stream)
_define("record_tagged_stream_(Tensor(a!) input, str tag) -> ()", _record_tagged_stream)


def _tagged_event_record_on_stream(event_tag: str, stream_id: str, device_index: str, device_type: str,
                                   created_inside: bool = False) -> None:
    event_of(event_tag).record(streams.by_id(stream_id))
    _recorded.add(event_tag)


def _tagged_event_wait_on_stream(event_tag: str, stream_id: str, device_index: str, device_type: str,
                                 created_inside: bool = False) -> None:
    event_of(event_tag).wait(streams.by_id(stream_id))


def _tagged_stream_wait_stream(stream_id: str, device_index: str, device_type: str, other_stream_id: str,
                               other_device_index: str, other_device_type: str) -> None:
    streams.by_id(stream_id).wait_stream(streams.by_id(other_stream_id))


def _graph_engine_only(name: str):
    def kernel(*args, **kwargs):
        raise NotImplementedError(f"air.{name} is only converted by the GE graph engine (max-autotune); "
                                  "it has no eager or reduce-overhead kernel")
    return kernel


ON_STREAM = "str event_tag, str stream_id, str device_index, str device_type, bool created_inside=False"
_define(f"tagged_event_record_on_stream({ON_STREAM}) -> ()", _tagged_event_record_on_stream)
_define(f"tagged_event_wait_on_stream({ON_STREAM}) -> ()", _tagged_event_wait_on_stream)
_define("tagged_stream_wait_stream(str stream_id, str device_index, str device_type, str other_stream_id, "
        "str other_device_index, str other_device_type) -> ()", _tagged_stream_wait_stream)
_define("wait_tensor(Tensor self, Tensor dependency) -> Tensor", _graph_engine_only("wait_tensor"))
_define("record(*, Device? device=None) -> Tensor", _graph_engine_only("record"))
_define("wait(Tensor[] x) -> ()", _graph_engine_only("wait"))
_define("stream_in(str stream_tag, int stream_priority=0) -> ()", _graph_engine_only("stream_in"))
_define("stream_out(str stream_tag, int stream_priority=0) -> ()", _graph_engine_only("stream_out"))
torch.library.register_fake("air::wait_tensor", lambda self, dependency: torch.empty_like(self), lib=_LIB)
for _name in ("stream_in", "stream_out"):
    torch.library.register_fake(f"air::{_name}", lambda stream_tag, stream_priority=0: None, lib=_LIB)


def npu_create_tagged_event(tag: str) -> streams.Event:
    """An event identified by ``tag`` (unique in the process) that compiled graphs can record and wait."""
    if not isinstance(tag, str):
        raise TypeError(f"npu_create_tagged_event: tag must be a str, got {type(tag).__name__}")
    if tag in _events:
        raise ValueError(f"npu_create_tagged_event: tag {tag!r} is already used by another event in this process")
    event = streams.Event()
    event.tag = tag
    _events[tag] = event
    return event


def npu_tagged_event_record(event) -> None:
    torch.ops.air.tagged_event_record(event.tag)


def npu_tagged_event_wait(event) -> None:
    torch.ops.air.tagged_event_wait(event.tag)


def npu_record_tagged_stream(input: torch.Tensor, tagged_stream: str) -> None:
    """Keep ``input``'s memory from reuse until the work queued so far on ``tagged_stream`` is done."""
    torch.ops.air.record_tagged_stream(input, tagged_stream)


def npu_wait_tensor(self: torch.Tensor, dependency: torch.Tensor) -> torch.Tensor:
    """``self``, ordered after ``dependency``. A graph-engine operation: it raises in eager code and in
    reduce-overhead graphs, as torchair's; ``max-autotune`` graphs run on one stream, where it is ``self``."""
    return torch.ops.air.wait_tensor(self, dependency)


class NpuStreamSwitch:
    """``torchair.ops.NpuStreamSwitch`` (torchair before 2025): ``air.stream_in/stream_out`` around a block,
    which raise when run eagerly; in compiled graphs, ``scope.npu_stream_switch(stream_tag)``."""

    def __init__(self, stream_tag: str, stream_priority: int = 0):
        self.stream_tag = stream_tag
        self.stream_priority = stream_priority

    def __enter__(self):
        torch.ops.air.stream_in(self.stream_tag, self.stream_priority)
        return self

    def __exit__(self, *exc):
        torch.ops.air.stream_out(self.stream_tag, self.stream_priority)
        return False
