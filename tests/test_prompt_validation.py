"""Every rejected argument of npu_prompt_flash_attention names the argument and the rule."""

from __future__ import annotations

import pytest
import torch

import npu_kernels as nk


def qkv(device, b=1, n=2, s1=8, s2=8, d=16, dtype=torch.float16, kv_n=None, dv=None):
    kv_n = kv_n or n
    return (torch.randn(b, n, s1, d, dtype=dtype, device=device),
            torch.randn(b, kv_n, s2, d, dtype=dtype, device=device),
            torch.randn(b, kv_n, s2, dv or d, dtype=dtype, device=device))


BNSD = dict(num_heads=2, input_layout="BNSD")
TRIU = torch.ones(2048, 2048, dtype=torch.bool).triu(1)


@pytest.mark.parametrize("kwargs, exc, fragment", [
    (dict(input_layout="SBH"), ValueError, "input_layout='SBH'"),
    (dict(num_heads=0), ValueError, "num_heads=0"),
    (dict(num_heads=3), ValueError, "num_heads=3"),
    (dict(num_key_value_heads=3), ValueError, "num_key_value_heads=3"),
    (dict(sparse_mode=5), ValueError, "modes 5-8"),
    (dict(sparse_mode=9), ValueError, "sparse_mode=9"),
    (dict(sparse_mode=2), ValueError, "requires the compressed 2048x2048"),
    (dict(sparse_mode=3, atten_mask=torch.ones(8, 8, dtype=torch.bool)), ValueError, "(2048, 2048)"),
    (dict(sparse_mode=1), ValueError, "sparse_mode=1 (allMask) requires atten_mask"),
    (dict(atten_mask=torch.zeros(8, 8)), TypeError, "atten_mask"),
    (dict(atten_mask=torch.zeros(7, 8, dtype=torch.bool)), ValueError, "at least (8, 8)"),
    (dict(atten_mask=torch.zeros(3, 8, 8, dtype=torch.bool)), ValueError, "batch axis"),
    (dict(atten_mask=torch.zeros(1, 2, 8, 8, dtype=torch.bool)), ValueError, "(B or 1, 1, S1, S2)"),
    (dict(pse_shift=torch.zeros(1, 2, 8, 8, dtype=torch.bfloat16)), ValueError, "pse_shift"),
    (dict(pse_shift=torch.zeros(1, 3, 8, 8, dtype=torch.float16)), ValueError, "N=2"),
    (dict(pse_shift=torch.zeros(1, 2, 8, 7, dtype=torch.float16)), ValueError, "at least (8, 8)"),
    (dict(actual_seq_lengths=[9]), ValueError, "[0, 8]"),
    (dict(actual_seq_lengths=[1, 2], actual_seq_lengths_kv=[-1]), ValueError, "actual_seq_lengths_kv"),
    (dict(actual_seq_lengths=[]), ValueError, "needs 1 or at least B=1"),
    (dict(atten_mask=torch.zeros(8, 8, dtype=torch.bool), pre_tokens=-1, next_tokens=-1), ValueError,
     "cannot both be negative"),
    (dict(atten_mask=torch.zeros(8, 8, dtype=torch.bool), pre_tokens=1, next_tokens=-3), ValueError,
     "must be <= pre_tokens"),
    (dict(atten_mask=torch.zeros(8, 8, dtype=torch.bool), pre_tokens=20, next_tokens=-8), ValueError,
     "|next_tokens| < S1"),
    (dict(atten_mask=torch.zeros(8, 8, dtype=torch.bool), pre_tokens=-8, next_tokens=20), ValueError,
     "|pre_tokens| < the kv length"),
    (dict(sparse_mode=4, atten_mask=TRIU, pre_tokens=-8, next_tokens=20), ValueError, "query length"),
    (dict(sparse_mode=4, atten_mask=TRIU, pre_tokens=20, next_tokens=-8), ValueError, "sparse_mode=4"),
    (dict(scale_value=float("inf")), ValueError, "scale_value"),
    (dict(pre_tokens=1.5), TypeError, "pre_tokens=1.5: must be an int"),
    (dict(deq_scale1=torch.ones(1)), ValueError, "deq_scale1"),
    (dict(actual_seq_lengths=torch.tensor([[8]])), ValueError, "1-D with an integer dtype"),
    (dict(actual_seq_lengths_kv=torch.tensor([8.0])), ValueError, "actual_seq_lengths_kv"),
    (dict(actual_seq_lengths=torch.tensor([9])), ValueError, "[0, 8]"),
])
def test_rejected(device, kwargs, exc, fragment):
    q, k, v = qkv(device)
    kw = {**BNSD, **kwargs}
    for name in ("atten_mask", "pse_shift", "deq_scale1", "quant_scale2"):
        if name in kw:
            kw[name] = kw[name].to(device)
    with pytest.raises(exc) as info:
        nk.npu_prompt_flash_attention(q, k, v, **kw)
    assert fragment in str(info.value)


