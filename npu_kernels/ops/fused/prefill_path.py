"""Fused-operator calls on the prefill kernel (spec ops §1, §2, §4), with the decode semantics where the
call is on the decode path: the static ``PromptCall`` (``prompt_call``) and its per-call batches
(``per_batch``).

Token-major layouts (TND/NTD) hold one sequence of T tokens whose batches are row offsets given by
cumulative lengths, so the number of batches is a per-call value: the parameter block has ``token_rows``
rows, at most T sequences plus a pseudo-batch for the tokens past the last one (zeros), the rest unused.
"""

from __future__ import annotations

import torch
from einops import rearrange

from ... import checks, masks, quant
from ...errors import require
from ...layouts import TOKEN_LAYOUTS, Layout, as_bnsd, ndim
from .. import prompt
from ..sources import PER_CHANNEL, PLAIN, Sources
from . import antiquant

MAX_TOKEN_BATCH = 4096
ROPE_DIM = 64
MLA_DIM = 512


def token_rows(tokens: int, batches: int) -> int:
    """Parameter-block rows of a token-major call: T + 1 while there are at most T batches (a batch without
    query tokens computes nothing, but keeps its row), else the next power of two above the batch count."""
    if batches <= tokens:
        return tokens + 1
    return min(1 << (batches - 1).bit_length(), MAX_TOKEN_BATCH) + 1


def kv_view(t: torch.Tensor, layout: Layout, kv_n: int, block_table, name: str) -> torch.Tensor:
    """(B or blocks, KV_N, S, D) view of a key/value tensor or paged cache (an NZ cache: ``ops.paged_attention``)."""
    if block_table is None:
        return as_bnsd(t, layout.inp, kv_n)
    from ..paged_attention import check_rows, nz_heads

    require(t.dim() in (3, 4, 5), name, t, "a paged cache is (blocks, block_size, KV_N*D), (blocks, KV_N, block_size, "
            "D) or NZ (blocks, KV_N, D/c0, block_size, c0)")
    if t.dim() == 5:
        return nz_heads(name, t, kv_n)
    view = rearrange(t, "k s (n d) -> k n s d", n=kv_n) if t.dim() == 3 else t
    check_rows(name, view)
    return view


def _cumulative(name: str, values, upper: int) -> list[int]:
    """Per-batch (offset, length) pairs from cumulative lengths (negative differences clipped to 0)."""
    require(values is not None, name, None, "required (cumulative lengths) with a token-major layout")
    require(isinstance(values, (list, tuple)) and all(isinstance(v, (int, torch.SymInt)) for v in values), name,
            values, "must be a list of ints")
    require(0 < len(values) <= MAX_TOKEN_BATCH, name, values, f"needs 1 to {MAX_TOKEN_BATCH} values")
    require(all(0 <= v <= upper for v in values), name, values, f"cumulative lengths must be in [0, {upper}]")
    return list(values)


