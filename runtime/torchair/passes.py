"""FX passes of the compile backend.

``stream_scopes``: the old ``air.stream_in/stream_out(tag, priority)`` pair becomes ``air.scope_enter``
with the tag's stream label / ``air.scope_exit``, as ``scope.npu_stream_switch`` emits.

``drop_wait_tensors`` (max-autotune, where the graph runs on one stream, so every dependency is already
ordered): ``air.wait_tensor(x, dependency)`` becomes ``x``.

``run_in_place`` (reduce-overhead, after AOTAutograd made the graph functional): mutating operators run
in place again, as torchair's reinplace passes do (Inductor's reinplacing, unless
``debug.aclgraph.disable_reinplace_inplaceable_ops_pass``, then its decomposition of
``auto_functionalized`` into the mutating call on the tensors or their clones). A fused operator's
``.out`` then writes the caller's outputs and is a call that task update can re-issue.

The closure pass of the reduce-overhead backend (torchair ``graph_pass.apply_event_closure_with_multi_stream``):

``apply_event_closure``: every ``air.scope_enter/exit`` gets ``need_execute=True`` (their kernels then
switch streams); an event recorded before the first operation (main stream) is waited right after each
stream ``scope_enter``, and an event recorded just before each stream ``scope_exit`` (on the side stream)
is waited just before the output (main stream). This fork/join closure is what a capture needs: every
stream that joins it must be joined back before it ends. A tagged event waited in the graph but never
recorded before the wait (in the graph or outside it) is an error: it would order nothing.
"""

from __future__ import annotations

import itertools

import torch
from torch import fx

from .ops import STREAM_LABEL, STREAM_PRIORITY, _recorded, npu_create_tagged_event

_graph_ids = itertools.count(1)


def _is(node: fx.Node, op) -> bool:
    return node.op == "call_function" and node.target in (op, op.default)


def _is_stream_scope(node: fx.Node) -> bool:
    keys = node.args[0] if node.args else node.kwargs.get("keys", [])
    return STREAM_LABEL in keys


def _set_kwarg(node: fx.Node, name: str, value) -> None:
    node.kwargs = {**node.kwargs, name: value}


def stream_scopes(gm: fx.GraphModule) -> None:
    for node in list(gm.graph.nodes):
        if _is(node, torch.ops.air.stream_in) or _is(node, torch.ops.air.stream_out):
            with gm.graph.inserting_before(node):
                if _is(node, torch.ops.air.stream_in):
                    tag = node.args[0]
                    priority = node.args[1] if len(node.args) > 1 else node.kwargs.get("stream_priority", 0)
                    gm.graph.call_function(torch.ops.air.scope_enter.default,
                                           ([STREAM_LABEL, STREAM_PRIORITY], [tag, str(priority)]))
                else:
                    gm.graph.call_function(torch.ops.air.scope_exit.default)
            gm.graph.erase_node(node)
    gm.recompile()


def drop_wait_tensors(gm: fx.GraphModule) -> None:
    for node in list(gm.graph.nodes):
        if _is(node, torch.ops.air.wait_tensor):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
    gm.recompile()


def run_in_place(gm: fx.GraphModule, reinplace: bool) -> None:
    from torch._inductor.fx_passes.post_grad import decompose_auto_functionalized
    from torch._inductor.fx_passes.reinplace import reinplace_inplaceable_ops_core

    if reinplace:
        reinplace_inplaceable_ops_core(gm.graph)
    decompose_auto_functionalized(gm.graph)
    gm.graph.lint()
    gm.recompile()


def check_tagged_events(graph: fx.Graph) -> None:
    recorded = set(_recorded)
    for node in graph.nodes:
        if _is(node, torch.ops.air.tagged_event_record):
            recorded.add(node.args[0])
        elif _is(node, torch.ops.air.tagged_event_wait) and node.args[0] not in recorded:
            raise RuntimeError(
                f"tagged event {node.args[0]!r} is waited in the compiled graph but never recorded before "
                "the wait; record it with npu_tagged_event_record first"
            )


def apply_event_closure(gm: fx.GraphModule) -> int:
    """Apply the closure to ``gm`` in place; returns the number of stream scopes."""
    graph = gm.graph
    check_tagged_events(graph)
    scopes = []
    for node in graph.nodes:
        if _is(node, torch.ops.air.scope_enter) or _is(node, torch.ops.air.scope_exit):
            _set_kwarg(node, "need_execute", True)
        if _is(node, torch.ops.air.scope_enter) and _is_stream_scope(node):
            scopes.append(node)
    if not scopes:
        return 0
    gid = next(_graph_ids)
    first = next(n for n in graph.nodes if n.op not in ("placeholder", "get_attr"))
    output = next(n for n in graph.nodes if n.op == "output")
    enter_tag = f"graph{gid}_enter"
    npu_create_tagged_event(enter_tag)
    with graph.inserting_before(first):
        graph.call_function(torch.ops.air.tagged_event_record.default, (enter_tag, True))
    depth, exits = 0, []
    for node in list(graph.nodes):
        if _is(node, torch.ops.air.scope_enter):
            depth += 1
            if node in scopes:
                with graph.inserting_after(node):
                    graph.call_function(torch.ops.air.tagged_event_wait.default, (enter_tag, True))
                exits.append(depth)
        elif _is(node, torch.ops.air.scope_exit):
            if exits and exits[-1] == depth:
                exits.pop()
                tag = f"graph{gid}_exit_{node.name}"
                npu_create_tagged_event(tag)
                with graph.inserting_before(node):
                    graph.call_function(torch.ops.air.tagged_event_record.default, (tag, True))
                with graph.inserting_before(output):
                    graph.call_function(torch.ops.air.tagged_event_wait.default, (tag, True))
            depth -= 1
    graph.lint()
    gm.recompile()
    return len(scopes)
