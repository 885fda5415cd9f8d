"""npu_incre_flash_attention: kernel against the golden reference over the whole argument space, the
static plan, big paged pools, edge cases and validation."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import example, given

import npu_kernels as nk
from npu_kernels.layouts import from_bnsd
from npu_kernels.masks import LSE_DECODE_EMPTY
from npu_kernels.ops import incre
from npu_kernels.reference import incre as reference_incre

from .conftest import assert_close, tolerance
from .incre_cases import Case, cases, make_inputs

pytestmark = pytest.mark.kernels     # the Triton kernels against the reference (the interpreter on the CPU)


def check(case: Case, device) -> torch.Tensor:
    """Kernel against reference. P is rounded to the input dtype before P·V (as on the NPU), so a one-ulp
    fp32 difference in a score or an exp may flip that rounding: the output moves by up to eps·max|V|.
    The absolute tolerance is therefore relative to the largest value |V| (at least 1). An int8 output
    must be the quantisation of some float output within that tolerance of the reference's."""
    q, k, v, kw = make_inputs(case, device)
    out = nk.npu_incre_flash_attention(q, k, v, **kw)
    ref = nk.reference.npu_incre_flash_attention(q, k, v, **kw)
    assert out.shape == q.shape and out.dtype == ref.dtype
    call = incre.validate(q, k, v, **kw)
    values = reference_incre.key_values(call)[1]
    v_max = max(1.0, float(values.float().nan_to_num(0.0).abs().max())) if values.numel() else 1.0
    atol, rtol = tolerance(case.dtype)
    if out.dtype == torch.int8:
        x, _ = reference_incre.decode_attention(call)                       # (B, N, 1, D) float32
        slack = atol * v_max + rtol * x.abs()
        bounds = [from_bnsd(reference_incre.quantise_output(call, x + d), case.layout).int() for d in (-slack, slack)]
        low, high = torch.minimum(*bounds), torch.maximum(*bounds)
        assert ((out.int() >= low) & (out.int() <= high)).all(), "int8 output outside the float tolerance"
        assert (out.int() - ref.int()).abs().max() <= 1
    else:
        assert not torch.isnan(out).any(), "NaN in the output"
        torch.testing.assert_close(out.float(), ref.float(), atol=atol * v_max, rtol=rtol)
    return out


@given(case=cases())
@example(case=Case(dtype=torch.bfloat16, layout="BSH", B=2, kv_heads=2, group=2, S2=64, D=32, kvlens=(64, 1)))
# a flipped bf16 rounding of P, amplified by cancellation between two values near +-2.8 (tolerance ~ max|V|)
@example(case=Case(dtype=torch.bfloat16, layout="BSH", B=2, group=2, S2=64, D=32, kvlens=(2,), mask="2d",
                   mask_pad=5, mask_p=0.0, paged="3d", block_size=64, int8="tensor", aq_offset=True, seed=3782))
@example(case=Case(kv_heads=1, group=8, S2=50, D=48, kvlens=(0,)))                          # MQA, empty batch
@example(case=Case(B=2, S2=40, kvlens=(10, 30), kv_pad=15, mask="3d", pse=True))            # start < 0 for batch 1
@example(case=Case(layout="BNSD", B=2, kv_heads=2, S2=64, paged="4d", kvlens=(64, 17), int8="channel",
                   aq_offset=True, block_size=32))
@example(case=Case(dtype=torch.bfloat16, layout="BSH", S2=64, paged="3d", block_size=32, int8="tensor",
                   kvlens=(33,), mask="2d", mask_p=1.0))
@example(case=Case(layout="BSND", B=2, kv_heads=2, S2=30, kvlens=(30, 0), quant="channel", quant_offset=True))
@example(case=Case(dtype=torch.bfloat16, S2=40, kvlens=(0, 33), B=2, kv_pad=3, quant="tensor", quant_offset=True,
                   quant_bf16=True, int8="channel"))
def test_matches_reference(case, device):
    check(case, device)


