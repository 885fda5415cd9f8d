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


def compile_kernel(fn, args: dict, constexprs: dict, arch: int, num_warps: int, num_stages: int) -> Compiled:
    """Compile ``fn`` (a ``triton.jit`` function) for ``sm_<arch>`` and read its resources."""
    src = triton.compiler.ASTSource(fn=fn, signature=signature(fn, args, constexprs), constexprs=constexprs)
    start = time.perf_counter()
    kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                            options={"num_warps": num_warps, "num_stages": num_stages})
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


def prefill_variants() -> list[tuple[str, dict, object]]:
    """Representative prefill variants: (name, kernel args, static config), planned for a GPU."""
    from .kernels import prefill
    from .ops import prompt

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
        call = prompt.validate(q, k, v, **kw)
        o = prompt.output(call)
        p = prompt.plan(call, o, None, on_gpu=True)
        mask = call.mask.view(torch.uint8) if call.mask is not None else q
        tensors = (call.heads.q, call.heads.k, call.heads.v, o, q, mask, call.pse if call.pse is not None else q,
                   p.params.to(torch.int32))
        out.append((name, prefill.kernel_args(p.static, tensors), p.static))
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


def all_variants() -> list[Variant]:
    """Every kernel variant of every family, for the AOT check and the static report (``bench report``).
    A new family's variant list joins here."""
    from .kernels import prefill

    return [Variant("prefill", name, prefill._prefill_kernel, args, dict(cfg.meta), cfg.num_warps, cfg.num_stages)
            for name, args, cfg in prefill_variants()]


def main() -> None:
    """Compile every representative variant for sm_80 and sm_90; print one JSON line each."""
    import json

    from .kernels import prefill

    for name, args, cfg in prefill_variants():
        for arch in (80, 90):
            try:
                c = compile_kernel(prefill._prefill_kernel, args, dict(cfg.meta), arch, cfg.num_warps, cfg.num_stages)
                row = {"kernel": "prefill", "variant": name, **c.__dict__, "error": None}
            except Exception as exc:  # reported, not raised: the caller tabulates failures
                row = {"kernel": "prefill", "variant": name, "arch": arch, "error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
