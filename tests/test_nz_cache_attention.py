"""NZ paged caches (spec vllm-ascend-ops §5) read by the attention operators: FIA (decode and prefill
paths), IFA, FIA v2 and ``_npu_paged_attention``, on both execution paths, against a plain PyTorch
computation on the same tokens in ND; the Triton kernels (decode and prefill, fp16/bf16 and int8
anti-quantised, GQA, several block sizes, kv lengths off the block grid) against the reference on the
same data laid out ND and against the CPU execution path on the NZ caches; what is written by
``npu_scatter_pa_kv_cache`` (PA_NZ) is read back; the layout errors name it."""

from __future__ import annotations

from typing import Callable, Optional

import pytest
import runtime
import torch

import npu_kernels as nk
from npu_kernels import caches
from npu_kernels.masks import COMPRESSED_MASK
from npu_kernels.ops.paged_attention import nz_heads, nz_tiles

from .conftest import assert_close

TRIU = torch.ones(COMPRESSED_MASK, COMPRESSED_MASK, dtype=torch.bool).triu(1)


def nz5(nd: torch.Tensor) -> torch.Tensor:
    """(blocks, bs, KV_N, D) → NZ (blocks, KV_N, D/c0, bs, c0): element (blk, n, t, d) at [blk, n, d//c0, t, d%c0]."""
    c0 = 32 // nd.element_size()
    nb, bs, kv_n, d = nd.shape
    return nd.reshape(nb, bs, kv_n, d // c0, c0).permute(0, 2, 3, 1, 4).contiguous()


def nz4(nd: torch.Tensor) -> torch.Tensor:
    """(blocks, bs, KV_N, D) → NZ (blocks, KV_N*D/c0, bs, c0) (the 310P paged-attention cache)."""
    c0 = 32 // nd.element_size()
    nb, bs, kv_n, d = nd.shape
    return nd.reshape(nb, bs, kv_n * d // c0, c0).permute(0, 2, 1, 3).contiguous()


def plain(q, k_nd, v_nd, table, kv_lens, scale, causal=False, sink=None) -> list[torch.Tensor]:
    """Per batch b: the attention of its query rows q[b] (rows, N, D) over its first kv_lens[b] tokens of
    the ND caches (blocks, bs, KV_N, D), in float32; causal: bottom-right aligned; sink: a softmax logit
    per head without a value."""
    bs, kv_n = k_nd.shape[1], k_nd.shape[2]
    outs = []
    for b, length in enumerate(kv_lens):
        rows = q[b].float()
        ids = table[b, :-(-length // bs)].long()
        k, v = (t[ids].flatten(0, 1)[:length].float() for t in (k_nd, v_nd))     # (L, KV_N, D)
        group = rows.shape[1] // kv_n
        s = scale * torch.einsum("ind,jnd->nij", rows, k.repeat_interleave(group, 1))
        if causal:
            i = torch.arange(rows.shape[0])[:, None]
            s = s.masked_fill(torch.arange(length)[None, :] > i + length - rows.shape[0], float("-inf"))
        if sink is not None:
            s = torch.cat([s, sink.float()[:, None, None].expand(*s.shape[:2], 1)], -1)
        p = torch.softmax(s, -1)[..., :length]
        outs.append(torch.einsum("nij,jnd->ind", p, v.repeat_interleave(group, 1)))
    return outs


def caches_and_table(g, dtype, blocks=8, bs=16, kv_n=2, d=64, batches=2, per_seq=3):
    k, v = (torch.randn(blocks, bs, kv_n, d, generator=g).to(dtype) for _ in range(2))
    table = torch.randperm(blocks, generator=g)[:batches * per_seq].reshape(batches, per_seq).int()
    return k, v, table


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_and_incre_decode(path, device, dtype):
    g = torch.Generator().manual_seed(0)
    k, v, table = caches_and_table(g, dtype)
    q = torch.randn(2, 4, 1, 64, generator=g).to(dtype)
    lens = [37, 9]
    want = torch.stack(plain(q.transpose(1, 2), k, v, table, lens, 0.125))                # (B, 1, N, D)
    kw = dict(num_heads=4, num_key_value_heads=2, input_layout="BNSD", block_table=table.to(device), block_size=16)
    out, _ = nk.npu_fused_infer_attention_score(q.to(device), nz5(k).to(device), nz5(v).to(device), scale=0.125,
                                               actual_seq_lengths_kv=lens, **kw)
    assert_close(out.cpu(), want.transpose(1, 2), dtype)
    out = nk.npu_incre_flash_attention(q.to(device), nz5(k).to(device), nz5(v).to(device), scale_value=0.125,
                                       actual_seq_lengths=lens, **kw)
    assert_close(out.cpu(), want.transpose(1, 2), dtype)


def test_int8_c8_decode(path, device):
    """vLLM-Ascend's C8 decode: int8 NZ caches (c0 = 32), per-channel bf16 scales (KV_N, 1, D), BNSD."""
    g = torch.Generator().manual_seed(1)
    k8, v8 = (torch.randint(-127, 128, (8, 32, 2, 64), generator=g, dtype=torch.int8) for _ in range(2))
    ks, vs = (torch.rand(2, 1, 64, generator=g).add(0.5).mul(0.02).bfloat16() for _ in range(2))
    table = torch.tensor([[3, 1], [0, 6]], dtype=torch.int32)
    q = torch.randn(2, 8, 1, 64, generator=g).bfloat16()
    lens = [50, 17]
    k_nd, v_nd = (x.to(torch.bfloat16) * s.transpose(0, 1).to(torch.bfloat16) for x, s in ((k8, ks), (v8, vs)))
    want = torch.stack(plain(q.transpose(1, 2), k_nd, v_nd, table, lens, 0.125))
    out, _ = nk.npu_fused_infer_attention_score(
        q.to(device), nz5(k8).to(device), nz5(v8).to(device), num_heads=8, num_key_value_heads=2,
        input_layout="BNSD", scale=0.125, block_table=table.to(device), block_size=32, actual_seq_lengths_kv=lens,
        key_antiquant_scale=ks.to(device), value_antiquant_scale=vs.to(device), inner_precise=1)
    assert_close(out.cpu(), want.transpose(1, 2), torch.bfloat16)


def test_fused_prefill_token_major(path, device):
    """TND queries, NZ caches, causal (sparse 3): the prefill path."""
    g = torch.Generator().manual_seed(2)
    k, v, table = caches_and_table(g, torch.float16)
    q = torch.randn(7, 4, 64, generator=g).half()
    out, _ = nk.npu_fused_infer_attention_score(
        q.to(device), nz5(k).to(device), nz5(v).to(device), num_heads=4, num_key_value_heads=2, input_layout="TND",
        scale=0.125, sparse_mode=3, atten_mask=TRIU.to(device), block_table=table.to(device), block_size=16,
        actual_seq_lengths=[3, 7], actual_seq_lengths_kv=[20, 41])
    want = torch.cat(plain([q[:3], q[3:]], k, v, table, [20, 41], 0.125, causal=True))
    assert_close(out.cpu(), want, torch.float16)


def test_v2_with_sink(path, device):
    """FIA v2 as vLLM-Ascend's sink path with KV-NZ caches: TND, causal, paged NZ, learnable sink."""
    g = torch.Generator().manual_seed(3)
    k, v, table = caches_and_table(g, torch.bfloat16)
    q = torch.randn(5, 4, 64, generator=g).bfloat16()
    sink = torch.randn(4, generator=g).bfloat16()
    out, _ = nk.npu_fused_infer_attention_score_v2(
        q.to(device), nz5(k).to(device), nz5(v).to(device), num_query_heads=4, num_key_value_heads=2,
        input_layout="TND", softmax_scale=0.125, sparse_mode=3, atten_mask=TRIU.to(device),
        block_table=table.to(device), block_size=16, actual_seq_qlen=[2, 5], actual_seq_kvlen=[2, 30],
        learnable_sink=sink.to(device))
    want = torch.cat(plain([q[:2], q[2:]], k, v, table, [2, 30], 0.125, causal=True, sink=sink))
    assert_close(out.cpu(), want, torch.bfloat16)


def test_paged_attention_nz4(path, device):
    g = torch.Generator().manual_seed(4)
    k, v, table = caches_and_table(g, torch.float16, d=32)
    q = torch.randn(3, 4, 32, generator=g).half()
    out = torch.full((3, 4, 32), 7.0, dtype=torch.float16)
    lens = torch.tensor([25, 40], dtype=torch.int32)
    out = out.to(device)
    nk._npu_paged_attention(q.to(device), nz4(k).to(device), nz4(v).to(device), 2, 4, 0.2, table.to(device), lens,
                            out)
    want = torch.stack(plain(q[:2, None], k, v, table, [25, 40], 0.2))[:, 0]
    assert_close(out[:2].cpu(), want, torch.float16)
    assert torch.equal(out[2].cpu(), torch.full((4, 32), 7.0, dtype=torch.float16))   # no request: untouched


def test_scatter_then_read(path, device):
    """Tokens written by npu_scatter_pa_kv_cache (default cache_mode PA_NZ, 5-D) are the ones FIA reads."""
    g = torch.Generator().manual_seed(5)
    kc, vc = (torch.zeros(4, 2, 64 // 16, 16, 16, dtype=torch.float16) for _ in range(2))   # NZ5, bs 16
    key, value = (torch.randn(24, 2, 64, generator=g).half() for _ in range(2))
    slots = torch.tensor([16 * 2 + i for i in range(16)] + [16 * 0 + i for i in range(8)], dtype=torch.int32)
    kc, vc = kc.to(device), vc.to(device)
    nk.npu_scatter_pa_kv_cache(key.to(device), value.to(device), kc, vc, slots.to(device))
    q = torch.randn(1, 4, 1, 64, generator=g).half()
    table = torch.tensor([[2, 0]], dtype=torch.int32)
    out, _ = nk.npu_fused_infer_attention_score(q.to(device), kc, vc, num_heads=4, num_key_value_heads=2,
                                               input_layout="BNSD", scale=0.125, block_table=table.to(device),
                                               block_size=16, actual_seq_lengths_kv=[24])
    k_nd = torch.zeros(4, 16, 2, 64, dtype=torch.float16)
    v_nd = torch.zeros_like(k_nd)
    k_nd[2], k_nd[0, :8], v_nd[2], v_nd[0, :8] = key[:16], key[16:], value[:16], value[16:]
    want = plain(q.transpose(1, 2), k_nd, v_nd, table, [24], 0.125)[0]
    assert_close(out.cpu()[0].transpose(0, 1), want, torch.float16)


# The Triton kernels on NZ caches: against the reference on the same tokens in ND, and the CPU path.

def nz_and_nd(g, dtype, blocks: int, bs: int, kv_n: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random cache as NZ (blocks, KV_N, D/c0, bs, c0) and as the BnBsH (blocks, bs, KV_N*D) view of
    the same tokens in ND (int8: integers in [-127, 127])."""
    if dtype == torch.int8:
        nd = torch.randint(-127, 128, (blocks, bs, kv_n, d), generator=g, dtype=torch.int8)
    else:
        nd = torch.randn(blocks, bs, kv_n, d, generator=g).to(dtype)
    return nz5(nd), nd.flatten(2)


def on_device(device, *tensors, **kw) -> tuple:
    """``tensors`` and the tensor values of ``kw`` moved to ``device``."""
    moved = {k: t.to(device) if isinstance(t, torch.Tensor) else t for k, t in kw.items()}
    return (*(t.to(device) for t in tensors), moved)


def kernels_reference_native(monkeypatch, device, call: Callable, nz: tuple, nd: tuple):
    """``call(ops, key, value)`` with the NZ caches on the Triton kernels (the current path), with the ND
    caches on ``nk.reference``, and with the NZ caches on the CPU execution path (None on a GPU); the
    caches are moved to ``device``."""
    nz, nd = (tuple(t.to(device) for t in pair) for pair in (nz, nd))
    got = call(nk, *nz)
    want = call(nk.reference, *nd)
    native = None
    if device.type == "cpu":
        monkeypatch.setenv("NPUK_CPU_KERNELS", "native")
        caches.release()
        native = call(nk, *nz)
        monkeypatch.setenv("NPUK_CPU_KERNELS", "triton")
        caches.release()
    return got, want, native


def check_against_both(got: torch.Tensor, want: torch.Tensor, native: Optional[torch.Tensor],
                       dtype: torch.dtype) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype
    assert_close(got.cpu(), want.cpu(), dtype)
    if native is not None:
        assert_close(got.cpu(), native, dtype)


DECODE_CASES = [   # dtype, block size, N, KV_N, D, kv lengths (none a multiple of the block size)
    (torch.float16, 16, 4, 2, 64, [37, 9]),
    (torch.bfloat16, 32, 8, 2, 32, [70, 33]),
    (torch.float16, 64, 4, 1, 48, [65, 130]),          # 3 tiles in a 64-channel block (D padded)
    (torch.bfloat16, 128, 2, 2, 16, [129, 250]),       # one tile: the tile stride is never taken
]


@pytest.mark.kernels
@pytest.mark.parametrize("op", ["incre", "fused"])
@pytest.mark.parametrize("dtype, bs, n, kv_n, d, lens", DECODE_CASES,
                         ids=[f"{str(c[0])[6:]}-bs{c[1]}-n{c[2]}-kv{c[3]}-d{c[4]}" for c in DECODE_CASES])
def test_decode_kernels(monkeypatch, device, op, dtype, bs, n, kv_n, d, lens):
    """IFA and FIA (Q_S = 1: the split-KV decode kernels), BNSD query, NZ key and value caches."""
    g = torch.Generator().manual_seed(bs + d)
    per_seq = -(-max(lens) // bs)
    (kz, kd), (vz, vd) = (nz_and_nd(g, dtype, 2 * per_seq + 1, bs, kv_n, d) for _ in range(2))
    table = torch.randperm(2 * per_seq + 1, generator=g)[:2 * per_seq].reshape(2, per_seq).int()
    q, kw = on_device(device, torch.randn(2, n, 1, d, generator=g).to(dtype), num_heads=n, num_key_value_heads=kv_n,
                      input_layout="BNSD", block_table=table, block_size=bs)
    if op == "incre":
        def call(ops, k, v):
            return ops.npu_incre_flash_attention(q, k, v, scale_value=d ** -0.5, actual_seq_lengths=lens, **kw)
    else:
        def call(ops, k, v):
            return ops.npu_fused_infer_attention_score(q, k, v, scale=d ** -0.5, actual_seq_lengths_kv=lens,
                                                       softmax_lse_flag=True, **kw)
    got, want, native = kernels_reference_native(monkeypatch, device, call, (kz, vz), (kd, vd))
    if op == "fused":
        torch.testing.assert_close(got[1].cpu(), want[1].cpu(), atol=1e-4, rtol=1e-4)
        got, want, native = got[0], want[0], None if native is None else native[0]
    check_against_both(got, want, native, dtype)


@pytest.mark.kernels
@pytest.mark.parametrize("bs", [32, 64])
def test_int8_decode_kernels(monkeypatch, device, bs):
    """IFA with int8 NZ caches (c0 = 32, two tiles of D = 64) and per-channel scale and offset (the
    decode kernels fold them around the dots); GQA 8/2."""
    g = torch.Generator().manual_seed(bs)
    lens = [bs + 7, 2 * bs + 1]
    (kz, kd), (vz, vd) = (nz_and_nd(g, torch.int8, 7, bs, 2, 64) for _ in range(2))
    table = torch.tensor([[4, 0, 6], [1, 5, 2]], dtype=torch.int32)
    q, kw = on_device(device, torch.randn(2, 8, 1, 64, generator=g).half(), num_heads=8, num_key_value_heads=2,
                      input_layout="BNSD", block_table=table, block_size=bs, actual_seq_lengths=lens,
                      scale_value=0.125, antiquant_scale=(torch.rand(2, 2, 1, 64, generator=g) * 0.02 + 0.01).half(),
                      antiquant_offset=torch.randint(-3, 4, (2, 2, 1, 64), generator=g).half())

    def call(ops, k, v):
        return ops.npu_incre_flash_attention(q, k, v, **kw)

    got, want, native = kernels_reference_native(monkeypatch, device, call, (kz, vz), (kd, vd))
    check_against_both(got, want, native, torch.float16)


@pytest.mark.kernels
def test_c8_decode_matches_reference(monkeypatch, device):
    """FIA with vLLM-Ascend's C8 arguments (separated bf16 per-channel key/value scales, int8 NZ caches)."""
    g = torch.Generator().manual_seed(11)
    (kz, kd), (vz, vd) = (nz_and_nd(g, torch.int8, 6, 32, 2, 64) for _ in range(2))
    q, kw = on_device(device, torch.randn(2, 8, 1, 64, generator=g).bfloat16(), num_heads=8, num_key_value_heads=2,
                      input_layout="BNSD", scale=0.125, block_table=torch.tensor([[5, 2, 0], [1, 3, 4]]).int(),
                      block_size=32, actual_seq_lengths_kv=[75, 40], inner_precise=1,
                      key_antiquant_scale=torch.rand(2, 1, 64, generator=g).add(0.5).mul(0.02).bfloat16(),
                      value_antiquant_scale=torch.rand(2, 1, 64, generator=g).add(0.5).mul(0.02).bfloat16())

    def call(ops, k, v):
        return ops.npu_fused_infer_attention_score(q, k, v, **kw)[0]

    got, want, native = kernels_reference_native(monkeypatch, device, call, (kz, vz), (kd, vd))
    check_against_both(got, want, native, torch.bfloat16)


PREFILL_CASES = {   # FIA on the prefill kernel: NZ key and value caches (and key rope)
    "tnd-fp16-bs16-causal": dict(dtype=torch.float16, bs=16, n=4, kv_n=2, d=64, layout="TND",
                                 qlens=[3, 7], kvlens=[20, 41], sparse_mode=3),
    "tnd-bf16-bs32-lse": dict(dtype=torch.bfloat16, bs=32, n=4, kv_n=1, d=32, layout="TND",
                              qlens=[5, 6], kvlens=[33, 70], sparse_mode=3, lse=True),
    "bnsd-bf16-bs128": dict(dtype=torch.bfloat16, bs=128, n=4, kv_n=2, d=32, layout="BNSD", s1=3,
                            kvlens=[150, 131]),
    "bnsd-fp16-bs128-int8": dict(dtype=torch.float16, bs=128, n=4, kv_n=2, d=64, layout="BNSD", s1=2,
                                 kvlens=[129, 200], int8=True),
    "bnsd-bf16-bs16-rope": dict(dtype=torch.bfloat16, bs=16, n=4, kv_n=1, d=128, layout="BNSD", s1=1,
                                kvlens=[21, 40], rope=True),
}


def prefill_inputs(g, c: dict, device):
    """(query, NZ caches, ND caches, keyword arguments) of a ``PREFILL_CASES`` case."""
    kvlens, kv_n, d, bs = c["kvlens"], c["kv_n"], c["d"], c["bs"]
    per_seq = -(-max(kvlens) // bs)
    blocks = 2 * per_seq + 1
    kv_dtype = torch.int8 if c.get("int8") else c["dtype"]
    (kz, kd), (vz, vd) = (nz_and_nd(g, kv_dtype, blocks, bs, kv_n, d) for _ in range(2))
    table = torch.randperm(blocks, generator=g)[:2 * per_seq].reshape(2, per_seq).int()
    kw = dict(num_heads=c["n"], num_key_value_heads=kv_n, input_layout=c["layout"], scale=d ** -0.5, block_table=table,
              block_size=bs, actual_seq_lengths_kv=kvlens, softmax_lse_flag=c.get("lse", False))
    if c["layout"] == "TND":
        q = torch.randn(sum(c["qlens"]), c["n"], d, generator=g)
        kw.update(actual_seq_lengths=[c["qlens"][0], sum(c["qlens"])])
    else:
        q = torch.randn(2, c["n"], c["s1"], d, generator=g)
    if c.get("sparse_mode"):
        kw.update(sparse_mode=c["sparse_mode"], atten_mask=TRIU)
    if c.get("int8"):
        kw.update(antiquant_scale=(torch.rand(2, kv_n, 1, d, generator=g) * 0.02 + 0.01).to(c["dtype"]),
                  antiquant_offset=torch.randint(-3, 4, (2, kv_n, 1, d), generator=g).to(c["dtype"]))
    if c.get("rope"):
        rz, rd = nz_and_nd(g, c["dtype"], blocks, bs, kv_n, 64)
        kw.update(query_rope=torch.randn(*q.shape[:-1], 64, generator=g).to(c["dtype"]), key_rope=(rz, rd))
    return q.to(c["dtype"]), (kz, vz), (kd, vd), kw


@pytest.mark.kernels
@pytest.mark.parametrize("name", list(PREFILL_CASES))
def test_prefill_kernel(monkeypatch, device, name):
    """FIA on the prefill kernel: token-major paged calls (pages of 16 and 32 keys: smaller than or equal
    to the kernel's key block), BNSD with Q_S > 1 (pages of 128), int8 anti-quantised (c0 = 32), and an
    NZ key-rope cache (its own tiles), GQA; lse where flagged."""
    c = PREFILL_CASES[name]
    q, nz, nd, kw = prefill_inputs(torch.Generator().manual_seed(len(name)), c, device)
    rope = kw.pop("key_rope", None)
    q, kw = on_device(device, q, **kw)

    def call(ops, k, v):
        extra = {} if rope is None else {"key_rope": rope[0 if k.dim() == 5 else 1].to(device)}
        return ops.npu_fused_infer_attention_score(q, k, v, **kw, **extra)

    got, want, native = kernels_reference_native(monkeypatch, device, call, nz, nd)
    if c.get("lse"):
        torch.testing.assert_close(got[1].cpu(), want[1].cpu(), atol=1e-4, rtol=1e-4)
    check_against_both(got[0], want[0], None if native is None else native[0], c["dtype"])


@pytest.mark.kernels
@pytest.mark.parametrize("dv", [32, 16], ids=["decode-kernels", "prefill-kernel-dv16"])
def test_paged_attention_kernels(monkeypatch, device, dv):
    """``_npu_paged_attention`` with NZ4 caches (nb, KV_N*D/c0, bs, c0): the decode kernels (Dv = D), or
    the prefill kernel with the decode semantics (Dv != D); the row without a request keeps its value."""
    g = torch.Generator().manual_seed(dv)
    k_nd = torch.randn(7, 32, 2, 32, generator=g).half()
    v_nd = torch.randn(7, 32, 2, dv, generator=g).half()
    q, table = torch.randn(3, 8, 32, generator=g).half().to(device), torch.tensor([[6, 2], [0, 4]]).int().to(device)
    lens = torch.tensor([45, 17], dtype=torch.int32)

    def call(ops, k, v):
        out = torch.full((3, 8, dv), 7.0, dtype=torch.float16, device=device)
        ops._npu_paged_attention(q, k, v, 2, 8, 0.2, table, lens, out)
        return out

    got, want, native = kernels_reference_native(monkeypatch, device, call, (nz4(k_nd), nz4(v_nd)), (k_nd, v_nd))
    check_against_both(got, want, native, torch.float16)
    assert (got[2] == 7.0).all()


@pytest.mark.kernels
def test_plan_reuse_and_task_update(device):
    """A second call with the same signature runs the cached plan on the NZ views; a captured call's
    task update to new lengths is read by the replay (both checked against the reference in ND)."""
    g = torch.Generator().manual_seed(12)
    (kz, kd), (vz, vd) = (nz_and_nd(g, torch.float16, 9, 16, 2, 64) for _ in range(2))
    table = torch.randperm(9, generator=g)[:8].view(2, 4).int()
    kz, vz, kd, vd, table = (t.to(device) for t in (kz, vz, kd, vd, table))
    q = torch.randn(2, 4, 1, 64, generator=g).half().to(device)
    kw = dict(num_heads=4, num_key_value_heads=2, input_layout="BNSD", scale=0.125, block_table=table, block_size=16)
    for lens in ([64, 3], [17, 50]):
        out, _ = nk.npu_fused_infer_attention_score(q, kz, vz, actual_seq_lengths_kv=lens, **kw)
        want, _ = nk.reference.npu_fused_infer_attention_score(q, kd, vd, actual_seq_lengths_kv=lens, **kw)
        assert_close(out, want, torch.float16)
    graph = runtime.NPUGraph()
    with runtime.graph(graph):
        s = runtime.current_stream()
        runtime.graph_task_group_begin(s)
        out, _ = nk.npu_fused_infer_attention_score(q, kz, vz, actual_seq_lengths_kv=[5, 5], **kw)
        handle = runtime.graph_task_group_end(s)
    u = runtime.Stream()
    for lens in ([33, 64], [1, 20]):
        with runtime.stream(u):
            runtime.graph_task_update_begin(u, handle)
            nk.npu_fused_infer_attention_score(q, kz, vz, actual_seq_lengths_kv=lens, **kw)
            runtime.graph_task_update_end(u)
        graph.replay()
        runtime.synchronize()
        want, _ = nk.reference.npu_fused_infer_attention_score(q, kd, vd, actual_seq_lengths_kv=lens, **kw)
        assert_close(out, want, torch.float16)


def test_view_addresses_tiles():
    """The (blocks, KV_N, bs, D) view of an NZ cache: channel d within its tile, tiles bs·c0 apart."""
    nd = torch.arange(2 * 16 * 2 * 64, dtype=torch.float32).reshape(2, 16, 2, 64).half()
    view = nz_heads("key", nz5(nd), 2)
    assert view.shape == (2, 2, 16, 64) and nz_tiles(view) == (16, 16 * 16)
    c0, tile = nz_tiles(view)
    flat = nz5(nd).view(-1)
    for blk, n, t, d in ((0, 0, 0, 0), (1, 1, 15, 63), (1, 0, 3, 17), (0, 1, 9, 40)):
        at = blk * view.stride(0) + n * view.stride(1) + t * view.stride(2) + (d // c0) * tile + d % c0
        assert flat[at] == nd[blk, t, n, d]
    assert nz_tiles(nd.permute(0, 2, 1, 3)) is None


@pytest.mark.parametrize("change, fragment", [
    ("c0", "has c0 = 16"),
    ("heads", "num_key_value_heads=2"),
    ("strided", "contiguous"),
    ("overlap", "tokens of a paged cache overlap"),
])
def test_layout_errors(device, change, fragment):
    g = torch.Generator().manual_seed(7)
    k, v, table = caches_and_table(g, torch.float16)
    cache = {"c0": nz5(k).reshape(8, 2, 2, 16, 32), "heads": nz5(k).reshape(8, 1, 8, 16, 16),
             "strided": torch.cat([nz5(k), nz5(k)], 4)[..., :16],
             "overlap": k.as_strided((8, 2, 16, 64), (2048, 1024, 16, 1))}[change].to(device)
    q = torch.randn(2, 4, 1, 64, generator=g).half().to(device)
    kw = dict(num_heads=4, num_key_value_heads=2, input_layout="BNSD", block_table=table.to(device), block_size=16)
    with pytest.raises(ValueError, match=fragment):
        nk.npu_incre_flash_attention(q, cache, cache, actual_seq_lengths=[5, 6], **kw)
    with pytest.raises(ValueError, match=fragment):
        nk.npu_fused_infer_attention_score(q, cache, cache, actual_seq_lengths_kv=[5, 6], **kw)


def test_block_size_error(device):
    g = torch.Generator().manual_seed(8)
    k, v, table = caches_and_table(g, torch.float16)
    q = torch.randn(2, 4, 1, 64, generator=g).half().to(device)
    with pytest.raises(ValueError, match=r"NZ paged cache is \(blocks, KV_N=2, D/c0, block_size=32"):
        nk.npu_incre_flash_attention(q, nz5(k).to(device), nz5(v).to(device), num_heads=4, num_key_value_heads=2,
                                     input_layout="BNSD", block_table=table.to(device), block_size=32,
                                     actual_seq_lengths=[5, 6])
