"""Random numbers on the npu device: ``torch.npu.manual_seed(_all)`` and ``torch.Generator(device="npu")``.

On the CPU the npu device's default generator is the CPU's, so seeding the npu device seeds torch's CPU
generator too.
"""

from __future__ import annotations

import torch

from ..device import npu_device
from .devices import lookup


def manual_seed(seed) -> None:
    """``torch.npu.manual_seed``: seed the current npu device's default generator."""
    if npu_device().type == "cuda":
        torch.cuda.manual_seed(int(seed))
    else:
        torch.manual_seed(int(seed))


def manual_seed_all(seed) -> None:
    """``torch.npu.manual_seed_all``: seed the default generator of every npu device."""
    if npu_device().type == "cuda":
        torch.cuda.manual_seed_all(int(seed))
    else:
        torch.manual_seed(int(seed))


def generator_class(names: dict) -> type:
    """``torch.Generator`` accepting the npu device strings of ``names`` (``devices.device_names()``)."""

    class Generator(torch.Generator):
        """``torch.Generator(device="npu")``: a generator of the npu device."""

        def __new__(cls, device="cpu"):
            if isinstance(device, str) and (device == "npu" or device.startswith("npu:")):
                device = lookup(names, device)
            return super().__new__(cls, device=device)

    return Generator