def test_reference_matches_sdpa(device):
    """The reference against torch SDPA on keys gathered from pages and anti-quantised by hand:
    (x + offset) * scale, mask polarity inverted (Ascend non-zero = masked out, SDPA True = attend)."""
    case = Case(B=2, kv_heads=2, group=3, S2=64, D=32, layout="BNSD", paged="4d", block_size=32, kvlens=(64, 40),
                int8="channel", aq_offset=True, mask="2d", mask_p=0.3, dtype=torch.float16, seed=5)
    q, k, v, kw = make_inputs(case, device)
    ref = nk.reference.npu_incre_flash_attention(q, k, v, compute_dtype=torch.float64, **kw)
    table, scale, offset = kw["block_table"].long(), kw["antiquant_scale"].double(), kw["antiquant_offset"].double()
    for b, n in enumerate(kw["actual_seq_lengths"]):
        def tokens(cache, i):                                  # (KV_N, n, D), anti-quantised in float64
            x = cache[table[b]].permute(1, 0, 2, 3).reshape(case.kv_heads, -1, case.D)[:, :n].double()
            return ((x + offset[i]) * scale[i]).repeat_interleave(case.group, 0)
        attend = kw["atten_mask"][b, :n] == 0
        want = torch.nn.functional.scaled_dot_product_attention(
            q[b].double(), tokens(k, 0), tokens(v, 1), attn_mask=attend[None, None, :], scale=kw["scale_value"])
        assert_close(ref[b], want, case.dtype)


def test_static_plan_ignores_lengths(device):
    """Splits, grids and every static field come from capacities, not from actual lengths."""
    case = Case(B=2, kv_heads=2, group=2, S2=64, kvlens=(64, 3))
    q, k, v, kw = make_inputs(case, device)
    plans = []
    for lens in ([64, 3], [1, 0]):
        call = incre.validate(q, k, v, **dict(kw, actual_seq_lengths=lens))
        plans.append(incre.plan(call, incre.output(call)))
    assert plans[0].static == plans[1].static
    assert not torch.equal(plans[0].params, plans[1].params)
    assert plans[0].static.splits > 1                     # the combine step is exercised


def test_kernel_constants_ignore_cache_length(device):
    """A key tensor that grows by one token per step keeps every constexpr: no recompilation."""
    metas = set()
    for s2 in (40, 41, 64):
        q, k, v, kw = make_inputs(Case(B=2, kv_heads=2, group=2, S2=s2), device)
        call = incre.validate(q, k, v, **kw)
        static = incre.plan(call, incre.output(call)).static
        metas.add((static.split_meta, static.combine_meta))
    assert len(metas) == 1


def test_paged_plan_ignores_lengths(device):
    case = Case(B=2, S2=64, paged="3d", kvlens=(64, 5))
    q, k, v, kw = make_inputs(case, device)
    statics = {incre.plan(c, incre.output(c)).static
               for c in (incre.validate(q, k, v, **dict(kw, actual_seq_lengths=lens)) for lens in ([64, 5], [2, 40]))}
    assert len(statics) == 1


@pytest.mark.parametrize("case,updates", [
    (Case(B=2, kv_heads=2, group=2, S2=64, layout="BSH", paged="3d", block_size=32, kvlens=(64, 64), int8="channel"),
     [dict(actual_seq_lengths=[5, 64]), dict(actual_seq_lengths=[0, 33])]),
    (Case(B=2, kv_heads=1, group=4, S2=40, kvlens=(40, 40), kv_pad=0, mask="3d", pse=True, quant="tensor"),
     [dict(actual_seq_lengths=[7, 30], kv_padding_size=3), dict(actual_seq_lengths=[40, 1], kv_padding_size=2)]),
], ids=["paged_int8", "padded_mask_pse_quant"])
def test_graph_capture_then_update_lengths(case, updates, device):
    """Captured once in a task group; each task update rewrites lengths (and the padding tensor) and the
    replay matches the reference of the new arguments."""
    import runtime

    q, k, v, kw = make_inputs(case, device)
    g = runtime.NPUGraph()
    with runtime.graph(g):
        s = runtime.current_stream()
        runtime.graph_task_group_begin(s)
        out = nk.npu_incre_flash_attention(q, k, v, **kw)
        handle = runtime.graph_task_group_end(s)
    u = runtime.Stream()
    for change in updates:
        new = dict(kw, **change)
        if "kv_padding_size" in change:
            new["kv_padding_size"] = torch.tensor([change["kv_padding_size"]], device=device)
        with runtime.stream(u):
            runtime.graph_task_update_begin(u, handle)
            nk.npu_incre_flash_attention(q, k, v, **new)
            runtime.graph_task_update_end(u)
        g.replay()
        runtime.synchronize()
        ref = nk.reference.npu_incre_flash_attention(q, k, v, **new)
        if out.dtype == torch.int8:
            assert (out.int() - ref.int()).abs().max() <= 1
        else:
            assert_close(out, ref, case.dtype)


