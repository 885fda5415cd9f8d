"""What torch_npu reports about the part and the software: SoC version and device name, ``__version__``,
the operator compile mode.

The emulated part is an Atlas A2 (``Ascend910B1``, SoC version 220) unless ``set_soc_version`` picks
another A2 or A3 part; the attention operators follow the same paths on both (spec/vllm-ascend-ops.md
§4.5), so the choice only changes what the platform queries answer.
"""

from __future__ import annotations

import importlib.metadata

import torch

from .. import synchronize
from .devices import check_index

# SoC version -> device name (torch_npu's SocVersion enum), the A2 and A3 parts vLLM-Ascend runs on.
SOC_NAMES = {
    220: "Ascend910B1", 221: "Ascend910B2", 222: "Ascend910B2C", 223: "Ascend910B3", 224: "Ascend910B4",
    225: "Ascend910B4-1",
    250: "Ascend910_9391", 251: "Ascend910_9392", 252: "Ascend910_9381", 253: "Ascend910_9382",
    254: "Ascend910_9372", 255: "Ascend910_9362",
}

# torch_npu's codes of the data types torch lacks (256 + the ACL data type), as vLLM-Ascend names them; they
# are Ascend950 formats, which no emulated operator takes.
CUSTOM_DTYPES = {"hifloat8": 256 + 34, "float8_e8m0fnu": 256 + 37, "float4_e2m1fn_x2": 256 + 40}

_soc_version = 220
_jit_compile = False


def set_soc_version(version: int) -> int:
    """Make the emulated part the one of SoC ``version`` (an A2 or A3 part); returns the previous one."""
    global _soc_version
    if version not in SOC_NAMES:
        raise ValueError(f"set_soc_version: version={version!r}: the emulated parts are the A2 and A3 SoC "
                         f"versions {sorted(SOC_NAMES)}")
    previous, _soc_version = _soc_version, version
    return previous


def get_soc_version() -> int:
    """``torch_npu.npu.get_soc_version()``: the SoC version number of the emulated part."""
    return _soc_version


def get_device_name(device=None) -> str:
    """``torch.npu.get_device_name``: the emulated part's name (every npu device is the same part)."""
    check_index(device)
    return SOC_NAMES[_soc_version]


def device_family() -> str:
    """The part family torch_npu's test decorators compare: ``Ascend910B`` (A2) or ``Ascend910_93`` (A3)."""
    name = SOC_NAMES[_soc_version]
    return name[:12] if name.startswith("Ascend910_") else name[:10]


def version() -> str:
    """``torch_npu.__version__``: the torch release whose torch_npu is emulated, with this project's version
    as the local label (PEP 440), e.g. ``2.13.0+npu_kernels.0.1.0``."""
    return f"{torch.__version__.split('+')[0]}+npu_kernels.{importlib.metadata.version('npu-kernels')}"


def set_compile_mode(jit_compile: bool = False) -> None:
    """``torch.npu.set_compile_mode``: whether operators compile online on the NPU; kernels here do not
    depend on it. Synchronises, as torch_npu does."""
    global _jit_compile
    synchronize()
    _jit_compile = bool(jit_compile)


def is_jit_compile_false() -> bool:
    return not _jit_compile
