"""Ahead-of-time compilation of kernel launches for a GPU target, on any machine (no GPU needed).

A variant is a launch planned the way the operators plan it for a GPU; ``record`` captures what that
launch passes to ``launcher.run`` (kernel, grid, positional arguments, options), and ``compile_launch``
builds the very binary Triton's launcher would build for ``sm_<arch>``: it runs the kernel's own
``warmup`` (the launch path without the launch) against a compile-only driver, so the arguments get
the launcher's specialisation (integers equal to 1 become constants; integers divisible by 16 and
16-byte aligned pointers get divisibility hints), with the same constexprs, num_warps, num_stages and
fp fusion. Registers, spills, shared memory and the SASS counts of ``kernels.sass`` are read from that
binary.

Runs only in a process where Triton is in compiled mode: set ``NPUK_COMPILE_ONLY=1`` before importing
``npu_kernels`` (``python -m npu_kernels.aot`` does).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
from triton.backends.compiler import GPUTarget

from . import launcher
from .kernels import sass

_PTR_TYPES = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32", torch.int8: "*i8",
              torch.uint8: "*u8", torch.int32: "*i32", torch.int64: "*i64", torch.bool: "*i1"}
ARCHS = (80, 90)


@dataclass(frozen=True)
class Launch:
    """One call of ``launcher.run``."""

    kernel: object              # the triton.jit function
    grid: tuple
    args: tuple                 # positional, signature order (constexprs included)
    options: dict               # num_warps, num_stages, enable_fp_fusion

    @property
    def family(self) -> str:
        """Kernel family from the function name: ``_decode_split_kernel`` → ``decode_split``."""
        return self.kernel.fn.__name__.strip("_").removesuffix("_kernel")

    def by_name(self) -> dict:
        return dict(zip(self.kernel.arg_names, self.args))

    def constexprs(self) -> dict:
        return {p.name: a for p, a in zip(self.kernel.params, self.args) if p.is_constexpr}


@dataclass(frozen=True)
class Variant:
    """A planned call: ``launch()`` plans it for the GPU of the active target and launches it."""

    name: str
    launch: Callable[[], None]

    def launches(self, arch: int) -> list[Launch]:
        """What the call launches when planned and compiled for ``sm_<arch>``."""
        with compile_only_target(arch):
            return record(self.launch)


@dataclass(frozen=True)
class Compiled:
    arch: int
    registers: int
    spill_bytes: int            # local-memory stores + loads (STL/LDL bytes)
    shared_bytes: int
    tensor_cores: str           # "wgmma", "mma" or "" (none)
    mma: int                    # tensor-core instructions in the kernel
    loop_keys: int              # keys per main-loop iteration (BLOCK_N); 0 without a main loop
    loop_instructions: int      # instructions per warp on the main loop's shortest path
    per_32_keys: float          # loop_instructions per 32 keys
    longest_per_32_keys: float = 0.0    # per 32 keys on the main loop's longest path (its optional work run)
    loop_loads: dict = field(default_factory=dict)   # tma / cp.async / ldg instructions in the main loop
    loop_barriers: int = 0      # BAR instructions in the main loop
    loop_spill_bytes: int = 0   # spill bytes moved inside the main loop (each iteration)
    cubin_sha256: str = ""
    compile_s: float = 0.0


def record(launch: Callable[[], None]) -> list[Launch]:
    """The ``launcher.run`` calls that ``launch()`` makes, captured instead of launched."""
    calls: list[Launch] = []
    previous = launcher.set_recorder(lambda k, g, a, o: calls.append(Launch(k, tuple(g), tuple(a), dict(o))))
    try:
        launch()
    finally:
        launcher.set_recorder(previous)
    return calls


class _CompileOnlyDriver:
    """Stands in for the GPU driver during a launch's warmup: the target is ``sm_<arch>``; the device key
    differs per arch, since Triton caches its binder (and target) per device."""

    def __init__(self, arch: int):
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self) -> GPUTarget:
        return self.target

    def get_current_device(self) -> str:
        return f"compile-only-sm_{self.target.arch}"

    def get_current_stream(self, device=None) -> int:
        return 0


@contextlib.contextmanager
def compile_only_target(arch: int) -> Iterator[None]:
    from triton.runtime import driver

    previous = driver._active            # None until a real driver was first asked for
    driver.set_active(_CompileOnlyDriver(arch))
    try:
        yield
    finally:
        driver.set_active(previous)


def compile_launch(launch: Launch, arch: int):
    """The ``triton.compiler.CompiledKernel`` a launch would build on ``sm_<arch>``."""
    with compile_only_target(arch):
        return launch.kernel.warmup(*launch.args, grid=launch.grid, **launch.options)


def _resources(cubin: bytes) -> dict[str, int]:
    """REG, STACK, SHARED ... of the cubin's kernel (``cuobjdump -res-usage``)."""
    import tempfile

    from triton import knobs

    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([knobs.nvidia.cuobjdump.path, "-res-usage", f.name], capture_output=True, text=True,
                             check=True).stdout
    return {k: int(v) for k, v in re.findall(r"(\w+):(\d+)", out.split("Function", 1)[-1])}


