import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

import runtime  # noqa: E402
from runtime import tasks as rt_tasks  # noqa: E402


def _active(name):
    """The runtime with backend ``name`` active; leaves no queued work or open mode behind."""
    previous = runtime.set_backend(name)
    runtime.set_stream(runtime.default_stream())
    if name == "cuda":
        runtime.backend().wait_timeout_s = 0.5   # a missing record fails fast
    try:
        yield runtime
    finally:
        be = runtime.backend()
        rt_tasks._open.clear()
        rt_tasks._updating.clear()
        be.guard_changed(False)
        if be.name == "host":
            be.discard_pending_work()
        else:
            be.clear_errors()
        runtime.set_stream(runtime.default_stream())
        runtime.set_external_event_semantics("consuming")
        runtime.set_backend(previous)


@pytest.fixture(params=runtime.available_backends())
def rt(request):
    """Each backend present in turn."""
    yield from _active(request.param)


@pytest.fixture
def host_rt():
    """The host backend (behaviour only it has, such as poisoned outputs of a capture)."""
    yield from _active("host")


@pytest.fixture
def device(rt):
    return rt.backend().device


def randn(*shape, device, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype, device=device)
