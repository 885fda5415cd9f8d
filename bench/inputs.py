"""Tensors and keyword arguments of a case, for our operator, for the reference and for the baselines.

All cases use the BNSD layout. ``call`` holds what the operator receives; ``reference_slice`` a smaller
call whose result must equal one part of the operator's output (batch 0 and query head 0 of a prefill
call, batch 0 of a decode call), so the golden reference stays affordable at 16k tokens; ``problem``
the same attention as plain (B, N, S, D) floating tensors, per-batch lengths and bands for the
baselines (paged or int8 K/V are gathered or dequantised for them, outside the timed region).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from npu_kernels.masks import COMPRESSED_MASK
from npu_kernels.reference import tolerance

from .cases import FIA, IFA, PFA, Case


@dataclass
class Call:
    args: tuple
    kwargs: dict
    out: Callable[[object], torch.Tensor]     # operator result -> attention output (B, N, S1, Dv)


@dataclass
class Problem:
    q: torch.Tensor                 # [B, N, S1, D]
    k: torch.Tensor                 # [B, KV_N, S2, D]
    v: torch.Tensor                 # [B, KV_N, S2, Dv]
    scale: float
    qlens: list[int]
    kvlens: list[int]
    bands: list[tuple[int, int]]    # (pre, next) per batch, left-up coordinates
    full_lengths: bool              # every batch uses the whole padded S1/S2


def make(case: Case, device, seed: int = 0, values: bool = True) -> tuple[Call, Problem]:
    """Inputs of ``case`` on ``device``: the operator call and the baselines' problem. Without
    ``values`` the tensors are left uninitialised (host-side measurements read no element)."""
    g = torch.Generator(device=device).manual_seed(seed)

    def randn(shape):
        if not values:
            return torch.empty(shape, dtype=case.dtype, device=device)
        return torch.randn(shape, generator=g, device=device, dtype=torch.float32).to(case.dtype)

    q = randn((case.B, case.N, case.S1, case.D))
    k = randn((case.B, case.KV_N, case.S2, case.D))
    v = randn((case.B, case.KV_N, case.S2, case.dv))
    scale = case.D ** -0.5
    problem = Problem(q, k, v, scale, case.q_lengths(), case.kv_lengths(), case.bands(),
                      not case.qlens and not case.kvlens)
    if case.op == PFA:
        call = _prompt_call(case, q, k, v, scale)
        if case.qkv_int8:
            _int8_prompt(call, problem)
        return call, problem
    if case.kv_int8:
        k, v, quant = _int8(case, k, v)
        problem.k, problem.v = _dequant(k, quant[0]), _dequant(v, quant[1])
    else:
        quant = None
    if case.block_size:
        k, v, table = _paged(case, k, v, g)
    else:
        table = None
    if case.op == IFA:
        kw = dict(num_heads=case.N, scale_value=scale, input_layout="BNSD", num_key_value_heads=case.KV_N,
                  actual_seq_lengths=case.kv_lengths())
        if quant is not None:
            kw.update(antiquant_scale=quant[2], antiquant_offset=quant[3])
        if table is not None:
            kw.update(block_table=table, block_size=case.block_size)
        return Call((q, k, v), kw, lambda out: out), problem
    assert case.op == FIA
    kw = dict(num_heads=case.N, scale=scale, input_layout="BNSD", num_key_value_heads=case.KV_N,
              actual_seq_lengths_kv=case.kv_lengths())
    if case.S1 > 1:
        kw.update(actual_seq_lengths=case.q_lengths(), sparse_mode=case.sparse_mode, pre_tokens=case.pre,
                  next_tokens=case.next)
        if case.sparse_mode in (2, 3, 4):
            kw["atten_mask"] = _compressed(device)
    if quant is not None:
        kw.update(antiquant_scale=quant[2], antiquant_offset=quant[3], antiquant_mode=0)
    if table is not None:
        kw.update(block_table=table, block_size=case.block_size)
    return Call((q, k, v), kw, lambda out: out[0]), problem


def _compressed(device) -> torch.Tensor:
    return torch.ones(COMPRESSED_MASK, COMPRESSED_MASK, dtype=torch.bool, device=device).triu(1)


def _prompt_call(case: Case, q, k, v, scale) -> Call:
    kw = dict(num_heads=case.N, scale_value=scale, input_layout="BNSD",
              num_key_value_heads=case.KV_N if case.group > 1 else 0, sparse_mode=case.sparse_mode,
              pre_tokens=case.pre, next_tokens=case.next)
    if case.qlens:
        kw["actual_seq_lengths"] = list(case.qlens)
    if case.kvlens:
        kw["actual_seq_lengths_kv"] = list(case.kvlens)
    if case.sparse_mode in (2, 3, 4):
        kw["atten_mask"] = _compressed(q.device)
    return Call((q, k, v), kw, lambda out: out)


INT8_RANGE = 30.0          # int8 q/k/v = round(30 * x)
P_SCALE = 127.0            # quant_scale1: P in (0, 1] onto [0, 127]


def _int8_prompt(call: Call, problem: Problem) -> None:
    """Int8 Q/K/V with float32 dequant scales (fp16 output); the baselines get the dequantised values."""
    q, k, v = (x.float().mul(INT8_RANGE).round().clamp(-127, 127).to(torch.int8) for x in call.args)
    dev = q.device
    call.args = (q, k, v)
    call.kwargs.update(deq_scale1=torch.tensor([1 / INT8_RANGE ** 2], device=dev),
                       quant_scale1=torch.tensor([P_SCALE], device=dev),
                       deq_scale2=torch.tensor([1 / (INT8_RANGE * P_SCALE)], device=dev))
    problem.q, problem.k, problem.v = (x.to(problem.q.dtype) / INT8_RANGE for x in (q, k, v))


def _int8(case: Case, k, v):
    """Per-channel symmetric int8 K/V: (k_i8, v_i8, (key scale, value scale, antiquant_scale, offset))."""
    def quantise(x):                                            # x: [B, KV_N, S, D]
        s = x.float().abs().amax(dim=(0, 2), keepdim=True).clamp(min=1e-6) / 127   # [1, KV_N, 1, D]
        return (x.float() / s).round().clamp(-127, 127).to(torch.int8), s

    k8, ks = quantise(k)
    v8, vs = quantise(v)
    scale = torch.cat([ks, vs]).to(case.dtype)                 # [2, KV_N, 1, D]
    return k8, v8, (scale[0:1], scale[1:2], scale, torch.zeros_like(scale))


def _dequant(x8: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return (x8.float() * s.float()).to(s.dtype)


def _paged(case: Case, k, v, g):
    """K/V as a shuffled block pool (num_blocks, block_size, KV_N * D) and the block table."""
    bs = case.block_size
    per_seq = -(-case.S2 // bs)
    nblocks = case.B * per_seq
    perm = torch.randperm(nblocks, generator=g, device=k.device)
    table = perm.view(case.B, per_seq).to(torch.int32)

    def pool(x):
        pad = per_seq * bs - case.S2
        x = torch.nn.functional.pad(x, (0, 0, 0, pad))                         # [B, KV_N, per_seq*bs, D]
        blocks = x.view(case.B, x.shape[1], per_seq, bs, x.shape[3]).permute(0, 2, 3, 1, 4)
        blocks = blocks.reshape(nblocks, bs, -1)                               # [B*per_seq, bs, KV_N*D]
        out = torch.empty_like(blocks)
        out[perm] = blocks
        return out

    return pool(k), pool(v), table


def reference_slice(case: Case, call: Call) -> tuple[Call, Callable[[torch.Tensor], torch.Tensor]]:
    """A smaller call for the golden reference and the matching part of the operator's output."""
    q, k, v = call.args
    kw = dict(call.kwargs)
    if case.op == PFA or (case.op == FIA and case.S1 > 1):
        # batch 0, query head 0 and the kv head it reads (head 0 of its group)
        q, k, v = q[:1, :1], k[:1, :1], v[:1, :1]
        kw["num_heads"] = 1
        kw["num_key_value_heads"] = 0 if case.op == PFA else 1
        for name in ("actual_seq_lengths", "actual_seq_lengths_kv"):
            if name in kw:
                kw[name] = kw[name][:1]
        return Call((q, k, v), kw, call.out), lambda out: out[:1, :1]
    q = q[:1]
    if "block_table" in kw:
        kw["block_table"] = kw["block_table"][:1]
    else:
        k, v = k[:1], v[:1]
    key = "actual_seq_lengths" if case.op == IFA else "actual_seq_lengths_kv"
    kw[key] = kw[key][:1]
    return Call((q, k, v), kw, call.out), lambda out: out[:1]


def check(case: Case, call: Call, run: Callable[[Call], torch.Tensor],
          reference: Callable[[Call], torch.Tensor]) -> Optional[str]:
    """None when the operator's output matches the reference on the slice, else what differs."""
    out = call.out(run(call))
    small, part = reference_slice(case, call)
    ref = small.out(reference(small)).float()
    got = part(out).float()
    if got.shape != ref.shape:
        return f"shape {tuple(got.shape)} != reference {tuple(ref.shape)}"
    if torch.isnan(got).any():
        return "NaN in the output"
    atol, rtol = tolerance(case.dtype)
    err = (got - ref).abs()
    bad = err > atol + rtol * ref.abs()
    if bad.any():
        return f"{int(bad.sum())} of {bad.numel()} elements off, max abs error {float(err.max()):.3g}"
    return None
