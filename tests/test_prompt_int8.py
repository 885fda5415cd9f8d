"""Int8 paths of npu_prompt_flash_attention (spec ops §2.2-§2.4): kernel against the reference, and
every rejected combination.

(a) int8 in → int8 out, (b) int8 in → float16 out, (c) float16/bfloat16 in → int8 out. int8 outputs may
differ from the reference by 1 on at most 0.1% of the elements, never by more; float16 outputs of (b)
are within the float16 tolerance. The reference follows the kernel's key blocks (``block_n``), since P
is rounded against the running maximum of each block.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

import npu_kernels as nk
from npu_kernels.layouts import as_bnsd
from npu_kernels.masks import INT_MAX
from npu_kernels.ops import prompt
from npu_kernels.reference.prompt import kernel_block_n

from .conftest import assert_close, compile_only
from .prompt_cases import Case, cases, make_inputs

pytestmark = pytest.mark.kernels     # the Triton kernels against the reference (the interpreter on the CPU)

QS1 = 127.0                 # P in (0, 1] onto [0, 127]
Q_RANGE = 30.0              # int8 q/k/v = round(30 * randn)


@dataclasses.dataclass(frozen=True)
class QCase:
    case: Case
    path: str = "a"                 # "a", "b" or "c"
    per_channel: bool = False
    offset: bool = False            # quant_offset2 (used only where every row is computed)
    deq_words: bool = False         # dequant scales as npu_trans_quant_param words
    scale2_bf16: bool = False       # bf16 quant_scale2/quant_offset2 (bf16 input only)


def to_int8(t: torch.Tensor) -> torch.Tensor:
    return (t.float() * Q_RANGE).round().clamp(-127, 127).to(torch.int8)


def make_quant_inputs(qc: QCase, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    case = qc.case
    q, k, v, kw = make_inputs(case, device)
    g = torch.Generator().manual_seed(case.seed + 1)
    if qc.path in ("a", "b"):
        q, k, v = to_int8(q), to_int8(k), to_int8(v)
        deq1 = torch.tensor([1 / Q_RANGE ** 2])
        deq2 = torch.tensor([1 / (Q_RANGE * QS1)])
        if qc.deq_words:
            deq1, deq2 = nk.npu_trans_quant_param(deq1), nk.npu_trans_quant_param(deq2)
        kw.update(deq_scale1=deq1.to(device), quant_scale1=torch.tensor([QS1], device=device),
                  deq_scale2=deq2.to(device))
        if "pse_shift" in kw:
            kw["pse_shift"] = kw["pse_shift"].half()
    if qc.path in ("a", "c"):
        n = case.N
        sdt = torch.bfloat16 if qc.scale2_bf16 else torch.float32
        if qc.per_channel:
            scale2 = (50 + 100 * torch.rand(n, case.Dv, generator=g)).to(sdt)
            offset2 = (6 * torch.rand(n, case.Dv, generator=g) - 3).round().to(sdt)
            shape = {"BSH": (n * case.Dv,), "BSND": (1, 1, n, case.Dv)}.get(case.layout, (1, n, 1, case.Dv))
            scale2, offset2 = scale2.reshape(shape), offset2.reshape(shape)
        else:
            scale2 = torch.tensor([100.0], dtype=sdt)
            offset2 = torch.tensor([-2.0], dtype=sdt)
        kw["quant_scale2"] = scale2.to(device)
        if qc.offset and prompt.rows_all_computed(*_rows(q, k, v, kw)):
            kw["quant_offset2"] = offset2.to(device)
    return q, k, v, kw


def _rows(q, k, v, kw):
    call = prompt.validate(q, k, v, **kw)
    return call.heads.S1, call.qlens, call.kvlens, call.bands


def assert_int8_close(out: torch.Tensor, ref: torch.Tensor) -> None:
    assert out.dtype == torch.int8 and ref.dtype == torch.int8
    diff = (out.int() - ref.int()).abs()
    assert diff.max().item() <= 1 if diff.numel() else True, f"int8 output off by {diff.max().item()}"
    off = int((diff == 1).sum())
    assert off <= 0.001 * diff.numel(), f"{off} of {diff.numel()} int8 elements off by 1"


def check(qc: QCase, device) -> torch.Tensor:
    q, k, v, kw = make_quant_inputs(qc, device)
    out = nk.npu_prompt_flash_attention(q, k, v, **kw)
    # the NPU's fp16 high-performance path (float16 in, int8 out) is followed step by step (spec ops §1.8)
    ref = nk.reference.npu_prompt_flash_attention(q, k, v, block_n=kernel_block_n(q, k, v, **kw), emulate_fp16=True,
                                                  **kw)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    if qc.path == "b":
        assert out.dtype == torch.float16
        assert_close(out, ref, torch.float16)
    else:
        assert_int8_close(out, ref)
    return out


@st.composite
def quant_cases(draw) -> QCase:
    case = draw(cases())
    path = draw(st.sampled_from("abc"))
    if path in "ab":
        # int8 inputs: head dims that are multiples of 32 (spec ops §2.2), pse in fp16
        d = draw(st.sampled_from((32, 64)))
        case = dataclasses.replace(case, dtype=torch.float16, D=d, Dv=draw(st.sampled_from((d, 32))))
    if case.sparse_mode % 10 == 4 and path in "ac":
        case = dataclasses.replace(case, pre=max(case.pre, 0), next=max(case.next, 0))
    size = 1 if path in "ab" else 2
    per_channel = path != "b" and case.Dv * size % 32 == 0 and draw(st.booleans())
    return QCase(case=case, path=path, per_channel=per_channel, offset=draw(st.booleans()),
                 deq_words=draw(st.booleans()), scale2_bf16=case.dtype == torch.bfloat16 and draw(st.booleans()))


@given(qc=quant_cases())
@example(qc=QCase(Case(S1=40, S2=70, D=32, Dv=32, next=INT_MAX), path="a", per_channel=True, offset=True))
@example(qc=QCase(Case(S1=40, S2=70, D=32, Dv=32, mask="3d", mask_p=1.0, pre=3, next=2), path="b"))
@example(qc=QCase(Case(dtype=torch.bfloat16, S1=33, S2=64, D=32, Dv=32, next=INT_MAX), path="c",
                  per_channel=True, offset=True, scale2_bf16=True))
def test_matches_reference(qc, device):
    check(qc, device)


@pytest.mark.parametrize("layout", ["BSH", "BSND", "BNSD", "BNSD_BSND"])
@pytest.mark.parametrize("path", "abc")
def test_paths_and_layouts(layout, path, device):
    case = Case(layout=layout, B=2, kv_heads=2, group=2, S1=37, S2=45, D=32, Dv=32, next=INT_MAX, sparse_mode=3,
                seed=5)
    check(QCase(case, path=path, per_channel=path != "b", offset=True), device)


def test_int8_pipeline_close_to_float_attention(device):
    """Path (b) approximates exact attention of the dequantised inputs to the precision of int8 P."""
    case = Case(B=1, kv_heads=2, S1=30, S2=50, D=32, Dv=32, next=INT_MAX, seed=2)
    q, k, v, kw = make_quant_inputs(QCase(case, path="b"), device)
    out = nk.npu_prompt_flash_attention(q, k, v, **kw)
    qf, kf, vf = (t.float() / Q_RANGE for t in (q, k, v))
    exact = torch.softmax(qf @ kf.transpose(-1, -2) * kw["scale_value"], -1) @ vf
    torch.testing.assert_close(out.float(), exact, atol=2e-2, rtol=0)


def test_float_and_word_scales_agree(device):
    """float32 and uint64/int64 dequant scales go through the same FP19 truncation."""
    case = Case(S1=20, S2=20, D=32, Dv=32, next=INT_MAX)
    q, k, v, kw = make_quant_inputs(QCase(case, path="a"), device)
    out = nk.npu_prompt_flash_attention(q, k, v, **kw)
    for conv in (nk.npu_trans_quant_param, lambda s: nk.npu_trans_quant_param(s).view(torch.uint64)):
        kw2 = dict(kw, deq_scale1=conv(kw["deq_scale1"].cpu()).to(device),
                   deq_scale2=conv(kw["deq_scale2"].cpu()).to(device))
        assert torch.equal(nk.npu_prompt_flash_attention(q, k, v, **kw2), out)


def test_uncomputed_rows_are_zero_not_offset(device):
    case = Case(B=2, S1=12, S2=12, D=32, Dv=32, qlens=(5, 0), kvlens=(12, 7), next=INT_MAX)
    q, k, v, kw = make_quant_inputs(QCase(case, path="c"), device)
    kw["quant_scale2"] = torch.tensor([100.0], device=device)
    out = nk.npu_prompt_flash_attention(q, k, v, **kw)
    assert out.dtype == torch.int8
    assert (out[0, :, 5:] == 0).all() and (out[1] == 0).all() and (out[0, :, :5] != 0).any()


def test_per_channel_scale_indexing(device):
    """Channel (n, d) of a BSH output uses element n * D + d of an (H,) scale."""
    case = Case(layout="BSH", kv_heads=2, S1=8, S2=8, D=32, Dv=32, next=INT_MAX)
    q, k, v, kw = make_quant_inputs(QCase(case, path="c"), device)
    unit = nk.npu_prompt_flash_attention(q, k, v, **dict(kw, quant_scale2=torch.ones(64, device=device)))
    scale = torch.ones(64, device=device)
    scale[32 + 5] = 0.0                               # head 1, channel 5
    out = nk.npu_prompt_flash_attention(q, k, v, **dict(kw, quant_scale2=scale))
    o4, u4 = as_bnsd(out, "BSH", 2), as_bnsd(unit, "BSH", 2)
    assert (o4[:, 1, :, 5] == 0).all()
    mask = torch.ones_like(o4, dtype=torch.bool)
    mask[:, 1, :, 5] = False
    assert torch.equal(o4[mask], u4[mask])


def _valid_int8(device, s=8, d=32):
    g = torch.Generator().manual_seed(0)
    t = [torch.randint(-127, 128, (1, 2, s, d), generator=g, dtype=torch.int8).to(device) for _ in range(3)]
    scales = dict(deq_scale1=torch.tensor([1e-3]), quant_scale1=torch.tensor([127.0]),
                  deq_scale2=torch.tensor([1e-4]))
    return t, scales


BAD = [
    # (path, changes to the valid arguments, exception, fragment)
    ("b", dict(deq_scale1=None), ValueError, "deq_scale1=None: int8 query/key/value require"),
    ("b", dict(quant_scale1=None), ValueError, "quant_scale1=None"),
    ("b", dict(deq_scale2=None), ValueError, "deq_scale2=None"),
    ("b", dict(deq_scale1=torch.tensor([1.0], dtype=torch.float16)), TypeError, "deq_scale1"),
    ("b", dict(deq_scale1=torch.ones(2)), ValueError, "one value"),
    ("b", dict(quant_scale1=torch.tensor([1], dtype=torch.int64)), TypeError, "quant_scale1"),
    ("b", dict(quant_scale1=torch.ones(1, 2)), ValueError, "quant_scale1"),
    ("b", dict(deq_scale2=torch.tensor([5], dtype=torch.int64)), TypeError, "must be float32 when deq_scale1 is"),
    ("b", dict(quant_offset2=torch.zeros(1)), ValueError, "quant_offset2=Tensor(shape=(1,), dtype=torch.float32): "
                                                         "requires quant_scale2"),
    ("b", dict(pse_shift=torch.zeros(1, 2, 8, 8, dtype=torch.bfloat16)), ValueError, "pse_shift"),
    ("a", dict(quant_scale2=torch.ones(1, dtype=torch.bfloat16)), TypeError, "quant_scale2"),
    ("a", dict(quant_scale2=torch.ones(3)), ValueError, "per-channel tensor of N*Dv"),
    ("a", dict(quant_scale2=torch.ones(32, 2)), ValueError, "per-channel tensor of N*Dv"),
    ("a", dict(quant_offset2=torch.zeros(64)), TypeError, "quant_scale2's dtype and shape"),
    ("a", dict(quant_offset2=torch.zeros(1, dtype=torch.float64)), TypeError, "quant_offset2"),
    ("a", dict(actual_seq_lengths=[5], quant_offset2=torch.zeros(1)), ValueError,
     "not allowed when some output rows are not computed"),
    ("a", dict(actual_seq_lengths_kv=[0], quant_offset2=torch.zeros(1)), ValueError, "quant_offset2"),
    ("a", dict(next_tokens=-2, pre_tokens=8, atten_mask=torch.zeros(8, 8, dtype=torch.bool),
               quant_offset2=torch.zeros(1)), ValueError, "quant_offset2"),
    ("a", dict(sparse_mode=4, atten_mask="triu", pre_tokens=-1, next_tokens=3), ValueError,
     "pre_tokens=-1: int8 output (quant_scale2) with sparse_mode=4"),
    ("a", dict(sparse_mode=4, atten_mask="triu", pre_tokens=3, next_tokens=-1), ValueError,
     "next_tokens=-1: int8 output"),
    ("c", dict(deq_scale1=torch.ones(1)), ValueError, "only int8 query/key/value take deq_scale1"),
    ("c", dict(quant_scale1=torch.ones(1)), ValueError, "quant_scale1"),
    ("c", dict(deq_scale2=torch.ones(1)), ValueError, "deq_scale2"),
    ("c", dict(quant_scale2=torch.ones(1, dtype=torch.bfloat16)), TypeError, "quant_scale2"),
    ("c", dict(quant_scale2=None, quant_offset2=torch.zeros(1)), ValueError, "requires quant_scale2"),
    ("c", dict(quant_scale2=torch.ones(32, 2).t()), ValueError, "contiguous per-channel"),
    ("c", dict(quant_scale2=torch.ones(2, 32), quant_offset2=torch.zeros(32, 2).t()), ValueError,
     "quant_offset2=Tensor(shape=(2, 32), dtype=torch.float32): must be contiguous"),
    ("c24", dict(quant_scale2=torch.ones(2, 24)), ValueError, "head dim 24 must be a multiple of 16"),
    ("i8k", {}, TypeError, "share one dtype"),
    ("int32", {}, TypeError, "dtype must be one of"),
]


@pytest.mark.parametrize("path, changes, exc, fragment", BAD, ids=[f"{b[0]}-{b[3][:30]}" for b in BAD])
def test_rejected(path, changes, exc, fragment, device):
    (q, k, v), scales = _valid_int8(device)
    kw = dict(num_heads=2, input_layout="BNSD", next_tokens=INT_MAX)
    if path in ("a", "b"):
        kw.update(scales)
    if path == "a":
        kw["quant_scale2"] = torch.ones(1)
    if path.startswith("c"):
        d = 24 if path == "c24" else 32
        q, k, v = (torch.randn(1, 2, 8, d, device=device, dtype=torch.float16) for _ in range(3))
        kw["quant_scale2"] = torch.ones(1)
    if path == "i8k":
        k = k.half()
    if path == "int32":
        q, k, v = q.int(), k.int(), v.int()
    kw.update(changes)
    if kw.get("atten_mask") == "triu":
        kw["atten_mask"] = torch.ones(2048, 2048, dtype=torch.bool).triu(1)
    kw = {n: (t.to(device) if isinstance(t, torch.Tensor) else t) for n, t in kw.items() if t is not None}
    with pytest.raises(exc) as info:
        nk.npu_prompt_flash_attention(q, k, v, **kw)
    assert fragment in str(info.value)


def test_offset_allowed_when_every_row_is_computed(device):
    (q, k, v), scales = _valid_int8(device)
    kw = dict(num_heads=2, input_layout="BNSD", next_tokens=INT_MAX, quant_scale2=torch.ones(1, device=device),
              quant_offset2=torch.full((1,), 3.0, device=device), **{n: s.to(device) for n, s in scales.items()})
    assert nk.npu_prompt_flash_attention(q, k, v, **kw).dtype == torch.int8
    # sparse 2 with S1 <= S2: row i sees keys 0..i, every row computed
    kw.update(sparse_mode=2, atten_mask=torch.ones(2048, 2048, dtype=torch.bool).triu(1).to(device))
    assert nk.npu_prompt_flash_attention(q, k, v, **kw).shape == (1, 2, 8, 32)


def test_fake_and_output_dtypes(device):
    """The registered op's fake implementation gives the same dtype: int8 with quant_scale2, else
    float16 for int8 inputs."""
    (q, k, v), scales = _valid_int8(device)
    kw = dict(num_heads=2, input_layout="BNSD", **{n: s.to(device) for n, s in scales.items()})
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode(allow_non_fake_inputs=True):
        fake = torch.ops.npu.npu_prompt_flash_attention(q, k, v, **kw)
    assert fake.dtype == torch.float16
    out = nk.npu_prompt_flash_attention(q, k, v, quant_scale2=torch.ones(1, device=device), **kw)
    assert out.dtype == torch.int8 and out.shape == (1, 2, 8, 32)


AOT_SCRIPT = """
import json, re
import triton
from triton.backends.compiler import GPUTarget
from npu_kernels import aot
from npu_kernels.kernels import prefill
name, args, cfg = aot.prefill_int8_variants()[0]
meta = dict(cfg.meta)
fn = prefill._prefill_kernel
src = triton.compiler.ASTSource(fn=fn, signature=aot.signature(fn, args, meta), constexprs=meta)
for arch in (80, 90):
    k = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": cfg.num_warps,
                       "num_stages": cfg.num_stages, "enable_fp_fusion": prefill.fp_fusion(meta)})
    ptx = k.asm["ptx"]
    print(json.dumps({"arch": arch, "int8_mma": len(re.findall(r"mma[.a-z0-9_]*s32\\.s8\\.s8", ptx)),
                      "fma_f16": len(re.findall(r"fma\\.rn\\.f16", ptx))}))
"""


def test_int8_tensor_cores_and_no_fused_fp16_steps():
    """Compiled for sm_80/sm_90 (no GPU needed): both matmuls of path (a) are int8 x int8 → int32 mma/wgmma,
    and no fp16 multiply-add is fused (each fp16 step of the pipeline is rounded)."""
    rows = compile_only("-c", AOT_SCRIPT)
    assert [r["arch"] for r in rows] == [80, 90]
    for r in rows:
        assert r["int8_mma"] >= 2 and r["fma_f16"] == 0, r
