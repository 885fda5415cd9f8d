"""torch.library registration: schema, fake implementation, torch.compile without graph breaks."""

from __future__ import annotations

import torch

import npu_kernels as nk
from npu_kernels.masks import INT_MAX


def sample(device):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 9, 4 * 16, generator=g).half().to(device)
    kv = torch.randn(2, 11, 2 * 16, generator=g).half().to(device)
    mask = (torch.rand(2, 1, 9, 11, generator=g) > 0.8).to(device)
    return (q, kv, kv), dict(num_heads=4, num_key_value_heads=2, input_layout="BSH", scale_value=0.25,
                             atten_mask=mask, next_tokens=INT_MAX, actual_seq_lengths=[9, 4])


def test_opcheck(device):
    args, kwargs = sample(device)
    torch.library.opcheck(torch.ops.npu.npu_prompt_flash_attention.default, args, kwargs)


def test_schema_defaults_match_torch_npu():
    schema = torch.ops.npu.npu_prompt_flash_attention.default._schema
    defaults = {a.name: a.default_value for a in schema.arguments if a.kwarg_only}
    assert defaults["num_heads"] == 1 and defaults["scale_value"] == 1.0
    assert defaults["pre_tokens"] == 2147483647 and defaults["next_tokens"] == 0
    assert defaults["input_layout"] == "BSH" and defaults["sparse_mode"] == 0
    assert [a.name for a in schema.arguments[:3]] == ["query", "key", "value"]


def test_compile_fullgraph(device):
    args, kwargs = sample(device)

    def fn(q, k, v):
        return nk.npu_prompt_flash_attention(q, k, v, **kwargs) * 2

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(*args), fn(*args))


def test_fake_output_shape(device):
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.empty(2, 4, 9, 32, dtype=torch.bfloat16, device=device)
        k = torch.empty(2, 4, 11, 32, dtype=torch.bfloat16, device=device)
        v = torch.empty(2, 4, 11, 64, dtype=torch.bfloat16, device=device)
        out = torch.ops.npu.npu_prompt_flash_attention(q, k, v, num_heads=4, input_layout="BNSD_BSND")
    assert out.shape == (2, 9, 4, 64) and out.dtype == torch.bfloat16
