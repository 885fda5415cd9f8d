"""Quantisation primitives bit for bit: FP19, the uint64 scale words, AscendQuant, the IFA per-channel
quantisation, and the Triton versions the kernels use against the torch versions."""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

import npu_kernels as nk
from npu_kernels import quant

F32 = torch.float32


def bits(x: float) -> int:
    return torch.tensor([x], dtype=F32).view(torch.int32).item() & 0xFFFFFFFF


def test_fp19_truncates_low_13_mantissa_bits():
    one_ulp10 = 1 + 2.0 ** -10          # kept: 10th mantissa bit
    below = 1 + 2.0 ** -11 + 2.0 ** -12  # dropped: bits 11, 12
    x = torch.tensor([1.0, one_ulp10, below, -below, 3.4e38, 0.0, 1 / 900], dtype=F32)
    y = quant.fp19(x)
    assert y[:6].tolist() == [1.0, one_ulp10, 1.0, -1.0, quant.fp19(torch.tensor([3.4e38]))[0].item(), 0.0]
    assert bits(y[6].item()) == bits(1 / 900) & quant.FP19_MASK
    assert (y.view(torch.int32) & 0x1FFF == 0).all()


def test_trans_quant_param_encoding():
    scale = torch.tensor([1.0, 1 / 900, -2.5], dtype=F32)
    w = nk.npu_trans_quant_param(scale)
    assert w.dtype == torch.int64 and w.shape == (3,)
    assert w[0].item() == 0x3F800000 | (1 << 46)
    assert w[1].item() == (bits(1 / 900) & 0xFFFFE000) | (1 << 46)
    assert w[2].item() & 0xFFFFFFFF == bits(-2.5)
    off = nk.npu_trans_quant_param(scale, torch.tensor([3.0, -1.0, 2.5]))
    assert [(v >> 37) & 0x1FF for v in off.tolist()] == [3, 0x1FF, 2]       # 9-bit signed, half to even
    sat = nk.npu_trans_quant_param(torch.ones(2), torch.tensor([1000.0, -1000.0]))
    assert [(v >> 37) & 0x1FF for v in sat.tolist()] == [255, 256]
    with pytest.raises(TypeError, match="scale"):
        nk.npu_trans_quant_param(torch.ones(1, dtype=torch.float16))


def test_deq_scale_float_and_words_agree():
    g = torch.Generator().manual_seed(0)
    s = torch.rand(64, generator=g) * 1e-2
    w = nk.npu_trans_quant_param(s)
    assert torch.equal(quant.deq_scale(s), quant.fp19(s))
    assert torch.equal(quant.deq_scale(w), quant.fp19(s))
    assert torch.equal(quant.deq_scale(w.view(torch.uint64)), quant.fp19(s))


def test_ascend_quant_rounding_and_saturation():
    one = torch.ones(1)
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, 127.5, 200.0, -128.5, -300.0, 65504.0])
    assert quant.ascend_quant(x, one).tolist() == [0, 2, 2, 0, -2, -2, 126, 127, 127, -128, -128, 127]
    # offset added in fp16 after the product
    assert quant.ascend_quant(torch.tensor([1.25]), torch.tensor([2.0]), torch.tensor([-0.5])).tolist() == [2]
    # overflow to fp16 inf saturates, never NaN
    assert quant.ascend_quant(torch.tensor([60000.0, -60000.0]), torch.tensor([4.0])).tolist() == [127, -128]


def test_ascend_quant_uses_fp16_arithmetic():
    """4.67578125 * fp16(13.37) = 62.502 in fp32 (→ 63), but fp16(62.502) = 62.5 → 62 (half to even)."""
    x, s = torch.tensor([4.67578125]), torch.tensor([13.37])
    assert quant.ascend_quant(x, s).tolist() == [62]
    assert torch.round(x * s.half().float()).item() == 63
    # the input is rounded to fp16 first: fp16(100.51) = 100.5 → 100
    assert quant.ascend_quant(torch.tensor([100.51]), torch.ones(1)).tolist() == [100]


