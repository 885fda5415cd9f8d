"""Plain PyTorch building blocks for ``test_vllm_serving``: paged caches as vLLM-Ascend lays them out (§5 of
spec/vllm-ascend-ops.md), requests that own shuffled blocks, and attention computed directly from a
request's tokens in float64, so that the operators are checked against arithmetic written out in the
test rather than against ``npu_kernels.reference``.

Layouts (element of token slot ``s = blk * bs + off``, kv head ``n``, channel ``d``; ``c0`` = 32 bytes of
elements):

    ND   (nb, bs, KV_N, D)            [blk, off, n, d]
    NZ4  (nb, KV_N*D/c0, bs, c0)      [blk, (n*D + d) // c0, off, (n*D + d) % c0]
    NZ5  (nb, KV_N, D/c0, bs, c0)     [blk, n, d // c0, off, d % c0]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

MASK_SIZE = 2048
# vLLM-Ascend's compressed causal mask for sparse modes 2-4: int8, 1 strictly above the diagonal
SPLITFUSE_MASK = torch.ones(MASK_SIZE, MASK_SIZE).triu(1).to(torch.int8)
NO_WINDOW = 2147483647        # pre_tokens / next_tokens when there is no window (vLLM-Ascend's SWA_INT_MAX)


def c0_of(dtype: torch.dtype) -> int:
    return 32 // dtype.itemsize


# ---------------------------------------------------------------------------------------------------
# Layouts, by index arithmetic


def nd_to_nz5(nd: torch.Tensor) -> torch.Tensor:
    nb, bs, kv_n, d = nd.shape
    c0 = c0_of(nd.dtype)
    return nd.reshape(nb, bs, kv_n, d // c0, c0).permute(0, 2, 3, 1, 4).contiguous()


def nz5_to_nd(nz: torch.Tensor) -> torch.Tensor:
    nb, kv_n, tiles, bs, c0 = nz.shape
    return nz.permute(0, 3, 1, 2, 4).reshape(nb, bs, kv_n, tiles * c0)


def nz4_to_nd(nz: torch.Tensor, kv_n: int) -> torch.Tensor:
    nb, tiles, bs, c0 = nz.shape
    return nz.permute(0, 2, 1, 3).reshape(nb, bs, kv_n, tiles * c0 // kv_n)


def write_by_index(cache: torch.Tensor, layout: str, tokens: torch.Tensor, slots: list[int]) -> torch.Tensor:
    """A copy of ``cache`` with token i of ``tokens`` (T, KV_N, D) stored at ``slots[i]`` by index assignment
    (negative slots skipped): what a KV-cache write must produce."""
    out = cache.clone()
    kv_n, d = tokens.shape[1:]
    for i, s in enumerate(slots):
        if s < 0:
            continue
        if layout == "ND":
            bs = cache.shape[1]
            out[s // bs, s % bs] = tokens[i]
        elif layout == "NZ4":
            bs, c0 = cache.shape[2], cache.shape[3]
            out[s // bs, :, s % bs, :] = tokens[i].reshape(kv_n * d // c0, c0)
        elif layout == "NZ5":
            bs, c0 = cache.shape[3], cache.shape[4]
            out[s // bs, :, :, s % bs, :] = tokens[i].reshape(kv_n, d // c0, c0)
        else:
            raise AssertionError(layout)
    return out


def gather_by_hand(nd_cache: torch.Tensor, blocks: list[int], length: int) -> torch.Tensor:
    """Tokens 0..length-1 of a request whose logical block j is physical block ``blocks[j]``, read from an ND
    cache (nb, bs, KV_N, D) one token at a time: (length, KV_N, D)."""
    bs = nd_cache.shape[1]
    rows = [nd_cache[blocks[j // bs], j % bs] for j in range(length)]
    return torch.stack(rows) if rows else nd_cache.new_empty(0, *nd_cache.shape[2:])


# ---------------------------------------------------------------------------------------------------
# Requests and their blocks


class BlockPool:
    """Physical blocks handed out in a shuffled order, so a request's blocks are neither adjacent nor sorted;
    returned blocks are handed out first (they still hold the departed request's tokens)."""

    def __init__(self, blocks: int, generator: torch.Generator):
        self.free = torch.randperm(blocks, generator=generator).tolist()

    def take(self, count: int) -> list[int]:
        assert count <= len(self.free), "block pool exhausted"
        return [self.free.pop() for _ in range(count)]

    def give_back(self, blocks: list[int]) -> None:
        self.free += blocks


@dataclass
class Request:
    """A request's blocks and, per layer, the key and value tokens written so far (the truth the caches
    must hold): ``keys[layer]`` (length, ...)."""

    name: str
    blocks: list[int]
    block_size: int
    keys: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)

    @property
    def length(self) -> int:
        return self.keys[0].shape[0]

    def slot(self, position: int) -> int:
        return self.blocks[position // self.block_size] * self.block_size + position % self.block_size

    def slots(self, start: int, stop: int) -> list[int]:
        return [self.slot(p) for p in range(start, stop)]

    def append(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> None:
        self.keys[layer] = torch.cat([self.keys[layer], key])
        self.values[layer] = torch.cat([self.values[layer], value])


def new_request(name: str, pool: BlockPool, block_size: int, capacity: int, layers: int, key_shape: tuple,
                value_shape: tuple, dtype: torch.dtype) -> Request:
    r = Request(name, pool.take(math.ceil(capacity / block_size)), block_size)
    r.keys = [torch.empty(0, *key_shape, dtype=dtype) for _ in range(layers)]
    r.values = [torch.empty(0, *value_shape, dtype=dtype) for _ in range(layers)]
    return r


def table_rows(requests: list, rows: int, width: int) -> torch.Tensor:
    """vLLM-Ascend's block table: (rows, width) int32, request i's blocks in row i, the rest 0."""
    table = torch.zeros(rows, width, dtype=torch.int32)
    for i, r in enumerate(requests):
        table[i, :len(r.blocks)] = torch.tensor(r.blocks, dtype=torch.int32)
    return table


# ---------------------------------------------------------------------------------------------------
# Attention, written out


def plain_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, *, causal: bool = True,
                    window: int | None = None, sink: torch.Tensor | None = None, q_rope: torch.Tensor | None = None,
                    k_rope: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One request's attention in float64. ``q`` (S, N, D) are the request's last S positions out of L keys
    ``k`` (L, KV_N, D), ``v`` (L, KV_N, Dv): query row i is position p = L - S + i. Query head n reads kv head
    n // (N / KV_N). Row i keeps key j iff j <= p (``causal``) and j >= p - window (``window``: sparse mode
    4 with pre_tokens = window, next_tokens = 0). ``sink`` (N,) is one more logit per head with no value.
    ``q_rope``/``k_rope`` are concatenated to q/k along D (MLA). Returns (out (S, N, Dv), lse (S, N)) with
    lse the natural log of the sum of exp of the kept scaled scores (without the sink); a row without keys
    has out 0 and lse +inf."""
    if q_rope is not None:
        q, k = torch.cat([q, q_rope], -1), torch.cat([k, k_rope], -1)
    S, N, _ = q.shape
    L, kv_n = k.shape[:2]
    group = N // kv_n
    qd, kd, vd = q.double(), k.double().repeat_interleave(group, 1), v.double().repeat_interleave(group, 1)
    scores = scale * torch.einsum("snd,lnd->nsl", qd, kd)                      # (N, S, L)
    position = torch.arange(L - S, L)[:, None]
    j = torch.arange(L)[None, :]
    keep = torch.ones(S, L, dtype=torch.bool)
    if causal:
        keep &= j <= position
    if window is not None:
        keep &= j >= position - window
    scores = scores.masked_fill(~keep, -math.inf)
    lse = torch.logsumexp(scores, -1)                                           # (N, S); -inf without keys
    total = lse if sink is None else torch.logaddexp(lse, sink.double()[:, None])
    p = torch.exp(scores - total[..., None]).nan_to_num(0.0)
    out = torch.einsum("nsl,lnd->snd", p, vd)
    lse = torch.where(torch.isneginf(lse), math.inf, lse)
    return out, lse.transpose(0, 1)


def c8_quantise(x: torch.Tensor, inv_scale: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """spec vllm-ascend-ops §5.3 write: clamp(round(x * inv_scale + offset), -128, 127) as int8, every step
    in the model dtype (round half to even)."""
    return torch.clamp(torch.round(x * inv_scale + offset), -128, 127).to(torch.int8)


def c8_dequantise(q8: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """spec §5.3 read (FIA's scale-only anti-quant, ops §1.9): q8 * scale in float32, then the model dtype
    (bf16 target: computed in float32, then cast)."""
    return (q8.float() * scale.float()).to(scale.dtype)
