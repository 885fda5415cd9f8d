"""Golden ``npu_fused_infer_attention_score``: the same arguments, exact math, any device (spec ops §4).

Everything the kernels address indirectly is materialised first: paged caches gathered per batch,
int8 keys/values anti-quantised, the shared prefix put in front of each batch's keys, rope parts
concatenated along D, left padding read from its tensor. Then the shared attention core runs with the
path's fill value and lse sentinel; decode-path calls on the split-KV kernels use the incremental
reference.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..kernels import prefill
from ..layouts import TOKEN_LAYOUTS, from_bnsd
from ..ops import fused, prompt
from ..ops.sources import PER_CHANNEL, PER_ROW, AntiQuant, Sources
from .core import BatchSpan, attention
from .incre import antiquant, decode_attention
from .prompt import int8_steps, quantise_output, spans_of


def _gather(cache: torch.Tensor, table: torch.Tensor, page: int, batches: int) -> torch.Tensor:
    """(blocks, H, page, ...) → (batches, H, blocks per sequence × page, ...); batches past the table's
    rows (the token-major pseudo-batch) are zeros."""
    g = cache[table.long().reshape(-1)]                                   # (B*nb, H, page, ...)
    g = g.reshape(table.shape[0], table.shape[1], *cache.shape[1:]).transpose(1, 2)
    g = g.reshape(table.shape[0], cache.shape[1], table.shape[1] * page, *cache.shape[3:])
    pad = batches - g.shape[0]
    return torch.cat([g, g.new_zeros(pad, *g.shape[1:])]) if pad > 0 else g


def _param(p: Optional[torch.Tensor], aq: AntiQuant, src: Sources, batches: int, length: int, width: int):
    """An anti-quant parameter broadcastable against (B, KV_N, length, width) keys/values."""
    if p is None:
        return None
    if aq.mode == PER_CHANNEL:
        return p[:, :, None, :width]                                      # (1, KV_N, 1, D)
    if aq.mode == PER_ROW and src.table is not None:                      # stored like the cache
        p = _gather(p[..., None], src.table, src.page_size, batches)[..., 0]
    p = torch.nn.functional.pad(p, (0, length - p.shape[-1])) if p.shape[-1] < length else p[..., :length]
    return p[..., None]                                                   # (B, KV_N or 1, length, 1)


def _keys(t: torch.Tensor, src: Sources, batches: int, aq: Optional[AntiQuant], dtype: torch.dtype,
          paged: bool = True) -> torch.Tensor:
    """Keys or values as (B, KV_N, S, D) in ``dtype``: pages gathered (when ``paged``), anti-quantised
    with ``aq`` (the shared prefix with the same per-channel parameters)."""
    if src.table is not None and paged:
        t = _gather(t, src.table, src.page_size, batches)
    if aq is not None:
        shape = (batches, t.shape[2], t.shape[3])
        t = antiquant(t, _param(aq.scale, aq, src, *shape), _param(aq.offset, aq, src, *shape), dtype)
    return t


def _spans(call: prompt.PromptCall) -> list[BatchSpan]:
    """Batch spans with left padding resolved from the padding tensors (element 0, negative as 0)."""
    spans = spans_of(call)
    src, h = call.sources, call.heads
    if src.q_pad is None and src.kv_pad is None:
        return spans
    out = []
    for sp in spans:
        qlen, kvlen, q_off, kv_off = sp.qlen, sp.kvlen, sp.q_off, sp.kv_off
        if src.q_pad is not None:
            q_off = h.S1 - max(int(src.q_pad[0]), 0) - qlen
            qlen = 0 if q_off < 0 else qlen
        if src.kv_pad is not None:
            kv_off = h.S2 - max(int(src.kv_pad[0]), 0) - kvlen
            kvlen = 0 if kv_off < 0 else kvlen
        out.append(BatchSpan(qlen, kvlen, q_off, kv_off, q_off, kv_off, sp.band))
    return out


def prefill_attention(call: prompt.PromptCall, block_n: Optional[int], compute_dtype: torch.dtype
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(out (B, N, S1, Dv), lse (B, N, S1)) of a prefill-kernel call, in ``compute_dtype``."""
    h, src = call.heads, call.sources
    q = h.q
    k = _keys(h.k, src, h.B, src.key_quant, call.dtype)
    v = _keys(h.v, src, h.B, src.value_quant, call.dtype)
    if src.prefix is not None:
        plen = call.offsets[0][4]
        kp, vp = (_keys(t[:, :, :plen], src, 1, aq, call.dtype, paged=False).expand(h.B, -1, -1, -1)
                  for t, aq in zip(src.prefix, (src.key_quant, src.value_quant)))
        k, v = torch.cat([kp, k], 2), torch.cat([vp, v], 2)
    if src.rope is not None:
        qr, kr = src.rope
        q = torch.cat([q, qr], -1)
        k = torch.cat([k, _keys(kr, src, h.B, None, call.dtype)], -1)
    out, lse = attention(q, k, v, _spans(call), scale=call.scale, fill=call.fill, mask=call.mask, pse=call.pse,
                         zero_masked_rows=call.zero_masked_rows, empty_lse=call.lse_empty,
                         compute_dtype=compute_dtype, int8=int8_steps(call.quant, block_n), block_n=block_n)
    if call.quant.int8_out:
        out = quantise_output(out, lse, call.quant)
    return out, lse


def _token_rows(x: torch.Tensor, spans: list[BatchSpan]) -> torch.Tensor:
    """Token-major (B, N, T, ·) with batch b's rows at its span → (1, N, T, ·) holding each batch's rows."""
    merged = x[:1].clone()
    for b, sp in enumerate(spans):
        merged[0, :, sp.q_off:sp.q_off + sp.qlen] = x[b, :, sp.q_off:sp.q_off + sp.qlen]
    return merged


def npu_fused_infer_attention_score(query, key, value, *, compute_dtype: torch.dtype = torch.float32,
                                    block_n: Optional[int] = None, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference of ``nk.npu_fused_infer_attention_score``: (attention_out, softmax_lse) with the operator's
    shapes and dtypes (softmax_lse float32; an empty dummy when ``softmax_lse_flag`` is False).
    ``block_n`` as in the prompt reference (needed for int8 inputs, defaulting to the kernel's)."""
    call = fused.validate(query, key, value, **fused.with_defaults(kwargs))
    if call.incre is not None:
        out, lse = decode_attention(call.incre, compute_dtype)
        lse = lse[..., None]
    else:
        if block_n is None and call.prompt.quant.int8_in:
            h = call.prompt.heads
            block_n = prefill.block_config(h.D, h.Dv, h.q.device.type == "cuda")[1]
        out, lse = prefill_attention(call.prompt, block_n, compute_dtype)
        if call.layout.inp in TOKEN_LAYOUTS:
            spans = spans_of(call.prompt)
            out, lse = _token_rows(out, spans), _token_rows(lse[..., None], spans)
        else:
            lse = lse[..., None]
    out = from_bnsd(out, call.layout.out).to(call.out_dtype).contiguous()
    if not call.lse_flag:
        return out, torch.empty(0, dtype=torch.float32, device=out.device)
    if call.layout.inp in TOKEN_LAYOUTS:
        lse = lse[0].permute(1, 0, 2)                                      # (T, N, 1)
    return out, lse.float().contiguous()
