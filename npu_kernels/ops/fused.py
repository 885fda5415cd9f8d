"""``npu_fused_infer_attention_score`` (FIA): validate → plan → run (spec ops §4).

The operator dispatches, as the NPU's tiling does (spec §4.3), to the decode semantics (IFA: fill -1e12,
LSE -3.4e38 for empty batches, pre/next/sparse ignored) when the layout is BSH/BSND/BNSD (or their
NBSD outputs) and Q_S = 1, and to the prefill semantics (PFA) otherwise. Decode-path calls run on the
split-KV decode kernels when they need nothing those kernels lack (shared prefix, rope, per-token
anti-quantisation), else on the prefill kernel with the decode semantics.

Workspace: ``_npu_fused_infer_attention_score_get_max_workspace`` returns, in the query's dtype, room
for the split-KV scratch of the decode kernels (partial outputs and per-split max/sum, float32) sized for
the worst case of the call (capacity, not actual lengths); ``.out`` with that workspace allocates
nothing on the device. The prefill kernel needs no scratch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch
from einops import rearrange

from .. import alloc, checks, masks, params, quant
from ..errors import require
from ..layouts import FUSED_LAYOUTS, TOKEN_LAYOUTS, Layout, as_bnsd, bnsd_shape, ndim, out_shape
from . import incre, prompt
from .sources import PER_CHANNEL, PER_ROW, PER_TOKEN, AntiQuant, Sources

OP = "npu_fused_infer_attention_score"
DECODE_LAYOUTS = ("BSH", "BSND", "BNSD")
MAX_TOKEN_BATCH = 4096
ROPE_DIM = 64


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
    batch: int                                  # batches of the kernel's call (token-major: + 1 pseudo-batch)

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


def with_defaults(kwargs: dict) -> dict:
    unknown = sorted(set(kwargs) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"npu_fused_infer_attention_score got unexpected keyword arguments {unknown}")
    return {**DEFAULTS, **kwargs}


def _query_len(query: torch.Tensor, layout: Layout, num_heads: int) -> int:
    require(query.dim() == ndim(layout.inp), "query", query, f"layout {layout.inp} needs {ndim(layout.inp)} dimensions")
    return bnsd_shape(query, layout.inp, num_heads)[2]


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


def _cumulative(name: str, values, upper: int) -> list[int]:
    """Per-batch (offset, length) pairs from cumulative lengths (negative differences clipped to 0)."""
    require(values is not None, name, None, "required (cumulative lengths) with a token-major layout")
    require(0 < len(values) <= MAX_TOKEN_BATCH, name, values, f"needs 1 to {MAX_TOKEN_BATCH} values")
    require(all(0 <= v <= upper for v in values), name, values, f"cumulative lengths must be in [0, {upper}]")
    return list(values)


def _aq_view(name: str, mode: int, t: torch.Tensor, kv_n: int, width: int, batch: int, s2: int,
             paged: bool, query_dtype: torch.dtype) -> torch.Tensor:
    """One anti-quant parameter of key or value as the kernel's [X, KV_N, Y] view (spec §4.4 modes)."""
    checks.tensor(name, t)
    if mode in (0, 2):
        require(t.dtype == query_dtype, name, t, f"per-channel/per-tensor parameters have the query dtype {query_dtype}")
        if mode == 2:
            require(tuple(t.shape) == (kv_n,), name, t, f"mode 2 (per tensor and head) needs shape (KV_N={kv_n},)")
            return t.reshape(1, kv_n, 1).expand(1, kv_n, width)
        require(t.numel() in (1, kv_n * width), name, t, f"per-tensor needs 1 element, per-channel KV_N*D = {kv_n * width}")
        return t.reshape(1, 1, 1).expand(1, kv_n, width) if t.numel() == 1 else t.reshape(1, kv_n, width)
    require(t.dtype == torch.float32, name, t, f"per-token parameters (mode {mode}) are float32")
    if mode in (4, 5):
        require(paged, name, t, f"mode {mode} (parameters managed like the paged cache) needs block_table")
    shapes = {1: "(1, B, S2)", 3: "(B, KV_N, S2)", 4: "(blocks, block_size)", 5: "(blocks, KV_N, block_size)"}
    v = t.reshape(-1, 1, t.shape[-1]) if mode in (1, 4) else t
    ok = v.dim() == 3 and v.shape[1] == (1 if mode in (1, 4) else kv_n)
    if mode in (1, 3):                                   # S2 covers every key of the batch
        ok = ok and v.shape[0] == batch and v.shape[2] >= s2
    require(ok, name, t, f"mode {mode} needs {shapes[mode]} with B={batch}, KV_N={kv_n}, S2 >= {s2}")
    return v.expand(v.shape[0], kv_n, v.shape[2])        # shared by the heads: stride 0


