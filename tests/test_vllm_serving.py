"""A vLLM-Ascend-style serving loop (issue 16, item 3), written from vLLM-Ascend's public call patterns
(spec/vllm-ascend-ops.md, spec/runtime.md §2): a few requests of different lengths on paged caches with
shuffled blocks, each step's attention compared with attention computed in the test from the request's
own tokens (``vllm_patterns.plain_attention``, float64), never with ``npu_kernels.reference``.

- KV-cache writes: ``_npu_reshape_and_cache`` (ND, and the 310P NZ cache) and ``npu_scatter_pa_kv_cache``
  ("Norm", "PA_NZ" 4-D and 5-D, the int8 C8 cache) against index assignment, bit for bit;
- chunked prefill through the fused operator (TND, paged, sparse 3; sparse 4 with a window), a prompt in
  two chunks whose second attends to the cached first, mixed with decode rows; the same through FIA v2
  with a learnable sink (attention sinks), and v2's eager decode-only sink call;
- MLA decode with speculative tokens through FIA v2 with rope, token-major (TND_NTD);
- decode steps from one captured graph: per layer the cache write, then the attention in a task group
  behind an ExternalEvent; a task update of every layer per step, in both orders (update → replay, and
  vLLM-Ascend's sync → replay → update → record), with requests finishing and joining between steps.
  One flavour per attention path vLLM-Ascend captures: FIA v1 TND (``full_graph_fia``),
  ``_npu_paged_attention`` (``full_graph_pa``), FIA v2 with a sink and a window (``full_graph_fia_v2``),
  MLA decode through FIA v2 with rope (BNSD_NBSD, D = 512, one KV head), and the C8 cache (int8 K/V in
  NZ, per-channel scales, FIA v1 BNSD with anti-quantisation);
- ``npu_attention_update`` merging a chunk's part over itself and its part over the cached context (read
  back with ``npu_gather_pa_kv_cache``), each from the fused operator with ``softmax_lse_flag=True``,
  against attention over their concatenation.

Tolerances: outputs within ``npu_kernels.reference.tolerance(dtype)``; a float32 ``softmax_lse`` within
1e-5 (the float32 accuracy of a sum of exponentials); cache contents, sentinels and zero rows exactly.
"""

from __future__ import annotations

import pytest
import runtime
import torch

import npu_kernels as nk
from npu_kernels.reference import tolerance

from .runtime.backend_setup import active
from .vllm_patterns import (NO_WINDOW, SPLITFUSE_MASK, BlockPool, c0_of, c8_dequantise, c8_quantise, gather_by_hand,
                            new_request, nz5_to_nd, plain_attention, table_rows, write_by_index)

N, KV_N, D, BS = 4, 2, 64, 16          # query heads, kv heads, head dim, block size
SCALE = D ** -0.5
LATENT, ROPE = 512, 64                 # MLA: latent (kv_lora_rank) and rope head dims, one KV head
MLA_SCALE = (LATENT + ROPE) ** -0.5
LSE_TOL = 1e-5


@pytest.fixture(params=runtime.available_backends())
def rt(request):
    yield from active(request.param)