def test_fp16_round_half_away():
    mid = 1 + 2.0 ** -11                      # halfway between 1 and 1 + 2^-10
    x = torch.tensor([mid, -mid, 1 + 3 * 2.0 ** -11, 65519.0, 65520.0, 2.0 ** -25, 1.0001])
    y = quant.fp16_round_half_away(x)
    assert y.tolist()[:3] == [1 + 2.0 ** -10, -(1 + 2.0 ** -10), 1 + 2 * 2.0 ** -10]
    assert y[3].item() == 65504.0 and y[4].item() == float("inf")
    assert y[5].item() == 2.0 ** -24          # half of the smallest subnormal rounds away
    assert y[6].item() == torch.tensor(1.0001).half().item()
    assert x.half()[0].item() == 1.0          # (torch's own conversion rounds this tie to even)


def test_ifa_channel_quant_half_away():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5, 127.5, -128.5, 1000.0])
    assert quant.ifa_channel_quant(x, torch.ones(8)).tolist() == [1, 2, 3, -1, -3, 127, -128, 127]
    y = quant.ifa_channel_quant(torch.tensor([1.0, 1.0]), torch.tensor([2.0, 3.0]), torch.tensor([0.5, -0.5]))
    assert y.tolist() == [3, 3]


@triton.jit
def _quant_kernel(X, S, O, DEQ_F, DEQ_W, OUT_A, OUT_AO, OUT_R, OUT_I, OUT_F16, OUT_D, BLOCK: tl.constexpr):
    o = tl.arange(0, BLOCK)
    x = tl.load(X + o)
    s = tl.load(S + o)
    off = tl.load(O + o)
    tl.store(OUT_A + o, quant.ascend_quant_tl(x, s, s, False))
    tl.store(OUT_AO + o, quant.ascend_quant_tl(x, s, off, True))
    tl.store(OUT_R + o, quant.rint_sat_int8_tl(x))
    tl.store(OUT_I + o, quant.ifa_channel_quant_tl(x, s, off))
    tl.store(OUT_F16 + o, quant.ascend_quant_f16_tl(x.to(tl.float16), s.to(tl.float16)))
    tl.store(OUT_D + 0, quant.deq_scale_tl(DEQ_F))
    tl.store(OUT_D + 1, quant.deq_scale_tl(DEQ_W))


def test_device_helpers_match_torch(device):
    """The Triton helpers give the torch helpers' bits on ties, saturation and random values."""
    g = torch.Generator().manual_seed(3)
    edge = torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5, 126.5, 127.5, -128.5, 300.0, -300.0, 62.502, 1 + 2.0 ** -11,
                         -(1 + 2.0 ** -11), 65520.0, 0.0, 4.67578125])
    x = torch.cat([edge, torch.randn(1024 - len(edge), generator=g) * 40]).to(device)
    s = torch.cat([torch.ones(len(edge)), torch.rand(1024 - len(edge), generator=g) * 3]).to(device)
    s[-1] = 13.37
    off = (torch.randn(1024, generator=g) * 4).round().to(device)
    deq = torch.tensor([1 / 900], device=device)
    outs = [torch.empty(1024, dtype=torch.int8, device=device) for _ in range(5)]
    out_d = torch.empty(2, device=device)
    _quant_kernel[(1,)](x, s, off, deq.view(torch.int32), nk.npu_trans_quant_param(deq.cpu() * 3).to(device),
                        *outs, out_d, BLOCK=1024)
    assert torch.equal(outs[0], quant.ascend_quant(x, s))
    assert torch.equal(outs[1], quant.ascend_quant(x, s, off))
    assert torch.equal(outs[2], quant.rint_sat_int8(x))
    assert torch.equal(outs[3], quant.ifa_channel_quant(x, s, off))
    assert torch.equal(outs[4], quant.ascend_quant(x.half(), s))       # in fp16 arithmetic: ties to even
    assert torch.equal(out_d, torch.cat([quant.fp19(deq), quant.fp19(deq * 3)]))