def _antiquant(key: torch.Tensor, layout: Layout, kv_n: int, d: int, dv: int, batch: int, s2: int, paged: bool,
               q_s: int, query_dtype, kw) -> tuple[Optional[AntiQuant], Optional[AntiQuant]]:
    """Combined or separated K/V anti-quantisation (spec §4.4) as the key's and the value's parameters."""
    names = ("antiquant_scale", "antiquant_offset", "key_antiquant_scale", "key_antiquant_offset",
             "value_antiquant_scale", "value_antiquant_offset")
    if key.dtype != torch.int8:
        for n in names:
            require(kw[n] is None, n, kw[n], f"only with int8 key/value (key is {key.dtype})")
        return None, None
    if kw["key_antiquant_scale"] is not None or kw["value_antiquant_scale"] is not None:
        modes = kw["key_antiquant_mode"], kw["value_antiquant_mode"]
        params = [(kw[f"{w}_antiquant_scale"], kw[f"{w}_antiquant_offset"]) for w in ("key", "value")]
        for w, (sc, _) in zip(("key", "value"), params):
            require(sc is not None, f"{w}_antiquant_scale", None, "key and value anti-quant scales go together")
        require(all(m in range(6) for m in modes), "key_antiquant_mode", modes[0], "modes are 0-5")
        require(modes[0] == modes[1] or modes == (0, 1), "value_antiquant_mode", modes[1],
                f"must equal key_antiquant_mode ({modes[0]}), or be 1 with key mode 0")
        prefix = "{}_antiquant"
    else:
        require(kw["antiquant_scale"] is not None, "antiquant_scale", None, "int8 key/value need anti-quant scales")
        mode = kw["antiquant_mode"]
        require(mode in (0, 1), "antiquant_mode", mode, "must be 0 (per channel/tensor) or 1 (per token)")
        scale, offset = kw["antiquant_scale"], kw["antiquant_offset"]
        checks.tensor("antiquant_scale", scale)
        require(scale.shape[0] == 2, "antiquant_scale", scale, "the first axis is 2 (key, value)")
        if mode == 0:
            channel = {"BNSD": (2, kv_n, 1, d), "BSND": (2, kv_n, d), "BSH": (2, kv_n * d)}.get(layout.inp, (2, kv_n, d))
            require(tuple(scale.shape) in ((2,), channel), "antiquant_scale", scale,
                    f"must be per-tensor (2,) or per-channel {channel} (index 0 key, 1 value)")
        modes = (mode, mode)
        params = [(scale[i], None if offset is None else offset[i]) for i in range(2)]
        prefix = "antiquant"
    require(q_s == 1 or all(m in (0, 1) for m in modes), "key_antiquant_mode", modes[0],
            "a query length above 1 supports modes 0 and 1 only")
    out = []
    for which, (mode, (sc, of), width) in enumerate(zip(modes, params, (d, dv))):
        name = prefix.format(("key", "value")[which])
        if mode in (0, 2) and sc.numel() != 1 and mode != 2:
            require(dv == d, f"{name}_scale", sc, f"per-channel parameters need equal key and value head dims ({d}, {dv})")
        view = _aq_view(f"{name}_scale", mode, sc, kv_n, max(d, dv), batch, s2, paged, query_dtype)
        off = None
        if of is not None:
            checks.tensor(f"{name}_offset", of)
            require(of.shape == sc.shape and of.dtype == sc.dtype, f"{name}_offset", of,
                    f"must match the scale's shape {tuple(sc.shape)} and dtype {sc.dtype}")
            off = _aq_view(f"{name}_offset", mode, of, kv_n, max(d, dv), batch, s2, paged, query_dtype)
        kernel_mode = PER_CHANNEL if mode in (0, 2) else PER_TOKEN if mode in (1, 3) and paged else PER_ROW
        out.append(AntiQuant(kernel_mode, view, off))
    return out[0], out[1]