@pytest.mark.parametrize("case, fragment", [
    ("dtype_mix", "share one dtype"),
    ("float32", "dtype must be one of"),
    ("ndim", "needs 4 dimensions"),
    ("batch", "batch"),
    ("seq", "value seq length"),
    ("head_dim", "head dim"),
    ("d_unaligned", "must be a multiple of 16"),
    ("d_unaligned_small", "must be a multiple of 16"),
    ("d_too_big", "[1, 512]"),
    ("bsh_hidden", "divisible by num_heads"),
    ("not_tensor", "for argument 'query'"),
])
def test_rejected_tensors(device, case, fragment):
    q, k, v = qkv(device)
    kw = dict(BNSD)
    if case == "dtype_mix":
        k = k.bfloat16()
    elif case == "float32":
        q, k, v = q.float(), k.float(), v.float()
    elif case == "ndim":
        q = q[0]
    elif case == "batch":
        k, v = torch.cat([k, k]), torch.cat([v, v])
    elif case == "seq":
        v = v[:, :, :5]
    elif case == "head_dim":
        k = torch.randn(1, 2, 8, 32, dtype=torch.float16, device=device)
    elif case == "d_unaligned_small":                      # the NPU's prefill path aligns D to 16 (fp16)
        q, k, v = qkv(device, d=40)
    elif case == "d_unaligned":
        q, k, v = qkv(device, d=136)
    elif case == "d_too_big":
        q, k, v = qkv(device, d=528)
    elif case == "bsh_hidden":
        q, k, v = (t.reshape(1, -1, 16) for t in (q, k, v))
        kw = dict(num_heads=3, input_layout="BSH")
    elif case == "not_tensor":
        q = q.tolist()
    with pytest.raises((ValueError, TypeError, RuntimeError)) as info:
        nk.npu_prompt_flash_attention(q, k, v, **kw)
    assert fragment in str(info.value)


def test_length_tensors_read_as_lists(device):
    """A 1-D integer tensor for a length list is read as the list, as torch_npu's dispatcher reads it."""
    q, k, v = qkv(device, b=2)
    lists = nk.npu_prompt_flash_attention(q, k, v, **BNSD, actual_seq_lengths=[3, 8], actual_seq_lengths_kv=[5, 2])
    tensors = nk.npu_prompt_flash_attention(q, k, v, **BNSD, actual_seq_lengths=torch.tensor([3, 8]),
                                            actual_seq_lengths_kv=torch.tensor([5, 2], dtype=torch.int32))
    assert torch.equal(lists, tensors)


def test_error_names_argument_and_value(device):
    q, k, v = qkv(device)
    with pytest.raises(ValueError, match=r"^num_key_value_heads=3: num_heads \(2\) must be divisible by it$"):
        nk.npu_prompt_flash_attention(q, k, v, num_heads=2, input_layout="BNSD", num_key_value_heads=3)


def test_limits_accepted(device):
    """Boundary values that are valid: D=512, 16-aligned D, 64 query heads per kv head."""
    for d in (512, 112):
        q, k, v = qkv(device, s1=2, s2=3, d=d)
        assert nk.npu_prompt_flash_attention(q, k, v, **BNSD).shape == (1, 2, 2, d)
    q, k, v = qkv(device, n=64, kv_n=1, s1=2, s2=2)
    out = nk.npu_prompt_flash_attention(q, k, v, num_heads=64, num_key_value_heads=1, input_layout="BNSD")
    assert out.shape == (1, 64, 2, 16) and not torch.isnan(out).any()
