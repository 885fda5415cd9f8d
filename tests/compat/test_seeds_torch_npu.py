"""The torch_npu seed documents' examples (tests/compat/seeds/), run unmodified through
``python -m runtime.compat`` in fresh interpreters, and what they print."""

import re

import pytest

from .launch import seed_output, start_seeds

RUNS = {"graph_task_group_begin.py": (), "prompt_flash_attention_single_op.txt": ("-m", "doctest"),
        "prompt_flash_attention_graph.py": ()}


@pytest.fixture(scope="module")
def runs():
    yield from start_seeds(RUNS)


def test_graph_task_group_begin(runs):
    """torch_npu-npu-graph_task_group_begin.md: capture with length 29, update to 100, replay."""
    out = seed_output(runs, "graph_task_group_begin.py")
    assert out.splitlines()[-1] == "equal: True"


def test_prompt_flash_attention_single_op(runs):
    """torch_npu-npu_prompt_flash_attention.md, single operator: a doctest, silent when the shape and
    dtype printed are the document's."""
    assert seed_output(runs, "prompt_flash_attention_single_op.txt") == ""


def test_prompt_flash_attention_graph(runs):
    """torch_npu-npu_prompt_flash_attention.md, graph mode: the compiled call prints the eager result."""
    out = seed_output(runs, "prompt_flash_attention_graph.py")
    size = r"torch\.Size\(\[1, 8, 32, 128\]\)"
    single = re.search(rf"single op output with mask: (tensor\(.*?\)) {size}\n", out, re.S)
    graph = re.search(rf"graph output with mask: (tensor\(.*?\)) {size}\n", out, re.S)
    assert single and graph and single.group(1) == graph.group(1)
