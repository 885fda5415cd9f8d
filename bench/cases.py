"""The benchmark matrix: one ``Case`` per operator call, grouped in suites.

Suites (spec/performance.md §9): ``prefill`` (FA3-paper grid, sparse modes 2/3/4 against non-causal,
GQA, per-batch lengths), ``decode`` (incremental attention, contiguous and paged KV), ``int8``
(quantised paths) and ``graph`` (graph replay, task update and host overhead of single calls).
A case names its operator; a case whose operator ``npu_kernels`` does not provide is reported as
"operator not available" and skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from npu_kernels import masks

from . import flops as fl

SUITES = ("prefill", "decode", "int8", "graph")
PFA = "npu_prompt_flash_attention"
IFA = "npu_incre_flash_attention"
FIA = "npu_fused_infer_attention_score"
SDPA = ("sdpa_flash", "sdpa_cudnn", "sdpa_efficient")


@dataclass(frozen=True)
class Case:
    suite: str
    name: str                     # unique id, e.g. "pfa-fp16-d128-b4-s4096-causal"
    op: str                       # attribute of npu_kernels
    B: int
    N: int                        # query heads
    KV_N: int
    S1: int                       # query rows (1 for decode)
    S2: int                       # keys
    D: int
    dtype: torch.dtype
    Dv: int = 0                   # 0: same as D
    sparse_mode: int = 0
    pre: int = masks.INT_MAX
    next: int = masks.INT_MAX
    qlens: Optional[tuple[int, ...]] = None
    kvlens: Optional[tuple[int, ...]] = None
    block_size: int = 0           # paged KV when > 0
    kv_int8: bool = False         # int8 K/V with per-channel antiquant scale/offset
    qkv_int8: bool = False        # prefill: int8 Q/K/V (deq_scale1, quant_scale1, deq_scale2), dtype out
    series: str = ""              # plot line, e.g. "non-causal"
    compare_to: str = ""          # case whose throughput this one is compared with
    baselines: tuple[str, ...] = ()
    quick: bool = False           # part of --quick
    graph: str = ""               # graph suite: "replay" or "update"
    layers: int = 1               # graph suite: calls captured together

    @property
    def dv(self) -> int:
        return self.Dv or self.D

    @property
    def group(self) -> int:
        return self.N // self.KV_N

    @property
    def decode(self) -> bool:
        return self.op == IFA or (self.op == FIA and self.S1 == 1)

    def q_lengths(self) -> list[int]:
        return list(self.qlens) if self.qlens else [self.S1] * self.B

    def kv_lengths(self) -> list[int]:
        return list(self.kvlens) if self.kvlens else [self.S2] * self.B

    def bands(self) -> list[tuple[int, int]]:
        """(pre, next) per batch, left-up coordinates (``npu_kernels.masks``)."""
        mode = 0 if self.decode else self.sparse_mode
        return [masks.prefill_band(mode, self.pre, self.next, q, kv, False, False).clamped()
                for q, kv in zip(self.q_lengths(), self.kv_lengths())]

    def flops(self) -> float:
        return fl.attention_flops(self.N, self.D, self.dv, self.q_lengths(), self.kv_lengths(), self.bands())

    def bytes(self) -> int:
        elem = torch.empty((), dtype=self.dtype).element_size()
        if self.decode:
            scales = 2 * 2 * self.KV_N * self.D * elem if self.kv_int8 else 0
            return fl.decode_bytes(self.N, self.KV_N, self.S1, self.kv_lengths(), self.D, self.dv, elem,
                                   kv_elem=1 if self.kv_int8 else elem, block_size=self.block_size,
                                   scale_bytes=scales)
        return fl.prefill_bytes(self.B, self.N, self.KV_N, self.S1, self.S2, self.D, self.dv,
                                1 if self.qkv_int8 else elem, out_elem=elem)


def _dt(dtype: torch.dtype) -> str:
    return {torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]


def _k(s: int) -> str:
    return f"{s // 1024}k" if s >= 1024 and s % 1024 == 0 else str(s)


def prefill_cases() -> list[Case]:
    cases = []
    # FA3 paper grid: B*S = 16k tokens, N*D = 2048, MHA, non-causal and causal (right-down, mode 3).
    for d in (64, 128):
        for b, s in ((32, 512), (16, 1024), (8, 2048), (4, 4096), (2, 8192), (1, 16384)):
            for causal in (False, True):
                name = f"pfa-fp16-d{d}-b{b}-s{_k(s)}-{'causal' if causal else 'full'}"
                cases.append(Case(
                    "prefill", name, PFA, b, 2048 // d, 2048 // d, s, s, d, torch.float16,
                    sparse_mode=3 if causal else 0, series="causal (mode 3)" if causal else "non-causal",
                    compare_to=name.replace("causal", "full") if causal else "",
                    baselines=SDPA + (("flex",) if causal else ()) + ("eager",),
                    quick=d == 128 and s in (4096, 16384)))
    # Left-up causal (mode 2) at the sizes of the prompt issue, per computed FLOP against non-causal.
    for b, s in ((4, 4096), (2, 8192), (1, 16384)):
        cases.append(Case("prefill", f"pfa-fp16-d128-b{b}-s{_k(s)}-mode2", PFA, b, 16, 16, s, s, 128,
                          torch.float16, sparse_mode=2, series="causal (mode 2)",
                          compare_to=f"pfa-fp16-d128-b{b}-s{_k(s)}-full", baselines=SDPA + ("flex",),
                          quick=s == 16384))
    # Right-down causal with fewer query rows than keys (chunked prefill): the diagonal is shifted.
    cases.append(Case("prefill", "pfa-fp16-d128-b4-q1k-kv8k-mode3", PFA, 4, 16, 16, 1024, 8192, 128,
                      torch.float16, sparse_mode=3, series="append (mode 3)",
                      compare_to="pfa-fp16-d128-b4-q1k-kv8k-full", baselines=("flex", "eager")))
    cases.append(Case("prefill", "pfa-fp16-d128-b4-q1k-kv8k-full", PFA, 4, 16, 16, 1024, 8192, 128,
                      torch.float16, series="append (full)", baselines=SDPA + ("eager",)))
    # Band (mode 4): 512 visible keys per row (pre_tokens = 511, next_tokens = 0) at 16k, against no mask.
    for s in (8192, 16384):
        cases.append(Case("prefill", f"pfa-fp16-d128-b1-s{_k(s)}-band512", PFA, 1, 16, 16, s, s, 128,
                          torch.float16, sparse_mode=4, pre=511, next=0, series="band 512 (mode 4)",
                          compare_to=f"pfa-fp16-d128-b{16384 // s}-s{_k(s)}-full",
                          baselines=("flex", "sdpa_efficient"), quick=s == 16384))
    # GQA (Llama-3-8B and 70B-TP8 heads), bf16, causal.
    for n, kv_n in ((32, 8), (8, 1)):
        cases.append(Case("prefill", f"pfa-bf16-d128-gqa{n}x{kv_n}-b4-s4k-causal", PFA, 4, n, kv_n, 4096, 4096,
                          128, torch.bfloat16, sparse_mode=3, series=f"GQA {n}/{kv_n} causal",
                          baselines=SDPA + ("flex", "eager"), quick=n == 32))
    # Per-batch lengths (actual_seq_lengths): a padded batch; FLOPs count the actual lengths.
    lens = (4096, 3000, 1024, 512)
    cases.append(Case("prefill", "pfa-fp16-d128-b4-s4k-varlen-causal", PFA, 4, 16, 16, 4096, 4096, 128,
                      torch.float16, sparse_mode=3, qlens=lens, kvlens=lens, series="varlen causal",
                      baselines=("flex",)))
    # The fused operator's prefill path against the prompt operator on the same problem.
    for b, s, tag, mode in ((4, 4096, "causal", 3), (1, 16384, "full", 0)):
        cases.append(Case("prefill", f"fia-fp16-d128-b{b}-s{_k(s)}-{tag}", FIA, b, 16, 16, s, s, 128, torch.float16,
                          sparse_mode=mode, series=f"FIA prefill {tag}",
                          compare_to=f"pfa-fp16-d128-b{b}-s{_k(s)}-{tag}", baselines=("sdpa_flash", "sdpa_cudnn")))
    # Other head dims.
    cases.append(Case("prefill", "pfa-fp16-d256-b4-s4k-full", PFA, 4, 8, 8, 4096, 4096, 256, torch.float16,
                      series="d256 non-causal", baselines=SDPA))
    cases.append(Case("prefill", "pfa-bf16-d64-b4-s4k-full", PFA, 4, 32, 32, 4096, 4096, 64, torch.bfloat16,
                      series="bf16 d64 non-causal", baselines=SDPA))
    return cases


def decode_cases() -> list[Case]:
    cases = []
    for n, kv_n in ((32, 8), (32, 32)):
        for b in (1, 8, 64):
            for kv in (1024, 4096, 16384, 65536):
                if b * kv_n * kv > 64 * 8 * 16384:       # keep each call under ~4 GB of K/V
                    continue
                name = f"ifa-fp16-d128-h{n}x{kv_n}-b{b}-kv{_k(kv)}"
                cases.append(Case("decode", name, IFA, b, n, kv_n, 1, kv, 128, torch.float16,
                                  series=f"IFA {n}/{kv_n} B={b}", baselines=SDPA + ("eager",),
                                  quick=(n, b) == (32, 8) and kv in (4096, 16384)))
    for b in (8, 64):
        for kv in (4096, 16384):
            cases.append(Case("decode", f"ifa-bf16-d128-h32x8-b{b}-kv{_k(kv)}-paged128", IFA, b, 32, 8, 1, kv, 128,
                              torch.bfloat16, block_size=128, series=f"IFA paged 128 B={b}",
                              baselines=SDPA, quick=(b, kv) == (8, 16384)))
            cases.append(Case("decode", f"fia-bf16-d128-h32x8-b{b}-kv{_k(kv)}", FIA, b, 32, 8, 1, kv, 128,
                              torch.bfloat16, series=f"FIA decode B={b}", baselines=SDPA))
    # Ragged batch: per-batch KV lengths.
    lens = (16384, 9000, 2048, 100, 16384, 777, 4096, 12000)
    cases.append(Case("decode", "ifa-fp16-d128-h32x8-b8-kvragged", IFA, 8, 32, 8, 1, 16384, 128, torch.float16,
                      kvlens=lens, series="IFA ragged", baselines=("eager",)))
    return cases


def int8_cases() -> list[Case]:
    cases = []
    # int8 Q/K/V, float16 output (dequantised scores, P quantised with quant_scale1), against fp16.
    for b, s in ((4, 4096), (1, 16384)):
        for causal in (False, True):
            tag = "causal" if causal else "full"
            cases.append(Case("int8", f"pfa-int8-d128-b{b}-s{_k(s)}-{tag}", PFA, b, 16, 16, s, s, 128, torch.float16,
                              sparse_mode=3 if causal else 0, qkv_int8=True, series=f"int8 QKV {tag}",
                              compare_to=f"pfa-fp16-d128-b{b}-s{_k(s)}-{tag}",
                              baselines=("sdpa_flash", "sdpa_cudnn"), quick=s == 16384))
    for b in (8, 64):
        for kv in (4096, 16384):
            cases.append(Case("int8", f"ifa-fp16-d128-h32x8-b{b}-kv{_k(kv)}-int8kv", IFA, b, 32, 8, 1, kv, 128,
                              torch.float16, kv_int8=True, series=f"IFA int8 KV B={b}",
                              compare_to=f"ifa-fp16-d128-h32x8-b{b}-kv{_k(kv)}", baselines=SDPA,
                              quick=(b, kv) == (8, 16384)))
            cases.append(Case("int8", f"fia-fp16-d128-h32x8-b{b}-kv{_k(kv)}-int8kv", FIA, b, 32, 8, 1, kv, 128,
                              torch.float16, kv_int8=True, series=f"FIA int8 KV B={b}", baselines=SDPA))
    return cases


def graph_cases() -> list[Case]:
    small = dict(B=1, N=16, KV_N=16, S1=128, S2=128, D=128, dtype=torch.float16)
    dec = dict(B=8, N=32, KV_N=8, S1=1, S2=4096, D=128, dtype=torch.float16)
    return [
        Case("graph", "graph-pfa-s128-replay", PFA, graph="replay", quick=True, **small),
        Case("graph", "graph-pfa-s128-x32-replay", PFA, graph="replay", layers=32, **small),
        Case("graph", "graph-ifa-b8-kv4k-replay", IFA, graph="replay", quick=True, **dec),
        Case("graph", "graph-ifa-b8-kv4k-x32-update", IFA, graph="update", layers=32, **dec),
        Case("graph", "graph-pfa-s128-x32-update", PFA, graph="update", layers=32, **small),
    ]


def all_cases() -> list[Case]:
    cases = prefill_cases() + decode_cases() + int8_cases() + graph_cases()
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return cases


def select(suite: str = "all", quick: bool = False, match: str = "") -> list[Case]:
    """Cases of ``suite`` ("all" or one of ``SUITES``), only the ``quick`` ones if asked, whose name
    contains ``match``."""
    if suite != "all" and suite not in SUITES:
        raise ValueError(f"suite={suite!r}: expected all or one of {', '.join(SUITES)}")
    return [c for c in all_cases() if (suite == "all" or c.suite == suite) and (c.quick or not quick)
            and match in c.name]

