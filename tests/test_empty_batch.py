"""A call without batches (B = 0, or T = 0 tokens) returns empty outputs of the reference's shapes, on a
new signature and on a cached one."""

import pytest
import torch

import npu_kernels as nk
from npu_kernels import reference

N, D = 4, 32


def _shapes(result) -> list:
    return [tuple(t.shape) for t in (result if isinstance(result, (tuple, list)) else [result])]


def _empty(*shape, device):
    return torch.zeros(*shape, dtype=torch.float16, device=device)


CASES = {
    "prompt": (lambda d: (_empty(0, N, 16, D, device=d),) * 3, "npu_prompt_flash_attention",
               dict(num_heads=N, input_layout="BNSD")),
    "incre": (lambda d: (_empty(0, N, 1, D, device=d), _empty(0, N, 16, D, device=d), _empty(0, N, 16, D, device=d)),
              "npu_incre_flash_attention", dict(num_heads=N, input_layout="BNSD")),
    "fused prefill": (lambda d: (_empty(0, N, 16, D, device=d),) * 3, "npu_fused_infer_attention_score",
                      dict(num_heads=N, input_layout="BNSD", softmax_lse_flag=True)),
    "fused decode": (lambda d: (_empty(0, N, 1, D, device=d), _empty(0, N, 16, D, device=d),
                                _empty(0, N, 16, D, device=d)),
                     "npu_fused_infer_attention_score", dict(num_heads=N, input_layout="BNSD", softmax_lse_flag=True)),
    "fused TND": (lambda d: (_empty(0, N, D, device=d),) * 3, "npu_fused_infer_attention_score",
                  dict(num_heads=N, input_layout="TND", actual_seq_lengths=[0], actual_seq_lengths_kv=[0])),
}


@pytest.mark.parametrize("name", CASES)
def test_no_batch_gives_empty_outputs(name, device):
    make, op, kwargs = CASES[name]
    inputs = make(device)
    want = _shapes(getattr(reference, op)(*(t.cpu() for t in inputs), **kwargs))
    for _ in range(2):                                    # new signature, then the cached plan
        assert _shapes(getattr(nk, op)(*inputs, **kwargs)) == want


@pytest.mark.parametrize("s1", [1, 16])
def test_no_batch_out_with_max_workspace(s1, device):
    """``.out`` of a call without batches takes the workspace ``_get_max_workspace`` gives (whole 4-byte
    words even when it holds nothing) and the outputs ``_infer_output`` gives."""
    q, kv = _empty(0, N, s1, D, device=device), _empty(0, N, 16, D, device=device)
    kw = dict(num_heads=N, input_layout="BNSD", softmax_lse_flag=True)
    ws = nk._npu_fused_infer_attention_score_get_max_workspace(q, kv, kv, **kw)
    assert ws.numel() * ws.element_size() % 4 == 0
    out, lse = nk._npu_fused_infer_attention_score_infer_output(q, kv, **kw)
    for _ in range(2):
        got = nk.npu_fused_infer_attention_score.out(q, kv, kv, workspace=ws, out=[out, lse], **kw)
        assert got[0] is out and got[1] is lse
