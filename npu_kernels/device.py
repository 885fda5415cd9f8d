"""Which device "npu" means, how operators run on it, and the switch of Triton into interpreter mode.

The interpreter must be on before Triton's standard library (``tl.max``, ``tl.sum`` ...) runs: those
functions are ``JITFunction`` objects created at import, and a ``JITFunction`` refuses to run outside a
compiled kernel. ``import torch._dynamo`` imports Triton, so Triton may already be loaded in compiled
mode; ``use_interpreter`` then rebinds every loaded ``triton.language`` JIT function to an
``InterpretedFunction``. Our own kernels are decorated after this runs, so they are interpreted too.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys

import torch

from .env import compile_only, cpu_kernels, device_choice


@functools.cache
def npu_device() -> torch.device:
    """The device that plays the NPU: ``cuda`` when present (or forced), else ``cpu``."""
    choice = device_choice()
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("NPUK_DEVICE=cuda but torch.cuda.is_available() is False")
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


_forced: list[str] = []


@contextlib.contextmanager
def forced_execution(how: str):
    """Plans made inside take ``how`` whatever the device (``python -m bench host`` measures the compiled
    launch path on any machine, with the launch replaced by a recorder)."""
    _forced.append(how)
    try:
        yield
    finally:
        _forced.pop()


def execution(device: torch.device) -> str:
    """How operators run on ``device``: ``compiled`` (Triton kernels on a GPU), ``native`` (vectorised
    PyTorch on the CPU, ``npu_kernels.reference.execute``) or ``interpret`` (the Triton kernels in
    Triton's interpreter, ``NPUK_CPU_KERNELS=triton``)."""
    if _forced:
        return _forced[-1]
    if device.type == "cuda":
        return "compiled"
    return "native" if cpu_kernels() == "native" else "interpret"


def interpreted() -> bool:
    """True when kernels run through Triton's interpreter (the device is the CPU)."""
    return npu_device().type == "cpu" and not compile_only()


def use_interpreter() -> None:
    """Put Triton into interpreter mode, also when it was already imported in compiled mode."""
    os.environ["TRITON_INTERPRET"] = "1"
    _fix_interpreted_bf16_dot()
    _fix_interpreted_bf16_cast()
    _fix_interpreted_index()
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith("triton.language"):
            continue
        for attr, value in list(vars(module).items()):
            if isinstance(value, JITFunction):
                setattr(module, attr, InterpretedFunction(value.fn))


def _fix_interpreted_bf16_dot() -> None:
    """The interpreter multiplies bfloat16 operands of ``tl.dot`` as their raw uint16 bits; widen
    them to float32 first (exact, and the product is accumulated in float32 as on the GPU)."""
    import triton.language as tl
    from triton.runtime.interpreter import InterpreterBuilder

    dot = InterpreterBuilder.create_dot
    if getattr(dot, "widens_bf16", False):
        return

    def create_dot(self, a, b, d, *args):
        a, b = (self.cast_impl(x, tl.float32) if x.dtype.scalar == tl.bfloat16 else x for x in (a, b))
        return dot(self, a, b, d, *args)

    create_dot.widens_bf16 = True
    InterpreterBuilder.create_dot = create_dot


def _fix_interpreted_bf16_cast() -> None:
    """The interpreter converts float32 to bfloat16 by dropping the low 16 bits; the GPU rounds to
    nearest even, as torch does. Round with torch."""
    import numpy as np
    import triton.language as tl
    from triton.runtime.interpreter import InterpreterBuilder, TensorHandle

    cast = InterpreterBuilder.cast_impl
    if getattr(cast, "rounds_bf16", False):
        return

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            x = torch.from_numpy(np.ascontiguousarray(src.data, dtype=np.float32))
            return TensorHandle(x.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16), tl.bfloat16)
        return cast(self, src, dst_type)

    cast_impl.rounds_bf16 = True
    InterpreterBuilder.cast_impl = cast_impl


def _fix_interpreted_index() -> None:
    """A scalar of the interpreter is a one-element array; ``range`` over one needs its ``__index__``,
    which triton before 3.7 takes as ``int(array)`` (an error in NumPy >= 2.4 for a 1-D array). Squeeze it
    first, as later versions do."""
    from triton.runtime import interpreter

    patch = getattr(interpreter, "_patch_lang_tensor", None)
    if patch is None or getattr(patch, "squeezes_index", False):
        return

    def patch_lang_tensor(tensor, scope):
        patch(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    patch_lang_tensor.squeezes_index = True
    interpreter._patch_lang_tensor = patch_lang_tensor


def check_device(name: str, tensor: torch.Tensor) -> None:
    """Inputs must live on the npu device (as on Ascend, where host tensors are rejected)."""
    dev = npu_device()
    if tensor.device.type != dev.type:
        raise ValueError(
            f"{name}: tensor is on {tensor.device}, but the npu device is {dev} "
            f"(move inputs with .to({str(dev)!r}) or set NPUK_DEVICE)"
        )