def _kv_views(t: torch.Tensor, layout: Layout, kv_n: int, block_table, name: str) -> torch.Tensor:
    """(B or blocks, KV_N, S, D) view of a key/value tensor or paged cache."""
    if block_table is None:
        return as_bnsd(t, layout.inp, kv_n)
    require(t.dim() in (3, 4), name, t, "a paged cache is (blocks, block_size, KV_N*D) or (blocks, KV_N, block_size, D)")
    if t.dim() == 3:
        return rearrange(t, "k s (n d) -> k n s d", n=kv_n)
    return t


def validate(query, key, value, **kw) -> FusedCall:
    """torch_npu's keyword arguments of the fused operator (spec §4.1) → a ``FusedCall``."""
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
    if layout.inp == "BSH" or layout.inp in TOKEN_LAYOUTS or layout.inp == "NSD":
        require(query.dim() == ndim(layout.inp), "query", query,
                f"layout {layout.inp} needs {ndim(layout.inp)} dimensions")
    if layout.inp == "BSH":
        require(query.shape[-1] % num_heads == 0, "query", query, f"hidden size must be divisible by num_heads={num_heads}")
    q_s = _query_len(query, layout, num_heads)
    _, n, _, d = bnsd_shape(query, layout.inp, num_heads)
    require(n == num_heads, "num_heads", num_heads, f"must equal the query's head axis ({n})")
    scale = kw["scale"]
    require(isinstance(scale, (int, float)) and abs(float(scale)) < float("inf"), "scale", scale, "must be a finite float")
    require(kw["inner_precise"] in (0, 1, 2, 3), "inner_precise", kw["inner_precise"], "must be 0, 1, 2 or 3")
    for name in ("pre_tokens", "next_tokens", "block_size", "sparse_mode"):
        require(isinstance(kw[name], int), name, kw[name], "must be an int")
    rope = kw["query_rope"], kw["key_rope"]
    require((rope[0] is None) == (rope[1] is None), "query_rope", rope[0], "query_rope and key_rope go together")
    lse_flag = bool(kw["softmax_lse_flag"])

    decode = _decode_path(layout, q_s, d, key, kw)
    same_dv = _kv_views(value, layout, kv_n, kw["block_table"], "value").shape[3] == d
    token = layout.inp in TOKEN_LAYOUTS
    if decode and q_s == 1 and not token and rope[0] is None and kw["key_shared_prefix"] is None \
            and _channel_antiquant(key, kw) and same_dv and _sliding_window(layout, key, query, kw) is None:
        call = _decode_call(query, key, value, layout, kv_n, kw)
        h = call.heads
        return FusedCall(None, call, layout, out_shape(layout.out, h.B, h.N, 1, h.Dv), call.out_dtype,
                         (h.B, h.N, 1, 1) if lse_flag else (0,), lse_flag, h.B)
    call = _prefill_call(query, key, value, layout, kv_n, decode, kw)
    h = call.heads
    shape = out_shape(layout.out, 1 if token else h.B, h.N, h.S1, h.Dv)
    lse_shape = ((h.S1, h.N, 1) if token else (h.B, h.N, h.S1, 1)) if lse_flag else (0,)
    return FusedCall(call, None, layout, shape, call.out_dtype, lse_shape,
                     lse_flag, h.B)


