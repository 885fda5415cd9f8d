"""Decode-path calls of the fused operator on the split-KV decode kernels: the IFA call with FIA's
arguments (spec ops §4.3), and the decode sliding window that sends a call to the prefill kernel instead."""

from __future__ import annotations

from dataclasses import replace

import torch

from ...errors import require
from ...layouts import Layout, bnsd_shape
from .. import incre
from . import antiquant


def window_applies(layout: Layout, key: torch.Tensor, query: torch.Tensor, kw) -> bool:
    """The decode sliding window (spec §4.3): BSH, paged 3-D cache, float K/V, no prefix or rope, with
    0 < pre_tokens < INT_MAX (checked by the caller) keeps only the last min(W, kvlen) keys."""
    return layout.inp == "BSH" and kw["block_table"] is not None and key.dim() == 3 and key.dtype == query.dtype \
        and kw["key_shared_prefix"] is None and kw["query_rope"] is None


def incre_call(query, key, value, layout: Layout, kv_n: int, kw) -> incre.IncreCall:
    """The IFA call of a decode-path call, without its kv lengths (``incre.per_batch``)."""
    require(kw["inner_precise"] in (0, 1), "inner_precise", kw["inner_precise"], "must be 0 or 1 when Q_S = 1")
    for name in ("query_padding_size", "dequant_scale1", "quant_scale1", "dequant_scale2"):
        require(kw[name] is None, name, kw[name], "not supported with a query length of 1 (decode path)")
    scale, offset = kw["antiquant_scale"], kw["antiquant_offset"]
    if key.dtype == torch.int8 and antiquant.separated(kw):
        # separated parameters → the combined per-channel (2, ...) form IFA reads for the layout (a copy:
        # such a call is planned anew each time, see npu_kernels.plans)
        b, _, _, d = bnsd_shape(query, layout.inp, kw["num_heads"])
        kq, vq = antiquant.parameters(key, layout, kv_n, d, d, b, 0, kw["block_table"] is not None, 1, query.dtype, kw)
        shape = antiquant.channel_shape(layout, kv_n, d)
        scale = torch.stack([kq.scale[0, :, :d], vq.scale[0, :, :d]]).reshape(shape)
        if kq.offset is not None or vq.offset is not None:
            zero = torch.zeros_like(kq.scale[0, :, :d])
            offset = torch.stack([zero if a.offset is None else a.offset[0, :, :d] for a in (kq, vq)]).reshape(shape)
    call = incre.validate_static(query, key, value, atten_mask=kw["atten_mask"], pse_shift=kw["pse_shift"],
                                 antiquant_scale=scale, antiquant_offset=offset, block_table=kw["block_table"],
                                 quant_scale2=kw["quant_scale2"], quant_offset2=kw["quant_offset2"],
                                 kv_padding_size=kw["kv_padding_size"], num_heads=kw["num_heads"],
                                 scale_value=float(kw["scale"]), input_layout=layout.inp,
                                 num_key_value_heads=kw["num_key_value_heads"], block_size=kw["block_size"],
                                 inner_precise=kw["inner_precise"],
                                 lengths_given=kw["actual_seq_lengths_kv"] is not None,
                                 lengths_name="actual_seq_lengths_kv")
    return replace(call, layout=layout)

