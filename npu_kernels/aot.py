"""Ahead-of-time compilation of kernel variants for a GPU target, on any machine (no GPU needed).

Runs only in a process where Triton is in compiled mode: set ``NPUK_COMPILE_ONLY=1`` before importing
``npu_kernels`` (``python -m npu_kernels.aot`` does). Resources come from the PTX assembler's report.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import time
from dataclasses import dataclass

import torch
import triton
from triton.backends.compiler import GPUTarget

_PTR_TYPES = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32", torch.int8: "*i8",
              torch.uint8: "*u8", torch.int32: "*i32", torch.int64: "*i64", torch.bool: "*i1"}


@dataclass(frozen=True)
class Compiled:
    arch: int
    registers: int
    spill_bytes: int            # spill stores + loads
    shared_bytes: int
    tensor_cores: str           # "wgmma", "mma" or "" (none)
    compile_s: float


def signature(fn, args: dict, constexprs: dict) -> dict[str, str]:
    """Triton signature of ``fn`` for example launch ``args`` (tensors → pointer types, ints, floats)."""
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


def compile_kernel(fn, args: dict, constexprs: dict, arch: int, num_warps: int, num_stages: int,
                   fp_fusion: bool = True) -> Compiled:
    """Compile ``fn`` (a ``triton.jit`` function) for ``sm_<arch>`` and read its resources; ``fp_fusion``
    as the launch's ``enable_fp_fusion``."""
    src = triton.compiler.ASTSource(fn=fn, signature=signature(fn, args, constexprs), constexprs=constexprs)
    start = time.perf_counter()
    kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                            options={"num_warps": num_warps, "num_stages": num_stages, "enable_fp_fusion": fp_fusion})
    elapsed = time.perf_counter() - start
    ptx = kernel.asm["ptx"]
    regs, spills = _ptxas_report(ptx, arch)
    cores = "wgmma" if "wgmma" in ptx else ("mma" if re.search(r"\bmma\.sync", ptx) else "")
    return Compiled(arch, regs, spills, int(kernel.metadata.shared), cores, elapsed)


def _ptxas_report(ptx: str, arch: int) -> tuple[int, int]:
    """(registers, spill bytes) from ``ptxas -v`` on the kernel's PTX."""
    from triton.backends.nvidia.compiler import get_ptxas

    try:
        ptxas = get_ptxas(arch).path
    except TypeError:                                    # triton < 3.7: get_ptxas() takes no arch
        ptxas = get_ptxas().path
    gpu = f"sm_{arch}a" if arch == 90 else f"sm_{arch}"
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as f:
        f.write(ptx)
        f.flush()
        out = subprocess.run([ptxas, "-v", f"--gpu-name={gpu}", f.name, "-o", "/dev/null"],
                             capture_output=True, text=True, check=True).stderr
    regs = int(re.search(r"Used (\d+) registers", out).group(1))
    spills = sum(int(x) for x in re.findall(r"(\d+) bytes spill (?:stores|loads)", out))
    return regs, spills


def _planned_prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kw: dict) -> tuple[dict, object]:
    """(kernel args, static config) of a prompt call planned for a GPU."""
    from .kernels import prefill
    from .ops import prompt

    call = prompt.validate(q, k, v, **kw)
    o = prompt.output(call)
    p = prompt.plan(call, o, None, on_gpu=True)
    mask = call.mask.view(torch.uint8) if call.mask is not None else q
    tensors = (call.heads.q, call.heads.k, call.heads.v, o, q, mask, call.pse if call.pse is not None else q,
               p.params.to(torch.int32))
    return prefill.kernel_args(p.static, tensors, call.quant.kernel_scales()), p.static