def _sliding_window(layout: Layout, key: torch.Tensor, query: torch.Tensor, kw) -> Optional[int]:
    """Decode sliding window W (spec §4.3): BSH, paged 3-D cache, float K/V, no prefix or rope, and
    0 < pre_tokens < INT_MAX keep only the last min(W, kvlen) keys."""
    if layout.inp == "BSH" and kw["block_table"] is not None and key.dim() == 3 and key.dtype == query.dtype \
            and kw["key_shared_prefix"] is None and kw["query_rope"] is None and 0 < kw["pre_tokens"] < masks.INT_MAX:
        return kw["pre_tokens"]
    return None


def _channel_antiquant(key: torch.Tensor, kw) -> bool:
    """Float K/V, or int8 with per-channel/per-tensor parameters only (what the decode kernels read)."""
    if key.dtype != torch.int8:
        return True
    if kw["key_antiquant_scale"] is not None or kw["value_antiquant_scale"] is not None:
        return kw["key_antiquant_mode"] in (0, 2) and kw["value_antiquant_mode"] in (0, 2)
    return kw["antiquant_mode"] == 0


def _decode_call(query, key, value, layout: Layout, kv_n: int, kw) -> incre.IncreCall:
    """Decode path on the split-KV kernels: the IFA call with FIA's arguments (spec §4.3)."""
    require(kw["inner_precise"] in (0, 1), "inner_precise", kw["inner_precise"], "must be 0 or 1 when Q_S = 1")
    for name in ("query_padding_size", "dequant_scale1", "quant_scale1", "dequant_scale2"):
        require(kw[name] is None, name, kw[name], "not supported with a query length of 1 (decode path)")
    scale, offset = kw["antiquant_scale"], kw["antiquant_offset"]
    if key.dtype == torch.int8 and (kw["key_antiquant_scale"] is not None or kw["value_antiquant_scale"] is not None):
        # separated parameters → the combined per-channel (2, ...) form IFA reads for the layout
        b, _, _, d = bnsd_shape(query, layout.inp, kw["num_heads"])
        kq, vq = _antiquant(key, layout, kv_n, d, d, b, 0, kw["block_table"] is not None, 1, query.dtype, kw)
        shape = {"BNSD": (2, kv_n, 1, d), "BSND": (2, kv_n, d), "BSH": (2, kv_n * d)}[layout.inp]
        scale = torch.stack([kq.scale[0, :, :d], vq.scale[0, :, :d]]).reshape(shape)
        if kq.offset is not None or vq.offset is not None:
            zero = torch.zeros_like(kq.scale[0, :, :d])
            offset = torch.stack([zero if a.offset is None else a.offset[0, :, :d] for a in (kq, vq)]).reshape(shape)
    call = incre.validate(query, key, value, atten_mask=kw["atten_mask"], pse_shift=kw["pse_shift"],
                          actual_seq_lengths=kw["actual_seq_lengths_kv"], antiquant_scale=scale,
                          antiquant_offset=offset, block_table=kw["block_table"], quant_scale2=kw["quant_scale2"],
                          quant_offset2=kw["quant_offset2"], kv_padding_size=kw["kv_padding_size"],
                          num_heads=kw["num_heads"], scale_value=float(kw["scale"]), input_layout=layout.inp,
                          num_key_value_heads=kw["num_key_value_heads"], block_size=kw["block_size"],
                          inner_precise=kw["inner_precise"])
    return replace(call, layout=layout)