def test_empty_and_padded_batches_are_zero(device):
    case = Case(B=2, S2=32, kvlens=(0, 20), kv_pad=5)
    out = check(case, device)
    assert (out[0] == 0).all() and (out[1] != 0).any()
    case = Case(B=2, S2=32, kvlens=(10, 30), kv_pad=5)                     # batch 1: start = -3
    out = check(case, device)
    assert (out[1] == 0).all() and (out[0] != 0).any()


def test_lse_and_caller_workspace(device):
    """The combine step's log-sum-exp (the fused operator's decode path) matches the reference, with the
    decode sentinel for a batch without keys; a caller-provided workspace full of NaN is used as given."""
    case = Case(B=3, kv_heads=1, group=2, S2=50, kvlens=(50, 0, 17), mask="2d", pse=True, seed=4)
    q, k, v, kw = make_inputs(case, device)
    fkw = dict(num_heads=kw["num_heads"], num_key_value_heads=kw["num_key_value_heads"], scale=kw["scale_value"],
               input_layout=kw["input_layout"], actual_seq_lengths_kv=kw["actual_seq_lengths"],
               atten_mask=kw["atten_mask"], pse_shift=kw["pse_shift"], softmax_lse_flag=True)
    ws = nk._npu_fused_infer_attention_score_get_max_workspace(q, k, v, **fkw).fill_(float("nan"))
    out, lse = nk._npu_fused_infer_attention_score_infer_output(q, v, input_layout=case.layout,
                                                                 num_heads=case.N, softmax_lse_flag=True)
    lse.fill_(float("nan"))
    nk.npu_fused_infer_attention_score.out(q, k, v, workspace=ws, out=[out, lse], **fkw)
    ref_out, ref_lse = reference_incre.decode_attention(incre.validate(q, k, v, **kw))
    assert_close(out, from_bnsd(ref_out, case.layout), case.dtype)
    assert lse[1].eq(LSE_DECODE_EMPTY).all()
    torch.testing.assert_close(lse[:, :, 0, 0], ref_lse[:, :, 0], atol=1e-5, rtol=1e-5)


def test_fully_masked_batch_averages_values(device):
    case = Case(S2=40, kvlens=(23,), mask="2d", mask_p=1.0)
    q, k, v, kw = make_inputs(case, device)
    out = nk.npu_incre_flash_attention(q, k, v, **kw)
    assert_close(out[0, 0, 0], v[0, 0, :23].float().mean(0), case.dtype)


def test_kv_padding_ignored_without_lengths(device):
    q, k, v, kw = make_inputs(Case(S2=20), device)
    base = nk.npu_incre_flash_attention(q, k, v, **kw)
    padded = nk.npu_incre_flash_attention(q, k, v, kv_padding_size=torch.tensor([7], device=device), **kw)
    torch.testing.assert_close(base, padded, atol=0, rtol=0)


def test_op_registration(device):
    q, k, v, kw = make_inputs(Case(B=2, kv_heads=2, group=2, S2=24, kvlens=(24, 9), mask="2d"), device)
    out = torch.ops.npu.npu_incre_flash_attention(q, k, v, **kw)
    assert_close(out, nk.reference.npu_incre_flash_attention(q, k, v, **kw), torch.float16)
    torch.library.opcheck(torch.ops.npu.npu_incre_flash_attention.default, (q, k, v), kw,
                          test_utils=("test_schema", "test_faketensor"))


def _free_bytes() -> int:
    """Free memory of the npu device (0 where it cannot be read)."""
    if nk.npu_device().type == "cuda":
        return torch.cuda.mem_get_info()[0]
    if not os.path.exists("/proc/meminfo"):
        return 0
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) * 1024


# A pool of 2**31 + 2**25 int8 elements: block ids near the end have element offsets past int32.
BIG_POOL = 2**31 + 2**25


@pytest.mark.skipif(_free_bytes() < 2 * BIG_POOL, reason="needs 2 x 2.1 GiB of free npu-device memory for two "
                                                        "int8 block pools of more than 2**31 elements")
