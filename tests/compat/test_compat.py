"""runtime.compat in this process: nothing patched before install(), uninstall() restores torch, the
npu device strings, the module objects and the error for what is not emulated. Dynamo is imported
before the layer is installed here (a fresh interpreter, where it is not, runs the seed scripts)."""

import importlib.util
import sys

import pytest
import torch
import torch._dynamo  # noqa: F401
from torch.overrides import TorchFunctionMode, _get_current_function_mode_stack

import npu_kernels as nk
import runtime
from runtime import compat
from runtime.compat.devices import NpuDeviceMode

NAMES = tuple(compat.modules.build())


@pytest.fixture
def installed():
    compat.install()
    try:
        yield
    finally:
        compat.uninstall()


def snapshot() -> dict:
    """Everything install() may touch."""
    return {"torch": dict(vars(torch)), "Tensor": dict(vars(torch.Tensor)), "Module": dict(vars(torch.nn.Module)),
            "dynamo": dict(torch._dynamo.variables.tensor.all_tensor_attrs),
            "modules": {n: sys.modules.get(n) for n in NAMES}, "meta_path": list(sys.meta_path),
            "modes": list(_get_current_function_mode_stack())}


def assert_pristine():
    assert not compat.installed()
    assert not hasattr(torch, "npu") and not hasattr(torch.Tensor, "npu") and not hasattr(torch.Tensor, "is_npu")
    assert not hasattr(torch.nn.Module, "npu") and torch.Generator is torch._C.Generator
    assert not hasattr(torch.ops.atb, "_npu_paged_attention")
    assert not any(n in sys.modules for n in NAMES)
    assert not any(isinstance(m, NpuDeviceMode) for m in _get_current_function_mode_stack())
    with pytest.raises(RuntimeError, match="npu"):
        torch.empty(2, device="npu")
    with pytest.raises(ModuleNotFoundError):
        import torch_npu  # noqa: F401


def test_nothing_is_patched_before_install():
    assert_pristine()


def test_uninstall_restores_torch_exactly(installed):
    compat.uninstall()
    before = snapshot()
    compat.install()
    import torch_npu
    import torchair  # noqa: F401
    assert torch.npu is torch_npu.npu and torch.empty(2, device="npu").device.type == nk.npu_device().type
    compat.uninstall()
    assert snapshot() == before
    assert_pristine()


def test_context_manager_uninstalls_at_the_outermost_exit():
    with compat.install() as installation:
        with compat.install() as inner:
            assert inner is installation
        assert compat.installed() and torch.ones(1).npu().device.type == nk.npu_device().type
    assert_pristine()


def test_context_manager_inside_a_plain_install_keeps_it(installed):
    with compat.install():
        pass
    assert compat.installed() and torch.ones(1).npu().is_npu