def _prefill_call(query, key, value, layout: Layout, kv_n: int, decode: bool, kw) -> prompt.PromptCall:
    """The prefill kernel's call (spec §1, §2), with the decode semantics when ``decode``."""
    num_heads = kw["num_heads"]
    token = layout.inp in TOKEN_LAYOUTS
    table = kw["block_table"]
    for name, t in (("key", key), ("value", value)):
        if table is None:
            require(t.dim() == ndim(layout.inp), name, t, f"layout {layout.inp} needs {ndim(layout.inp)} dimensions")
    q4 = as_bnsd(query, layout.inp, num_heads)
    k4 = _kv_views(key, layout, kv_n, table, "key")
    v4 = _kv_views(value, layout, kv_n, table, "value")
    _, n, s1, d = q4.shape
    require(k4.shape[1] == kv_n and v4.shape[1] == kv_n, "num_key_value_heads", kw["num_key_value_heads"],
            f"key/value head axes are ({k4.shape[1]}, {v4.shape[1]}), expected {kv_n}")
    require(k4.shape[3] == d, "key", key, f"key head dim ({k4.shape[3]}) must equal the query head dim ({d})")
    require(v4.shape[2] == k4.shape[2], "value", value, "value seq length must equal the key's")
    checks.head_dim("query", query, d)
    checks.head_dim("value", value, v4.shape[3])

    qa = quant.full_quant_args(query.dtype, n, v4.shape[3], kw["dequant_scale1"], kw["quant_scale1"],
                               kw["dequant_scale2"], kw["quant_scale2"], kw["quant_offset2"])
    # batches and per-batch lengths/offsets
    q_vals = checks.int_list(kw["actual_seq_lengths"])
    kv_vals = checks.int_list(kw["actual_seq_lengths_kv"])
    page = 0
    if table is not None:
        checks.tensor("block_table", table, ndim=(2,), dtypes=(torch.int32,))
        page = kw["block_size"]
        require(0 < page <= 1024 and page % 16 == 0, "block_size", page,
                "must be a multiple of 16 in [16, 1024] with block_table")
        require(kv_vals is not None, "actual_seq_lengths_kv", None, "required with block_table (PagedAttention)")
    if token:
        cum_q = _cumulative("actual_seq_lengths", q_vals, s1)
        B = len(cum_q)
        starts = [0] + cum_q[:-1]
        qlens = [max(e - s, 0) for s, e in zip(starts, cum_q)]
        if table is None:
            cum_kv = _cumulative("actual_seq_lengths_kv", kv_vals, k4.shape[2])
            require(len(cum_kv) == B, "actual_seq_lengths_kv", kv_vals, f"needs B={B} values like actual_seq_lengths")
            kv_starts = [0] + cum_kv[:-1]
            kvlens = [max(e - s, 0) for s, e in zip(kv_starts, cum_kv)]
        else:                                   # TND + PagedAttention: per-batch kv lengths
            kv_starts = [0] * B
            kvlens = checks.lengths("actual_seq_lengths_kv", kv_vals, B, table.shape[1] * page)
        q4 = q4.expand(B + 1, *q4.shape[1:])             # batches are row offsets: batch stride 0
        if table is None:
            k4, v4 = (t.expand(B + 1, *t.shape[1:]) for t in (k4, v4))
        s2 = k4.shape[2]
    else:
        B = q4.shape[0]
        require(table is not None or (k4.shape[0] == B and v4.shape[0] == B), "key", key,
                f"key/value batch must equal the query batch ({B})")
        s2 = k4.shape[2] if table is None else table.shape[1] * page
        if table is not None:
            require(table.shape[0] == B, "block_table", table, f"must be (B={B}, max blocks per sequence)")
        qlens = ([1] * B if decode else checks.lengths("actual_seq_lengths", q_vals, B, s1)) or [s1] * B
        kvlens = checks.lengths("actual_seq_lengths_kv", kv_vals, B, s2) or [s2] * B
        starts = kv_starts = [0] * B
    require(B <= checks.MAX_B, "query", query, f"batch must be <= {checks.MAX_B}")

    # shared prefix
    prefix, P = None, 0
    if kw["key_shared_prefix"] is not None or kw["value_shared_prefix"] is not None:
        kp = checks.tensor("key_shared_prefix", kw["key_shared_prefix"], dtypes=(key.dtype,))
        vp = checks.tensor("value_shared_prefix", kw["value_shared_prefix"], dtypes=(value.dtype,))
        require(table is None and not token, "key_shared_prefix", kp,
                "a shared prefix cannot be combined with PagedAttention or a token-major layout")
        kp4, vp4 = as_bnsd(kp, layout.inp, kv_n), as_bnsd(vp, layout.inp, kv_n)
        require(kp4.shape[0] == 1 and vp4.shape[0] == 1, "key_shared_prefix", kp, "the prefix batch dim must be 1")
        require(kp4.shape[1:3] == vp4.shape[1:3] and kp4.shape[3] == d and vp4.shape[3] == v4.shape[3],
                "value_shared_prefix", vp, "prefix key/value must have the key/value heads and head dims")
        plen = checks.int_list(kw["actual_shared_prefix_len"])
        P = kp4.shape[2] if plen is None else plen[0]
        require(0 <= P <= kp4.shape[2], "actual_shared_prefix_len", plen, f"must be in [0, {kp4.shape[2]}]")
        prefix = (kp4, vp4)
    elif kw["actual_shared_prefix_len"] is not None:
        require(False, "actual_shared_prefix_len", kw["actual_shared_prefix_len"], "needs key_shared_prefix")
    kvtots = [P + kv for kv in kvlens]

    # rope
    rope = None
    if kw["query_rope"] is not None:
        qr = checks.tensor("query_rope", kw["query_rope"], dtypes=(query.dtype,))
        kr = checks.tensor("key_rope", kw["key_rope"], dtypes=(query.dtype,))
        qr4 = as_bnsd(qr, layout.inp, num_heads)
        kr4 = _kv_views(kr, layout, kv_n, table, "key_rope")
        require(qr4.shape[3] == ROPE_DIM and kr4.shape[3] == ROPE_DIM, "query_rope", qr,
                f"rope head dim must be {ROPE_DIM}")
        require(qr4.shape[:3] == as_bnsd(query, layout.inp, num_heads).shape[:3], "query_rope", qr,
                "must have the query's batch, heads and seq length")
        require(kr4.shape[:3] == _kv_views(key, layout, kv_n, table, "key").shape[:3], "key_rope", kr,
                "must have the key's batch (or blocks), heads and seq length")
        require(prefix is None and key.dtype != torch.int8, "query_rope", qr,
                "rope cannot be combined with a shared prefix or int8 key/value")
        if token:
            qr4 = qr4.expand(B + 1, *qr4.shape[1:])
            kr4 = kr4.expand(B + 1, *kr4.shape[1:]) if table is None else kr4
        rope = (qr4, kr4)

    key_quant = value_quant = None
    if query.dtype != torch.int8:
        longest = max(kvlens, default=0) if table is not None else s2
        key_quant, value_quant = _antiquant(key, layout, kv_n, d, v4.shape[3], B, longest, table is not None, s1,
                                            query.dtype, kw)
        require(prefix is None or all(a is None or a.mode == PER_CHANNEL for a in (key_quant, value_quant)),
                "key_shared_prefix", kw["key_shared_prefix"], "a shared prefix needs per-channel anti-quantisation")

    # padding (read on the device, element 0 for every batch)
    q_pad = kv_pad = None
    if kw["query_padding_size"] is not None and q_vals is not None and not token and not decode:
        q_pad = checks.tensor("query_padding_size", kw["query_padding_size"], dtypes=(torch.int64,)).reshape(-1)[:1]
    if kw["kv_padding_size"] is not None and kv_vals is not None and not token:
        kv_pad = checks.tensor("kv_padding_size", kw["kv_padding_size"], dtypes=(torch.int64,)).reshape(-1)[:1]
    if q_pad is not None or kv_pad is not None:
        require(table is None and prefix is None, "kv_padding_size", kw["kv_padding_size"],
                "left padding cannot be combined with PagedAttention or a shared prefix")

    # masks and bands
    mode = kw["sparse_mode"]
    require(mode in masks.SPARSE_MODES, "sparse_mode", mode, "must be 0-4 for this operator")
    pre, nxt = kw["pre_tokens"], kw["next_tokens"]
    mask = None
    ignore_band = decode and s1 == 1 and rope is None and not token     # Q_S = 1: sparse, pre, next ignored
    if ignore_band:
        mode, pre, nxt = 0, masks.INT_MAX, masks.INT_MAX
        if kw["atten_mask"] is not None:
            mask = checks.decode_mask(kw["atten_mask"], B, s2 + P)
    elif mode in (2, 3, 4):
        checks.compressed_mask(kw["atten_mask"], mode)
    elif kw["atten_mask"] is not None:
        mask = checks.user_mask(kw["atten_mask"], B, max(qlens, default=0) if token else s1,
                                max(kvtots, default=0) if token or table is not None else s2 + P)
    elif mode == 1:
        require(False, "atten_mask", None, "sparse_mode=1 (allMask) requires atten_mask")
    padding = q_pad is not None or kv_pad is not None
    prompt.check_band_tokens(mode, pre, nxt, s1, qlens, kvtots, mask is not None)
    bands = [masks.prefill_band(mode, pre, nxt, q, kv, mask is not None, padding) for q, kv in zip(qlens, kvtots)]
    window = _sliding_window(layout, key, query, kw) if decode else None
    if window is not None:                              # row 0 keeps keys [kvlen - W, kvlen)
        bands = [masks.Band(window - kv, masks.INT_MAX, mask is not None) for kv in kvtots]
    if qa.int8_out:
        prompt.check_int8_output(qa, mode, pre, nxt, s1, qlens, kvtots, bands)

    pse = None
    inner = kw["inner_precise"]
    if kw["pse_shift"] is not None:
        require(not token, "pse_shift", kw["pse_shift"], "not supported with a token-major layout")
        pse = checks.pse(kw["pse_shift"], torch.float16 if qa.int8_in else query.dtype, B, n, s1, s2 + P)
        inner &= ~1                                             # pse forces high precision
    fp16_compute = qa.int8_in or (query.dtype == torch.float16 and inner & 1 and not decode)
    scale = masks.fp16_value(kw["scale"]) if fp16_compute else float(kw["scale"])
    fill = masks.FILL_DECODE if decode else masks.FILL_FP16 if fp16_compute else masks.FILL_FP32
    out_dtype = torch.int8 if qa.int8_out else (rope[0].dtype if rope else torch.float16) if qa.int8_in \
        else query.dtype

    offsets = tuple((qs, ks, 0, 0, P) for qs, ks in zip(starts, kv_starts))
    if token:                                                  # trailing tokens past the last batch: zeros
        qlens, kvlens, kvtots = qlens + [s1 - cum_q[-1]], kvlens + [0], kvtots + [0]
        bands = bands + [masks.Band(masks.INT_MAX, masks.INT_MAX, False)]
        offsets = offsets + ((cum_q[-1], 0, 0, 0, 0),)
        B += 1
    heads = checks.Heads(q4, k4, v4, B, n, kv_n, s1, s2, d, v4.shape[3])
    sources = Sources(varlen=token, q_pad=q_pad, kv_pad=kv_pad, table=table, page_size=page, prefix=prefix,
                      rope=rope, key_quant=key_quant, value_quant=value_quant)
    return prompt.PromptCall(heads=heads, layout=layout, dtype=query.dtype, out_dtype=out_dtype, qlens=qlens,
                             kvlens=kvtots, bands=bands, mask=mask, pse=pse, scale=scale, fill=fill,
                             zero_masked_rows=bool(inner & 2) and not decode, quant=qa, offsets=offsets,
                             sources=sources, lse_empty=masks.LSE_DECODE_EMPTY if decode else float("inf"),
                             fp16_path=bool(fp16_compute) and not qa.int8_in)


