"""Validation of a fused-operator call (spec ops §4): torch_npu's arguments → a ``FusedCall``.

Validation is split along the plan cache (``npu_kernels.plans``): ``validate_static`` checks everything that
a call signature fixes and returns the call without its batches; ``per_batch`` validates the per-call
integers (lengths, shared-prefix length, pre/next tokens) against it. ``validate`` is both.

Dispatch, as the NPU's tiling (spec §4.3): the decode semantics (IFA: fill -1e12, LSE -3.4e38 for empty
batches, pre/next/sparse ignored at Q_S = 1) for BSH/BSND/BNSD (or their NBSD outputs) with Q_S = 1 or MLA
multi-token prediction, token-major MLA and int8 paged calls; the prefill semantics (PFA) otherwise.
Decode-path calls run on the split-KV decode kernels when they need nothing those kernels lack (shared
prefix, rope, per-token anti-quantisation, Dv ≠ D, the sliding window), else on the prefill kernel.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch
from einops import rearrange

from ... import checks, masks
from ...errors import require
from ...layouts import FUSED_LAYOUTS, TOKEN_LAYOUTS, Layout, bnsd_shape, ndim, out_shape
from .. import incre, prompt
from . import antiquant, decode_path, prefill_path

OP = "npu_fused_infer_attention_score"
DECODE_LAYOUTS = ("BSH", "BSND", "BNSD")


@dataclass(frozen=True)
class FusedCall:
    """Validated arguments: the call of the path chosen and the shapes of both results."""

    prompt: Optional[prompt.PromptCall]         # set when the prefill kernel runs the call
    incre: Optional[incre.IncreCall]            # set when the decode kernels run it
    layout: Layout
    out_shape: tuple[int, ...]
    out_dtype: torch.dtype
    lse_shape: tuple[int, ...]                  # (B, N, Q_S, 1) or (T, N, 1); (0,) when the flag is off
    lse_flag: bool
    batch: int                                  # rows of the parameter block (token-major: capacity)
    decode: bool = False                        # the decode semantics (on either kernel)

    def lse_view(self, lse: torch.Tensor) -> torch.Tensor:
        """(B, N, S) view of ``lse`` as the kernels index it (token-major: batch stride 0, rows = tokens)."""
        if self.layout.inp in TOKEN_LAYOUTS:
            t = rearrange(lse, "t n 1 -> 1 n t")
            return t.expand(self.batch, *t.shape[1:])
        return lse[..., 0]


# torch_npu's keyword arguments and defaults (spec §4.1), in schema order.
DEFAULTS = {
    "pse_shift": None, "atten_mask": None, "actual_seq_lengths": None, "actual_seq_lengths_kv": None,
    "dequant_scale1": None, "quant_scale1": None, "dequant_scale2": None, "quant_scale2": None,
    "quant_offset2": None, "antiquant_scale": None, "antiquant_offset": None, "key_antiquant_scale": None,
    "key_antiquant_offset": None, "value_antiquant_scale": None, "value_antiquant_offset": None,
    "block_table": None, "query_padding_size": None, "kv_padding_size": None, "key_shared_prefix": None,
    "value_shared_prefix": None, "actual_shared_prefix_len": None, "query_rope": None, "key_rope": None,
    "key_rope_antiquant_scale": None, "num_heads": 1, "scale": 1.0, "pre_tokens": masks.INT_MAX,
    "next_tokens": masks.INT_MAX, "input_layout": "BSH", "num_key_value_heads": 0, "sparse_mode": 0,
    "inner_precise": 0, "block_size": 0, "antiquant_mode": 0, "key_antiquant_mode": 0, "value_antiquant_mode": 0,
    "softmax_lse_flag": False,
}
TENSOR_ARGS = tuple(k for k, v in DEFAULTS.items() if v is None and k not in
                    ("actual_seq_lengths", "actual_seq_lengths_kv", "actual_shared_prefix_len"))
LIST_ARGS = ("actual_seq_lengths", "actual_seq_lengths_kv", "actual_shared_prefix_len")


def with_defaults(kwargs: dict) -> dict:
    kw = {**DEFAULTS, **kwargs}
    if len(kw) != len(DEFAULTS):
        unknown = sorted(set(kwargs) - set(DEFAULTS))
        raise TypeError(f"{OP} got unexpected keyword arguments {unknown}")
    return kw


def _decode_path(layout: Layout, q_s: int, d: int, key: torch.Tensor, kw) -> bool:
    """The tiling's choice of the decode (IFA) semantics (spec §4.3)."""
    rope = kw["query_rope"] is not None
    if layout.inp in TOKEN_LAYOUTS:
        if layout.name == "NTD_TND":
            return False
        aq = kw["antiquant_scale"] if kw["antiquant_scale"] is not None else kw["key_antiquant_scale"]
        int8_paged = kw["block_table"] is not None and key.dtype == torch.int8 and aq is not None \
            and aq.dtype == torch.float32 and (kw["antiquant_offset"] is not None or kw["key_antiquant_offset"] is not None)
        return d == 512 or int8_paged
    if layout.name == "BNSD_BSND":
        require(q_s != 1, "input_layout", layout.name, "BNSD_BSND is not supported with a query length of 1")
        return False
    mla_mtp = rope and 1 < q_s <= 16 and d == 512
    return layout.inp in DECODE_LAYOUTS and (q_s == 1 or mla_mtp)


