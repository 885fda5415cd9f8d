"""``graph(..., auto_dispatch_capture=True)`` and ``NPUGraph.update`` (spec/runtime.md §1.7).

During such a capture a dispatch mode wraps every call of an operator that has a handler: it creates an
ExternalEvent, waits and resets it on the current stream, lets the handler prepare the call (e.g. switch
to the ``.out`` overload with a maximal workspace), brackets the call in a task group and keeps a record
(event, handle, call). ``NPUGraph.update(cpu_update_input)`` takes one dict per record in capture order
(a one-element list applies to all), replaces the named arguments, re-issues each call in task-update
mode on the update stream shared by all graphs, then records the record's event there.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_handlers: dict = {}  # op name ("pkg_op" or "pkg_op.overload") -> handler class


class NpuGraphOpHandler:
    """How an operator is captured for update and how update inputs map onto its arguments.

    ``UPDATE_SPECS`` maps an op name to ``[("arg", index, key) | ("kwarg", name, key), ...]``: the
    update dict's ``key`` goes to that positional or keyword argument. Keys that name a keyword argument
    of the captured call replace it without a spec.
    """

    UPDATE_SPECS: dict = {}

    @classmethod
    def should_handle(cls, func, args, kwargs) -> bool:
        return True

    @classmethod
    def prepare_capture(cls, func, args, kwargs):
        return func, args, kwargs

    @classmethod
    def postprocess_result(cls, result, kwargs):
        return result

    @classmethod
    def update_args(cls, record: "CaptureRecord", update_input: dict):
        args, kwargs = list(record.args), dict(record.kwargs)
        specs = cls.UPDATE_SPECS.get(record.func.__name__.split(".")[0], [])
        targets = {key: (kind, where) for kind, where, key in specs}
        for key, value in update_input.items():
            kind, where = targets.get(key, ("kwarg", key))
            if kind == "arg":
                args[where] = value
            elif where in kwargs:
                kwargs[where] = value
            else:
                raise RuntimeError(f"NPUGraph.update: {record.func} has no argument {key!r} to update")
        return tuple(args), kwargs


def register_npu_graph_handler(op_names):
    """Class decorator: use the handler for the operators named (``func.__name__`` or the packet name)."""

    def register(handler):
        for name in op_names:
            _handlers[name] = handler
        return handler

    return register


def _handler(func):
    return _handlers.get(func.__name__) or _handlers.get(func.__name__.split(".")[0])


@dataclass(eq=False)
class CaptureRecord:
    func: object
    args: tuple
    kwargs: dict
    handler: type
    event: object
    handle: object


def _keep(value):
    """Tensors are kept as captured; other arguments are copied (they may be mutated by the caller)."""
    return value if isinstance(value, torch.Tensor) else copy.deepcopy(value)


class GraphDispatchMode(TorchDispatchMode):
    def __init__(self, npu_graph):
        super().__init__()
        self.npu_graph = npu_graph

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from . import ExternalEvent, current_stream, graph_task_group_begin, graph_task_group_end

        kwargs = kwargs or {}
        handler = _handler(func)
        if handler is None or not handler.should_handle(func, args, kwargs):
            return func(*args, **kwargs)
        stream = current_stream()
        event = ExternalEvent()
        event.wait(stream)
        event.reset(stream)
        func, args, kwargs = handler.prepare_capture(func, args, kwargs)
        graph_task_group_begin(stream)
        result = func(*args, **kwargs)
        handle = graph_task_group_end(stream)
        args, kwargs = [_keep(a) for a in args], {k: _keep(v) for k, v in kwargs.items()}
        self.npu_graph._records.append(CaptureRecord(func, tuple(args), kwargs, handler, event, handle))
        return handler.postprocess_result(result, kwargs)


def update(npu_graph, cpu_update_input: list) -> None:
    from . import graph_task_update_begin, graph_task_update_end, stream
    from .streams import shared_stream

    if not npu_graph.auto_dispatch_capture:
        raise RuntimeError(
            "The current graph configuration does not support update, Try to capture by setting "
            "auto_dispatch_capture=True during capture"
        )
    records = npu_graph._records
    inputs = list(cpu_update_input)
    if len(inputs) == 1:
        inputs *= len(records)
    if len(inputs) != len(records):
        raise RuntimeError(
            f"NPUGraph.update: cpu_update_input has {len(cpu_update_input)} entries; expected 1 or one "
            f"per captured updatable call ({len(records)})"
        )
    u = shared_stream("NPUGraph.update")
    with stream(u):
        for record, update_input in zip(records, inputs):
            args, kwargs = record.handler.update_args(record, update_input)
            graph_task_update_begin(u, record.handle)
            record.func(*args, **kwargs)
            graph_task_update_end(u)
            record.event.record(u)


_FUSED_OUTPUT_ARGS = ("input_layout", "quant_scale2", "block_table", "num_heads", "num_key_value_heads",
                      "softmax_lse_flag", "query_rope")


@register_npu_graph_handler(["npu_fused_infer_attention_score", "_npu_fused_infer_attention_score_into"])
class FusedInferAttentionScoreHandler(NpuGraphOpHandler):
    """FIA v1: a functional call is captured in its out form, with the maximal workspace and outputs
    allocated at capture; updates replace ``actual_seq_lengths``, ``actual_seq_lengths_kv`` ... by name."""

    @classmethod
    def prepare_capture(cls, func, args, kwargs):
        if func.__name__ != "npu_fused_infer_attention_score.default":
            return func, args, kwargs
        ops = torch.ops.npu
        workspace = ops._npu_fused_infer_attention_score_get_max_workspace(*args, **kwargs)
        query, _, value = args
        out, lse = ops._npu_fused_infer_attention_score_infer_output(
            query, value, **{k: v for k, v in kwargs.items() if k in _FUSED_OUTPUT_ARGS})
        kwargs = dict(kwargs, workspace=workspace, attention_out=out, softmax_lse=lse)
        return ops._npu_fused_infer_attention_score_into.default, args, kwargs

    @classmethod
    def postprocess_result(cls, result, kwargs):
        return kwargs["attention_out"], kwargs["softmax_lse"]
