"""The remaining air:: schemas of spec §3.2: stream-id addressed events and waits, and the operators that
only the GE graph engine converts."""

import itertools

import pytest
import torch

from runtime import streams
from runtime import torchair as tng

_tags = itertools.count()


def test_schemas_registered_and_side_effecting():
    for name in ("scope_enter", "scope_exit", "tagged_event_record", "tagged_event_wait", "record_tagged_stream",
                 "record_tagged_stream_", "tagged_event_record_on_stream", "tagged_event_wait_on_stream",
                 "tagged_stream_wait_stream", "wait_tensor", "record", "wait"):
        op = getattr(torch.ops.air, name).default
        assert op in torch.fx.node._side_effectful_functions, name


def test_events_on_streams_by_id(rt, device):
    """A value produced on a side stream and recorded there by id is seen after the waiting stream waits."""
    event = tng.ops.npu_create_tagged_event(f"air_{next(_tags)}")
    side = streams.shared_stream(("tag", "air-test"))
    main = streams.current_stream()
    x = torch.zeros(4, device=device)
    side.wait_stream(main)
    with streams.stream(side):
        x.add_(3)
    torch.ops.air.tagged_event_record_on_stream(event.tag, str(side.stream_id), "0", device.type)
    torch.ops.air.tagged_event_wait_on_stream(event.tag, str(main.stream_id), "0", device.type)
    torch.ops.air.tagged_stream_wait_stream(str(main.stream_id), "0", device.type, str(side.stream_id), "0",
                                            device.type)
    assert torch.equal(x, torch.full((4,), 3.0, device=device))


def test_unknown_stream_id_is_an_error(rt):
    with pytest.raises(RuntimeError, match="no stream with id '-5'"):
        torch.ops.air.tagged_stream_wait_stream("-5", "0", "npu", "-6", "0", "npu")


@pytest.mark.parametrize("call", [
    lambda: torch.ops.air.wait_tensor(torch.ones(1), torch.ones(1)),
    lambda: torch.ops.air.record(),
    lambda: torch.ops.air.wait([torch.ones(1)]),
])
def test_graph_engine_only_operators_raise(call):
    with pytest.raises(NotImplementedError, match="GE graph engine"):
        call()