def analyse(kernel, arch: int, block_n: int, compile_s: float = 0.0) -> Compiled:
    """Resources and SASS counts of a compiled kernel; ``block_n``: keys per main-loop iteration."""
    from triton import knobs

    cubin = kernel.asm["cubin"]
    instrs, labels = sass.parse(sass.disassemble(cubin, knobs.nvidia.nvdisasm.path))
    mma = sum(i.base in sass.TENSOR_CORE for i in instrs)
    wgmma = any(i.base in sass.WARPGROUP_MMA for i in instrs)
    loop = sass.main_loop(instrs, labels)
    keys = block_n if loop is not None else 0
    return Compiled(
        arch=arch, registers=_resources(cubin)["REG"], spill_bytes=sass.spill_bytes(instrs),
        shared_bytes=int(kernel.metadata.shared), tensor_cores="wgmma" if wgmma else "mma" if mma else "", mma=mma,
        loop_keys=keys, loop_instructions=loop.path if loop else 0,
        per_32_keys=round(loop.path * 32 / keys, 1) if loop else 0.0,
        longest_per_32_keys=round(loop.longest * 32 / keys, 1) if loop else 0.0,
        loop_loads=sass.load_kinds(loop.counts) if loop else {}, loop_barriers=loop.counts["BAR"] if loop else 0,
        loop_spill_bytes=sass.spill_bytes(instrs[loop.start:loop.end + 1]) if loop else 0,
        cubin_sha256=hashlib.sha256(cubin).hexdigest(), compile_s=compile_s)


def compile_and_analyse(launch: Launch, arch: int) -> Compiled:
    start = time.perf_counter()
    kernel = compile_launch(launch, arch)
    return analyse(kernel, arch, int(launch.constexprs().get("BLOCK_N", 0)), time.perf_counter() - start)


def compile_kernel(fn, args: dict, constexprs: dict, arch: int, num_warps: int, num_stages: int,
                   fp_fusion: bool = True) -> Compiled:
    """Compile ``fn`` launched with ``args`` and ``constexprs`` (by name) for ``sm_<arch>``."""
    values = {**args, **constexprs}
    launch = Launch(fn, (1,), tuple(values[n] for n in fn.arg_names),
                    {"num_warps": num_warps, "num_stages": num_stages, "enable_fp_fusion": fp_fusion})
    return compile_and_analyse(launch, arch)


def signature(fn, args: dict, constexprs: dict) -> dict[str, str]:
    """Triton signature of ``fn`` for ``args`` without the launcher's specialisation (tensors → pointer
    types, ints, floats); for building a ``triton.compiler.ASTSource`` by hand."""
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
            continue
        value = args[name]
        if isinstance(value, torch.Tensor):
            sig[name] = _PTR_TYPES[value.dtype]
        elif isinstance(value, bool):
            sig[name] = "i1"
        elif isinstance(value, int):
            sig[name] = "i32" if -2**31 <= value < 2**31 else "i64"
        else:
            sig[name] = "fp32"
    return sig


def rows(variants: Sequence[Variant], archs: Sequence[int] = ARCHS) -> Iterator[dict]:
    """One report row per (variant, launched kernel, arch); a failing compile is a row with its error."""
    for v in variants:
        for arch in archs:
            for launch in v.launches(arch):
                blocks = " ".join(f"{k[6:]}={val}" for k, val in launch.constexprs().items()
                                  if k.startswith("BLOCK_"))
                row = {"kernel": launch.family, "variant": v.name, "arch": arch, "blocks": blocks,
                       "num_warps": launch.options["num_warps"], "num_stages": launch.options["num_stages"]}
                try:
                    row.update(compile_and_analyse(launch, arch).__dict__, error=None)
                except Exception as exc:  # reported, not raised: a failing variant is a row of the report
                    row["error"] = f"{type(exc).__name__}: {str(exc).strip()[:500]}"
                yield row