def assert_attention(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    assert not torch.isnan(got).any(), f"{what}: NaN"
    atol, rtol = tolerance(dtype)
    torch.testing.assert_close(got.cpu().double(), want.double(), atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


# ---------------------------------------------------------------------------------------------------
# KV-cache writes


WRITES = [   # (id, operator, layout, dtype, block size, value head dim, keyword arguments)
    ("reshape_and_cache-ND", "_npu_reshape_and_cache", "ND", torch.float16, 16, 32, {}),
    ("reshape_and_cache-NZ4-310P", "_npu_reshape_and_cache", "NZ4", torch.float16, 16, 64, {}),
    ("scatter-Norm", "npu_scatter_pa_kv_cache", "ND", torch.bfloat16, 16, 32, dict(cache_mode="Norm")),
    ("scatter-PA_NZ-4d", "npu_scatter_pa_kv_cache", "NZ4", torch.float16, 16, 64, dict(cache_mode="PA_NZ")),
    ("scatter-PA_NZ-5d-default", "npu_scatter_pa_kv_cache", "NZ5", torch.bfloat16, 16, 64, {}),
    ("scatter-C8-int8-5d", "npu_scatter_pa_kv_cache", "NZ5", torch.int8, 32, 64, {}),
]


def empty_cache(layout: str, blocks: int, bs: int, dim: int, dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
    """A cache of the layout holding random stale data (a fresh allocation is never zeroed)."""
    c0 = c0_of(dtype)
    shape = {"ND": (blocks, bs, KV_N, dim), "NZ4": (blocks, KV_N * dim // c0, bs, c0),
             "NZ5": (blocks, KV_N, dim // c0, bs, c0)}[layout]
    return random_tokens(shape, dtype, g)


def random_tokens(shape, dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
    if dtype == torch.int8:
        return torch.randint(-128, 128, shape, generator=g, dtype=torch.int8)
    return torch.randn(shape, generator=g).to(dtype)


def stale_cache(shape, dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
    """A paged cache before any write: NaN in float caches (a slot outside a request's first kv-length tokens
    must not reach its result: spec vllm-ascend-ops §1.1, ops §1.3), random bytes in int8 ones."""
    return random_tokens(shape, dtype, g) if dtype == torch.int8 else torch.full(shape, float("nan"), dtype=dtype)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a.view(torch.int16), b.view(torch.int16))


@pytest.mark.parametrize("case", WRITES, ids=lambda c: c[0])
def test_kv_cache_write(device, case):
    """A prefill batch of three requests (token-major, padded with slot -1 tokens), then a decode step of
    one token each: the caches equal index assignment at the slots, and nothing else changes."""
    _, op, layout, dtype, bs, dv, kwargs = case
    g = torch.Generator().manual_seed(11)
    pool = BlockPool(12, g)
    lengths = [21, 5, 34]
    requests = [new_request(f"r{i}", pool, bs, n + 1, 1, (KV_N, D), (KV_N, dv), dtype) for i, n in enumerate(lengths)]
    kc, vc = empty_cache(layout, 12, bs, D, dtype, g), empty_cache(layout, 12, bs, dv, dtype, g)
    kc_dev, vc_dev = kc.to(device), vc.to(device)
    steps = [[(r, 0, n) for r, n in zip(requests, lengths)],             # prefill
             [(r, n, n + 1) for r, n in zip(requests, lengths)]]         # one decode token each
    for step, scheduled in enumerate(steps):
        slots = [s for r, start, stop in scheduled for s in r.slots(start, stop)] + [-1] * 3
        key = random_tokens((len(slots), KV_N, D), dtype, g)
        value = random_tokens((len(slots), KV_N, dv), dtype, g)
        getattr(nk, op)(key.to(device), value.to(device), kc_dev, vc_dev,
                        torch.tensor(slots, dtype=torch.int32, device=device), **kwargs)
        kc, vc = write_by_index(kc, layout, key, slots), write_by_index(vc, layout, value, slots)
        assert torch.equal(kc_dev.cpu(), kc), f"step {step}: key cache"
        assert torch.equal(vc_dev.cpu(), vc), f"step {step}: value cache"


# ---------------------------------------------------------------------------------------------------
# Chunked prefill: the fused operator on a mixed batch (decodes first, then prefill chunks)


CHUNKED_STEPS = [   # per step: (request, start, stop) of the tokens it schedules
    [("A", 0, 24), ("B", 0, 9)],                                   # A's prompt (40) in two chunks
    [("B", 9, 10), ("A", 24, 40), ("C", 0, 20)],                   # the second chunk reads the cached first
    [("A", 40, 41), ("B", 10, 11), ("C", 20, 30)],
]


def chunked_prefill(device, dtype: torch.dtype, window: int | None, sink: torch.Tensor | None) -> None:
    """Each step: the scheduled tokens' K/V written with ``npu_scatter_pa_kv_cache`` ("Norm", vLLM-Ascend's
    A2/A3 write), then one token-major paged call with sparse 3, or sparse 4 with pre_tokens = window and
    next_tokens = 0 (vLLM-Ascend's sliding window); with ``sink``, FIA v2 with ``learnable_sink``. Row i of a
    request scheduled for [start, stop) is position start + i and attends keys [0, start + i] (and not
    before start + i - window)."""
    g = torch.Generator().manual_seed(21)
    pool = BlockPool(16, g)
    requests = {name: new_request(name, pool, BS, 48, 1, (KV_N, D), (KV_N, D), dtype) for name in "ABC"}
    kc = stale_cache((16, BS, KV_N, D), dtype, g).to(device)
    vc = stale_cache((16, BS, KV_N, D), dtype, g).to(device)
    for step, scheduled in enumerate(CHUNKED_STEPS):
        slots, queries, cum = [], [], []
        for name, start, stop in scheduled:
            r = requests[name]
            assert r.length == start
            r.append(0, torch.randn(stop - start, KV_N, D, generator=g).to(dtype),
                     torch.randn(stop - start, KV_N, D, generator=g).to(dtype))
            slots += r.slots(start, stop)
            queries.append(torch.randn(stop - start, N, D, generator=g).to(dtype))
            cum.append(sum(q.shape[0] for q in queries))
        new_k = torch.cat([requests[n].keys[0][a:b] for n, a, b in scheduled])
        new_v = torch.cat([requests[n].values[0][a:b] for n, a, b in scheduled])
        nk.npu_scatter_pa_kv_cache(new_k.to(device), new_v.to(device), kc, vc,
                                   torch.tensor(slots, dtype=torch.int32, device=device), cache_mode="Norm")
        batch = [requests[name] for name, _, _ in scheduled]
        table = table_rows(batch, len(batch), 3).to(device)
        kv_lens = [stop for _, _, stop in scheduled]
        common = dict(atten_mask=SPLITFUSE_MASK.to(device), block_table=table, input_layout="TND", block_size=BS,
                      num_key_value_heads=KV_N, sparse_mode=4 if window is not None else 3,
                      pre_tokens=window if window is not None else NO_WINDOW,
                      next_tokens=0 if window is not None else NO_WINDOW)
        q = torch.cat(queries).to(device)
        k3, v3 = kc.view(16, BS, KV_N * D), vc.view(16, BS, KV_N * D)
        if sink is None:
            out, _ = nk.npu_fused_infer_attention_score(q, k3, v3, num_heads=N, scale=SCALE, actual_seq_lengths=cum,
                                                       actual_seq_lengths_kv=kv_lens, **common)
        else:
            out, _ = nk.npu_fused_infer_attention_score_v2(q, k3, v3, num_query_heads=N, softmax_scale=SCALE,
                                                          actual_seq_qlen=cum, actual_seq_kvlen=kv_lens,
                                                          learnable_sink=sink.to(device), **common)
        assert out.shape == (cum[-1], N, D)
        k_nd, v_nd = kc.cpu(), vc.cpu()
        row = 0
        for (name, start, stop), qr in zip(scheduled, queries):
            r = requests[name]
            keys, values = gather_by_hand(k_nd, r.blocks, stop), gather_by_hand(v_nd, r.blocks, stop)
            assert torch.equal(keys, r.keys[0]) and torch.equal(values, r.values[0]), f"step {step}: cache of {name}"
            want, _ = plain_attention(qr, keys, values, SCALE, window=window, sink=sink)
            assert_attention(out[row:row + stop - start], want, dtype, f"step {step}, request {name} [{start}, {stop})")
            row += stop - start


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("window", [None, 6], ids=["sparse3", "sparse4-window6"])
def test_chunked_prefill(device, dtype, window):
    chunked_prefill(device, dtype, window, None)


@pytest.mark.parametrize("window", [None, 6], ids=["sparse3", "sparse4-window6"])
def test_attention_sinks_chunked_prefill(device, window):
    """FIA v2 with ``learnable_sink`` (bf16, one logit per query head, no value row), as vLLM-Ascend calls
    it for models with attention sinks."""
    sink = (torch.randn(N, generator=torch.Generator().manual_seed(5)) * 2).bfloat16()
    chunked_prefill(device, torch.bfloat16, window, sink)


@pytest.mark.parametrize("entry", [
    "torch.ops.npu",
    "npu_kernels",
])
def test_attention_sinks_decode_only(device, entry):
    """vLLM-Ascend's eager decode-only call for a model with sinks: FIA v2, TND, paged, sparse 3, with
    ``actual_seq_qlen`` an int32 tensor (``torch.tensor([1] * B).cumsum(0)``, int64 after cumsum)."""
    g = torch.Generator().manual_seed(6)
    pool = BlockPool(8, g)
    lengths = [13, 30]
    requests = [new_request(f"r{i}", pool, BS, 32, 1, (KV_N, D), (KV_N, D), torch.bfloat16) for i in range(2)]
    kc = stale_cache((8, BS, KV_N, D), torch.bfloat16, g)
    vc = stale_cache((8, BS, KV_N, D), torch.bfloat16, g)
    for r, n in zip(requests, lengths):
        r.append(0, torch.randn(n, KV_N, D, generator=g).bfloat16(), torch.randn(n, KV_N, D, generator=g).bfloat16())
        kc = write_by_index(kc, "ND", r.keys[0], r.slots(0, n))
        vc = write_by_index(vc, "ND", r.values[0], r.slots(0, n))
    sink = (torch.randn(N, generator=g) * 2).bfloat16()
    q = torch.randn(2, N, D, generator=g).bfloat16()
    qlen = torch.tensor([1] * 2, dtype=torch.int32).cumsum(dim=0)
    op = nk.npu_fused_infer_attention_score_v2 if entry == "npu_kernels" else \
        torch.ops.npu.npu_fused_infer_attention_score_v2
    out, _ = op(q.to(device), kc.view(8, BS, KV_N * D).to(device), vc.view(8, BS, KV_N * D).to(device),
                num_query_heads=N, num_key_value_heads=KV_N, input_layout="TND", pre_tokens=NO_WINDOW, next_tokens=0,
                atten_mask=SPLITFUSE_MASK.to(device), sparse_mode=3, softmax_scale=SCALE,
                block_table=table_rows(requests, 2, 2).to(device), block_size=BS, actual_seq_qlen=qlen,
                actual_seq_kvlen=lengths, learnable_sink=sink.to(device))
    for i, r in enumerate(requests):
        want, _ = plain_attention(q[i:i + 1], r.keys[0], r.values[0], SCALE, sink=sink)
        assert_attention(out[i:i + 1], want, torch.bfloat16, f"request {i}")


# ---------------------------------------------------------------------------------------------------
# MLA multi-token decode, token-major


def test_mla_speculative_decode_token_major(device):
    """vLLM-Ascend's MLA decode with speculative tokens: FIA v2, TND_NTD (output (N, T, 512)), two query
    tokens per request, sparse 3 with the 2048 mask, q_nope (T, N, 512) + query_rope (T, N, 64) against the
    latent cache (nb, 1, bs, 512) and the rope cache (nb, 1, bs, 64); value = the latent cache."""
    g = torch.Generator().manual_seed(51)
    pool = BlockPool(10, g)
    lengths = [20, 9, 31]
    requests = [new_request(f"r{i}", pool, BS, 32, 1, (1, LATENT), (1, ROPE), torch.bfloat16) for i in range(3)]
    latent = stale_cache((10, BS, 1, LATENT), torch.bfloat16, g)
    rope = stale_cache((10, BS, 1, ROPE), torch.bfloat16, g)
    for r, n in zip(requests, lengths):
        r.append(0, torch.randn(n, 1, LATENT, generator=g).bfloat16(), torch.randn(n, 1, ROPE, generator=g).bfloat16())
        latent = write_by_index(latent, "ND", r.keys[0], r.slots(0, n))
        rope = write_by_index(rope, "ND", r.values[0], r.slots(0, n))
    q_nope = torch.randn(6, N, LATENT, generator=g).bfloat16()
    q_pe = torch.randn(6, N, ROPE, generator=g).bfloat16()
    k_nope = latent.view(10, 1, BS, LATENT).to(device)
    out, _ = nk.npu_fused_infer_attention_score_v2(
        q_nope.to(device), k_nope, k_nope, query_rope=q_pe.to(device), key_rope=rope.view(10, 1, BS, ROPE).to(device),
        num_query_heads=N, num_key_value_heads=1, input_layout="TND_NTD", atten_mask=SPLITFUSE_MASK.to(device),
        sparse_mode=3, softmax_scale=MLA_SCALE, block_table=table_rows(requests, 3, 2).to(device), block_size=BS,
        actual_seq_qlen=[2, 4, 6], actual_seq_kvlen=lengths)
    assert out.shape == (N, 6, LATENT)
    for i, r in enumerate(requests):
        rows = slice(2 * i, 2 * i + 2)
        want, _ = plain_attention(q_nope[rows], r.keys[0], r.keys[0], MLA_SCALE, q_rope=q_pe[rows], k_rope=r.values[0])
        assert_attention(out[:, rows].transpose(0, 1), want, torch.bfloat16, f"request {i}")


# ---------------------------------------------------------------------------------------------------
# Decode from one captured graph, task-updated per step


ROWS = 4            # the graph's token rows (vLLM-Ascend's padded batch); padded rows: slot -1, kv length 0
LAYERS = 2
WIDTH = 3           # block-table columns


class Flavour:
    """One attention path of vLLM-Ascend's FULL decode graph: its caches, cache write, query buffers and the
    captured/updated call, and the attention of one row written out."""

    dtype = torch.float16
    block_size = BS
    blocks = 24
    key_shape = (KV_N, D)
    value_shape = (KV_N, D)
    padded_rows_zero = True          # rows with kv length 0: zeros (the operator's rule), else untouched
    nz = False

    def __init__(self, device: torch.device):
        self.device = device                                   # constant tensors live there before any capture
        self.mask = SPLITFUSE_MASK.to(device)

    def caches(self, g):
        return tuple(stale_cache((self.blocks, self.block_size, *shape), self.cache_dtype, g).to(self.device)
                     for shape in (self.key_shape, self.value_shape))

    @property
    def cache_dtype(self):
        return self.dtype

    def write(self, caches, key, value, slots):
        nk.npu_scatter_pa_kv_cache(key, value, *caches, slots, cache_mode="Norm")

    def stored(self, key, value):
        """The tokens as the cache holds them."""
        return key, value

    def nd(self, cache):
        """The cache as (blocks, bs, KV_N, D) for reading by hand."""
        return cache.cpu()

    def queries(self, rows, g):
        return (torch.randn(rows, N, D, generator=g).to(self.dtype),)

    def output(self):
        """(attention output, the lse tensor vLLM-Ascend passes when it asks for none)."""
        return torch.zeros(ROWS, N, D, dtype=self.dtype, device=self.device), \
            torch.empty(1, dtype=self.dtype, device=self.device)

    def row(self, out, i):
        return out[i]

    def workspace(self, q, caches, table, lens, out):
        return nk._npu_fused_infer_attention_score_get_max_workspace(*self.args(q, caches), **self.kwargs(table, lens))

    def attend(self, q, caches, table, lens, out, ws):
        nk.npu_fused_infer_attention_score.out(*self.args(q, caches), **self.kwargs(table, lens), workspace=ws,
                                               out=list(out))

    def args(self, q, caches):
        return (q[0], *(c.view(self.blocks, self.block_size, -1) for c in caches))

    def kwargs(self, table, lens):
        return dict(atten_mask=self.mask, block_table=table, input_layout="TND", block_size=self.block_size,
                    actual_seq_lengths=list(range(1, ROWS + 1)), actual_seq_lengths_kv=lens,
                    num_key_value_heads=KV_N, num_heads=N, scale=SCALE, sparse_mode=3, pre_tokens=NO_WINDOW,
                    next_tokens=NO_WINDOW)

    def expected(self, q_row, keys, values):
        return plain_attention(q_row[0][None], keys, values, SCALE)[0][0]


class FusedTND(Flavour):
    """``full_graph_fia``: FIA v1 ``.out``, TND, 3-D paged view (nb, bs, KV_N*D), sparse 3, the 2048 mask."""

    name = "fia_v1_tnd"


class PagedAttention(Flavour):
    """``full_graph_pa``: ATB ``_npu_paged_attention`` on ND caches, context_lens a CPU int32 tensor, the
    workspace recomputed before each update; caches written by ``_npu_reshape_and_cache``."""

    name = "paged_attention"
    padded_rows_zero = False

    def write(self, caches, key, value, slots):
        nk._npu_reshape_and_cache(key, value, *caches, slots)

    def pa_kwargs(self, q, caches, table, lens, out):
        return dict(query=q[0], key_cache=caches[0], value_cache=caches[1], num_kv_heads=KV_N, num_heads=N,
                    scale_value=SCALE, block_table=table, context_lens=torch.tensor(lens, dtype=torch.int32),
                    out=out[0])

    def workspace(self, q, caches, table, lens, out):
        return nk._npu_paged_attention_get_workspace(**self.pa_kwargs(q, caches, table, lens, out))

    def attend(self, q, caches, table, lens, out, ws):
        nk._npu_paged_attention(**self.pa_kwargs(q, caches, table, lens, out), workspace=ws)


class SinkWindow(Flavour):
    """``full_graph_fia_v2``: FIA v2 ``.out`` with ``learnable_sink``, TND, sparse 4 with pre_tokens = window,
    next_tokens = 0 (a sliding-window layer of a model with sinks)."""

    name = "fia_v2_sink_window"
    dtype = torch.bfloat16
    window = 8

    def __init__(self, device):
        super().__init__(device)
        self.sink = (torch.randn(N, generator=torch.Generator().manual_seed(7)) * 2).bfloat16()
        self.sink_dev = self.sink.to(device)

    def workspace(self, q, caches, table, lens, out):
        return nk._npu_fused_infer_attention_score_v2_get_max_workspace(*self.args(q, caches),
                                                                         **self.kwargs(table, lens))

    def attend(self, q, caches, table, lens, out, ws):
        nk.npu_fused_infer_attention_score_v2.out(*self.args(q, caches), **self.kwargs(table, lens), workspace=ws,
                                                  out=list(out))

    def kwargs(self, table, lens):
        return dict(atten_mask=self.mask, block_table=table, input_layout="TND", block_size=self.block_size,
                    actual_seq_qlen=list(range(1, ROWS + 1)), actual_seq_kvlen=lens, num_key_value_heads=KV_N,
                    num_query_heads=N, sparse_mode=4, pre_tokens=self.window, next_tokens=0, softmax_scale=SCALE,
                    learnable_sink=self.sink_dev)

    def expected(self, q_row, keys, values):
        return plain_attention(q_row[0][None], keys, values, SCALE, window=self.window, sink=self.sink)[0][0]


class MLADecode(Flavour):
    """MLA decode (``mla_v1._forward_decode``): FIA v2 ``.out``, BNSD_NBSD, q_nope (B, N, 1, 512) with
    query_rope (B, N, 1, 64); the latent cache (nb, bs, 1, 512) and the rope cache (nb, bs, 1, 64) read as
    (nb, 1, bs, D) (one KV head: the same memory); value = the latent cache; output (N, B, 1, 512).
    Caches written with ``_npu_reshape_and_cache`` (key = latent, value = rope, as MLA context parallel)."""

    name = "mla_fia_v2_rope"
    dtype = torch.bfloat16
    key_shape = (1, LATENT)
    value_shape = (1, ROPE)

    def write(self, caches, key, value, slots):
        nk._npu_reshape_and_cache(key, value, *caches, slots)

    def queries(self, rows, g):
        return (torch.randn(rows, N, 1, LATENT, generator=g).to(self.dtype),
                torch.randn(rows, N, 1, ROPE, generator=g).to(self.dtype))

    def output(self):
        return torch.zeros(N, ROWS, 1, LATENT, dtype=self.dtype, device=self.device), \
            torch.empty(ROWS, dtype=self.dtype, device=self.device)

    def row(self, out, i):
        return out[:, i, 0]

    def views(self, caches):
        return tuple(c.view(self.blocks, 1, self.block_size, -1) for c in caches)

    def workspace(self, q, caches, table, lens, out):
        k_nope, k_pe = self.views(caches)
        return nk._npu_fused_infer_attention_score_v2_get_max_workspace(q[0], k_nope, k_nope,
                                                                         **self.kwargs(q, caches, table, lens))

    def attend(self, q, caches, table, lens, out, ws):
        k_nope, _ = self.views(caches)
        nk.npu_fused_infer_attention_score_v2.out(q[0], k_nope, k_nope, **self.kwargs(q, caches, table, lens),
                                                  workspace=ws, out=list(out))

    def kwargs(self, q, caches, table, lens):
        k_nope, k_pe = self.views(caches)
        return dict(query_rope=q[1], key_rope=k_pe, num_query_heads=N, num_key_value_heads=1,
                    input_layout="BNSD_NBSD", atten_mask=None, sparse_mode=0, softmax_scale=MLA_SCALE,
                    block_table=table, block_size=self.block_size, actual_seq_qlen=None, actual_seq_kvlen=lens)

    def expected(self, q_row, keys, values):
        q_nope, q_pe = q_row[0][:, 0][None], q_row[1][:, 0][None]              # (1, N, 512), (1, N, 64)
        return plain_attention(q_nope, keys, keys, MLA_SCALE, q_rope=q_pe, k_rope=values)[0][0]


class C8Cache(Flavour):
    """vLLM-Ascend's C8 cache (``AscendC8AttentionBackendImpl``): int8 (nb, bs, KV_N, D) containers holding
    NZ (nb, KV_N, D/32, bs, 32); K/V quantised in the graph with per-channel bf16 scales and zero offsets
    (§5.3), written by ``npu_scatter_pa_kv_cache`` (default PA_NZ) on the 5-D views; decode through FIA v1
    ``.out`` BNSD with ``key/value_antiquant_scale`` (KV_N, 1, D), modes 0, inner_precise 1, sparse 0."""

    name = "c8_int8_nz"
    dtype = torch.bfloat16
    block_size = 32
    blocks = 12
    nz = True

    def __init__(self, device):
        super().__init__(device)
        g = torch.Generator().manual_seed(8)
        self.scales = [(torch.rand(1, KV_N, D, generator=g) * 0.01 + 0.025).bfloat16() for _ in range(2)]
        self.offset = torch.zeros(1, KV_N, D, dtype=torch.bfloat16)
        self.inv_dev = [(1.0 / s).to(device) for s in self.scales]            # (1, KV_N, D), as vLLM-Ascend keeps
        self.aq_dev = [s.view(KV_N, 1, D).to(device) for s in self.scales]   # the BNSD anti-quant scales
        self.offset_dev = self.offset.to(device)

    @property
    def cache_dtype(self):
        return torch.int8

    def nz5(self, cache):
        return cache.view(-1, KV_N, D // 32, self.block_size, 32)

    def write(self, caches, key, value, slots):
        k8 = c8_quantise(key, self.inv_dev[0], self.offset_dev)
        v8 = c8_quantise(value, self.inv_dev[1], self.offset_dev)
        nk.npu_scatter_pa_kv_cache(k8, v8, self.nz5(caches[0]), self.nz5(caches[1]), slots)

    def stored(self, key, value):
        return (c8_quantise(key, 1.0 / self.scales[0], self.offset),
                c8_quantise(value, 1.0 / self.scales[1], self.offset))

    def nd(self, cache):
        return nz5_to_nd(self.nz5(cache).cpu())

    def args(self, q, caches):
        return (q[0].unsqueeze(2), self.nz5(caches[0]), self.nz5(caches[1]))

    def kwargs(self, table, lens):
        return dict(block_table=table, input_layout="BNSD", block_size=self.block_size,
                    actual_seq_lengths=list(range(1, ROWS + 1)), actual_seq_lengths_kv=lens,
                    num_key_value_heads=KV_N, num_heads=N, scale=SCALE, sparse_mode=0, pre_tokens=NO_WINDOW,
                    next_tokens=NO_WINDOW, key_antiquant_scale=self.aq_dev[0],
                    value_antiquant_scale=self.aq_dev[1], key_antiquant_mode=0,
                    value_antiquant_mode=0, inner_precise=1)

    def attend(self, q, caches, table, lens, out, ws):
        nk.npu_fused_infer_attention_score.out(*self.args(q, caches), **self.kwargs(table, lens), workspace=ws,
                                               out=[out[0].unsqueeze(2), out[1]])

    def expected(self, q_row, keys, values):
        return plain_attention(q_row[0][None], c8_dequantise(keys, self.scales[0][0]),
                               c8_dequantise(values, self.scales[1][0]), SCALE)[0][0]


FLAVOURS = [FusedTND, PagedAttention, SinkWindow, MLADecode, C8Cache]

# Requests joining (name, prompt length) before a step and leaving after it; rows follow the running order.
JOIN = {0: [("r0", 20), ("r1", 7), ("r2", 33)], 2: [("r3", 12), ("r4", 1)], 5: [("r5", 40)]}
LEAVE = {1: ["r1"], 3: ["r0", "r3"]}
DECODE_STEPS = 6
CAPACITY = 48       # tokens a request may hold (WIDTH blocks of 16)


class Serving:
    """The decode loop's state: requests, caches and the graph's static input tensors."""

    def __init__(self, flavour: Flavour, device: torch.device):
        self.f, self.device = flavour, device
        self.g = torch.Generator().manual_seed(31)
        self.pool = BlockPool(flavour.blocks, self.g)
        self.caches = [flavour.caches(self.g) for _ in range(LAYERS)]
        self.q = [tuple(t.to(device) for t in flavour.queries(ROWS, self.g)) for _ in range(LAYERS)]
        self.new_k = [torch.zeros(ROWS, *flavour.key_shape, dtype=flavour.dtype, device=device) for _ in range(LAYERS)]
        self.new_v = [torch.zeros(ROWS, *flavour.value_shape, dtype=flavour.dtype, device=device)
                      for _ in range(LAYERS)]
        self.slots = torch.full((ROWS,), -1, dtype=torch.int32, device=device)
        self.table = torch.zeros(ROWS, WIDTH, dtype=torch.int32, device=device)
        self.out = [flavour.output() for _ in range(LAYERS)]
        self.running, self.lens = [], [1] * ROWS

    def join(self, name: str, prompt: int) -> None:
        """Admit a request: its prompt's K/V written eagerly (the prefill's cache write)."""
        f = self.f
        r = new_request(name, self.pool, f.block_size, CAPACITY, LAYERS, f.key_shape, f.value_shape,
                        f.cache_dtype)
        slots = torch.tensor(r.slots(0, prompt), dtype=torch.int32, device=self.device)
        for layer in range(LAYERS):
            k = torch.randn(prompt, *f.key_shape, generator=self.g).to(f.dtype)
            v = torch.randn(prompt, *f.value_shape, generator=self.g).to(f.dtype)
            f.write(self.caches[layer], k.to(self.device), v.to(self.device), slots)
            r.append(layer, *f.stored(k, v))
        self.running.append(r)

    def leave(self, name: str) -> None:
        r = next(r for r in self.running if r.name == name)
        self.running.remove(r)
        self.pool.give_back(r.blocks)

    def load_step(self) -> list:
        """Copy this step's inputs into the graph's tensors: per running request one new token (K/V written
        at its next slot) and one query row; padded rows get stale-looking data, slot -1, kv length 0."""
        f, n = self.f, len(self.running)
        queries = []
        for layer in range(LAYERS):
            q = f.queries(ROWS, self.g)
            k = torch.randn(ROWS, *f.key_shape, generator=self.g).to(f.dtype)
            v = torch.randn(ROWS, *f.value_shape, generator=self.g).to(f.dtype)
            for buf, new in zip(self.q[layer], q):
                buf.copy_(new)
            self.new_k[layer].copy_(k)
            self.new_v[layer].copy_(v)
            for i, r in enumerate(self.running):
                r.append(layer, *f.stored(k[i:i + 1], v[i:i + 1]))
            queries.append(q)
        slots = [r.slot(r.length - 1) for r in self.running] + [-1] * (ROWS - n)
        self.slots.copy_(torch.tensor(slots, dtype=torch.int32))
        self.table.copy_(table_rows(self.running, ROWS, WIDTH))
        self.lens = [r.length for r in self.running] + [0] * (ROWS - n)
        return queries

    def capture(self, rt):
        """vLLM-Ascend's FULL graph capture: per layer the cache write, then ExternalEvent wait + reset and the
        attention's ``.out`` call (workspace cached from the first layer) inside a task group."""
        for layer in range(LAYERS):                    # the warm-up (dummy) run before capture
            self.f.attend(self.q[layer], self.caches[layer], self.table, self.lens, self.out[layer], None)
        rt.synchronize()
        self.graph, self.events, self.handles = rt.NPUGraph(), [], []
        self.ws = None
        with rt.graph(self.graph):
            s = rt.current_stream()
            for layer in range(LAYERS):
                self.f.write(self.caches[layer], self.new_k[layer], self.new_v[layer], self.slots)
                if self.ws is None:
                    self.ws = self.f.workspace(self.q[layer], self.caches[layer], self.table, self.lens,
                                               self.out[layer])
                ev = rt.ExternalEvent()
                ev.wait(s)
                ev.reset(s)
                self.events.append(ev)
                rt.graph_task_group_begin(s)
                self.f.attend(self.q[layer], self.caches[layer], self.table, self.lens, self.out[layer], self.ws)
                self.handles.append(rt.graph_task_group_end(s))
        self.update_stream = rt.Stream()

    def update(self, rt):
        """``update_graph_params``: on the update stream, per layer: (paged attention: a new workspace for the
        new lengths) update begin, the same call with this step's lengths and block table, end, record."""
        u = self.update_stream
        with rt.stream(u):
            for layer, (handle, ev) in enumerate(zip(self.handles, self.events)):
                ws = self.ws
                if isinstance(self.f, PagedAttention):
                    ws = self.f.workspace(self.q[layer], self.caches[layer], self.table, self.lens, self.out[layer])
                rt.graph_task_update_begin(u, handle)
                self.f.attend(self.q[layer], self.caches[layer], self.table, self.lens, self.out[layer], ws)
                rt.graph_task_update_end(u)
                ev.record(u)

    def check(self, step: int, queries: list, before: list) -> None:
        f, n = self.f, len(self.running)
        for layer in range(LAYERS):
            k_nd, v_nd = f.nd(self.caches[layer][0]), f.nd(self.caches[layer][1])
            out = self.out[layer][0].cpu()
            for i, r in enumerate(self.running):
                keys, values = gather_by_hand(k_nd, r.blocks, r.length), gather_by_hand(v_nd, r.blocks, r.length)
                assert torch.equal(keys, r.keys[layer]) and torch.equal(values, r.values[layer]), \
                    f"step {step}, layer {layer}: cache of {r.name}"
                q_row = tuple(t[i] for t in queries[layer])
                assert_attention(f.row(out, i), f.expected(q_row, keys, values), f.dtype,
                                 f"{f.name}: step {step}, layer {layer}, row {i} ({r.name}, kv length {r.length})")
            for i in range(n, ROWS):
                want = torch.zeros_like(f.row(out, i)) if f.padded_rows_zero else f.row(before[layer], i)
                assert same_bits(f.row(out, i), want), \
                    f"{f.name}: step {step}, layer {layer}, padded row {i} " + \
                    ("(kv length 0) is not zero" if f.padded_rows_zero else "was written")


@pytest.mark.parametrize("order", ["update_then_replay", "replay_then_update"])
@pytest.mark.parametrize("flavour", FLAVOURS, ids=lambda f: f.name)
def test_decode_graph_task_update(rt, order, flavour):
    """Decode steps replayed from one graph captured with placeholder lengths; every step task-updates each
    layer's attention (kv lengths, block table) before its replay, or after it as vLLM-Ascend does (host
    sync, replay, update + record; the in-graph ExternalEvent wait gates each attention task)."""
    device = rt.backend().device
    f = flavour(device)
    st = Serving(f, device)
    st.capture(rt)
    for step in range(DECODE_STEPS):
        for name in LEAVE.get(step - 1, []):
            st.leave(name)
        for name, prompt in JOIN.get(step, []):
            st.join(name, prompt)
        queries = st.load_step()
        before = [o[0].cpu() for o in st.out]
        if order == "update_then_replay":
            st.update(rt)
            st.graph.replay()
        else:
            rt.current_stream().synchronize()
            st.graph.replay()
            st.update(rt)
        rt.synchronize()
        st.check(step, queries, before)


# ---------------------------------------------------------------------------------------------------
# LSE merge: a chunk's part over itself and its part over the cached context, merged


@pytest.mark.parametrize("update_type", [0, 1])
def test_attention_update_merges_context_and_chunk(device, update_type):
    """Chunked prefill as vLLM-Ascend's MLA context merge does it: the part of each request's new chunk over
    the chunk itself (causal, sparse 3), and the part over its cached context, read back with
    ``npu_gather_pa_kv_cache`` (whole blocks from offset 0) and attended without a mask; both TND with
    ``softmax_lse_flag=True`` (lse (T, N, 1)); partial outputs cast to float32 and merged by
    ``npu_attention_update`` on (T*N, D) rows (token-major, head-minor). Request B has no context: its
    context part is the prefill path's empty row (output 0, lse +inf), which the merge ignores, so B's merged
    rows are exactly its chunk rows."""
    dtype = torch.float16
    g = torch.Generator().manual_seed(41)
    pool = BlockPool(12, g)
    plan = [("A", 24, 16), ("B", 0, 9), ("C", 40, 1)]          # (request, cached context, new chunk)
    requests = {name: new_request(name, pool, BS, 48, 1, (KV_N, D), (KV_N, D), dtype) for name, _, _ in plan}
    kc, vc = stale_cache((12, BS, KV_N, D), dtype, g), stale_cache((12, BS, KV_N, D), dtype, g)
    for name, context, _ in plan:
        r = requests[name]
        r.append(0, torch.randn(context, KV_N, D, generator=g).to(dtype),
                 torch.randn(context, KV_N, D, generator=g).to(dtype))
        kc = write_by_index(kc, "ND", r.keys[0], r.slots(0, context))
        vc = write_by_index(vc, "ND", r.values[0], r.slots(0, context))
    chunk_k = [torch.randn(c, KV_N, D, generator=g).to(dtype) for _, _, c in plan]
    chunk_v = [torch.randn(c, KV_N, D, generator=g).to(dtype) for _, _, c in plan]
    queries = [torch.randn(c, N, D, generator=g).to(dtype) for _, _, c in plan]
    q_cum = [sum(c for _, _, c in plan[:i + 1]) for i in range(len(plan))]
    ctx_lens = [c for _, c, _ in plan]
    ctx_cum = [sum(ctx_lens[:i + 1]) for i in range(len(plan))]
    T, toks = q_cum[-1], ctx_cum[-1]
    q = torch.cat(queries).to(device)

    # kv_cache_load: the contexts as contiguous tokens
    ctx_k = torch.full((toks, KV_N, D), 7.0, dtype=dtype, device=device)
    ctx_v = torch.full((toks, KV_N, D), 7.0, dtype=dtype, device=device)
    nk.npu_gather_pa_kv_cache(kc.to(device), vc.to(device), table_rows(list(requests.values()), 3, 3).to(device),
                              torch.tensor(ctx_lens, dtype=torch.int32, device=device), ctx_k, ctx_v,
                              seq_offset=torch.zeros(3, dtype=torch.int32, device=device))
    assert torch.equal(ctx_k.cpu(), torch.cat([requests[n].keys[0] for n, _, _ in plan]))
    assert torch.equal(ctx_v.cpu(), torch.cat([requests[n].values[0] for n, _, _ in plan]))

    chunk_out, chunk_lse = nk.npu_fused_infer_attention_score(
        q, torch.cat(chunk_k).to(device), torch.cat(chunk_v).to(device), num_heads=N, num_key_value_heads=KV_N,
        input_layout="TND", scale=SCALE, sparse_mode=3, atten_mask=SPLITFUSE_MASK.to(device),
        actual_seq_lengths=q_cum, actual_seq_lengths_kv=q_cum, softmax_lse_flag=True)
    ctx_out, ctx_lse = nk.npu_fused_infer_attention_score(
        q, ctx_k, ctx_v, num_heads=N, num_key_value_heads=KV_N, input_layout="TND", atten_mask=None, sparse_mode=0,
        scale=SCALE, actual_seq_lengths=q_cum, actual_seq_lengths_kv=ctx_cum, softmax_lse_flag=True)
    assert chunk_lse.shape == ctx_lse.shape == (T, N, 1) and chunk_lse.dtype == ctx_lse.dtype == torch.float32
    parts = [(chunk_out.float(), chunk_lse), (ctx_out.float(), ctx_lse)]
    out, lse = nk.npu_attention_update(tuple(l.reshape(T * N) for _, l in parts),
                                       tuple(o.reshape(T * N, D) for o, _ in parts), update_type)
    assert out.dtype == torch.float32 and out.shape == (T * N, D)
    assert (lse is None) == (update_type == 0)
    out = out.view(T, N, D).cpu()
    row = 0
    for (name, context, chunk), qr, ck, cv in zip(plan, queries, chunk_k, chunk_v):
        r = requests[name]
        rows = slice(row, row + chunk)
        want_chunk = plain_attention(qr, ck, cv, SCALE)
        want_ctx = plain_attention(qr, r.keys[0], r.values[0], SCALE, causal=False)
        want = plain_attention(qr, torch.cat([r.keys[0], ck]), torch.cat([r.values[0], cv]), SCALE)
        checks = [("chunk part", chunk_out, chunk_lse, want_chunk), ("context part", ctx_out, ctx_lse, want_ctx),
                  ("merged", out, None if lse is None else lse.view(T, N, 1), want)]
        for what, o, l, (want_o, want_l) in checks:
            o = o[rows].cpu()
            if context == 0 and what == "context part":
                assert torch.equal(o, torch.zeros_like(o)), f"{name}: a prefill-path row without keys is 0"
                assert torch.isposinf(l[rows]).all(), f"{name}: a prefill-path row without keys has lse +inf"
                continue
            assert_attention(o, want_o, dtype, f"{name}: {what}")
            if l is not None:
                torch.testing.assert_close(l[rows, :, 0].cpu().double(), want_l, atol=LSE_TOL, rtol=LSE_TOL,
                                           msg=lambda m: f"{name}: lse of the {what}: {m}")
        if context == 0:
            assert torch.equal(out[rows], chunk_out[rows].float().cpu()), f"{name}: the +inf partial has weight 0"
        row += chunk
