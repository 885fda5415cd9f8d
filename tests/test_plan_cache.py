"""Plan once, launch many (DESIGN §3): a repeated call signature skips static validation and planning, every
validation error is still raised on a cached signature, and a call's per-call integers reach its kernels
through the parameter block only."""

from __future__ import annotations

import pytest
import torch

import npu_kernels as nk
from npu_kernels import caches, plans
from npu_kernels.masks import COMPRESSED_MASK
from npu_kernels.ops import fused, incre, prompt
from npu_kernels.ops.fused import call as fused_call

TRIU = torch.ones(COMPRESSED_MASK, COMPRESSED_MASK, dtype=torch.bool).triu(1)


def _qkv(device, b=2, n=2, s1=8, s2=8, d=16, dtype=torch.float16):
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(b, n, s, d, generator=g).to(dtype).to(device) for s in (s1, s2, s2))


@pytest.fixture
def counted(monkeypatch):
    """Counts the static validations of the three operators."""
    counts = {"prompt": 0, "incre": 0, "fused": 0}

    def counting(name, module, attr):
        real = getattr(module, attr)

        def wrapper(*args, **kwargs):
            counts[name] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(module, attr, wrapper)

    counting("prompt", prompt, "validate_static")
    counting("incre", incre, "validate_static")
    counting("fused", fused_call, "validate_static")
    caches.release()
    return counts


def test_repeated_signature_skips_static_validation(device, counted):
    q, k, v = _qkv(device)
    kw = dict(num_heads=2, input_layout="BNSD", scale_value=0.25)
    first = nk.npu_prompt_flash_attention(q, k, v, actual_seq_lengths=[8, 3], **kw)
    again = nk.npu_prompt_flash_attention(q, k, v, actual_seq_lengths=[5, 8], **kw)
    assert counted["prompt"] == 1
    nk.npu_prompt_flash_attention(q[:1], k[:1], v[:1], **kw)       # another signature: planned anew
    assert counted["prompt"] == 2
    qd = q[:, :, :1]
    nk.npu_incre_flash_attention(qd, k, v, actual_seq_lengths=[3, 8], **kw)
    nk.npu_incre_flash_attention(qd, k, v, actual_seq_lengths=[8, 1], **kw)
    assert counted["incre"] == 1
    fkw = dict(num_heads=2, input_layout="BNSD", scale=0.25, softmax_lse_flag=True)
    nk.npu_fused_infer_attention_score(q, k, v, actual_seq_lengths_kv=[8, 2], **fkw)
    out, lse = nk.npu_fused_infer_attention_score(q, k, v, actual_seq_lengths_kv=[4, 6], **fkw)
    assert counted["fused"] == 1
    for got, lens in ((first, [8, 3]), (again, [5, 8])):
        ref = nk.reference.npu_prompt_flash_attention(q, k, v, actual_seq_lengths=lens, **kw)
        torch.testing.assert_close(got.float(), ref.float(), atol=2e-3, rtol=2e-3)
    ref, ref_lse = nk.reference.npu_fused_infer_attention_score(q, k, v, actual_seq_lengths_kv=[4, 6], **fkw)
    torch.testing.assert_close(out.float(), ref.float(), atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(lse, ref_lse, atol=1e-4, rtol=1e-4)


def test_operands_are_views_of_the_arguments(device):
    """Every kernel operand is recorded as a view of a call argument, so a cached plan serves new tensors;
    a tensor made while validating is an extra that keeps the plan out of the cache."""
    x = torch.arange(24.0, device=device).reshape(2, 3, 4)
    other = torch.zeros(5, device=device)
    views, extras, ambiguous = plans.views_of([x[1], x.transpose(1, 2), x.view(torch.int32), x[1:].clone()],
                                              (other, x))
    assert extras and views[3].arg == 2 and not ambiguous
    assert plans.views_of([x[0]], (x, x[:1]))[2]                        # in two arguments' memory
    y = torch.arange(24.0, 48.0, device=device).reshape(2, 3, 4)
    assert torch.equal(views[0].tensor((other, y)), y[1]) and views[0].offset == 12 and not views[0].same
    assert torch.equal(views[1].tensor((other, y)), y.transpose(1, 2))
    assert views[1].same and views[1].operand((other, y)) is y          # a kernel needs only its address
    assert views[2].operand((other, y)).data_ptr() == y.data_ptr()


# Per family of validation errors: a valid call, then the same tensors with a bad per-call value, which must
# raise although the signature is cached (the values are validated on every call).
def _pfa(device):
    q, k, v = _qkv(device)
    return lambda **kw: nk.npu_prompt_flash_attention(q, k, v, num_heads=2, input_layout="BNSD", **kw)


def _pfa_band(device):
    q, k, v = _qkv(device)
    mask = torch.zeros(8, 8, dtype=torch.bool, device=device)
    return lambda **kw: nk.npu_prompt_flash_attention(q, k, v, num_heads=2, input_layout="BNSD", atten_mask=mask,
                                                      **{"pre_tokens": 4, "next_tokens": 0, **kw})


def _ifa(device):
    q, k, v = _qkv(device, s1=1)
    return lambda **kw: nk.npu_incre_flash_attention(q, k, v, num_heads=2, input_layout="BNSD", **kw)


def _fia_tnd(device):
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(8, 2, 16, generator=g).half().to(device) for _ in range(3))
    return lambda **kw: nk.npu_fused_infer_attention_score(
        q, k, v, num_heads=2, input_layout="TND", **{"actual_seq_lengths": [3, 8], "actual_seq_lengths_kv": [3, 8],
                                                     **kw})


