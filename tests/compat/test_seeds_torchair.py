"""The torchair seed documents' examples (tests/compat/seeds/), run unmodified through
``python -m runtime.compat`` in fresh interpreters, and what they print."""

import pytest
import torch

import npu_kernels as nk

from .launch import printed_tensors, seed_output, start_seeds

RUNS = {"multi_stream_in_graph_aclgraph.py": (), "npu_create_tagged_event.py": (), "npu_record_tagged_stream.py": ()}


@pytest.fixture(scope="module")
def runs():
    yield from start_seeds(RUNS)


@pytest.mark.parametrize("name, count", [("multi_stream_in_graph_aclgraph.py", 5), ("npu_create_tagged_event.py", 4)])
def test_tagged_event_models(runs, name, count):
    """multi_stream_in_graph_aclgraph.md, npu_create_tagged_event.md: ``Result:`` and the returned tuple;
    mm_result (on stream '1', after the tagged event) equals mm1 (same inputs, main stream)."""
    out = seed_output(runs, name)
    assert out.startswith("Result:\n(")
    tensors = printed_tensors(out)
    assert len(tensors) == count and tensors[1] == tensors[2]
    if count == 5:
        threes = torch.full((1000, 1000), 3.0, dtype=torch.float16, device=nk.npu_device())
        assert tensors[4] == printed_tensors(repr(threes))[0]


def test_npu_record_tagged_stream(runs):
    """npu_record_tagged_stream.md: B is all 1 and C all 101 (the memory of A is not reused early)."""
    out = seed_output(runs, "npu_record_tagged_stream.py")
    dev = nk.npu_device()
    assert out == f"{torch.ones(100, 100, device=dev)}\n{torch.full((100, 100), 101.0, device=dev)}\n"