def _prefill_variant(name: str, call, out: torch.Tensor, lse, tensors: tuple, meta: tuple = ()) -> Variant:
    """A prefill-kernel call planned for a GPU (its mask summary pass first, where the plan has one);
    ``tensors``: Q, K, V, O, LSE, MASK, PSE as the operator passes them (the parameter block is appended);
    ``meta``: constexprs added to the plan's."""
    from dataclasses import replace

    from . import tasks
    from .kernels import prefill
    from .ops import prompt

    def launch():
        p = prompt.plan(call, out, lse, on_gpu=True)
        summary = prompt.summary_scratch(p.static, out.device)
        prefill.launch(replace(p.static, meta=p.static.meta + meta), *tensors,
                       tasks.device_block(p.params, out.device), scales=call.quant.kernel_scales(),
                       sources=call.sources.tensors(), summary=summary)

    return Variant(name, launch)


def _planned_prefill(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kw: dict,
                     meta: tuple = ()) -> Variant:
    """A prompt call with its dummies and views as the operator makes them."""
    from .ops import prompt

    call = prompt.validate(q, k, v, **kw)
    o = prompt.output(call)
    o4 = prompt.out_view(call, o)
    mask = call.mask.view(torch.uint8) if call.mask is not None and call.mask.dtype == torch.bool else call.mask
    h = call.heads
    tensors = (h.q, h.k, h.v, o4, h.q, h.q if mask is None else mask, h.q if call.pse is None else call.pse)
    return _prefill_variant(name, call, o, None, tensors, meta)


def prefill_variants() -> list[Variant]:
    """Representative prefill variants, planned for a GPU (``*-fp16path``: the NPU's fp16 path, FP16_PATH,
    which the plan sets for PFA's default fp16 calls)."""
    cases = [
        ("fp16-d128", torch.float16, 128, 128, {}),
        ("bf16-d128-causal", torch.bfloat16, 128, 128, {"sparse_mode": 3, "atten_mask": "compressed"}),
        ("fp16-d128-causal", torch.float16, 128, 128, {"sparse_mode": 3, "atten_mask": "compressed"}),
        ("fp16-d128-causal-hp", torch.float16, 128, 128, {"sparse_mode": 13, "atten_mask": "compressed"}),
        ("bf16-d128", torch.bfloat16, 128, 128, {}),
        ("bf16-d64-causal", torch.bfloat16, 64, 64, {"sparse_mode": 3, "atten_mask": "compressed"}),
        ("fp16-d128-mask-pse", torch.float16, 128, 128, {"atten_mask": "full", "pse_shift": True}),
        ("bf16-d192-dv128", torch.bfloat16, 192, 128, {}),
        ("fp16-d256", torch.float16, 256, 256, {}),
        ("bf16-d256", torch.bfloat16, 256, 256, {}),
        ("bf16-d512-band", torch.bfloat16, 512, 512, {"sparse_mode": 4, "atten_mask": "compressed"}),
        ("fp16-d80-gqa", torch.float16, 80, 80, {"num_key_value_heads": 1}),
        ("fp16-d128-fp16path", torch.float16, 128, 128, {"meta": (("FP16_PATH", True),)}),
        ("fp16-d128-causal-fp16path", torch.float16, 128, 128,
         {"sparse_mode": 3, "atten_mask": "compressed", "meta": (("FP16_PATH", True),)}),
    ]
    out = []
    for name, dtype, d, dv, extra in cases:
        b, n, s = 1, 2, 64
        q = torch.zeros(b, n, s, d, dtype=dtype)
        kv_n = extra.get("num_key_value_heads") or n
        k = torch.zeros(b, kv_n, s, d, dtype=dtype)
        v = torch.zeros(b, kv_n, s, dv, dtype=dtype)
        kw = {"num_heads": n, "input_layout": "BNSD", "num_key_value_heads": extra.get("num_key_value_heads", 0),
              "sparse_mode": extra.get("sparse_mode", 0), "next_tokens": 65535}
        if extra.get("atten_mask") == "compressed":
            kw["atten_mask"] = torch.ones(2048, 2048, dtype=torch.bool).triu(1)
        elif extra.get("atten_mask") == "full":
            kw["atten_mask"] = torch.zeros(s, s, dtype=torch.bool)
        if extra.get("pse_shift"):
            kw["pse_shift"] = torch.zeros(1, n, s, s, dtype=dtype)
        out.append(_planned_prefill(name, q, k, v, kw, extra.get("meta", ())))
    return out