def _fia_paged(device):
    g = torch.Generator().manual_seed(2)
    q = torch.randn(2, 1, 32, generator=g).half().to(device)
    cache = torch.randn(4, 16, 32, generator=g).half().to(device)
    table = torch.tensor([[0, 1], [2, 3]], dtype=torch.int32, device=device)
    return lambda **kw: nk.npu_fused_infer_attention_score(
        q, cache, cache, num_heads=2, input_layout="BSH", block_table=table, block_size=16,
        **{"actual_seq_lengths_kv": [20, 3], **kw})


def _fia_prefix(device):
    q, k, v = _qkv(device)
    kp, vp = _qkv(device, b=1, s2=4)[1:]
    return lambda **kw: nk.npu_fused_infer_attention_score(
        q, k, v, num_heads=2, input_layout="BNSD", key_shared_prefix=kp, value_shared_prefix=vp,
        **{"actual_shared_prefix_len": [2], **kw})


ERRORS = [
    (_pfa, dict(actual_seq_lengths=[9, 1]), ValueError, "actual_seq_lengths"),
    (_pfa, dict(actual_seq_lengths=[1, 2, 3][:1] * 0), ValueError, "needs 1 or at least B=2"),
    (_pfa, dict(actual_seq_lengths_kv=[-1, 2]), ValueError, "every length must be in [0, 8]"),
    (_pfa, dict(actual_seq_lengths=[1.5, 2]), ValueError, "must be a list of ints"),
    (_pfa, dict(pre_tokens=1.5), TypeError, "pre_tokens=1.5: must be an int"),
    (_pfa_band, dict(pre_tokens=-1, next_tokens=-1), ValueError, "cannot both be negative"),
    (_pfa_band, dict(pre_tokens=1, next_tokens=-3), ValueError, "must be <= pre_tokens"),
    (_pfa_band, dict(pre_tokens=-8, next_tokens=20), ValueError, "|pre_tokens| < the kv length"),
    (_ifa, dict(actual_seq_lengths=[9]), ValueError, "every length must be in [0, 8]"),
    (_fia_tnd, dict(actual_seq_lengths=[3, 9]), ValueError, "cumulative lengths must be in [0, 8]"),
    (_fia_tnd, dict(actual_seq_lengths_kv=[3]), ValueError, "needs B=2 values like actual_seq_lengths"),
    (_fia_paged, dict(actual_seq_lengths_kv=[33, 1]), ValueError, "every length must be in [0, 32]"),
    (_fia_prefix, dict(actual_shared_prefix_len=[5]), ValueError, "must be in [0, 4]"),
]


