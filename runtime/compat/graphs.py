"""``torch_npu._C._npu_fused_infer_attention_score_out_graph``: torch_npu's one-call task update of the fused
operator."""

from __future__ import annotations

import npu_kernels as nk

from .. import graph_task_update_begin, graph_task_update_end, stream


def npu_fused_infer_attention_score_out_graph(update_stream, handle, event, query, key, value, *, out,
                                              workspace=None, **kwargs):
    """``torch_npu._C._npu_fused_infer_attention_score_out_graph``: on ``update_stream``, update the task
    group ``handle`` with this ``.out`` call, then record ``event`` there; returns ``out``."""
    with stream(update_stream):
        graph_task_update_begin(update_stream, handle)
        result = nk.npu_fused_infer_attention_score.out(query, key, value, out=out, workspace=workspace, **kwargs)
        graph_task_update_end(update_stream)
        event.record(update_stream)
    return result
