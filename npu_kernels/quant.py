"""Quantisation primitives of the Ascend attention operators (spec ops §1.9, §2.2, §2.4).

Host side (torch, any device; used by the references and by users):
  ``fp19``                    dequant scales keep sign, exponent and 10 mantissa bits (low 13 bits cleared)
  ``npu_trans_quant_param``   the uint64 scale encoding (returned as int64, as torch_npu does in eager mode)
  ``deq_scale``               float32 or encoded scale → the float32 value the cube's fixpipe multiplies by
  ``ascend_quant``            AscendQuant: fp16 arithmetic, round half to even, saturation to int8
  ``ifa_channel_quant``       IFA per-channel output quantisation: fp32 → fp16 → int8, half away at both steps
Device side (``@triton.jit``, called from the kernels): ``deq_scale_tl``, ``ascend_quant_tl``,
``ascend_quant_f16_tl`` (fp16 blocks, native fp16 arithmetic), ``ifa_channel_quant_tl``,
``int8_to_float_tl``, ``int8_pairs_to_float_tl``. Both sides
compute the same bits; ``tests/test_quant.py`` checks each pair.
Validation shared by the operators: ``full_quant_args`` (the allowed combinations, into a ``QuantArgs``),
``check_deq_scale``, ``check_quant_scale1``, ``check_output_quant``.

Arithmetic notes. A product of two fp16 values is exact in fp32, and rounding an fp32 sum of two fp16
values to fp16 equals rounding the exact sum (24 >= 2*11 + 2 bits), so "compute in fp32, round to fp16"
is fp16 arithmetic, on the host and in the kernels alike.

Extreme values. Atlas A2/A3 compute floats in IEEE Inf/NaN mode by default (ACL ``aclrtFloatOverflowMode``
ACL_RT_OVERFLOW_MODE_INFNAN), so the fp16 steps overflow to ±inf (a scale of 1e6 is fp16 inf) and 0 · inf
is NaN; the final conversion to int8 saturates as the vector Cast does in saturation mode (asc-devkit's
SetSaturationFlag: inf to ±max, NaN to 0): +inf → 127, -inf → -128, NaN → 0. Both sides follow this.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from .checks import tensor
from .errors import require

FP19_MASK = 0xFFFFE000            # clears the low 13 of fp32's 23 mantissa bits
_FP19_MASK_I32 = -8192            # FP19_MASK as a signed int32
_ENCODED_FLAG = 1 << 46           # set in every npu_trans_quant_param word
_OFFSET_SHIFT, _OFFSET_BITS = 37, 9
DEQ_SCALE_DTYPES = (torch.float32, torch.uint64, torch.int64)
INT8_MIN, INT8_MAX = -128, 127


def fp19(x: torch.Tensor) -> torch.Tensor:
    """float32 → float32 with the low 13 mantissa bits cleared (truncation towards zero)."""
    bits = x.to(torch.float32).view(torch.int32) & _FP19_MASK_I32
    return bits.view(torch.float32)


def npu_trans_quant_param(scale: torch.Tensor, offset: Optional[torch.Tensor] = None) -> torch.Tensor:
    """torch_npu.npu_trans_quant_param: float32 ``scale`` (and optional ``offset``) → int64 words.

    Bits 0-31: the fp32 scale with the low 13 mantissa bits cleared; bit 46: 1; bits 37-45: the offset
    rounded half to even and saturated to a 9-bit signed integer. The attention operators read only
    bits 0-31. ``offset`` broadcasts against ``scale``.
    """
    require(isinstance(scale, torch.Tensor) and scale.dtype == torch.float32, "scale", scale,
            "must be a float32 tensor", TypeError)
    low = scale.view(torch.int32).to(torch.int64) & FP19_MASK
    word = low | _ENCODED_FLAG
    if offset is not None:
        require(isinstance(offset, torch.Tensor) and offset.dtype == torch.float32, "offset", offset,
                "must be a float32 tensor", TypeError)
        half = 1 << (_OFFSET_BITS - 1)
        off = torch.round(offset).clamp(-half, half - 1).to(torch.int64) & ((1 << _OFFSET_BITS) - 1)
        word = word | (off << _OFFSET_SHIFT)
    return word


def deq_scale(t: torch.Tensor) -> torch.Tensor:
    """A dequant scale (float32, or uint64/int64 words of ``npu_trans_quant_param``) → float32 FP19 value."""
    if t.dtype == torch.float32:
        return fp19(t)
    low = (t.view(torch.int64) & 0xFFFFFFFF).to(torch.int32)      # wraps to the low word's bit pattern
    return fp19(low.view(torch.float32))


def rint_sat_int8(y: torch.Tensor) -> torch.Tensor:
    """Round half to even (CAST_RINT), saturate to [-128, 127] (±inf included), NaN to 0."""
    y = y.to(torch.float32)
    return torch.round(y).clamp(INT8_MIN, INT8_MAX).nan_to_num(0.0).to(torch.int8)


def ascend_quant(x: torch.Tensor, scale: torch.Tensor, offset: Optional[torch.Tensor] = None) -> torch.Tensor:
    """AscendQuant (CANN 8.1.RC1, A2): int8 of ``fp16(fp16(h * s) + o)``, with ``h``, ``s``, ``o`` the
    fp16 roundings of ``x``, ``scale`` and ``offset``; scale/offset broadcast against ``x``."""
    h = x.to(torch.float16).float()
    s = scale.float().to(torch.float16).float()
    y = (h * s).to(torch.float16).float()
    if offset is not None:
        y = (y + offset.float().to(torch.float16).float()).to(torch.float16).float()
    return rint_sat_int8(y)


def fp16_round_half_away(x: torch.Tensor) -> torch.Tensor:
    """float32 → float16 rounding ties away from zero (CAST_ROUND)."""
    x = x.to(torch.float32)
    r = x.to(torch.float16)                                   # ties to even
    toward = torch.where(x >= 0, torch.full_like(r, float("inf")), torch.full_like(r, float("-inf")))
    other = torch.nextafter(r, toward)
    exact = x.double()
    tie = (exact - r.double()).abs() == (other.double() - exact).abs()
    return torch.where(tie & (other.double().abs() > r.double().abs()), other, r)


def ifa_channel_quant(x: torch.Tensor, scale: torch.Tensor, offset: Optional[torch.Tensor] = None) -> torch.Tensor:
    """IFA per-channel output quantisation: ``y = x * scale (+ offset)`` in fp32, then fp16 with
    CAST_ROUND, then int8 with CAST_ROUND (both half away from zero), saturated."""
    y = x.to(torch.float32) * scale.to(torch.float32)
    if offset is not None:
        y = y + offset.to(torch.float32)
    h = fp16_round_half_away(y).float()
    return (torch.sign(h) * torch.floor(h.abs() + 0.5)).clamp(INT8_MIN, INT8_MAX).nan_to_num(0.0).to(torch.int8)


# ---- device side ---------------------------------------------------------------------------------


@triton.jit
def deq_scale_tl(ptr):
    """Scalar dequant scale at ``ptr``: int32 (float32 bits) or int64 (encoded word) → fp32, FP19."""
    bits = tl.load(ptr).to(tl.int32) & -8192                   # low word, 13 mantissa bits cleared
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def rint_sat_int8_tl(y):
    """fp32 → int8, round half to even, saturated, NaN to 0 (min/max would turn NaN into -128)."""
    y = tl.minimum(tl.maximum(tl.where(y != y, 0.0, y), -128.0), 127.0)
    # adding 1.5 * 2^23 leaves no fraction bits: fp32 addition rounds y half to even
    return ((y + 12582912.0) - 12582912.0).to(tl.int8)


@triton.jit
def ascend_quant_tl(x, scale, offset, HAS_OFFSET: tl.constexpr):
    """``ascend_quant`` on fp32 blocks: scale and offset fp32, broadcastable to ``x`` (offset is read
    only when HAS_OFFSET)."""
    h = x.to(tl.float16).to(tl.float32)
    s = scale.to(tl.float16).to(tl.float32)
    y = (h * s).to(tl.float16).to(tl.float32)
    if HAS_OFFSET:
        y = (y + offset.to(tl.float16).to(tl.float32)).to(tl.float16).to(tl.float32)
    return rint_sat_int8_tl(y)


@triton.jit
def ascend_quant_f16_tl(h, s):
    """``ascend_quant`` without offset of fp16 blocks ``h`` and an fp16 scale ``s``, in fp16 arithmetic:
    the product is rounded once (the clamp between product and sum keeps them from fusing into an FMA),
    adding 1.5 * 2^10 leaves no fraction bits, so the sum rounds half to even; NaN (0 · inf) is 0."""
    y = h * s
    # cast back: triton 3.6 takes min/max of an fp16 block and a Python float in fp32 (exact here), and the
    # sum must be an fp16 one to round
    y = tl.minimum(tl.maximum(tl.where(y != y, 0.0, y), -128.0), 127.0).to(tl.float16)
    return ((y + 1536.0) - 1536.0).to(tl.int8)


@triton.jit
def int8_to_float_tl(x, DTYPE: tl.constexpr):
    """int8 block → fp16 or bf16, exactly (every int8 is representable in both); bf16 through fp32."""
    if DTYPE == tl.float16:
        return x.to(tl.float16)
    return x.to(tl.float32).to(DTYPE)


@triton.jit
def int8_pairs_to_float_tl(w, DTYPE: tl.constexpr, PACKED16: tl.constexpr):
    """int16 block of int8 pairs (low byte first) → (low, high) blocks of DTYPE (fp16 or bf16), exactly.
    Each byte is converted where it lies (the GPU converts a selected byte of a register; shifting 16-bit
    lanes would unpack them), to fp16, or to fp32 whose high half is the bf16 (exact: 8 significant bits).
    With packed 16-bit integer ops (PACKED16, sm_90) the low bytes take integer ops on the words instead:
    fp16 ``b ^ 0x6480`` (b the unsigned byte) is 1024 + b + 128, minus 1152 is b; bf16 ``0x4300 | b & 0x7F``
    is 128 + (b & 0x7F), minus ``0x4300 | b & 0x80`` (128, or 256 for a negative byte) is b."""
    if PACKED16:
        u = w.to(tl.uint16, bitcast=True)
        if DTYPE == tl.float16:
            lo = ((u & 0xFF) ^ 0x6480).to(tl.float16, bitcast=True) - 1152.0
        else:
            t = u | 0x4300
            # exact in bf16, and compiled to a bf16 subtraction (the interpreter subtracts bitcast bf16 as bits)
            lo = ((t & 0x437F).to(tl.bfloat16, bitcast=True).to(tl.float32)
                  - (t & 0x4380).to(tl.bfloat16, bitcast=True).to(tl.float32)).to(tl.bfloat16)
    else:
        lo = _int8_to_float_in_place(w.to(tl.int8), DTYPE)
    return lo, _int8_to_float_in_place((w >> 8).to(tl.int8), DTYPE)


@triton.jit
def _int8_to_float_in_place(b, DTYPE: tl.constexpr):
    """int8 block → DTYPE in one conversion per element (bf16: the high half of the fp32, taken as bits so that
    the compiler keeps the per-byte conversion)."""
    if DTYPE == tl.float16:
        y = b.to(tl.float16)
    else:
        y = (b.to(tl.float32).to(tl.int32, bitcast=True) >> 16).to(tl.int16).to(tl.bfloat16, bitcast=True)
    return y


@triton.jit
def ifa_channel_quant_tl(x, scale, offset):
    """``ifa_channel_quant`` on fp32 blocks (offset 0.0 when absent)."""
    y = x * scale + offset
    a = tl.abs(y)
    r = a.to(tl.float16)                                       # ties to even
    up = (r.to(tl.int16, bitcast=True) + 1).to(tl.float16, bitcast=True)
    rf = r.to(tl.float32)
    h = tl.where((rf < a) & (a - rf == up.to(tl.float32) - a), up.to(tl.float32), rf)
    q = tl.floor(h + 0.5)                                      # magnitude, ties away
    q = tl.where(y < 0, -q, tl.where(y != y, 0.0, q))         # NaN to 0
    return tl.minimum(tl.maximum(q, -128.0), 127.0).to(tl.int8)


# ---- validation ----------------------------------------------------------------------------------


def check_deq_scale(name: str, t) -> torch.Tensor:
    """Per-tensor dequant scale: one float32 value, or one uint64/int64 ``npu_trans_quant_param`` word."""
    tensor(name, t, dtypes=DEQ_SCALE_DTYPES)
    require(t.numel() == 1, name, t, "must hold one value (per-tensor, shape (1,))")
    return t


def check_quant_scale1(t) -> torch.Tensor:
    tensor("quant_scale1", t, dtypes=(torch.float32,))
    require(t.numel() == 1, "quant_scale1", t, "must hold one value (per-tensor, shape (1,))")
    return t


def check_output_quant(scale, offset, in_dtype: torch.dtype, heads: int, dv: int) -> bool:
    """quant_scale2 / quant_offset2 of an int8 output; True when per-channel.

    Per-tensor: one element. Per-channel: ``heads * dv`` elements whose non-unit dims are (N, Dv) or
    (N*Dv,), e.g. (N, D), (1, N, 1, D), (1, 1, N, D), (H,); element (n, d) at n * Dv + d.
    float32, or bfloat16 with a bfloat16 input; the offset has the scale's dtype and shape.
    """
    dtypes = (torch.float32, torch.bfloat16) if in_dtype == torch.bfloat16 else (torch.float32,)
    tensor("quant_scale2", scale, dtypes=dtypes)
    core = tuple(s for s in scale.shape if s != 1)
    per_channel = scale.numel() != 1
    if per_channel:
        require(core in ((heads, dv), (heads * dv,)) and scale.is_contiguous(), "quant_scale2", scale,
                f"must have 1 element or be a contiguous per-channel tensor of N*Dv = {heads}*{dv} elements "
                f"shaped (N, Dv), (H,), (1, N, 1, Dv) or (1, 1, N, Dv)")
    if offset is not None:
        tensor("quant_offset2", offset)
        require(offset.dtype == scale.dtype and offset.shape == scale.shape, "quant_offset2", offset,
                f"must have quant_scale2's dtype and shape ({scale.dtype}, {tuple(scale.shape)})", TypeError)
        require(offset.is_contiguous(), "quant_offset2", offset, "must be contiguous")
    return per_channel


@dataclass(frozen=True)
class QuantArgs:
    """The validated quantisation tensors of one prefill call (None where absent)."""

    deq_scale1: Optional[torch.Tensor] = None
    quant_scale1: Optional[torch.Tensor] = None
    deq_scale2: Optional[torch.Tensor] = None
    quant_scale2: Optional[torch.Tensor] = None
    quant_offset2: Optional[torch.Tensor] = None
    per_channel: bool = False

    @property
    def int8_in(self) -> bool:
        return self.deq_scale1 is not None

    @property
    def int8_out(self) -> bool:
        return self.quant_scale2 is not None

    def meta(self) -> tuple[tuple[str, object], ...]:
        """The kernel constexprs QUANT_MODE, OUT_QUANT (0 none, 1 per-tensor, 2 per-channel), HAS_OFFSET2."""
        out = 0 if not self.int8_out else 2 if self.per_channel else 1
        return (("QUANT_MODE", int(self.int8_in)), ("OUT_QUANT", out), ("HAS_OFFSET2", self.quant_offset2 is not None))

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return tuple(t for t in (self.deq_scale1, self.quant_scale1, self.deq_scale2, self.quant_scale2,
                                 self.quant_offset2) if t is not None)

    def kernel_scales(self) -> tuple[Optional[torch.Tensor], ...]:
        """DEQ1, QS1, DEQ2, QS2, QO2 as the kernel reads them: dequant scales as their bits (float32 as
        int32, uint64 as int64 words; views, no copy)."""
        def bits(t):
            return None if t is None else t.view(torch.int32 if t.dtype == torch.float32 else torch.int64)
        return (bits(self.deq_scale1), self.quant_scale1, bits(self.deq_scale2), self.quant_scale2,
                self.quant_offset2)


NO_QUANT = QuantArgs()


def full_quant_args(in_dtype: torch.dtype, heads: int, dv: int, deq_scale1=None, quant_scale1=None,
                    deq_scale2=None, quant_scale2=None, quant_offset2=None) -> QuantArgs:
    """The three allowed combinations of the prefill path (spec ops §2.2):
    (a) int8 in → int8 out: deq_scale1, quant_scale1, deq_scale2, quant_scale2 required, quant_offset2 optional;
    (b) int8 in → float16 out: deq_scale1, quant_scale1, deq_scale2 required, no quant_scale2/quant_offset2;
    (c) float16/bfloat16 in → int8 out: quant_scale2 required, quant_offset2 optional, no other scale.
    """
    given = {"deq_scale1": deq_scale1, "quant_scale1": quant_scale1, "deq_scale2": deq_scale2}
    if in_dtype == torch.int8:
        for name, t in given.items():
            require(t is not None, name, t, "int8 query/key/value require deq_scale1, quant_scale1 and deq_scale2")
        check_deq_scale("deq_scale1", deq_scale1)
        check_quant_scale1(quant_scale1)
        check_deq_scale("deq_scale2", deq_scale2)
        # the NPU reads each dequant scale with the other one's dtype flag
        require((deq_scale1.dtype == torch.float32) == (deq_scale2.dtype == torch.float32), "deq_scale2",
                deq_scale2, f"must be float32 when deq_scale1 is, and a uint64/int64 word when deq_scale1 is "
                f"(deq_scale1 is {deq_scale1.dtype})", TypeError)
    else:
        for name, t in given.items():
            require(t is None, name, t, f"only int8 query/key/value take {name}; a {in_dtype} input allows "
                    "only quant_scale2/quant_offset2 (int8 output)")
    per_channel = False
    if quant_scale2 is not None:
        per_channel = check_output_quant(quant_scale2, quant_offset2, in_dtype, heads, dv)
        if per_channel:
            size = torch.tensor([], dtype=in_dtype).element_size()
            require(dv * size % 32 == 0, "quant_scale2", quant_scale2,
                    f"per-channel output quantisation needs a 32-byte aligned head dim (Dv={dv} x {size} bytes)")
    else:
        require(quant_offset2 is None, "quant_offset2", quant_offset2, "requires quant_scale2")
    return QuantArgs(deq_scale1, quant_scale1, deq_scale2, quant_scale2, quant_offset2, per_channel)