@pytest.mark.parametrize("make, bad, exc, fragment", ERRORS, ids=[f"{e[0].__name__}-{e[3]}" for e in ERRORS])
def test_errors_on_a_cached_signature(device, make, bad, exc, fragment):
    call = make(device)
    call()
    with pytest.raises(exc) as info:
        call(**bad)
    assert fragment in str(info.value)
    call()                       # and the signature still works


def test_static_errors_on_a_cached_signature(device):
    """Scalars that select kernels are part of the signature: a bad one is validated, not looked up."""
    call = _pfa(device)
    call(scale_value=0.5)
    for bad, fragment in ((dict(scale_value=float("inf")), "scale_value"), (dict(num_heads=3), "num_heads"),
                          (dict(sparse_mode=7), "sparse_mode"), (dict(num_heads=2.0), "num_heads")):
        with pytest.raises((ValueError, TypeError)) as info:
            call(**{"scale_value": 0.5, **bad})
        assert fragment in str(info.value)


def test_release_empties_the_plan_caches(device, counted):
    call = _ifa(device)
    call()
    call()
    caches.release()
    call()
    assert counted["incre"] == 2


def test_task_update_rewrites_only_the_parameter_block(device, counted, monkeypatch):
    """An update call of a cached signature neither validates nor plans statically: it packs its block."""
    import runtime

    previous = runtime.set_backend("cuda" if device.type == "cuda" else "host")
    q, k, v = _qkv(device, s1=1)
    kw = dict(num_heads=2, input_layout="BNSD", scale_value=0.25)
    try:
        g, s, u = runtime.NPUGraph(), runtime.Stream(), runtime.Stream()
        with runtime.graph(g, stream=s):
            runtime.graph_task_group_begin(s)
            out = nk.npu_incre_flash_attention(q, k, v, actual_seq_lengths=[8, 8], **kw)
            handle = runtime.graph_task_group_end(s)
        monkeypatch.setattr(incre, "plan", lambda *a, **k: pytest.fail("planned during a task update"))
        before = counted["incre"]
        with runtime.stream(u):
            runtime.graph_task_update_begin(u, handle)
            nk.npu_incre_flash_attention(q, k, v, actual_seq_lengths=[2, 5], **kw)
            runtime.graph_task_update_end(u)
        assert counted["incre"] == before
        g.replay()
        runtime.synchronize()
        ref = nk.reference.npu_incre_flash_attention(q, k, v, actual_seq_lengths=[2, 5], **kw)
        torch.testing.assert_close(out.float(), ref.float(), atol=2e-3, rtol=2e-3)
    finally:
        runtime.set_backend(previous)


def test_arguments_sharing_memory_get_their_own_plan(device):
    """A plan binds its tensors to the argument whose memory holds them: a call with ``value is key`` cannot
    tell key from value, so its plan serves it alone; a call with a distinct value reads its value."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, s, 16, generator=g).half().to(device) for s in (1, 64, 64))
    kw = dict(num_heads=2, input_layout="BNSD", scale=0.25, actual_seq_lengths_kv=[29, 3])
    for key, value in ((k, k), (k, v), (k, k), (k, v)):
        out = nk.npu_fused_infer_attention_score(q, key, value, **kw)[0]
        want = nk.reference.npu_fused_infer_attention_score(q, key, value, **kw)[0]
        torch.testing.assert_close(out.float(), want.float(), atol=2e-3, rtol=2e-3)