def window_opens(pre) -> bool:
    """pre_tokens in (0, INT_MAX): the decode sliding window may apply (part of the signature)."""
    return isinstance(pre, int) and 0 < pre < masks.INT_MAX


def validate_static(query, key, value, kw) -> FusedCall:
    """``kw``: every argument (``with_defaults``). The call without its batches (see ``per_batch``)."""
    query = checks.tensor("query", query, dtypes=checks.FLOAT_DTYPES + (torch.int8,))
    key = checks.tensor("key", key)
    value = checks.tensor("value", value)
    for name, t in (("key", key), ("value", value)):
        require(t.dtype != torch.int32, name, t, "int4 key/value (packed in int32) is not supported")
        checks.tensor(name, t, dtypes=checks.FLOAT_DTYPES + (torch.int8,))
    require(key.dtype == value.dtype, "value", value, f"key and value must share one dtype (key is {key.dtype})",
            TypeError)
    if query.dtype == torch.int8:
        require(key.dtype == torch.int8, "key", key, "an int8 query needs int8 key/value (full quantisation)", TypeError)
    else:
        require(key.dtype in (query.dtype, torch.int8), "key", key,
                f"key/value must be {query.dtype} or int8 (anti-quantised)", TypeError)
    layout = Layout.parse(kw["input_layout"], FUSED_LAYOUTS)
    num_heads = kw["num_heads"]
    kv_n = checks.head_counts(num_heads, kw["num_key_value_heads"])
    require(query.dim() == ndim(layout.inp), "query", query, f"layout {layout.inp} needs {ndim(layout.inp)} dimensions")
    if layout.inp == "BSH":
        require(query.shape[-1] % num_heads == 0, "query", query, f"hidden size must be divisible by num_heads={num_heads}")
    _, n, q_s, d = bnsd_shape(query, layout.inp, num_heads)
    require(n == num_heads, "num_heads", num_heads, f"must equal the query's head axis ({n})")
    require(layout.name != "BNSD_NBSD" or q_s <= 16, "input_layout", layout.name,
            f"BNSD_NBSD supports a query length of at most 16, got {q_s}")
    scale = kw["scale"]
    require(isinstance(scale, (int, float)) and abs(float(scale)) < float("inf"), "scale", scale, "must be a finite float")
    require(kw["inner_precise"] in (0, 1, 2, 3), "inner_precise", kw["inner_precise"], "must be 0, 1, 2 or 3")
    for name in ("block_size", "sparse_mode"):
        require(isinstance(kw[name], int), name, kw[name], "must be an int", TypeError)
    rope = kw["query_rope"], kw["key_rope"]
    require((rope[0] is None) == (rope[1] is None), "query_rope", rope[0], "query_rope and key_rope go together")
    lse_flag = bool(kw["softmax_lse_flag"])

    decode = _decode_path(layout, q_s, d, key, kw)
    same_dv = prefill_path.kv_view(value, layout, kv_n, kw["block_table"], "value").shape[3] == d
    token = layout.inp in TOKEN_LAYOUTS
    window = decode and window_opens(kw["pre_tokens"]) and decode_path.window_applies(layout, key, query, kw)
    if decode and q_s == 1 and not token and rope[0] is None and kw["key_shared_prefix"] is None \
            and antiquant.channel_only(key, kw) and same_dv and not window:
        call = decode_path.incre_call(query, key, value, layout, kv_n, kw)
        h = call.heads
        return FusedCall(None, call, layout, out_shape(layout.out, h.B, h.N, 1, h.Dv), call.out_dtype,
                         (h.B, h.N, 1, 1) if lse_flag else (0,), lse_flag, h.B, True)
    call = prefill_path.prompt_call(query, key, value, layout, kv_n, decode, window, kw)
    h = call.heads
    shape = out_shape(layout.out, 1 if token else h.B, h.N, h.S1, h.Dv)
    lse_shape = ((h.S1, h.N, 1) if token else (h.B, h.N, h.S1, 1)) if lse_flag else (0,)
    return FusedCall(call, None, layout, shape, call.out_dtype, lse_shape, lse_flag, h.B, decode)


def per_batch(call: FusedCall, kw) -> tuple:
    """The per-call integers of ``call``'s path, validated: the decode kernels' kv lengths, or the prefill
    kernel's (query lengths, kv lengths with the shared prefix, bands, offsets) per parameter-block row."""
    if call.incre is not None:
        return (incre.per_batch(call.incre, kw["actual_seq_lengths_kv"], "actual_seq_lengths_kv"),)
    return prefill_path.per_batch(call, kw)


def validate(query, key, value, **kw) -> FusedCall:
    """torch_npu's keyword arguments of the fused operator (spec §4.1) → a ``FusedCall``."""
    kw = with_defaults(kw)
    call = validate_static(query, key, value, kw)
    if call.incre is not None:
        (kvlens,) = per_batch(call, kw)
        return replace(call, incre=replace(call.incre, kvlens=kvlens))
    qlens, kvtots, bands, offsets = per_batch(call, kw)
    return replace(call, prompt=replace(call.prompt, qlens=qlens, kvlens=kvtots, bands=bands, offsets=offsets))
