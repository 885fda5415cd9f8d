"""A small decoder-only model with random weights on the Ascend operators, as vLLM-Ascend serves one:
per layer the new tokens' keys and values are written into a paged KV cache (``_npu_reshape_and_cache``,
slots read on the device, negative slots skipped) and attention is the fused operator on token-major
rows (TND) with the paged cache, causal (sparse mode 3), per-request query and kv lengths.

Projections, norms and the MLP run in float32; attention inputs and the cache are bfloat16.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import npu_kernels as nk
from npu_kernels.masks import COMPRESSED_MASK


@dataclass(frozen=True)
class Config:
    layers: int = 8
    heads: int = 8
    kv_heads: int = 2
    head_dim: int = 128
    ffn: int = 1024
    vocab: int = 512
    block_size: int = 128
    blocks: int = 64

    @property
    def hidden(self) -> int:
        return self.heads * self.head_dim


@dataclass
class Step:
    """One forward pass's per-token inputs and per-request lengths (the attention's task-update values)."""

    tokens: torch.Tensor              # [T] int64
    slots: torch.Tensor               # [T] int32, -1 for padding tokens
    block_table: torch.Tensor         # [requests, max blocks] int32
    q_cum: list[int]                  # cumulative query lengths per request
    kv_lens: list[int]                # kv length per request (the new tokens included)


class Model:
    def __init__(self, cfg: Config, device: torch.device, seed: int = 0):
        self.cfg, self.device = cfg, device
        g = torch.Generator().manual_seed(seed)

        def weight(*shape):
            return (torch.randn(*shape, generator=g) / shape[0] ** 0.5).to(device)

        H, KV = cfg.hidden, cfg.kv_heads * cfg.head_dim
        self.embed = weight(cfg.vocab, H) * cfg.vocab ** 0.5 / H ** 0.5
        self.layers = [dict(wq=weight(H, H), wk=weight(H, KV), wv=weight(H, KV), wo=weight(H, H),
                            w1=weight(H, cfg.ffn), w2=weight(cfg.ffn, H)) for _ in range(cfg.layers)]
        shape = (cfg.blocks, cfg.block_size, cfg.kv_heads, cfg.head_dim)
        self.caches = [(torch.zeros(shape, dtype=torch.bfloat16, device=device),
                        torch.zeros(shape, dtype=torch.bfloat16, device=device)) for _ in range(cfg.layers)]
        self.mask = torch.ones(COMPRESSED_MASK, COMPRESSED_MASK, dtype=torch.bool, device=device).triu(1)

    def attention_kwargs(self, step: Step) -> dict:
        """The fused operator's arguments besides query, caches and outputs."""
        c = self.cfg
        return dict(num_heads=c.heads, num_key_value_heads=c.kv_heads, input_layout="TND",
                    scale=c.head_dim ** -0.5, sparse_mode=3, atten_mask=self.mask, block_table=step.block_table,
                    block_size=c.block_size, actual_seq_lengths=step.q_cum, actual_seq_lengths_kv=step.kv_lens)

    def forward(self, step: Step, attention=None) -> torch.Tensor:
        """Logits [T, vocab]. ``attention(layer, query, key_cache, value_cache, kwargs)`` computes a layer's
        attention output [T, N, D] (default: the fused operator)."""
        c = self.cfg
        T = step.tokens.shape[0]
        x = self.embed[step.tokens]
        for i, (w, (kc, vc)) in enumerate(zip(self.layers, self.caches)):
            h = _rms(x)
            q = (h @ w["wq"]).view(T, c.heads, c.head_dim).bfloat16()
            k = (h @ w["wk"]).view(T, c.kv_heads, c.head_dim).bfloat16()
            v = (h @ w["wv"]).view(T, c.kv_heads, c.head_dim).bfloat16()
            nk._npu_reshape_and_cache(k, v, kc, vc, step.slots)
            caches = (kc.view(c.blocks, c.block_size, -1), vc.view(c.blocks, c.block_size, -1))
            kw = self.attention_kwargs(step)
            out = attention(i, q, *caches, kw) if attention else nk.npu_fused_infer_attention_score(q, *caches, **kw)[0]
            x = x + out.float().reshape(T, c.hidden) @ w["wo"]
            x = x + torch.relu(_rms(x) @ w["w1"]) @ w["w2"]
        return _rms(x) @ self.embed.T


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