def test_install_refuses_a_foreign_torch_npu(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_npu", object())
    with pytest.raises(RuntimeError, match="torch_npu module is already imported"):
        compat.install()
    assert not compat.installed() and not hasattr(torch, "npu")


def test_uninstall_inside_another_mode_is_refused(installed):
    with TorchFunctionMode():
        with pytest.raises(RuntimeError, match="innermost torch function mode"):
            compat.uninstall()
        assert compat.installed()


FACTORIES = {
    "empty": lambda d: torch.empty(2, 3, device=d),
    "zeros": lambda d: torch.zeros([2, 2], device=d),
    "ones_fp16": lambda d: torch.ones(4, 4, dtype=torch.float16, device=d),
    "randn": lambda d: torch.randn(3, device=d),
    "full": lambda d: torch.full((2,), 7.0, device=d),
    "arange": lambda d: torch.arange(5, device=d),
    "tensor": lambda d: torch.tensor([1, 2], device=d),
    "empty_like": lambda d: torch.empty_like(torch.ones(2), device=d),
    "new_zeros": lambda d: torch.ones(2).new_zeros(3, device=d),
    "to_positional": lambda d: torch.ones(2).to(d),
    "to_keyword": lambda d: torch.ones(2).to(device=d),
    "to_with_dtype": lambda d: torch.ones(2).to(d, torch.float16),
}


@pytest.mark.parametrize("name", FACTORIES)
@pytest.mark.parametrize("device_string", ["npu", "npu:0"])
def test_device_strings_map_to_the_npu_device(installed, name, device_string):
    t = FACTORIES[name](device_string)
    assert t.device.type == nk.npu_device().type and t.is_npu


def test_tensor_npu(installed):
    x = torch.arange(4.0)
    for y in (x.npu(), x.npu(0), x.npu("npu:0"), x.npu(non_blocking=True)):
        assert y.device.type == nk.npu_device().type and torch.equal(y.cpu(), x)
    assert x.npu(torch.device("npu")).device.type == nk.npu_device().type
    with pytest.raises(ValueError, match=r"device 'npu:7': the npu devices are npu, npu:0"):
        x.npu(7)


def test_other_strings_and_devices_are_left_alone(installed):
    x = torch.eye(2)
    assert torch.equal(torch.einsum("ij->ji", x), x.t())
    assert x.to("cpu").device.type == "cpu"
    assert torch.empty(1, device="meta").device.type == "meta"


def test_torch_device_of_npu_is_the_real_device(installed):
    real = nk.npu_device().type
    assert torch.device("npu").type == torch.device("npu:0").type == torch.device("npu", 0).type == real
    assert torch.zeros(1, device=torch.device("npu:0")).device.type == real


def test_unknown_npu_device_is_an_error(installed):
    with pytest.raises(ValueError, match=r"device 'npu:7': the npu devices are npu, npu:0"):
        torch.zeros(1, device="npu:7")


def test_set_device_and_device_queries(installed):
    torch.npu.set_device(0)
    torch.npu.set_device("npu:0")
    torch.npu.set_device(torch.device("npu:0"))
    assert torch.npu.is_available() and torch.npu.current_device() == 0
    assert torch.npu.device_count() == (torch.cuda.device_count() if nk.npu_device().type == "cuda" else 1)
    with pytest.raises(ValueError, match="index 9 is out of range"):
        torch.npu.set_device(9)
    with pytest.raises(ValueError, match="expected 'npu' or 'npu:<index>'"):
        torch.npu.set_device("cuda:0")


def test_compiled_fullgraph_sees_the_real_device(installed):
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm

    npu0 = torch.device("npu:0")     # built outside: Dynamo builds torch.device(...) without the mode

    def f(a):
        c = torch.ones(4, dtype=torch.float16, device="npu")
        z = torch.zeros([2], device=npu0)
        return a.to("npu") + torch.arange(3).npu(), c.add_(2), z, a.is_npu

    torch._dynamo.reset()
    a, c, z, on_npu = torch.compile(f, backend=backend, fullgraph=True)(torch.ones(3))
    assert len(graphs) == 1 and "npu" not in graphs[0].code
    assert torch.equal(a.cpu(), torch.tensor([1.0, 2.0, 3.0])) and a.is_npu and z.is_npu and on_npu
    assert torch.equal(c.cpu(), torch.full((4,), 3.0, dtype=torch.float16))


def test_torch_npu_api(installed):
    import torch_npu
    for name in ("set_device", "current_stream", "Stream", "stream", "Event", "ExternalEvent", "NPUGraph", "graph",
                 "graph_task_group_begin", "graph_task_group_end", "graph_task_update_begin",
                 "graph_task_update_end", "synchronize", "is_available", "device_count"):
        assert getattr(torch.npu, name) is getattr(torch_npu.npu, name)
    assert torch.npu.NPUGraph is runtime.NPUGraph and torch.npu.ExternalEvent is runtime.ExternalEvent
    assert sys.modules["torch.npu"] is sys.modules["torch_npu.npu"] is torch.npu
    assert torch_npu.npu_fused_infer_attention_score is nk.npu_fused_infer_attention_score
    assert callable(torch_npu.npu_fused_infer_attention_score.out)
    for name in ("npu_prompt_flash_attention", "npu_incre_flash_attention", "npu_trans_quant_param",
                 "_npu_fused_infer_attention_score_get_max_workspace",
                 "_npu_fused_infer_attention_score_infer_output"):
        assert getattr(torch_npu, name) is getattr(nk, name)
    assert importlib.util.find_spec("torch_npu").name == "torch_npu"


def test_torchair_modules(installed):
    import logging

    import torchair
    from torchair.configs.compiler_config import CompilerConfig
    from torchair.core.utils import logger
    from runtime import torchair as air
    assert torchair.CompilerConfig is CompilerConfig and issubclass(CompilerConfig, air.CompilerConfig)
    config = CompilerConfig()
    config.mode = "reduce-overhead"
    config.debug.graph_dump.type = "pbtxt"
    assert config.debug.aclgraph.static_capture_size_limit == 64
    assert torchair.get_npu_backend is air.get_npu_backend
    assert torchair.scope.npu_stream_switch is air.scope.npu_stream_switch
    assert torchair.ops.npu_record_tagged_stream is air.ops.npu_record_tagged_stream
    assert isinstance(logger, logging.Logger)


@pytest.mark.parametrize("module, attr, named", [
    ("torch_npu", "npu_moe_gating_top_k", "torch_npu"), ("torch.npu", "memory_stats", "torch.npu"),
    ("torch_npu.npu", "super_kernel_scope_begin", "torch.npu"), ("torchair", "ge", "torchair"),
    ("torchair.ops", "npu_print", "torchair.ops"), ("torchair.scope", "limit_core_num", "torchair.scope"),
    ("torch_npu._C", "_npu_getDeviceName", "torch_npu._C"), ("torch_npu.npu.streams", "ExternalStream",
                                                              "torch_npu.npu.streams")])
def test_unknown_attribute_names_what_is_not_emulated(installed, module, attr, named):
    obj = sys.modules[module]
    with pytest.raises(AttributeError, match=rf"^{named}\.{attr} is not emulated by runtime\.compat") as info:
        getattr(obj, attr)
    assert isinstance(info.value, compat.NotEmulatedError)
    assert not hasattr(obj, attr)


def test_unknown_submodule_names_what_is_not_emulated(installed):
    with pytest.raises(ModuleNotFoundError, match=r"^torchair\.ge_concrete_graph is not emulated"):
        import torchair.ge_concrete_graph  # noqa: F401
    with pytest.raises(ModuleNotFoundError, match=r"^torch_npu\.contrib is not emulated"):
        from torch_npu import contrib  # noqa: F401


@pytest.mark.skipif(importlib.util.find_spec("triton.experimental.gluon") is None, reason="this triton has no gluon")
def test_triton_gluon_is_imported_before_vllm_ascend_can_replace_it(installed):
    """vLLM-Ascend installs empty triton.experimental.gluon modules unless they are imported; every Triton
    launch imports the real gluon.nvidia."""
    assert "triton.experimental.gluon.nvidia" in sys.modules