def test_paged_pool_past_int32(device):
    """Block ids whose element offsets exceed 2**31 address the right blocks (int64 arithmetic)."""
    kvn, d, bs = 1, 64, 32
    per_block = bs * kvn * d
    blocks = BIG_POOL // per_block
    g = torch.Generator().manual_seed(3)
    # untouched pages of an empty tensor are not resident: only the used blocks cost memory
    kc = torch.empty(blocks, bs, kvn * d, dtype=torch.int8, device=device)
    vc = torch.empty(blocks, bs, kvn * d, dtype=torch.int8, device=device)
    table = torch.tensor([[blocks - 1, 5, blocks - 7]], dtype=torch.int32)
    assert int(table.max()) * per_block > 2**31
    for blk in table[0].tolist():
        kc[blk] = torch.randint(-128, 128, (bs, kvn * d), generator=g, dtype=torch.int8).to(device)
        vc[blk] = torch.randint(-128, 128, (bs, kvn * d), generator=g, dtype=torch.int8).to(device)
    q = torch.randn(1, 1, 2 * d, generator=g).half().to(device)
    kw = dict(num_heads=2, num_key_value_heads=1, input_layout="BSH", scale_value=d ** -0.5,
              actual_seq_lengths=[3 * bs - 5], block_table=table.to(device), block_size=bs,
              antiquant_scale=torch.tensor([0.02, 0.03], dtype=torch.float16, device=device))
    out = nk.npu_incre_flash_attention(q, kc, vc, **kw)
    assert_close(out, nk.reference.npu_incre_flash_attention(q, kc, vc, **kw), torch.float16)


# ---------------------------------------------------------------------------------------------------------
# validation: every rule names its argument


def _base(device, **changes):
    q, k, v, kw = make_inputs(Case(B=2, kv_heads=2, group=2, S2=32, kvlens=(32, 8)), device)
    kw.update(changes)
    return q, k, v, kw


def _paged(device, **changes):
    q, k, v, kw = make_inputs(Case(B=2, S2=32, paged="3d", layout="BSH", kvlens=(32, 8)), device)
    kw.update(changes)
    return q, k, v, kw


BAD = [
    ("query_s", lambda d: (lambda q, k, v, kw: (torch.cat([q, q], 2), k, v, kw))(*_base(d)), ValueError, "seq length"),
    ("int8_query", lambda d: (lambda q, k, v, kw: (q.to(torch.int8), k, v, kw))(*_base(d)), TypeError, "query"),
    ("kv_dtype", lambda d: (lambda q, k, v, kw: (q, k.bfloat16(), v.bfloat16(), kw))(*_base(d)), TypeError, "key"),
    ("layout", lambda d: _base(d, input_layout="TND"), ValueError, "input_layout"),
    ("gqa_ratio", lambda d: _base(d, num_key_value_heads=3), ValueError, "num_key_value_heads"),
    ("dequant_scale1", lambda d: _base(d, dequant_scale1=torch.ones(1, device=d)), ValueError, "dequant_scale1"),
    ("quant_scale1", lambda d: _base(d, quant_scale1=torch.ones(1, device=d)), ValueError, "quant_scale1"),
    ("dequant_scale2", lambda d: _base(d, dequant_scale2=torch.ones(1, device=d)), ValueError, "dequant_scale2"),
    ("lengths_count", lambda d: _base(d, actual_seq_lengths=[]), ValueError, "actual_seq_lengths"),
    ("length_too_long", lambda d: _base(d, actual_seq_lengths=[33]), ValueError, "actual_seq_lengths"),
    ("mask_dtype", lambda d: _base(d, atten_mask=torch.zeros(2, 32, device=d)), TypeError, "atten_mask"),
    ("mask_shape", lambda d: _base(d, atten_mask=torch.zeros(2, 2, 32, dtype=torch.bool, device=d)), ValueError,
     "atten_mask"),
    ("mask_short", lambda d: _base(d, atten_mask=torch.zeros(2, 31, dtype=torch.bool, device=d)), ValueError,
     "atten_mask"),
    ("pse_dtype", lambda d: _base(d, pse_shift=torch.zeros(2, 4, 1, 32, device=d)), ValueError, "pse_shift"),
    ("pse_heads", lambda d: _base(d, pse_shift=torch.zeros(2, 2, 1, 32, dtype=torch.float16, device=d)),
     ValueError, "pse_shift"),
    ("pad_dtype", lambda d: _base(d, kv_padding_size=torch.tensor([1], dtype=torch.int32, device=d)), TypeError,
     "kv_padding_size"),
    ("antiquant_float_kv", lambda d: _base(d, antiquant_scale=torch.ones(2, dtype=torch.float16, device=d)),
     ValueError, "antiquant_scale"),
    ("inner_precise", lambda d: _base(d, inner_precise=2), ValueError, "inner_precise"),
    ("scale_inf", lambda d: _base(d, scale_value=float("inf")), ValueError, "scale_value"),
    ("paged_no_lengths", lambda d: _paged(d, actual_seq_lengths=None), ValueError, "actual_seq_lengths"),
    ("block_size_multiple", lambda d: _paged(d, block_size=8), ValueError, "block_size"),
    ("block_size_zero", lambda d: _paged(d, block_size=0), ValueError, "block_size"),
    ("block_size_large", lambda d: _paged(d, block_size=1024), ValueError, "block_size"),
    ("table_dtype", lambda d: (lambda q, k, v, kw: (q, k, v, dict(kw, block_table=kw["block_table"].long())))(
        *_paged(d)), TypeError, "block_table"),
    ("table_batch", lambda d: (lambda q, k, v, kw: (q, k, v, dict(kw, block_table=kw["block_table"][:1])))(
        *_paged(d)), ValueError, "block_table"),
    ("paged_length", lambda d: _paged(d, actual_seq_lengths=[33, 1]), ValueError, "actual_seq_lengths"),
    ("paged_pad", lambda d: _paged(d, kv_padding_size=torch.tensor([1], device=d)), ValueError, "kv_padding_size"),
    ("paged_4d_layout", lambda d: (lambda q, k, v, kw: (q, k.reshape(k.shape[0], 16, 1, 16).transpose(1, 2),
                                                        v.reshape(v.shape[0], 16, 1, 16).transpose(1, 2), kw))(
        *_paged(d)), ValueError, "BNSD"),
]


