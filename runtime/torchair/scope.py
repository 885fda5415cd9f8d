"""``torchair.scope.npu_stream_switch``: run the operators of a block on the stream of a tag.

Inside a graph compiled by the reduce-overhead backend the block's operators run (and are captured) on
the tag's stream; in eager code the scope has no effect, as in torchair.
"""

from __future__ import annotations

import torch

from .ops import STREAM_LABEL, STREAM_PRIORITY


class npu_stream_switch:
    def __init__(self, stream_tag: str, stream_priority: int = 0, enable_inner_parallel: bool = True):
        self.keys = [STREAM_LABEL, STREAM_PRIORITY, "_enable_inner_parallel"]
        self.values = [stream_tag, str(stream_priority), str(enable_inner_parallel)]

    def __enter__(self):
        torch.ops.air.scope_enter(self.keys, self.values)
        return self

    def __exit__(self, *exc):
        torch.ops.air.scope_exit()
        return False
