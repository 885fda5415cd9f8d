"""_npu_paged_attention (ATB, spec vllm-ascend-ops §1.1-§1.2, §1.5): the operator against the golden
reference (rows of empty requests untouched), its workspace helper, registration, capture and task update
in both orders (new context_lens and block table per step, the workspace recomputed as vLLM-Ascend does),
and one error per rule."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import runtime
import torch
from hypothesis import example, given
from hypothesis import strategies as st

import npu_kernels as nk

from .conftest import assert_close
from .runtime.backend_setup import active

FILL = 7.0          # what ``out`` holds before a call: rows without a request keep it


@dataclass(frozen=True)
class PCase:
    T: int = 3                      # query rows
    lens: tuple = (20, 33, 0)       # context_lens (B = len)
    kv_heads: int = 2
    group: int = 2
    D: int = 32
    Dv: int = 32
    block_size: int = 16
    dtype: torch.dtype = torch.float16
    seed: int = 0

    @property
    def N(self) -> int:
        return self.kv_heads * self.group


def make(c: PCase, device) -> tuple:
    """(args, keyword arguments) of a call; ``out`` holds FILL."""
    g = torch.Generator().manual_seed(c.seed)
    per_seq = max(1, -(-max(c.lens, default=1) // c.block_size))
    blocks = len(c.lens) * per_seq + 2
    q = torch.randn(c.T, c.N, c.D, generator=g).to(c.dtype)
    kc = torch.randn(blocks, c.block_size, c.kv_heads, c.D, generator=g).to(c.dtype)
    vc = torch.randn(blocks, c.block_size, c.kv_heads, c.Dv, generator=g).to(c.dtype)
    table = torch.randperm(blocks, generator=g)[:len(c.lens) * per_seq].reshape(len(c.lens), per_seq).int()
    out = torch.full((c.T, c.N, c.Dv), FILL, dtype=c.dtype)
    args = [t.to(device) for t in (q, kc, vc)] + [c.kv_heads, c.N, c.D ** -0.5, table.to(device),
                                                  torch.tensor(c.lens, dtype=torch.int32), out.to(device)]
    return args


@st.composite
def pcases(draw) -> PCase:
    kv_heads, group = draw(st.integers(1, 2)), draw(st.sampled_from((1, 2, 4)))
    D = draw(st.sampled_from((16, 32, 64)))
    B = draw(st.integers(1, 4))
    T = draw(st.integers(1, 5))
    live = draw(st.integers(0, min(B, T)))                    # non-empty requests first, then empty ones
    block_size = draw(st.sampled_from((16, 32)))
    lens = tuple(draw(st.lists(st.integers(1, 70), min_size=live, max_size=live))) + (0,) * (B - live)
    return PCase(T=T, lens=lens, kv_heads=kv_heads, group=group, D=D,
                 Dv=draw(st.sampled_from((D, 16))), block_size=block_size,
                 dtype=draw(st.sampled_from((torch.float16, torch.bfloat16))), seed=draw(st.integers(0, 2**16)))


def check(c: PCase, device) -> None:
    args = make(c, device)
    ref_out = args[-1].clone()
    nk._npu_paged_attention(*args)
    nk.reference._npu_paged_attention(*args[:-1], ref_out)
    out = args[-1]
    live = sum(1 for n in c.lens if n)
    assert_close(out[:live], ref_out[:live], c.dtype)
    assert torch.equal(out[live:], torch.full_like(out[live:], FILL))


@given(case=pcases())
@example(case=PCase())
@example(case=PCase(T=2, lens=(9, 40, 0, 0), D=64, Dv=16, dtype=torch.bfloat16))     # Dv != D: prefill kernel
@example(case=PCase(T=5, lens=(3,), kv_heads=1, group=4))                              # T > B
def test_matches_reference(case, device):
    check(case, device)


def test_reference_against_softmax(device):
    """The reference on its own: request b's softmax over its L keys, read through its block-table row."""
    c = PCase(T=2, lens=(5, 19), kv_heads=1, group=2, D=16, Dv=16)
    q, kc, vc, kv_n, n, scale, table, lens, out = make(c, device)
    nk.reference._npu_paged_attention(q, kc, vc, kv_n, n, scale, table, lens, out, compute_dtype=torch.float64)
    for b, length in enumerate(c.lens):
        k = kc[table[b].long()].flatten(0, 1)[:length, 0].double()
        v = vc[table[b].long()].flatten(0, 1)[:length, 0].double()
        want = torch.softmax(scale * q[b].double() @ k.T, -1) @ v
        torch.testing.assert_close(out[b].double(), want, atol=2e-3, rtol=2e-3)