@pytest.mark.parametrize("name,make,exc,match", BAD, ids=[b[0] for b in BAD])
def test_invalid_arguments(name, make, exc, match, device):
    q, k, v, kw = make(device)
    with pytest.raises(exc, match=match):
        nk.npu_incre_flash_attention(q, k, v, **kw)


def _int8(device, **changes):
    q, k, v, kw = make_inputs(Case(layout="BSND", kv_heads=2, S2=16, int8="channel", aq_offset=True), device)
    kw.update(changes)
    return q, k, v, kw


def test_int8_output_of_empty_batch_is_zero(device):
    """A batch without keys writes 0, not the quantised offset."""
    out = check(Case(B=2, S2=20, kvlens=(0, 20), quant="tensor", quant_offset=True), device)
    assert out.dtype == torch.int8 and (out[0] == 0).all()


@pytest.mark.parametrize("changes,match", [
    ({"quant_offset2": torch.zeros(1)}, "quant_offset2"),                                   # without a scale
    ({"quant_scale2": torch.ones(1, dtype=torch.float16)}, "quant_scale2"),                  # dtype
    ({"quant_scale2": torch.ones(3)}, "quant_scale2"),                                       # not N*D
    ({"quant_scale2": torch.ones(1), "quant_offset2": torch.zeros(2)}, "quant_offset2"),     # shape
], ids=["offset_alone", "scale_dtype", "scale_shape", "offset_shape"])
def test_invalid_output_quant(changes, match, device):
    q, k, v, kw = _base(device)
    kw.update({n: t.to(device) for n, t in changes.items()})
    with pytest.raises((ValueError, TypeError), match=match):
        nk.npu_incre_flash_attention(q, k, v, **kw)


def test_channel_quant_with_padding_is_rejected(device):
    q, k, v, kw = _base(device, kv_padding_size=torch.tensor([2], device=device),
                        quant_scale2=torch.ones(4, 16, device=device))
    with pytest.raises(ValueError, match="kv_padding_size"):
        nk.npu_incre_flash_attention(q, k, v, **kw)


@pytest.mark.parametrize("changes,match", [
    ({"antiquant_scale": None}, "antiquant_scale"),
    ({"antiquant_scale": torch.ones(2, 2, 1, 16, dtype=torch.float16)}, "antiquant_scale"),   # BNSD shape for BSND
    ({"antiquant_scale": torch.ones(2, 2, 16, dtype=torch.bfloat16)}, "antiquant_scale"),     # dtype
    ({"antiquant_offset": torch.ones(2, dtype=torch.float16)}, "antiquant_offset"),           # not scale's shape
], ids=["missing", "shape", "dtype", "offset_shape"])
def test_invalid_antiquant(changes, match, device):
    q, k, v, kw = _int8(device)
    kw.update({n: (t.to(device) if isinstance(t, torch.Tensor) else t) for n, t in changes.items()})
    with pytest.raises((ValueError, TypeError), match=match):
        nk.npu_incre_flash_attention(q, k, v, **kw)