def prompt_call(query, key, value, layout: Layout, kv_n: int, decode: bool, window: bool, kw) -> prompt.PromptCall:
    """The prefill kernel's call without its batches (decode semantics when ``decode``; ``window``: the
    decode sliding window)."""
    num_heads = kw["num_heads"]
    token = layout.inp in TOKEN_LAYOUTS
    table = kw["block_table"]
    for name, t in (("key", key), ("value", value)):
        if table is None:
            require(t.dim() == ndim(layout.inp), name, t, f"layout {layout.inp} needs {ndim(layout.inp)} dimensions")
    q4 = as_bnsd(query, layout.inp, num_heads)
    k4 = kv_view(key, layout, kv_n, table, "key")
    v4 = kv_view(value, layout, kv_n, table, "value")
    _, n, s1, d = q4.shape
    require(k4.shape[1] == kv_n and v4.shape[1] == kv_n, "num_key_value_heads", kw["num_key_value_heads"],
            f"key/value head axes are ({k4.shape[1]}, {v4.shape[1]}), expected {kv_n}")
    require(k4.shape[3] == d, "key", key, f"key head dim ({k4.shape[3]}) must equal the query head dim ({d})")
    require(v4.shape[2] == k4.shape[2], "value", value, "value seq length must equal the key's")
    checks.head_dim("query", query, d, None if decode else query.dtype)
    checks.head_dim("value", value, v4.shape[3], None if decode else query.dtype)
    qa = quant.full_quant_args(query.dtype, n, v4.shape[3], kw["dequant_scale1"], kw["quant_scale1"],
                               kw["dequant_scale2"], kw["quant_scale2"], kw["quant_offset2"])

    q_given, kv_given = kw["actual_seq_lengths"] is not None, kw["actual_seq_lengths_kv"] is not None
    page = 0
    if table is not None:
        checks.tensor("block_table", table, ndim=(2,), dtypes=(torch.int32,))
        page = kw["block_size"]
        if decode or token or d == MLA_DIM:
            require(0 < page <= 1024 and page % 16 == 0, "block_size", page,
                    "must be a multiple of 16 in [16, 1024] with block_table")
        else:
            require(128 <= page <= 512 and page % 128 == 0, "block_size", page,
                    "a paged prefill call needs a multiple of 128 in [128, 512]")
        require(kv_given, "actual_seq_lengths_kv", None, "required with block_table (PagedAttention)")
        require(k4.shape[2] == page, "key", key, f"a paged cache's block axis must hold block_size={page} tokens, "
                f"got {k4.shape[2]}")
        require(v4.shape[0] == k4.shape[0], "value", value, f"must have the key cache's {k4.shape[0]} blocks")
    if token:
        _cumulative("actual_seq_lengths", kw["actual_seq_lengths"], s1)
        if table is None:
            _cumulative("actual_seq_lengths_kv", kw["actual_seq_lengths_kv"], k4.shape[2])
        B = token_rows(s1, len(kw["actual_seq_lengths"]))
        q4 = q4.expand(B, *q4.shape[1:])                  # batches are row offsets: batch stride 0
        if table is None:
            k4, v4 = (t.expand(B, *t.shape[1:]) for t in (k4, v4))
        s2 = k4.shape[2] if table is None else table.shape[1] * page
    else:
        B = q4.shape[0]
        require(table is not None or (k4.shape[0] == B and v4.shape[0] == B), "key", key,
                f"key/value batch must equal the query batch ({B})")
        s2 = k4.shape[2] if table is None else table.shape[1] * page
        if table is not None:
            require(table.shape[0] == B, "block_table", table, f"must be (B={B}, max blocks per sequence)")
    require(B <= checks.MAX_B or token, "query", query, f"batch must be <= {checks.MAX_B}")

    prefix = None
    if kw["key_shared_prefix"] is not None or kw["value_shared_prefix"] is not None:
        kp = checks.tensor("key_shared_prefix", kw["key_shared_prefix"], dtypes=(key.dtype,))
        vp = checks.tensor("value_shared_prefix", kw["value_shared_prefix"], dtypes=(value.dtype,))
        require(table is None and not token, "key_shared_prefix", kp,
                "a shared prefix cannot be combined with PagedAttention or a token-major layout")
        kp4, vp4 = as_bnsd(kp, layout.inp, kv_n), as_bnsd(vp, layout.inp, kv_n)
        require(kp4.shape[0] == 1 and vp4.shape[0] == 1, "key_shared_prefix", kp, "the prefix batch dim must be 1")
        require(kp4.shape[1:3] == vp4.shape[1:3] and kp4.shape[3] == d and vp4.shape[3] == v4.shape[3],
                "value_shared_prefix", vp, "prefix key/value must have the key/value heads and head dims")
        prefix = (kp4, vp4)
    elif kw["actual_shared_prefix_len"] is not None:
        require(False, "actual_shared_prefix_len", kw["actual_shared_prefix_len"], "needs key_shared_prefix")

    rope = None
    if kw["query_rope"] is not None:
        qr = checks.tensor("query_rope", kw["query_rope"], dtypes=(query.dtype,))
        kr = checks.tensor("key_rope", kw["key_rope"], dtypes=(query.dtype,))
        qr4 = as_bnsd(qr, layout.inp, num_heads)
        kr4 = kv_view(kr, layout, kv_n, table, "key_rope")
        require(qr4.shape[3] == ROPE_DIM and kr4.shape[3] == ROPE_DIM, "query_rope", qr,
                f"rope head dim must be {ROPE_DIM}")
        require(qr4.shape[:3] == as_bnsd(query, layout.inp, num_heads).shape[:3], "query_rope", qr,
                "must have the query's batch, heads and seq length")
        require(kr4.shape[:3] == kv_view(key, layout, kv_n, table, "key").shape[:3], "key_rope", kr,
                "must have the key's batch (or blocks), heads and seq length")
        require(prefix is None and key.dtype != torch.int8, "query_rope", qr,
                "rope cannot be combined with a shared prefix or int8 key/value")
        require(d in (MLA_DIM, 128), "query", query, f"with query_rope the query head dim must be {MLA_DIM} or 128, got {d}")
        if d == MLA_DIM:
            _mla_rules(n, kv_n, kw)
        if token:
            qr4 = qr4.expand(B, *qr4.shape[1:])
            kr4 = kr4.expand(B, *kr4.shape[1:]) if table is None else kr4
        rope = (qr4, kr4)

    key_quant = value_quant = None
    if query.dtype != torch.int8:
        key_quant, value_quant = antiquant.parameters(key, layout, kv_n, d, v4.shape[3], None if token else B,
                                                      None if table is not None else s2, table is not None, s1,
                                                      query.dtype, kw)
        require(prefix is None or all(a is None or a.mode == PER_CHANNEL for a in (key_quant, value_quant)),
                "key_shared_prefix", kw["key_shared_prefix"], "a shared prefix needs per-channel anti-quantisation")

    # left padding (read on the device, element 0 for every batch)
    q_pad = kv_pad = None
    if kw["query_padding_size"] is not None and q_given and not token and not decode:
        q_pad = checks.tensor("query_padding_size", kw["query_padding_size"], dtypes=(torch.int64,)).reshape(-1)[:1]
    if kw["kv_padding_size"] is not None and kv_given and not token:
        kv_pad = checks.tensor("kv_padding_size", kw["kv_padding_size"], dtypes=(torch.int64,)).reshape(-1)[:1]
    if q_pad is not None or kv_pad is not None:
        name = "kv_padding_size" if kv_pad is not None else "query_padding_size"
        require(table is None and prefix is None, name, kw[name],
                "left padding cannot be combined with PagedAttention or a shared prefix")
        require(not qa.per_channel, "quant_scale2", kw["quant_scale2"],
                f"per-channel output quantisation cannot be combined with left padding ({name})")

    mode = kw["sparse_mode"]
    require(mode in masks.SPARSE_MODES, "sparse_mode", mode, "must be 0-4 for this operator")
    mask = None
    if _ignores_band(decode, s1, rope, token):
        if kw["atten_mask"] is not None:
            mask = checks.decode_mask(kw["atten_mask"], B, s2)
    elif mode in (2, 3, 4):
        checks.compressed_mask(kw["atten_mask"], mode)
    elif kw["atten_mask"] is not None:
        mask = checks.user_mask(kw["atten_mask"], None if token else B, 0 if token else s1,
                                0 if token or table is not None else s2)
    elif mode == 1:
        require(False, "atten_mask", None, "sparse_mode=1 (allMask) requires atten_mask")

    pse = None
    inner = kw["inner_precise"]
    if kw["pse_shift"] is not None:
        require(not token, "pse_shift", kw["pse_shift"], "not supported with a token-major layout")
        pse = checks.pse(kw["pse_shift"], torch.float16 if qa.int8_in else query.dtype, B, n, s1, s2)
        inner &= ~1                                             # pse forces high precision
    fp16_compute = qa.int8_in or (query.dtype == torch.float16 and inner & 1 and not decode)
    scale = masks.fp16_value(kw["scale"]) if fp16_compute else float(kw["scale"])
    fill = masks.FILL_DECODE if decode else masks.FILL_FP16 if fp16_compute else masks.FILL_FP32
    out_dtype = torch.int8 if qa.int8_out else (rope[0].dtype if rope else torch.float16) if qa.int8_in \
        else query.dtype
    heads = checks.Heads(q4, k4, v4, B, n, kv_n, s1, s2, d, v4.shape[3])
    sources = Sources(varlen=token, q_pad=q_pad, kv_pad=kv_pad, table=table, page_size=page, prefix=prefix,
                      rope=rope, key_quant=key_quant, value_quant=value_quant, nz=_nz_tiles(table, k4, v4, rope))
    return prompt.PromptCall(heads=heads, layout=layout, dtype=query.dtype, out_dtype=out_dtype, qlens=[], kvlens=[],
                             bands=[], mask=mask, pse=pse, scale=scale, fill=fill,
                             zero_masked_rows=bool(inner & 2) and not decode, quant=qa, offsets=(), sources=sources,
                             lse_empty=masks.LSE_DECODE_EMPTY if decode else float("inf"),
                             fp16_path=bool(fp16_compute) and not qa.int8_in, mode=mode, decode=decode,
                             window=window)


