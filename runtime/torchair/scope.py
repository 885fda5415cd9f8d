"""``torchair.scope``: scopes that tag the operators of a block (``npu_stream_switch``, ``super_kernel``) and
``npu_wait_tensor``.

Inside a graph compiled by the reduce-overhead backend the operators of a ``npu_stream_switch`` block run
(and are captured) on the tag's stream; in eager code a scope has no effect, as in torchair.
``super_kernel`` asks the graph engine to fuse the block's kernels: numerically neutral, it has no effect
here. ``npu_wait_tensor`` is torchair's (see ``ops``).
"""

from __future__ import annotations

import torch

from .ops import STREAM_LABEL, STREAM_PRIORITY, npu_wait_tensor

__all__ = ["Scope", "npu_stream_switch", "npu_wait_tensor", "super_kernel"]


class Scope:
    """``air.scope_enter(keys, values)`` on entry, ``air.scope_exit()`` on exit."""

    def __init__(self, attrs: dict):
        self.keys = list(attrs)
        self.values = list(attrs.values())

    def __enter__(self):
        torch.ops.air.scope_enter(self.keys, self.values)
        return self

    def __exit__(self, *exc):
        torch.ops.air.scope_exit()
        return False


def npu_stream_switch(stream_tag: str, stream_priority: int = 0, enable_inner_parallel: bool = True) -> Scope:
    return Scope({STREAM_LABEL: stream_tag, STREAM_PRIORITY: str(stream_priority),
                  "_enable_inner_parallel": str(enable_inner_parallel)})


def super_kernel(scope: str, options: str = "") -> Scope:
    return Scope({"_super_kernel_scope": "" if scope is None else scope, "_super_kernel_options": options})
