"""Baselines timed in the same process as our kernels: torch SDPA with its flash, cuDNN and efficient
backends, FlexAttention with a block mask, and an eager PyTorch implementation.

``prepare(name, problem)`` returns a zero-argument callable, or raises ``Unsupported`` with the
reason (a mask the backend cannot express, per-batch lengths, memory, no kernel for these inputs).
Masks are given in SDPA/FlexAttention polarity here: True = attend.
"""

from __future__ import annotations

from typing import Callable

import torch

from npu_kernels import masks

from .inputs import Problem

BASELINES = ("sdpa_flash", "sdpa_cudnn", "sdpa_efficient", "flex", "eager")
EAGER_MAX_BYTES = 24 << 30          # fp32 scores, probabilities and the cast copy must fit


class Unsupported(Exception):
    """The baseline cannot run this case; the message says why."""


def _dense(p: Problem) -> bool:
    return all(pre >= s1 - 1 and nxt >= s2 - 1
               for (pre, nxt), s1, s2 in zip(p.bands, p.qlens, p.kvlens))


def _top_left_causal(p: Problem) -> bool:
    return all(pre >= s1 - 1 and nxt == 0 for (pre, nxt), s1 in zip(p.bands, p.qlens))


def keep_mask(p: Problem) -> torch.Tensor:
    """[B, 1, S1, S2] bool, True where (i, j) attends: inside the band and the batch's lengths."""
    b, s1, s2 = p.q.shape[0], p.q.shape[2], p.k.shape[2]
    dev = p.q.device
    i = torch.arange(s1, device=dev)[:, None]
    j = torch.arange(s2, device=dev)[None, :]
    keep = torch.empty(b, 1, s1, s2, dtype=torch.bool, device=dev)
    for x, ((pre, nxt), ql, kl) in enumerate(zip(p.bands, p.qlens, p.kvlens)):
        keep[x, 0] = masks.in_band(i, j, pre, nxt) & (i < ql) & (j < kl)
    return keep


def prepare(name: str, p: Problem) -> Callable[[], torch.Tensor]:
    if name.startswith("sdpa_"):
        return _sdpa(name, p)
    if name == "flex":
        return _flex(p)
    if name == "eager":
        return _eager(p)
    raise ValueError(f"baseline={name!r}: expected one of {', '.join(BASELINES)}")


def sdpa_kwargs(p: Problem) -> dict:
    """Keyword arguments of ``scaled_dot_product_attention`` for ``p``: ``is_causal`` for top-left
    causal (SDPA's alignment), else an explicit boolean mask when the band is not dense."""
    if not p.full_lengths:
        raise Unsupported("per-batch lengths")
    kw = dict(scale=p.scale, enable_gqa=p.q.shape[1] != p.k.shape[1])
    if _top_left_causal(p) and not _dense(p):
        kw["is_causal"] = True
    elif not _dense(p):
        if p.q.shape[0] * p.q.shape[2] * p.k.shape[2] > 1 << 30:
            raise Unsupported("explicit mask larger than 1 GiB")
        kw["attn_mask"] = keep_mask(p)
    return kw


def _sdpa(name: str, p: Problem) -> Callable[[], torch.Tensor]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"sdpa_flash": SDPBackend.FLASH_ATTENTION, "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION,
               "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION}[name]
    kw = sdpa_kwargs(p)

    def fn():
        with sdpa_kernel(backend):
            return torch.nn.functional.scaled_dot_product_attention(p.q, p.k, p.v, **kw)

    try:
        fn()
    except RuntimeError as exc:        # "No available kernel" and friends: this backend cannot run it
        raise Unsupported(str(exc).strip().splitlines()[0][:200]) from exc
    return fn


def flex_block_mask(p: Problem):
    """FlexAttention block mask of ``p``: the band and the per-batch lengths as a ``mask_mod``."""
    from torch.nn.attention.flex_attention import create_block_mask

    dev = p.q.device
    qlens = torch.tensor(p.qlens, device=dev)
    kvlens = torch.tensor(p.kvlens, device=dev)
    pre = torch.tensor([b[0] for b in p.bands], device=dev)
    nxt = torch.tensor([b[1] for b in p.bands], device=dev)

    def mask_mod(b, h, q_idx, kv_idx):
        return (q_idx < qlens[b]) & (kv_idx < kvlens[b]) & masks.in_band(q_idx, kv_idx, pre[b], nxt[b])

    return create_block_mask(mask_mod, p.q.shape[0], None, p.q.shape[2], p.k.shape[2], device=dev)


def _flex(p: Problem) -> Callable[[], torch.Tensor]:
    from torch.nn.attention.flex_attention import flex_attention

    block_mask = flex_block_mask(p)
    compiled = torch.compile(flex_attention, dynamic=False)
    gqa = p.q.shape[1] != p.k.shape[1]

    def fn():
        return compiled(p.q, p.k, p.v, block_mask=block_mask, scale=p.scale, enable_gqa=gqa)

    return fn


def _eager(p: Problem) -> Callable[[], torch.Tensor]:
    b, n, s1, _ = p.q.shape
    s2 = p.k.shape[2]
    if b * n * s1 * s2 * 12 > EAGER_MAX_BYTES:
        raise Unsupported(f"scores of {b}x{n}x{s1}x{s2} do not fit in {EAGER_MAX_BYTES >> 30} GiB")
    group = n // p.k.shape[1]
    k = p.k.repeat_interleave(group, 1)
    v = p.v.repeat_interleave(group, 1)
    keep = None if _dense(p) and p.full_lengths else keep_mask(p)

    def fn():
        s = torch.matmul(p.q, k.transpose(-1, -2)).float() * p.scale      # [B, N, S1, S2]
        if keep is not None:
            s = s.masked_fill(~keep, float("-inf"))
        return torch.matmul(torch.softmax(s, dim=-1).to(v.dtype), v)

    return fn