def test_workspace_helper(device):
    args = make(PCase(), device)
    ws = nk._npu_paged_attention_get_workspace(*args)
    assert ws.dtype == torch.uint8 and ws.dim() == 1 and ws.numel() >= 1 and ws.device == args[0].device
    nk._npu_paged_attention(*args, workspace=ws)                # accepted, not read
    with pytest.raises(TypeError, match="workspace"):
        nk._npu_paged_attention(*args, workspace=[0])


def test_opcheck_and_compile(device):
    args = make(PCase(T=3, lens=(20, 7)), device)
    torch.library.opcheck(torch.ops.npu._npu_paged_attention.default, tuple(args))
    torch.library.opcheck(torch.ops.npu._npu_paged_attention_get_workspace.default, tuple(args))
    out = args[-1]

    def fn(q, kc, vc, table, lens, out):
        nk._npu_paged_attention(q, kc, vc, args[3], args[4], args[5], table, lens, out)
        return out * 2

    eager = fn(*args[:3], args[6], args[7], out.clone())
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")(*args[:3], args[6], args[7], out.clone())
    assert torch.equal(compiled, eager)


@pytest.fixture(params=runtime.available_backends())
def rt(request):
    yield from active(request.param)


STEPS = [(20, 33, 5, 0), (64, 1, 0, 0), (7, 40, 2, 63), (0, 0, 0, 0)]


@pytest.mark.parametrize("order", ["update_then_replay", "replay_then_update"])
def test_capture_and_update(rt, order):
    """vLLM-Ascend's full_graph_pa: captured in a task group with a workspace; per step the workspace is
    recomputed, the update passes new context_lens (a CPU tensor) and a new block table of the same shape;
    each replay equals the eager call."""
    device = rt.backend().device
    c = PCase(T=4, lens=(64,) * 4, kv_heads=1, group=2, D=16, Dv=16)          # tables of 64 tokens
    q, kc, vc, kv_n, n, scale, table, _, out = make(c, device)
    g_ = torch.Generator().manual_seed(1)
    tables = [torch.randperm(table.shape[0] * table.shape[1], generator=g_)[:table.numel()].reshape(table.shape)
              .int().to(device) for _ in STEPS]

    def call(lens, tbl, ws=None):
        nk._npu_paged_attention(query=q, key_cache=kc, value_cache=vc, num_kv_heads=kv_n, num_heads=n,
                                scale_value=scale, block_table=tbl, context_lens=torch.tensor(lens, dtype=torch.int32),
                                out=out, workspace=ws)

    eager = []
    for lens, tbl in zip(STEPS, tables):
        out.fill_(FILL)
        call(lens, tbl)
        eager.append(out.clone())
    table.copy_(tables[0])
    ws = nk._npu_paged_attention_get_workspace(q, kc, vc, kv_n, n, scale, table, torch.tensor(STEPS[0],
                                               dtype=torch.int32), out)
    g = rt.NPUGraph()
    with rt.graph(g):
        s = rt.current_stream()
        rt.graph_task_group_begin(s)
        call(STEPS[0], table, ws)
        handle = rt.graph_task_group_end(s)
    u = rt.Stream()
    for lens, tbl, want in list(zip(STEPS, tables, eager))[1:] + [(STEPS[0], tables[0], eager[0])]:
        out.fill_(FILL)
        if order == "replay_then_update":
            g.replay()
        with rt.stream(u):
            new_ws = nk._npu_paged_attention_get_workspace(q, kc, vc, kv_n, n, scale, table,
                                                           torch.tensor(lens, dtype=torch.int32), out)
            rt.graph_task_update_begin(u, handle)
            call(lens, tbl, new_ws)
            rt.graph_task_update_end(u)
        if order == "replay_then_update":
            rt.synchronize()
            out.fill_(FILL)
        g.replay()
        rt.synchronize()
        assert torch.equal(out, want), lens


BASE = PCase(T=3, lens=(20, 33, 0))


