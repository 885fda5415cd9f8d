"""What a capture and a task group admit (issue 18, 8): captures do not nest, and event operations are
no kernel launches, so a stream with an open task group or in task-update mode refuses them with
CANN's errors (spec/runtime.md §1.9)."""

import pytest
import torch

import toy_ops
from backend_setup import randn

EVENT_OPS = {
    "ExternalEvent.record": lambda rt, s: rt.ExternalEvent().record(s),
    "ExternalEvent.wait": lambda rt, s: rt.ExternalEvent().wait(s),
    "ExternalEvent.reset": lambda rt, s: rt.ExternalEvent().reset(s),
    "Event.record": lambda rt, s: rt.Event().record(s),
    "Stream.wait_stream": lambda rt, s: s.wait_stream(rt.Stream()),
}


@pytest.mark.parametrize("nested", ["same graph", "other graph"])
def test_captures_cannot_nest(rt, device, nested):
    x = randn(3, device=device)
    outer = rt.NPUGraph()
    with rt.graph(outer):
        y = x * 2
        inner = outer if nested == "same graph" else rt.NPUGraph()
        with pytest.raises(RuntimeError, match=f"{inner.name} cannot begin a capture while {outer.name} is "
                                               "capturing: captures cannot nest"):
            with rt.graph(inner):
                pass
        assert rt.NPUGraph.get_currently_capturing_graph() is outer
    outer.replay()
    torch.testing.assert_close(y, x * 2)


def test_capture_begin_inside_a_capture_says_captures_cannot_nest(rt):
    outer, inner = rt.NPUGraph(), rt.NPUGraph()
    with rt.graph(outer):
        with pytest.raises(RuntimeError, match="captures cannot nest"):
            inner.capture_begin()


@pytest.mark.parametrize("op", EVENT_OPS.values(), ids=EVENT_OPS.keys())
def test_event_operations_are_refused_in_a_task_group(rt, device, op):
    with pytest.raises(RuntimeError, match="inside a task group.*ACL_ERROR_RT_TASK_TYPE_NOT_SUPPORT"):
        with rt.graph(rt.NPUGraph()):
            s = rt.current_stream()
            rt.graph_task_group_begin(s)
            op(rt, s)
    assert not rt.is_current_stream_capturing()


@pytest.mark.parametrize("op", EVENT_OPS.values(), ids=EVENT_OPS.keys())
def test_event_operations_are_refused_in_update_mode(rt, device, op):
    x, out = randn(2, 16, 4, device=device), torch.empty(2, 4, device=device)
    g = rt.NPUGraph()
    with rt.graph(g):
        s = rt.current_stream()
        rt.graph_task_group_begin(s)
        torch.ops.rt_toy.prefix_sum_out(x, [3, 5], out)
        handle = rt.graph_task_group_end(s)
    u = rt.Stream()
    with rt.stream(u):
        rt.graph_task_update_begin(u, handle)
        with pytest.raises(RuntimeError, match="task-update mode.*RT_ERROR_TASK_NOT_SUPPORT"):
            op(rt, u)
        torch.ops.rt_toy.prefix_sum_out(x, [7, 9], out)
        rt.graph_task_update_end(u)
    g.replay()
    rt.synchronize()
    torch.testing.assert_close(out, toy_ops.reference(x, [7, 9]))