@triton.jit
def _int8_dot_kernel(A, B, C, BLOCK: tl.constexpr):
    o = tl.arange(0, BLOCK)
    a = tl.load(A + o[:, None] * BLOCK + o[None, :])
    b = tl.load(B + o[:, None] * BLOCK + o[None, :])
    tl.store(C + o[:, None] * BLOCK + o[None, :], tl.dot(a, b, out_dtype=tl.int32))


def test_int8_dot_accumulates_exactly_in_int32(device):
    """int8 x int8 → int32 tl.dot is exact, also where int8 or fp16 accumulation would overflow or round."""
    a = torch.full((32, 32), 127, dtype=torch.int8, device=device)
    b = torch.full((32, 32), -128, dtype=torch.int8, device=device)
    a[0, 0] = 1
    c = torch.empty(32, 32, dtype=torch.int32, device=device)
    _int8_dot_kernel[(1,)](a, b, c, BLOCK=32)
    assert torch.equal(c, a.int() @ b.int())
    assert c[1, 0].item() == -127 * 128 * 32


@triton.jit
def _bf16_cast_kernel(X, Y, BLOCK: tl.constexpr):
    o = tl.arange(0, BLOCK)
    tl.store(Y + o, tl.load(X + o).to(tl.bfloat16))


def test_float32_to_bfloat16_rounds_to_nearest_even(device):
    """As on the GPU (the interpreter truncated; npu_kernels.device fixes it): ties go to even."""
    tie_down = 1 + 2.0 ** -8                  # halfway between 1 and 1 + 2^-7: even is 1
    tie_up = 1 + 3 * 2.0 ** -8                # halfway between 1 + 2^-7 and 1 + 2^-6: even is 1 + 2^-6
    x = torch.cat([torch.tensor([tie_down, tie_up, -tie_up, 1.741003155708313]),
                   torch.randn(1020, generator=torch.Generator().manual_seed(0))]).to(device)
    y = torch.empty(1024, dtype=torch.bfloat16, device=device)
    _bf16_cast_kernel[(1,)](x, y, BLOCK=1024)
    assert y[:3].tolist() == [1.0, 1 + 2.0 ** -6, -(1 + 2.0 ** -6)]
    assert torch.equal(y, x.to(torch.bfloat16))


@triton.jit
def _int8_convert_kernel(X, W, Y16, YB16, LO, HI, LOB, HIB, BLOCK: tl.constexpr, PACKED16: tl.constexpr):
    o = tl.arange(0, BLOCK)
    x = tl.load(X + o)
    tl.store(Y16 + o, quant.int8_to_float_tl(x, tl.float16))
    tl.store(YB16 + o, quant.int8_to_float_tl(x, tl.bfloat16))
    w = tl.load(W + o)
    lo, hi = quant.int8_pairs_to_float_tl(w, tl.float16, PACKED16)
    tl.store(LO + o, lo)
    tl.store(HI + o, hi)
    lo, hi = quant.int8_pairs_to_float_tl(w, tl.bfloat16, PACKED16)
    tl.store(LOB + o, lo)
    tl.store(HIB + o, hi)


@pytest.mark.parametrize("packed16", [True, False])
def test_int8_conversions_are_exact(packed16, device):
    """Every int8 value converts exactly: to fp16 and bf16, and from the int16 words of int8 pairs (low byte
    first, as little-endian memory holds channels 2i and 2i + 1) to fp16 and bf16, with and without packed
    16-bit integer ops."""
    x = torch.arange(-128, 128, dtype=torch.int8)
    pairs = torch.stack([x, x.roll(37)], 1)                                # every value in both bytes
    x, w = x.to(device), pairs.contiguous().view(torch.int16).view(256).to(device)
    y16, lo, hi = (torch.empty(256, dtype=torch.float16, device=device) for _ in range(3))
    yb16, lob, hib = (torch.empty(256, dtype=torch.bfloat16, device=device) for _ in range(3))
    _int8_convert_kernel[(1,)](x, w, y16, yb16, lo, hi, lob, hib, BLOCK=256, PACKED16=packed16)
    assert torch.equal(y16, x.to(torch.float16)) and torch.equal(yb16, x.to(torch.bfloat16))
    for dtype, (low, high) in ((torch.float16, (lo, hi)), (torch.bfloat16, (lob, hib))):
        assert torch.equal(low.cpu(), pairs[:, 0].to(dtype)) and torch.equal(high.cpu(), pairs[:, 1].to(dtype))


