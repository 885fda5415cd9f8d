"""The ``torch_npu`` and ``torchair`` module objects, and ``torch.npu``, built from npu_kernels and the
runtime.

Each module holds only what is emulated; any other attribute raises ``NotEmulatedError`` (an
``AttributeError``, so ``hasattr`` feature checks still work) naming it, and importing a submodule
that is not emulated raises ``ModuleNotFoundError`` naming it. Submodules of torch_npu hold the same
objects as ``torch.npu`` under the names torch_npu's submodule of that name has.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import types

import npu_kernels as nk

from .. import (Event, ExternalEvent, NPUGraph, NpuGraphOpHandler, Stream, TaskGroupHandle, current_stream,
                default_stream, graph, graph_pool_handle, graph_task_group_begin, graph_task_group_end,
                graph_task_update_begin, graph_task_update_end, is_current_stream_capturing,
                make_graphed_callables, register_npu_graph_handler, set_stream, stream, synchronize)
from .. import auto_dispatch
from .. import torchair as air
from . import devices, memory, platform, rng, testing
from .graphs import npu_fused_infer_attention_score_out_graph

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


class NpuConfig:
    """``torch.npu.config``: setting ``allow_internal_format`` is accepted and changes nothing, since tensors
    here are always in the ND format (the NPU's private formats do not exist). As on torch_npu, the option
    cannot be read back."""

    def __setattr__(self, name: str, value) -> None:
        if name != "allow_internal_format":
            raise self.not_emulated(name)

    def __getattr__(self, name: str):
        raise self.not_emulated(name)

    @staticmethod
    def not_emulated(name: str) -> NotEmulatedError:
        return NotEmulatedError(f"torch.npu.config.{name} is not emulated by runtime.compat "
                                "(emulated: setting allow_internal_format)")


NPU_NAMES = {
    "set_device": devices.set_device, "current_device": devices.current_device,
    "device_count": devices.device_count, "is_available": devices.is_available,
    "get_device_name": platform.get_device_name, "get_soc_version": platform.get_soc_version,
    "set_compile_mode": platform.set_compile_mode, "is_jit_compile_false": platform.is_jit_compile_false,
    "empty_cache": memory.empty_cache, "host_empty_cache": memory.host_empty_cache,
    "mem_get_info": memory.mem_get_info, "manual_seed": rng.manual_seed, "manual_seed_all": rng.manual_seed_all,
    "synchronize": synchronize, "current_stream": current_stream, "default_stream": default_stream,
    "set_stream": set_stream, "stream": stream, "Stream": Stream, "Event": Event,
    "ExternalEvent": ExternalEvent, "NPUGraph": NPUGraph, "graph": graph,
    "graph_pool_handle": graph_pool_handle, "is_current_stream_capturing": is_current_stream_capturing,
    "make_graphed_callables": make_graphed_callables,
    "graph_task_group_begin": graph_task_group_begin, "graph_task_group_end": graph_task_group_end,
    "graph_task_update_begin": graph_task_update_begin, "graph_task_update_end": graph_task_update_end,
    "NpuGraphOpHandler": NpuGraphOpHandler, "register_npu_graph_handler": register_npu_graph_handler,
    "config": NpuConfig(),
}

# torch_npu.npu submodule -> the names of torch.npu it holds
NPU_SUBMODULES = {
    "utils": ("synchronize", "set_device", "current_device", "stream", "set_stream", "current_stream",
              "default_stream", "get_soc_version"),
    "streams": ("Stream", "Event", "ExternalEvent"),
    "graphs": ("NPUGraph", "graph", "graph_pool_handle", "is_current_stream_capturing", "make_graphed_callables",
               "graph_task_group_begin", "graph_task_group_end", "graph_task_update_begin",
               "graph_task_update_end"),
    "memory": ("empty_cache", "host_empty_cache", "mem_get_info"),
    "random": ("manual_seed", "manual_seed_all"),
    "npu_config": ("set_compile_mode", "is_jit_compile_false"),
}


def operators() -> dict:
    """The torch_npu operators of npu_kernels (``npu_kernels.OPERATORS``)."""
    return {name: getattr(nk, name) for name in nk.OPERATORS}


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


def _torch_npu() -> dict:
    """torch_npu and its submodules, by module name."""
    npu = _namespace("torch.npu", "torch.npu on runtime (streams, events, NPUGraph, task update).", NPU_NAMES,
                     package=True)
    handler_names = {"NpuGraphOpHandler": NpuGraphOpHandler, "register_npu_graph_handler": register_npu_graph_handler}
    built = {
        "torch_npu": _namespace("torch_npu", "torch_npu on npu_kernels and runtime.",
                                {"__version__": platform.version(), **platform.CUSTOM_DTYPES, **operators()},
                                package=True),
        "torch_npu.npu": npu,
        **{f"torch_npu.npu.{sub}": _namespace(f"torch_npu.npu.{sub}", f"torch_npu.npu.{sub}.",
                                              {n: NPU_NAMES[n] for n in names})
           for sub, names in NPU_SUBMODULES.items()},
        "torch_npu.npu._npugraph_handlers": _namespace("torch_npu.npu._npugraph_handlers", "Graph handlers.",
                                                       handler_names, package=True),
        "torch_npu.npu._npugraph_handlers.npugraph_handler": _namespace(
            "torch_npu.npu._npugraph_handlers.npugraph_handler", "The graph handler registry.",
            {**handler_names, "_NPU_GRAPH_OP_HANDLERS": auto_dispatch._handlers}),
        "torch_npu._C": _namespace("torch_npu._C", "torch_npu's extension names on the runtime.", {
            "_NPUTaskGroupHandle": TaskGroupHandle, "_weak_ref_tensor": memory.weak_ref_tensor,
            "_npu_fused_infer_attention_score_out_graph": npu_fused_infer_attention_score_out_graph}),
        "torch_npu.testing": _namespace("torch_npu.testing", "torch_npu.testing.", {}, package=True),
        "torch_npu.testing.testcase": _namespace("torch_npu.testing.testcase", "torch_npu's TestCase.", {
            "TestCase": testing.TestCase, "run_tests": testing.run_tests}),
        "torch_npu.testing.common_utils": _namespace("torch_npu.testing.common_utils", "Test decorators.", {
            "SupportedDevices": testing.SupportedDevices, "get_npu_device": testing.get_npu_device,
            "set_npu_device": testing.set_npu_device}),
    }
    for name, module in built.items():
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(built[parent], child, module)
    return {"torch.npu": npu, **built}


def _torchair() -> dict:
    """torchair and its submodules, by module name."""
    scope = _namespace("torchair.scope", "torchair.scope on runtime.torchair.", {
        name: getattr(air.scope, name) for name in ("npu_stream_switch", "npu_wait_tensor", "super_kernel")})
    ops = _namespace("torchair.ops", "torchair.ops on runtime.torchair.", {
        name: getattr(air.ops, name) for name in (
            "npu_create_tagged_event", "npu_tagged_event_record", "npu_tagged_event_wait",
            "npu_record_tagged_stream", "npu_wait_tensor", "NpuStreamSwitch")})
    compiler_config = _namespace("torchair.configs.compiler_config", "CompilerConfig.",
                                 {"CompilerConfig": CompilerConfig})
    configs = _namespace("torchair.configs", "torchair.configs.", {"compiler_config": compiler_config},
                         package=True)
    utils = _namespace("torchair.core.utils", "torchair's logger.", {"logger": logging.getLogger("torchair")})
    core = _namespace("torchair.core", "torchair.core.", {"utils": utils}, package=True)
    torchair = _namespace("torchair", "torchair on runtime.torchair.", {
        "CompilerConfig": CompilerConfig, "get_npu_backend": air.get_npu_backend, "ops": ops, "scope": scope,
        "configs": configs, "core": core}, package=True)
    return {"torchair": torchair, "torchair.scope": scope, "torchair.ops": ops, "torchair.configs": configs,
            "torchair.configs.compiler_config": compiler_config, "torchair.core": core,
            "torchair.core.utils": utils}


def build() -> dict:
    """Module name -> module object, for ``sys.modules``: torch_npu, torch.npu, torchair and submodules."""
    return {**_torch_npu(), **_torchair()}


class NotEmulatedFinder(importlib.abc.MetaPathFinder):
    """Refuses, by name, submodules of torch_npu and torchair that are not emulated."""

    def find_spec(self, fullname: str, path=None, target=None):
        if fullname.partition(".")[0] in ROOTS:
            # no ``name=``: ``from torchair import x`` would swallow the error and say "cannot import name"
            raise ModuleNotFoundError(f"{fullname} is not emulated by runtime.compat")
        return None