def prefill_variants() -> list[tuple[str, dict, object]]:
    """Representative prefill variants: (name, kernel args, static config), planned for a GPU."""
    cases = [
        ("fp16-d128", torch.float16, 128, 128, {}),
        ("bf16-d64-causal", torch.bfloat16, 64, 64, {"sparse_mode": 3, "atten_mask": "compressed"}),
        ("fp16-d128-mask-pse", torch.float16, 128, 128, {"atten_mask": "full", "pse_shift": True}),
        ("bf16-d192-dv128", torch.bfloat16, 192, 128, {}),
        ("fp16-d256", torch.float16, 256, 256, {}),
        ("bf16-d512-band", torch.bfloat16, 512, 512, {"sparse_mode": 4, "atten_mask": "compressed"}),
        ("fp16-d72-gqa", torch.float16, 72, 72, {"num_key_value_heads": 1}),
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
        out.append((name, *_planned_prefill(q, k, v, kw)))
    return out


def fused_variants() -> list[tuple[str, dict, object]]:
    """Prefill-kernel variants that only the fused operator reaches (token-major rows, paged caches,
    shared prefix, rope, left padding, anti-quantised K/V, lse), planned for a GPU."""
    from .kernels import prefill
    from .ops import fused, prompt

    tri = torch.ones(2048, 2048, dtype=torch.bool).triu(1)
    n, kv_n, d = 8, 1, 128
    paged_k = torch.zeros(32, 128, kv_n * d, dtype=torch.bfloat16)
    table = torch.zeros(2, 16, dtype=torch.int32)
    cases = [
        ("tnd-paged-causal-lse", torch.zeros(64, n, d, dtype=torch.bfloat16), paged_k, paged_k,
         dict(input_layout="TND", actual_seq_lengths=[32, 64], actual_seq_lengths_kv=[100, 200], block_table=table,
              block_size=128, sparse_mode=3, atten_mask=tri, softmax_lse_flag=True)),
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
    ]
    out = []
    for name, q, k, v, kw in cases:
        fc = fused.validate(q, k, v, **fused.with_defaults({"num_heads": n, "num_key_value_heads": kv_n, **kw}))
        call = fc.prompt
        o, lse = fused.outputs(fc)
        lse_k = fc.lse_view(lse) if fc.lse_flag else None
        p = prompt.plan(call, o, lse_k, on_gpu=True)
        mask = call.mask.view(torch.uint8) if call.mask is not None and call.mask.dtype == torch.bool else call.mask
        tensors = (call.heads.q, call.heads.k, call.heads.v, o, q if lse_k is None else lse_k,
                   q if mask is None else mask, q if call.pse is None else call.pse, p.params)
        args = prefill.kernel_args(p.static, tensors, call.quant.kernel_scales(), call.sources.tensors())
        out.append((name, args, p.static))
    return out


def prefill_int8_variants() -> list[tuple[str, dict, object]]:
    """Int8 prefill variants (spec ops §2.4): (name, kernel args, static config), planned for a GPU.
    Paths (a) int8 → int8, (b) int8 → fp16, (c) fp16/bf16 → int8, per-tensor and per-channel."""
    # name, input dtype, D, path, extra
    cases = [
        ("int8-d128-a-tensor", torch.int8, 128, "a", {}),
        ("int8-d128-a-channel-causal-words", torch.int8, 128, "a", {"per_channel": True, "sparse_mode": 3,
                                                                   "words": True}),
        ("int8-d128-b-mask-pse-gqa", torch.int8, 128, "b", {"mask": True, "pse": True, "num_key_value_heads": 1}),
        ("fp16-d128-c-channel", torch.float16, 128, "c", {"per_channel": True}),
        ("bf16-d128-c-tensor-band", torch.bfloat16, 128, "c", {"sparse_mode": 4}),
    ]
    out = []
    for name, dtype, d, path, extra in cases:
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
        out.append((name, *_planned_prefill(q, k, k, kw)))
    return out


def decode_variants() -> list[tuple[str, dict, dict, object]]:
    """Representative decode variants: (name, split kernel args, combine kernel args, static config),
    planned for a GPU."""
    from .kernels import decode
    from .ops import incre

    # name, dtype, D, N, KV_N, extra: paged cache ("3d"/"4d"), int8 K/V and int8 output ("tensor"/"channel"),
    # mask/pse/pad
    cases = [
        ("bf16-d128-gqa8", torch.bfloat16, 128, 8, 1, {}),
        ("fp16-d128-paged-bsh", torch.float16, 128, 8, 2, {"paged": "3d"}),
        ("bf16-d128-gqa8-int8-paged", torch.bfloat16, 128, 8, 1, {"paged": "4d", "int8": "channel"}),
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
        call = incre.validate(q, k, k, **kw)
        o = incre.output(call)
        p = incre.plan(call, o, None, on_gpu=True)
        n_acc, n_ml = p.static.workspace
        ws = torch.zeros(n_acc + n_ml, dtype=torch.float32)
        split, combine = incre.kernel_tensors(call, o, None, ws[:n_acc], ws[n_acc:], p.params)
        out.append((name, decode.split_args(p.static, split), decode.combine_args(p.static, combine), p.static))
    return out


@dataclass(frozen=True)
class Variant:
    kernel: str                 # kernel family, e.g. "prefill"
    name: str
    fn: object                  # the triton.jit function
    args: dict
    constexprs: dict
    num_warps: int
    num_stages: int
    fp_fusion: bool = True      # the launch's enable_fp_fusion


def all_variants() -> list[Variant]:
    """Every kernel variant of every family, for the AOT check and the static report (``bench report``).
    A new family's variant list joins here."""
    from .kernels import decode, prefill

    return [Variant("prefill", name, prefill._prefill_kernel, args, dict(cfg.meta), cfg.num_warps, cfg.num_stages,
                    prefill.fp_fusion(cfg.meta))
            for name, args, cfg in prefill_variants() + prefill_int8_variants() + fused_variants()] \
        + decode_kernel_variants(decode)


def decode_kernel_variants(decode) -> list[Variant]:
    """The split and combine kernels of every decode variant. Integer arguments equal to 1 (unit strides)
    are compiled as constants, as Triton's launcher specialises them."""
    def constants(args: dict, meta) -> dict:
        ones = {k: 1 for k, v in args.items() if k.startswith("stride_") and type(v) is int and v == 1}
        return {**ones, **dict(meta)}

    out = []
    for name, split, combine, cfg in decode_variants():
        out.append(Variant("decode_split", name, decode._decode_split_kernel, split,
                           constants(split, cfg.split_meta), cfg.num_warps, cfg.num_stages))
        out.append(Variant("decode_combine", name, decode._decode_combine_kernel, combine,
                           constants(combine, cfg.combine_meta), 4, 1))
    return out


def main() -> None:
    """Compile every representative variant for sm_80 and sm_90; print one JSON line each."""
    import json

    for v in all_variants():
        for arch in (80, 90):
            try:
                c = compile_kernel(v.fn, v.args, v.constexprs, arch, v.num_warps, v.num_stages, v.fp_fusion)
                row = {"kernel": v.kernel, "variant": v.name, **c.__dict__, "error": None}
            except Exception as exc:  # reported, not raised: the caller tabulates failures
                row = {"kernel": v.kernel, "variant": v.name, "arch": arch, "error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