def outputs(call: FusedCall) -> tuple[torch.Tensor, torch.Tensor]:
    device = (call.prompt or call.incre).heads.q.device
    return (alloc.empty(call.out_shape, call.out_dtype, device),
            alloc.empty(call.lse_shape, torch.float32, device))


def _scratch_words(call: FusedCall) -> int:
    """Float32 words of split-KV scratch (partial outputs, per-split max and sum) on the decode kernels."""
    if call.incre is None:
        return 0
    device = call.incre.heads.q.device
    out = torch.empty(call.out_shape, dtype=call.out_dtype, device="meta")
    return sum(incre.plan(call.incre, out, None, on_gpu=device.type == "cuda").static.workspace)


def _block_words(call: FusedCall) -> int:
    return (call.prompt or call.incre).heads.B * params.FIELDS


def workspace_numel(call: FusedCall, element_size: int) -> int:
    """Elements of ``element_size`` bytes (at least one) holding the split-KV scratch, then the parameter
    block (an int32 per batch field), as 4-byte words."""
    return max(1, -(-(_scratch_words(call) + _block_words(call)) * 4 // element_size))


def submit(call: FusedCall, out: torch.Tensor, lse: torch.Tensor, workspace: Optional[torch.Tensor] = None,
           caller_outputs: bool = False) -> None:
    """Submit the call; with ``workspace`` its words hold the scratch and the parameter block, so the call
    allocates nothing on the device."""
    lse_k = call.lse_view(lse) if call.lse_flag else None
    scratch = block = None
    if workspace is not None:
        n, nbytes = _scratch_words(call), workspace.numel() * workspace.element_size()
        need = (n + _block_words(call)) * 4
        require(workspace.is_contiguous() and nbytes % 4 == 0 and nbytes >= need, "workspace", workspace,
                f"must be contiguous, whole 4-byte words and at least {need} bytes "
                "(see _npu_fused_infer_attention_score_get_max_workspace)")
        words = workspace.view(-1).view(torch.int32)
        scratch = words[:n].view(torch.float32)
        block = words[n:need // 4]
    if call.incre is not None:
        incre.submit(call.incre, out, lse_k, workspace=scratch, op=OP, caller_outputs=caller_outputs,
                     block_buffer=block)
    else:
        prompt.submit(call.prompt, out, lse_k, op=OP, caller_outputs=caller_outputs, block_buffer=block)


def npu_fused_infer_attention_score(query, key, value, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager implementation behind ``torch.ops.npu.npu_fused_infer_attention_score``."""
    call = validate(query, key, value, **with_defaults(kwargs))
    out, lse = outputs(call)
    submit(call, out, lse)
    return out, lse


def npu_fused_infer_attention_score_out(query, key, value, *, workspace=None, attention_out, softmax_lse,
                                        **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """``.out``: writes ``attention_out`` (and ``softmax_lse`` when the flag is set; untouched otherwise)."""
    call = validate(query, key, value, **with_defaults(kwargs))
    checks.tensor("attention_out", attention_out)
    require(tuple(attention_out.shape) == call.out_shape and attention_out.dtype == call.out_dtype, "attention_out",
            attention_out, f"must be {call.out_shape} {call.out_dtype}")
    checks.tensor("softmax_lse", softmax_lse)
    if call.lse_flag:
        require(tuple(softmax_lse.shape) == call.lse_shape and softmax_lse.dtype == torch.float32, "softmax_lse",
                softmax_lse, f"must be {call.lse_shape} float32 with softmax_lse_flag=True")
    if workspace is not None:
        checks.tensor("workspace", workspace)
    submit(call, attention_out, softmax_lse, workspace, caller_outputs=True)
    return attention_out, softmax_lse


def get_max_workspace(query, key, value, **kwargs) -> torch.Tensor:
    """A 1-D tensor of the query's dtype large enough for the call's scratch (at least one element)."""
    call = validate(query, key, value, **with_defaults(kwargs))
    return alloc.empty((workspace_numel(call, query.element_size()),), query.dtype, query.device)


def infer_output(query, value, *, input_layout="BSH", quant_scale2=None, block_table=None, num_heads=1,
                 num_key_value_heads=0, softmax_lse_flag=False, query_rope=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Uninitialised (attention_out, softmax_lse) with the shapes and dtypes of the call."""
    layout = Layout.parse(input_layout, FUSED_LAYOUTS)
    kv_n = checks.head_counts(num_heads, num_key_value_heads)
    b, n, s, _ = bnsd_shape(query, layout.inp, num_heads)
    v4 = _kv_views(value, layout, kv_n, block_table, "value")
    dv = v4.shape[3]
    token = layout.inp in TOKEN_LAYOUTS
    dtype = torch.int8 if quant_scale2 is not None else \
        (query_rope.dtype if query_rope is not None else torch.float16) if query.dtype == torch.int8 else query.dtype
    lse = ((s, n, 1) if token else (b, n, s, 1)) if softmax_lse_flag else (0,)
    return (alloc.empty(out_shape(layout.out, b, n, s, dv), dtype, query.device),
            alloc.empty(lse, torch.float32, query.device))