def _dims(args, d: int, block_size: int) -> dict:
    """Query, caches and out with head dim ``d`` (D = Dv) and caches of ``block_size`` tokens per block."""
    q, kc = args[0], args[1]
    def zeros(*shape):
        return torch.zeros(*shape, dtype=q.dtype, device=q.device)
    return {0: zeros(*q.shape[:2], d), 1: zeros(kc.shape[0], block_size, kc.shape[2], d),
            2: zeros(kc.shape[0], block_size, kc.shape[2], d), 8: zeros(*q.shape[:2], d)}


def _bad(change: str, device) -> list:
    args = make(BASE, device)
    q, kc, vc, kv_n, n, scale, table, lens, out = args
    f16 = torch.float16
    edits = {
        "num_heads": lambda: {4: 0},
        "num_kv_heads": lambda: {3: -1},
        "divisible": lambda: {3: 3, 4: 4},
        "heads_axis": lambda: {4: 2, 3: 1},
        "query_dim": lambda: {0: q[None]},
        "cache_dim": lambda: {1: kc[0]},
        "cache_dtype": lambda: {1: kc.bfloat16()},
        "head_dim": lambda: {1: torch.zeros(kc.shape[0], 16, 2, 64, dtype=f16, device=kc.device)},
        "blocks": lambda: {2: vc[:-1]},
        "head_dim_max": lambda: _dims(args, 600, 16),
        "block_size_16": lambda: _dims(args, 32, 8),
        "block_size_d": lambda: _dims(args, 288, 144),
        "block_size_256": lambda: _dims(args, 256, 192),
        "block_size_product": lambda: _dims(args, 64, 512),
        "scale": lambda: {5: float("inf")},
        "table_dtype": lambda: {6: table.long()},
        "table_rows": lambda: {6: table[:2]},
        "lens_dtype": lambda: {7: lens.long()},
        "out_shape": lambda: {8: out[:, :, :16]},
        "out_dtype": lambda: {8: out.bfloat16()},
        "out_contiguous": lambda: {8: torch.empty(3, 32, 4, dtype=f16, device=out.device).transpose(1, 2)},
        "negative_length": lambda: {7: torch.tensor([20, -1, 0], dtype=torch.int32)},
        "capacity": lambda: {7: torch.tensor([20, 49, 0], dtype=torch.int32)},
        "interior_zero": lambda: {7: torch.tensor([0, 33, 0], dtype=torch.int32)},
        "no_row": lambda: {0: q[:1], 8: out[:1]},
        "kernel_head_dim": lambda: _dims(args, 576, 16),
        "kernel_block_size": lambda: _dims(args, 16, 1024),
    }[change]()
    for i, t in edits.items():
        args[i] = t
    return args


@pytest.mark.parametrize("change, error, fragment", [
    ("num_heads", ValueError, "num_heads=0"),
    ("num_kv_heads", ValueError, "num_kv_heads=-1"),
    ("divisible", ValueError, "must be divisible by it"),
    ("heads_axis", ValueError, "must equal the query's head axis"),
    ("query_dim", ValueError, "query="),
    ("cache_dim", ValueError, "key_cache="),
    ("cache_dtype", TypeError, "key_cache="),
    ("head_dim", ValueError, "caches are ND"),
    ("blocks", ValueError, "num_blocks, block_size"),
    ("head_dim_max", ValueError, "must be in [1, 576]"),
    ("block_size_16", ValueError, "positive multiple of 16"),
    ("block_size_d", ValueError, "must be <= 128 with head dims"),
    ("block_size_256", ValueError, "multiple of 128 with D = 256"),
    ("block_size_product", ValueError, "D x block_size must be <= 16384"),
    ("scale", ValueError, "scale_value=inf"),
    ("table_dtype", TypeError, "block_table="),
    ("table_rows", ValueError, "a row per request"),
    ("lens_dtype", TypeError, "1-D int32"),
    ("out_shape", ValueError, "out="),
    ("out_dtype", TypeError, "out="),
    ("out_contiguous", ValueError, "contiguous"),
    ("negative_length", ValueError, "lengths must be in [0, 48]"),
    ("capacity", ValueError, "lengths must be in [0, 48]"),
    ("interior_zero", ValueError, "empty requests must trail"),
    ("no_row", ValueError, "no query row"),
    ("kernel_head_dim", NotImplementedError, "head dim 576"),
    ("kernel_block_size", NotImplementedError, "block_size 1024"),
])
def test_rejected(device, change, error, fragment):
    args = _bad(change, device)
    with pytest.raises(error) as info:
        nk._npu_paged_attention(*args)
    assert fragment in str(info.value)
