"""NZ paged caches (spec vllm-ascend-ops §5) read by the attention operators: FIA (decode and prefill
paths), IFA, FIA v2 and ``_npu_paged_attention`` on the CPU execution path against a plain PyTorch
computation on the same tokens in ND; what is written by ``npu_scatter_pa_kv_cache`` (PA_NZ) is read back;
on the Triton path an NZ cache raises ``NotImplementedError``; the layout errors name it."""

from __future__ import annotations

import pytest
import torch

import npu_kernels as nk
from npu_kernels import caches
from npu_kernels.masks import COMPRESSED_MASK
from npu_kernels.ops.paged_attention import cpu_path_reads_nz, nz_heads, nz_tiles

from .conftest import assert_close

TRIU = torch.ones(COMPRESSED_MASK, COMPRESSED_MASK, dtype=torch.bool).triu(1)


@pytest.fixture
def native_path(monkeypatch, device, request):
    if device.type != "cpu":
        pytest.skip("the CPU execution path runs on the CPU only")
    if not cpu_path_reads_nz():
        request.applymarker(pytest.mark.xfail(
            raises=NotImplementedError, strict=True,
            reason="the CPU execution path does not gather NZ blocks yet (reference.keys must read paged caches "
                   "with reference.paged_attention.paged_rows): NZ caches raise NotImplementedError"))
    monkeypatch.setenv("NPUK_CPU_KERNELS", "native")
    caches.release()                       # plans made for the other path
    yield
    caches.release()


@pytest.fixture
def triton_path(monkeypatch):
    monkeypatch.setenv("NPUK_CPU_KERNELS", "triton")
    caches.release()
    yield
    caches.release()


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
def test_fused_and_incre_decode(native_path, device, dtype):
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


def test_int8_c8_decode(native_path, device):
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


def test_fused_prefill_token_major(native_path, device):
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


def test_v2_with_sink(native_path, device):
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


def test_paged_attention_nz4(native_path, device):
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


def test_scatter_then_read(native_path, device):
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


def test_triton_path_raises(triton_path, device):
    g = torch.Generator().manual_seed(6)
    k, v, table = caches_and_table(g, torch.float16)
    q = torch.randn(2, 4, 1, 64, generator=g).half().to(device)
    with pytest.raises(NotImplementedError, match=r"NZ paged cache .* on the Triton kernels"):
        nk.npu_fused_infer_attention_score(q, nz5(k).to(device), nz5(v).to(device), num_heads=4,
                                           num_key_value_heads=2, input_layout="BNSD", block_table=table.to(device),
                                           block_size=16, actual_seq_lengths_kv=[5, 6])
    with pytest.raises(NotImplementedError, match="NZ paged cache"):
        nk.npu_incre_flash_attention(q, nz5(k).to(device), nz5(v).to(device), num_heads=4, num_key_value_heads=2,
                                     input_layout="BNSD", block_table=table.to(device), block_size=16,
                                     actual_seq_lengths=[5, 6])
    out = torch.empty(2, 4, 64, dtype=torch.float16, device=device)
    with pytest.raises(NotImplementedError, match="NZ paged cache"):
        nk._npu_paged_attention(q[:, :, 0], nz4(k).to(device), nz4(v).to(device), 2, 4, 1.0, table.to(device),
                                torch.tensor([5, 6], dtype=torch.int32), out)


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


def test_block_size_error(native_path, device):
    g = torch.Generator().manual_seed(8)
    k, v, table = caches_and_table(g, torch.float16)
    q = torch.randn(2, 4, 1, 64, generator=g).half().to(device)
    with pytest.raises(ValueError, match=r"NZ paged cache is \(blocks, KV_N=2, D/c0, block_size=32"):
        nk.npu_incre_flash_attention(q, nz5(k).to(device), nz5(v).to(device), num_heads=4, num_key_value_heads=2,
                                     input_layout="BNSD", block_table=table.to(device), block_size=32,
                                     actual_seq_lengths=[5, 6])
