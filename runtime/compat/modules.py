"""The ``torch_npu`` and ``torchair`` module objects, and ``torch.npu``, built from npu_kernels and the
runtime.

Each module holds only what is emulated; any other attribute raises ``NotEmulatedError`` (an
``AttributeError``, so ``hasattr`` feature checks still work) naming it, and importing a submodule
that is not emulated raises ``ModuleNotFoundError`` naming it.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import types

import npu_kernels as nk

from .. import (NPUGraph, Event, ExternalEvent, NpuGraphOpHandler, Stream, current_stream, default_stream, graph,
                graph_pool_handle, graph_task_group_begin, graph_task_group_end, graph_task_update_begin,
                graph_task_update_end, is_current_stream_capturing, make_graphed_callables,
                register_npu_graph_handler, set_stream, stream, synchronize)
from .. import torchair as air
from . import devices

ROOTS = ("torch_npu", "torchair")


class NotEmulatedError(AttributeError):
    """An attribute of ``torch_npu`` / ``torch.npu`` / ``torchair`` that this layer does not provide."""


def _namespace(name: str, doc: str, attrs: dict, package: bool = False) -> types.ModuleType:
    module = types.ModuleType(name, doc)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=package)
    if package:
        module.__path__ = []
    module.__dict__.update(attrs)

    def __getattr__(attr: str):
        emulated = sorted(k for k in vars(module) if not k.startswith("__"))
        raise NotEmulatedError(f"{name}.{attr} is not emulated by runtime.compat "
                               f"(emulated in {name}: {', '.join(emulated)})")

    module.__getattr__ = __getattr__
    return module


def npu_module() -> types.ModuleType:
    """``torch.npu``, the same object as ``torch_npu.npu``."""
    return _namespace("torch.npu", "torch.npu on runtime (streams, events, NPUGraph, task update).", {
        "set_device": devices.set_device, "current_device": devices.current_device,
        "device_count": devices.device_count, "is_available": devices.is_available,
        "synchronize": synchronize, "current_stream": current_stream, "default_stream": default_stream,
        "set_stream": set_stream, "stream": stream, "Stream": Stream, "Event": Event,
        "ExternalEvent": ExternalEvent, "NPUGraph": NPUGraph, "graph": graph,
        "graph_pool_handle": graph_pool_handle, "is_current_stream_capturing": is_current_stream_capturing,
        "make_graphed_callables": make_graphed_callables,
        "graph_task_group_begin": graph_task_group_begin, "graph_task_group_end": graph_task_group_end,
        "graph_task_update_begin": graph_task_update_begin, "graph_task_update_end": graph_task_update_end,
        "NpuGraphOpHandler": NpuGraphOpHandler, "register_npu_graph_handler": register_npu_graph_handler,
    })


class GraphDumpConfig:
    """``debug.graph_dump``: dumps of the GE graph, which has no counterpart here (nothing is dumped)."""

    def __init__(self):
        self.type = None
        self.path = "./"


class CompilerConfig(air.CompilerConfig):
    """``torchair.CompilerConfig`` (runtime.torchair's), also accepting ``debug.graph_dump`` settings."""

    def __init__(self):
        super().__init__()
        self.debug.graph_dump = GraphDumpConfig()


def build() -> dict:
    """Module name -> module object, for ``sys.modules``: torch_npu, torch.npu, torchair and submodules."""
    npu = npu_module()
    torch_npu = _namespace("torch_npu", "torch_npu on npu_kernels and runtime.", {
        "npu": npu,
        "npu_prompt_flash_attention": nk.npu_prompt_flash_attention,
        "npu_incre_flash_attention": nk.npu_incre_flash_attention,
        "npu_fused_infer_attention_score": nk.npu_fused_infer_attention_score,
        "_npu_fused_infer_attention_score_get_max_workspace": nk._npu_fused_infer_attention_score_get_max_workspace,
        "_npu_fused_infer_attention_score_infer_output": nk._npu_fused_infer_attention_score_infer_output,
        "npu_trans_quant_param": nk.npu_trans_quant_param,
    }, package=True)
    scope = _namespace("torchair.scope", "torchair.scope on runtime.torchair.", {
        "npu_stream_switch": air.scope.npu_stream_switch})
    ops = _namespace("torchair.ops", "torchair.ops on runtime.torchair.", {
        name: getattr(air.ops, name) for name in (
            "npu_create_tagged_event", "npu_tagged_event_record", "npu_tagged_event_wait",
            "npu_record_tagged_stream")})
    compiler_config = _namespace("torchair.configs.compiler_config", "CompilerConfig.",
                                 {"CompilerConfig": CompilerConfig})
    configs = _namespace("torchair.configs", "torchair.configs.", {"compiler_config": compiler_config},
                         package=True)
    utils = _namespace("torchair.core.utils", "torchair's logger.", {"logger": logging.getLogger("torchair")})
    core = _namespace("torchair.core", "torchair.core.", {"utils": utils}, package=True)
    torchair = _namespace("torchair", "torchair on runtime.torchair.", {
        "CompilerConfig": CompilerConfig, "get_npu_backend": air.get_npu_backend, "ops": ops, "scope": scope,
        "configs": configs, "core": core}, package=True)
    return {"torch.npu": npu, "torch_npu": torch_npu, "torch_npu.npu": npu, "torchair": torchair,
            "torchair.scope": scope, "torchair.ops": ops, "torchair.configs": configs,
            "torchair.configs.compiler_config": compiler_config, "torchair.core": core,
            "torchair.core.utils": utils}


class NotEmulatedFinder(importlib.abc.MetaPathFinder):
    """Refuses, by name, submodules of torch_npu and torchair that are not emulated."""

    def find_spec(self, fullname: str, path=None, target=None):
        if fullname.partition(".")[0] in ROOTS:
            # no ``name=``: ``from torchair import x`` would swallow the error and say "cannot import name"
            raise ModuleNotFoundError(f"{fullname} is not emulated by runtime.compat")
        return None