def _nz_tiles(table, k4: torch.Tensor, v4: torch.Tensor, rope) -> tuple[tuple[int, int], ...]:
    """(C0, tile stride) of the paged K, V and key-rope caches (``paged_attention.kernel_tiles``)."""
    if table is None:
        return (PLAIN,) * 3
    from ..paged_attention import kernel_tiles

    return tuple(kernel_tiles(t) for t in (k4, v4, None if rope is None else rope[1]))


def _mla_rules(n: int, kv_n: int, kw) -> None:
    """MLA (query D = 512 with rope, spec ops §4.4): one kv head, N a power of two up to 128, sparse 0/3/4,
    no lse, pse or quantisation."""
    require(kv_n == 1, "num_key_value_heads", kw["num_key_value_heads"], f"MLA (D={MLA_DIM} with rope) needs one kv head")
    require(n <= 128 and n & (n - 1) == 0, "num_heads", n, f"MLA (D={MLA_DIM} with rope) needs N in 1, 2, 4, ..., 128")
    require(kw["sparse_mode"] in (0, 3, 4), "sparse_mode", kw["sparse_mode"],
            f"MLA (D={MLA_DIM} with rope) supports sparse modes 0, 3 and 4")
    require(not kw["softmax_lse_flag"], "softmax_lse_flag", kw["softmax_lse_flag"],
            f"softmax_lse is not supported with MLA (D={MLA_DIM} with rope)")
    for name in ("pse_shift", "dequant_scale1", "quant_scale1", "dequant_scale2", "quant_scale2"):
        require(kw[name] is None, name, kw[name], f"not supported with MLA (D={MLA_DIM} with rope)")


