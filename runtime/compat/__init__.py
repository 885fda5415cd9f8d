"""Run unmodified torch_npu / torchair scripts on the npu device of npu_kernels (CUDA or the CPU).

    import runtime.compat
    runtime.compat.install()          # or: with runtime.compat.install(): ...
    import torch, torch_npu, torchair
    q = torch.randn(1, 8, 64, 128, dtype=torch.float16).npu()
    ...
    runtime.compat.uninstall()        # torch as it was

    python -m runtime.compat SCRIPT [ARGS...]

``install()`` puts ``torch_npu`` (with ``npu``, ``_C`` and ``testing`` submodules), ``torchair`` (with
``configs.compiler_config``, ``core.utils``, ``scope``, ``ops``) and ``torch.npu`` into ``sys.modules``,
sets ``torch.npu``, ``Tensor.npu()``, ``Tensor.is_npu``, ``Module.npu()`` and a ``torch.Generator`` that
accepts ``device="npu"``, defines the ``torch.ops.atb`` operators (``atb``), and enters ``NpuDeviceMode``
(device strings ``"npu"`` / ``"npu:N"``, pinned memory, see ``devices``). Nothing is patched before it;
``uninstall()`` restores every attribute and module entry and removes the ``atb`` operators.
``set_soc_version`` chooses the emulated A2/A3 part (``platform``).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import torch
from torch.overrides import _get_current_function_mode_stack

from . import atb, devices, modules, rng
from .modules import NotEmulatedError
from .platform import set_soc_version

_ABSENT = object()


class Installation:
    """What ``install()`` changed, to be undone in reverse order. As a context manager it uninstalls at
    the exit of the outermost ``with install()`` unless ``install()`` was also called outside a block."""

    def __init__(self):
        self.saved: list = []        # (dict or object, name, previous value or _ABSENT)
        self.depth = 1               # install() calls not yet matched by a block exit
        self.names = devices.device_names()
        self.mode = devices.NpuDeviceMode(self.names)
        self.finder = modules.NotEmulatedFinder()
        self.atb = None              # the torch.ops.atb library while installed

    def set_attr(self, obj, name: str, value) -> None:
        self.saved.append((obj, name, vars(obj).get(name, _ABSENT)))
        setattr(obj, name, value)

    def set_item(self, mapping: dict, name: str, value) -> None:
        self.saved.append((mapping, name, mapping.get(name, _ABSENT)))
        mapping[name] = value

    def apply(self) -> None:
        # vLLM-Ascend puts empty modules in place of triton.experimental.gluon(.language) unless they are
        # imported already; Triton versions that have gluon import gluon.nvidia at every launch
        if importlib.util.find_spec("triton.experimental.gluon") is not None:
            importlib.import_module("triton.experimental.gluon.nvidia")
        built = modules.build()
        for name, module in built.items():
            self.set_item(sys.modules, name, module)
        self.set_attr(torch, "npu", built["torch.npu"])
        self.set_attr(torch, "Generator", rng.generator_class(self.names))
        # Dynamo snapshots Tensor's attributes when imported; the methods must be in it to be traced
        dynamo_tensor = sys.modules.get("torch._dynamo.variables.tensor")
        for name, method in devices.tensor_methods(self.names).items():
            self.set_attr(torch.Tensor, name, method)
            if dynamo_tensor is not None:
                self.set_item(dynamo_tensor.all_tensor_attrs, name, method)
        self.set_attr(torch.nn.Module, "npu", devices.module_npu)
        self.atb = atb.library()
        sys.meta_path.insert(0, self.finder)
        self.mode.__enter__()

    def undo(self) -> None:
        stack = _get_current_function_mode_stack()
        if not stack or stack[-1] is not self.mode:
            raise RuntimeError("runtime.compat.uninstall(): the npu device mode is not the innermost torch "
                               "function mode of this thread; leave the other modes (or call it from the "
                               "thread that called install()) first")
        self.mode.__exit__(None, None, None)
        sys.meta_path.remove(self.finder)
        self.atb._destroy()
        for obj, name, previous in reversed(self.saved):
            if isinstance(obj, dict):
                if previous is _ABSENT:
                    del obj[name]
                else:
                    obj[name] = previous
            elif previous is _ABSENT:
                delattr(obj, name)
            else:
                setattr(obj, name, previous)
        self.saved.clear()

    def __enter__(self) -> "Installation":
        return self

    def __exit__(self, *exc) -> bool:
        self.depth -= 1
        if self.depth == 0 and _current is self:
            uninstall()
        return False


_current: Installation | None = None


def install() -> Installation:
    """Install the layer (idempotent: a second call returns the active installation)."""
    global _current
    if _current is not None:
        _current.depth += 1
        return _current
    for name in modules.ROOTS:
        if name in sys.modules:
            raise RuntimeError(f"runtime.compat.install(): a {name} module is already imported "
                               f"({sys.modules[name]!r}); the layer replaces it and cannot run beside it")
    installation = Installation()
    installation.apply()
    _current = installation
    return installation


def uninstall() -> None:
    """Restore torch, ``torch.Tensor`` and ``sys.modules`` as they were before the first ``install()``."""
    global _current
    if _current is None:
        return
    _current.undo()
    _current = None


def installed() -> bool:
    return _current is not None


__all__ = ["Installation", "NotEmulatedError", "install", "installed", "set_soc_version", "uninstall"]