def fused_variants() -> list[Variant]:
    """Prefill-kernel variants that only the fused operator reaches (token-major rows, paged caches (also NZ),
    shared prefix, rope, left padding, anti-quantised K/V, lse), planned for a GPU."""
    from .ops import fused

    tri = torch.ones(2048, 2048, dtype=torch.bool).triu(1)
    n, kv_n, d = 8, 1, 128
    paged_k = torch.zeros(32, 128, kv_n * d, dtype=torch.bfloat16)
    nz_k = torch.zeros(32, kv_n, d // 16, 128, 16, dtype=torch.bfloat16)        # NZ: (blocks, KV_N, D/c0, bs, c0)
    table = torch.zeros(2, 16, dtype=torch.int32)
    tnd_paged = dict(input_layout="TND", actual_seq_lengths=[32, 64], actual_seq_lengths_kv=[100, 200],
                     block_table=table, block_size=128, sparse_mode=3, atten_mask=tri, softmax_lse_flag=True)
    cases = [
        ("tnd-paged-causal-lse", torch.zeros(64, n, d, dtype=torch.bfloat16), paged_k, paged_k, tnd_paged),
        ("tnd-paged-nz-causal-lse", torch.zeros(64, n, d, dtype=torch.bfloat16), nz_k, nz_k, tnd_paged),
        ("bsnd-prefix-mask", torch.zeros(2, 64, n, d, dtype=torch.float16), torch.zeros(2, 64, kv_n, d, dtype=torch.float16),
         torch.zeros(2, 64, kv_n, d, dtype=torch.float16),
         dict(input_layout="BSND", key_shared_prefix=torch.zeros(1, 32, kv_n, d, dtype=torch.float16),
              value_shared_prefix=torch.zeros(1, 32, kv_n, d, dtype=torch.float16),
              atten_mask=torch.zeros(2, 1, 64, 96, dtype=torch.bool))),
        ("bnsd-mla-rope-d512", torch.zeros(2, n, 4, 512, dtype=torch.bfloat16), torch.zeros(2, 1, 256, 512, dtype=torch.bfloat16),
         torch.zeros(2, 1, 256, 512, dtype=torch.bfloat16),
         dict(input_layout="BNSD", query_rope=torch.zeros(2, n, 4, 64, dtype=torch.bfloat16),
              key_rope=torch.zeros(2, 1, 256, 64, dtype=torch.bfloat16), sparse_mode=3, atten_mask=tri)),
        ("bsh-leftpad-int8-channel", torch.zeros(2, 64, n * d, dtype=torch.float16), torch.zeros(2, 64, kv_n * d, dtype=torch.int8),
         torch.zeros(2, 64, kv_n * d, dtype=torch.int8),
         dict(input_layout="BSH", actual_seq_lengths=[40, 64], actual_seq_lengths_kv=[50, 64],
              query_padding_size=torch.zeros(1, dtype=torch.int64), kv_padding_size=torch.zeros(1, dtype=torch.int64),
              antiquant_scale=torch.ones(2, kv_n * d, dtype=torch.float16),
              antiquant_offset=torch.zeros(2, kv_n * d, dtype=torch.float16))),
        ("bnsd-decode-int8-token", torch.zeros(2, n, 1, d, dtype=torch.bfloat16), torch.zeros(2, kv_n, 256, d, dtype=torch.int8),
         torch.zeros(2, kv_n, 256, d, dtype=torch.int8),
         dict(input_layout="BNSD", antiquant_scale=torch.ones(2, 2, 256), antiquant_mode=1, softmax_lse_flag=True)),
        ("bsnd-fp16-hp-d128", torch.zeros(1, 64, n, d, dtype=torch.float16), torch.zeros(1, 64, n, d, dtype=torch.float16),
         torch.zeros(1, 64, n, d, dtype=torch.float16), dict(input_layout="BSND", num_key_value_heads=n)),
    ]
    out = []
    for name, q, k, v, kw in cases:
        kw = {"num_heads": n, "num_key_value_heads": kv_n, **kw}
        fc = fused.validate(q, k, v, **fused.with_defaults(kw))
        call = fc.prompt
        o, lse = fused.outputs(fc)
        lse_k = fc.lse_view(lse) if fc.lse_flag else None
        mask = call.mask.view(torch.uint8) if call.mask is not None and call.mask.dtype == torch.bool else call.mask
        h = call.heads
        from .ops import prompt

        tensors = (h.q, h.k, h.v, prompt.out_view(call, o), h.q if lse_k is None else lse_k,
                   h.q if mask is None else mask, h.q if call.pse is None else call.pse)
        out.append(_prefill_variant(name, call, o, lse_k, tensors))
    return out


_INT8_CASES = [   # name, input dtype, D, path, extra
    ("int8-d128-a-tensor", torch.int8, 128, "a", {}),
    ("int8-d128-a-channel-causal-words", torch.int8, 128, "a", {"per_channel": True, "sparse_mode": 3, "words": True}),
    ("int8-d128-b-mask-pse-gqa", torch.int8, 128, "b", {"mask": True, "pse": True, "num_key_value_heads": 1}),
    ("fp16-d128-c-channel", torch.float16, 128, "c", {"per_channel": True}),
    ("bf16-d128-c-tensor-band", torch.bfloat16, 128, "c", {"sparse_mode": 4}),
]


def _int8_prefill() -> list[Variant]:
    """Int8 prefill variants (spec ops §2.4): paths (a) int8 → int8, (b) int8 → fp16, (c) fp16/bf16 → int8,
    per-tensor and per-channel."""
    out = []
    for name, dtype, d, path, extra in _INT8_CASES:
        b, n, s = 1, 2, 64
        kv_n = extra.get("num_key_value_heads") or n
        q = torch.zeros(b, n, s, d, dtype=dtype)
        k = torch.zeros(b, kv_n, s, d, dtype=dtype)
        kw = {"num_heads": n, "input_layout": "BNSD", "num_key_value_heads": extra.get("num_key_value_heads", 0),
              "sparse_mode": extra.get("sparse_mode", 0), "next_tokens": 65535}
        if path in "ab":
            deq = torch.ones(1) if not extra.get("words") else torch.ones(1, dtype=torch.int64)
            kw.update(deq_scale1=deq, quant_scale1=torch.ones(1), deq_scale2=deq)
        if path in "ac":
            shape = (n, d) if extra.get("per_channel") else (1,)
            kw.update(quant_scale2=torch.ones(shape), quant_offset2=torch.zeros(shape))
        if kw["sparse_mode"]:
            kw["atten_mask"] = torch.ones(2048, 2048, dtype=torch.bool).triu(1)
        if extra.get("mask"):
            kw["atten_mask"] = torch.zeros(s, s, dtype=torch.bool)
        if extra.get("pse"):
            kw["pse_shift"] = torch.zeros(1, n, s, s, dtype=torch.float16)
        out.append(_planned_prefill(name, q, k, k, kw))
    return out


@dataclass(frozen=True)
class _LaunchConfig:
    meta: tuple
    num_warps: int
    num_stages: int


def prefill_int8_variants() -> list[tuple[str, dict, _LaunchConfig]]:
    """(name, kernel arguments by name, launch config: every constexpr, num_warps, num_stages) of each
    int8 prefill variant's prefill kernel (after its mask summary pass, where it has one), planned for sm_90."""
    out = []
    for v in _int8_prefill():
        (launch,) = (x for x in v.launches(90) if x.family == "prefill")
        cfg = _LaunchConfig(tuple(launch.constexprs().items()), launch.options["num_warps"],
                            launch.options["num_stages"])
        out.append((v.name, launch.by_name(), cfg))
    return out


def decode_variants() -> list[Variant]:
    """Representative decode variants (split and combine launches), planned for a GPU."""
    from .ops import incre

    # name, dtype, D, N, KV_N, extra: paged cache ("3d"/"4d"/"nz": NZ (blocks, KV_N, D/c0, bs, c0)), int8 K/V and
    # int8 output ("tensor"/"channel"), mask/pse/pad
    cases = [
        ("bf16-d128-gqa8", torch.bfloat16, 128, 8, 1, {}),
        ("fp16-d128-gqa8", torch.float16, 128, 8, 1, {}),
        ("fp16-d128-paged-bsh", torch.float16, 128, 8, 2, {"paged": "3d"}),
        ("fp16-d128-paged-nz", torch.float16, 128, 8, 2, {"paged": "nz"}),
        ("bf16-d128-gqa8-int8-paged", torch.bfloat16, 128, 8, 1, {"paged": "4d", "int8": "channel"}),
        ("bf16-d128-gqa8-int8-paged-nz", torch.bfloat16, 128, 8, 1, {"paged": "nz", "int8": "channel"}),
        ("fp16-d128-gqa8-int8", torch.float16, 128, 8, 1, {"int8": "channel"}),
        ("fp16-d128-int8-tensor", torch.float16, 128, 4, 4, {"int8": "tensor"}),
        ("fp16-d64-mask-pse-pad", torch.float16, 64, 4, 2, {"mask": True, "pse": True, "pad": True}),
        ("bf16-d128-quant-tensor", torch.bfloat16, 128, 8, 1, {"quant": "tensor"}),
        ("fp16-d128-int8-quant-channel", torch.float16, 128, 8, 2, {"int8": "channel", "quant": "channel"}),
        ("bf16-d256-mqa", torch.bfloat16, 256, 16, 1, {}),
        ("fp16-d512", torch.float16, 512, 2, 2, {}),
    ]
    out = []
    for name, dtype, d, n, kv_n, extra in cases:
        b, s2, bs = 2, 1024, 128
        kv_dtype = torch.int8 if extra.get("int8") else dtype
        q = torch.zeros(b, n, 1, d, dtype=dtype)
        kw = {"num_heads": n, "num_key_value_heads": kv_n, "input_layout": "BNSD", "actual_seq_lengths": [s2] * b}
        if extra.get("paged") == "3d":
            k = torch.zeros(16, bs, kv_n * d, dtype=kv_dtype)
        elif extra.get("paged") == "4d":
            k = torch.zeros(16, kv_n, bs, d, dtype=kv_dtype)
        elif extra.get("paged") == "nz":
            c0 = 32 // kv_dtype.itemsize
            k = torch.zeros(16, kv_n, d // c0, bs, c0, dtype=kv_dtype)
        else:
            k = torch.zeros(b, kv_n, s2, d, dtype=kv_dtype)
        if extra.get("paged"):
            kw.update(block_table=torch.zeros(b, s2 // bs, dtype=torch.int32), block_size=bs)
        if extra.get("int8"):
            shape = (2,) if extra["int8"] == "tensor" else (2, kv_n, 1, d)
            kw.update(antiquant_scale=torch.ones(shape, dtype=dtype), antiquant_offset=torch.zeros(shape, dtype=dtype))
        if extra.get("mask"):
            kw["atten_mask"] = torch.zeros(b, s2, dtype=torch.bool)
        if extra.get("pse"):
            kw["pse_shift"] = torch.zeros(1, n, 1, s2, dtype=dtype)
        if extra.get("pad"):
            kw["kv_padding_size"] = torch.zeros(1, dtype=torch.int64)
        if extra.get("quant"):
            shape = (1,) if extra["quant"] == "tensor" else (n, d)
            kw.update(quant_scale2=torch.ones(shape), quant_offset2=torch.zeros(shape))
        out.append(Variant(name, _decode_launch(incre.validate(q, k, k, **kw))))
    return out


def _decode_launch(call) -> Callable[[], None]:
    from . import tasks
    from .kernels import decode
    from .ops import incre

    def launch():
        o = incre.output(call)
        p = incre.plan(call, o, None, on_gpu=True)
        n_acc, n_ml = p.static.workspace
        ws = torch.zeros(n_acc + n_ml, dtype=torch.float32)
        split, combine = incre.kernel_tensors(call, o, None, ws[:n_acc], ws[n_acc:],
                                              tasks.device_block(p.params, o.device))
        decode.launch(p.static, split, combine)

    return launch


def all_variants() -> list[Variant]:
    """Every kernel variant of every family, for the AOT check and the static report (``bench report``).
    A new family's variant list joins here."""
    return prefill_variants() + _int8_prefill() + fused_variants() + decode_variants()


def main() -> None:
    """Compile every representative variant for sm_80 and sm_90 (``--arch N``: for sm_N only); print one
    JSON line each."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m npu_kernels.aot")
    parser.add_argument("--arch", type=int, choices=ARCHS, action="append", help="target sm_N (repeatable)")
    for row in rows(all_variants(), parser.parse_args().arch or ARCHS):
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