def _ignores_band(decode: bool, s1: int, rope, token: bool) -> bool:
    """Q_S = 1 on the decode path: sparse_mode, pre_tokens and next_tokens are ignored."""
    return decode and s1 == 1 and rope is None and not token


def per_batch(call, kw) -> tuple[list[int], list[int], list[masks.Band], tuple]:
    """Per parameter-block row of a fused call on the prefill kernel (``call.prompt``): query lengths, kv
    lengths (shared prefix included), bands and offsets (q_off, kv_off, qm_off, kvm_off, prefix)."""
    pc = call.prompt
    h, src = pc.heads, pc.sources
    token, table, s1, s2 = src.varlen, src.table, h.S1, h.S2
    q_vals = checks.int_list(kw["actual_seq_lengths"])
    kv_vals = checks.int_list(kw["actual_seq_lengths_kv"])
    if token:
        cum_q = _cumulative("actual_seq_lengths", q_vals, s1)
        B = len(cum_q)
        starts = [0, *cum_q[:-1]]
        qlens = [max(e - s, 0) for s, e in zip(starts, cum_q)]
        if table is None:
            cum_kv = _cumulative("actual_seq_lengths_kv", kv_vals, h.k.shape[2])
            require(len(cum_kv) == B, "actual_seq_lengths_kv", kv_vals, f"needs B={B} values like actual_seq_lengths")
            kv_starts = [0, *cum_kv[:-1]]
            kvlens = [max(e - s, 0) for s, e in zip(kv_starts, cum_kv)]
        else:                                   # TND + PagedAttention: per-batch kv lengths
            kv_starts = [0] * B
            kvlens = checks.lengths("actual_seq_lengths_kv", kv_vals, B, s2)
            require(table.shape[0] >= B, "block_table", table, f"needs a row per batch (B={B})")
    else:
        B = h.B
        qlens = [s1] * B if pc.decode else checks.lengths("actual_seq_lengths", q_vals, B, s1) or [s1] * B
        kvlens = checks.lengths("actual_seq_lengths_kv", kv_vals, B, s2) or [s2] * B
        starts = kv_starts = [0] * B
    P = 0
    if src.prefix is not None:
        plen = checks.int_list(kw["actual_shared_prefix_len"])
        longest = src.prefix[0].shape[2]
        if plen is not None:
            require(isinstance(plen, (list, tuple)) and len(plen) == 1 and isinstance(plen[0], int),
                    "actual_shared_prefix_len", plen, "must be one int (shape [1])")
        P = longest if plen is None else plen[0]
        require(0 <= P <= longest, "actual_shared_prefix_len", plen, f"must be in [0, {longest}]")
    kvtots = [P + kv if kv else 0 for kv in kvlens]         # a batch without keys of its own outputs zeros
    longest_kv = max(kvlens, default=0) if table is not None else s2
    for aq in (src.key_quant, src.value_quant):
        antiquant.cover(aq, h.KV_N, B, longest_kv)
    _masks_cover(pc, kw, B, qlens, kvtots, P)

    has_mask = pc.mask is not None
    mode, pre, nxt = pc.mode, kw["pre_tokens"], kw["next_tokens"]
    for name, v in (("pre_tokens", pre), ("next_tokens", nxt)):
        require(isinstance(v, int), name, v, "must be an int", TypeError)
    if _ignores_band(pc.decode, s1, src.rope, token):
        mode, pre, nxt = 0, masks.INT_MAX, masks.INT_MAX
    padding = src.q_pad is not None or src.kv_pad is not None
    if not (padding and mode == 0):                    # left padding forces the band open (spec §1.10)
        prompt.check_band_tokens(mode, pre, nxt, s1, qlens, kvtots, has_mask)
    if pc.window:                                      # row 0 keeps keys [kvlen - W, kvlen)
        bands = [masks.Band(kw["pre_tokens"] - kv, masks.INT_MAX, has_mask) for kv in kvtots]
    else:
        bands = [masks.prefill_band(mode, pre, nxt, q, kv, has_mask, padding) for q, kv in zip(qlens, kvtots)]
    if pc.quant.int8_out:
        prompt.check_int8_output(pc.quant, mode, pre, nxt, s1, qlens, kvtots, bands)

    offsets = tuple((qs, ks, 0, 0, P) for qs, ks in zip(starts, kv_starts))
    if token:                                  # trailing tokens past the last batch: zeros; unused rows
        unused = h.B - B - 1
        qlens = qlens + [s1 - cum_q[-1]] + [0] * unused
        kvtots = kvtots + [0] * (unused + 1)
        bands = bands + [masks.Band(masks.INT_MAX, masks.INT_MAX, False)] * (unused + 1)
        offsets = offsets + ((cum_q[-1], 0, 0, 0, 0),) + ((0, 0, 0, 0, 0),) * unused
    return qlens, kvtots, bands, offsets


def _masks_cover(pc: prompt.PromptCall, kw, batches: int, qlens: list[int], kvtots: list[int], prefix: int) -> None:
    """The per-call part of the mask and pse shape rules: they cover this call's rows and keys."""
    src, h = pc.sources, pc.heads
    if pc.mask is not None:
        if _ignores_band(pc.decode, h.S1, src.rope, src.varlen):
            checks.decode_mask_covers(kw["atten_mask"], pc.mask, h.S2 + prefix)
        elif src.varlen or src.table is not None:
            checks.mask_covers(kw["atten_mask"], pc.mask, batches, max(qlens, default=0) if src.varlen else h.S1,
                               max(kvtots, default=0))
        elif prefix:
            checks.mask_covers(kw["atten_mask"], pc.mask, batches, h.S1, h.S2 + prefix)
    if pc.pse is not None and prefix:
        checks.pse_covers(kw["pse_shift"], h.S1, h.S2 + prefix)

