"""Activating a backend for a test, and small tensor factories (shared by the runtime tests)."""

import torch

import runtime
from runtime import tasks as rt_tasks


def active(name):
    """Generator: the runtime with backend ``name`` active; leaves no queued work or open mode behind."""
    previous = runtime.set_backend(name)
    runtime.set_stream(runtime.default_stream())
    be = runtime.backend()
    timeout, be.wait_timeout_s = be.wait_timeout_s, 0.5   # a missing record fails fast
    try:
        yield runtime
    finally:
        rt_tasks._open.clear()
        rt_tasks._updating.clear()
        rt_tasks._guard_changed()
        be.discard_pending_work()
        be.wait_timeout_s = timeout
        runtime.set_stream(runtime.default_stream())
        runtime.set_external_event_semantics("consuming")
        runtime.set_backend(previous)


def randn(*shape, device, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype, device=device)