def test_extreme_values_saturate_and_nan_is_zero():
    """IEEE fp16 steps (A2/A3 Inf/NaN mode) and a saturating cast: ±inf → 127 / -128, NaN → 0; a scale of
    1e6 is fp16 inf, so 0 · scale is NaN → 0 and any positive value → 127."""
    inf, nan = float("inf"), float("nan")
    assert quant.rint_sat_int8(torch.tensor([nan, inf, -inf, 1e30, -1e30])).tolist() == [0, 127, -128, 127, -128]
    assert quant.ascend_quant(torch.tensor([0.0, 0.5, -0.5]), torch.tensor(1e6)).tolist() == [0, 127, -128]
    assert quant.ascend_quant(torch.tensor([1.0, 2.0]), torch.tensor(nan)).tolist() == [0, 0]
    assert quant.ifa_channel_quant(torch.tensor([1.0, 1.0, -1.0, 0.0]), torch.tensor([nan, 1e6, 1e6, inf])).tolist() \
        == [0, 127, -128, 0]


@triton.jit
def _extreme_kernel(X, S, OUT_A, OUT_F16, OUT_I, BLOCK: tl.constexpr):
    o = tl.arange(0, BLOCK)
    x = tl.load(X + o)
    s = tl.load(S + o)
    tl.store(OUT_A + o, quant.ascend_quant_tl(x, s, s, False))
    tl.store(OUT_F16 + o, quant.ascend_quant_f16_tl(x.to(tl.float16), s.to(tl.float16)))
    tl.store(OUT_I + o, quant.ifa_channel_quant_tl(x, s, 0.0))


def test_device_helpers_match_torch_on_extreme_values(device):
    inf, nan = float("inf"), float("nan")
    x = torch.tensor([nan, inf, -inf, 0.0, 0.5, -0.5, 65504.0, 1e6, 3.0, 0.0, 1.0, -2.0, 0.25, 7.0, -7.0, 0.0])
    s = torch.tensor([1.0, 1.0, 1.0, 1e6, 1e6, 1e6, 2.0, 1.0, nan, nan, inf, inf, 1e-8, 3e4, 3e4, -inf])
    outs = [torch.empty(16, dtype=torch.int8, device=device) for _ in range(3)]
    _extreme_kernel[(1,)](x.to(device), s.to(device), *outs, BLOCK=16)
    assert torch.equal(outs[0].cpu(), quant.ascend_quant(x, s))
    assert torch.equal(outs[1].cpu(), quant.ascend_quant(x.half(), s))
    assert torch.equal(outs[2].cpu(), quant.ifa_channel_quant(x, s))


@pytest.mark.kernels
@pytest.mark.parametrize("name, value", [("quant_scale2", float("nan")), ("quant_scale1", 1e6),
                                         ("quant_scale2", 1e6)])
def test_int8_pipeline_with_extreme_scales_matches_reference(name, value, device):
    """Kernel and reference agree (within ±1) where a scale is NaN or overflows fp16."""
    from .prompt_cases import Case
    from npu_kernels.reference.prompt import kernel_block_n

    from .test_prompt_int8 import QCase, assert_int8_close, make_quant_inputs

    q, k, v, kw = make_quant_inputs(QCase(Case(B=2, S1=40, S2=50, D=32, Dv=32), path="a"), device)
    kw[name] = torch.tensor([value], device=device)
    out = nk.npu_prompt_flash_attention(q, k, v, **kw)
    # P is quantised against each key block's running maximum: the reference follows the kernel's blocks
    ref = nk.reference.npu_prompt_flash_attention(q, k, v, block_n=kernel_block_n(q, k, v, **kw), **kw)
    assert_int8_close(out, ref)
    if name == "quant_scale2" and value != value:
        assert (out == 0).all()
