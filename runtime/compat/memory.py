"""torch_npu's memory names: ``empty_cache``, ``host_empty_cache``, ``mem_get_info`` and the weak tensor
reference ``torch_npu._C._weak_ref_tensor``."""

from __future__ import annotations

import os

import torch
from torch.utils._python_dispatch import _disable_current_modes

from .. import NPUGraph, backend
from ..device import npu_device
from .devices import check_index


def empty_cache() -> None:
    """``torch.npu.empty_cache``: the backend releases its cached memory, its caches and the operators'
    (``npu_kernels.caches``); a no-op while a graph captures (the capture's memory stays the graph's)."""
    if NPUGraph.get_currently_capturing_graph() is None:
        backend().empty_cache()


def host_empty_cache() -> None:
    """``torch.npu.host_empty_cache``: the backend releases its cached pinned host memory; a no-op while a
    graph captures."""
    if NPUGraph.get_currently_capturing_graph() is None:
        backend().host_empty_cache()


def mem_get_info(device=None) -> tuple[int, int]:
    """``torch.npu.mem_get_info``: (free bytes, total bytes) of the npu device; on the CPU, of the host's
    physical memory (pages not in use, all pages)."""
    index = check_index(device)
    if npu_device().type == "cuda":
        return torch.cuda.mem_get_info(index)
    page = os.sysconf("SC_PAGE_SIZE")
    return os.sysconf("SC_AVPHYS_PAGES") * page, os.sysconf("SC_PHYS_PAGES") * page


def weak_ref_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """``torch_npu._C._weak_ref_tensor``: a tensor over ``tensor``'s memory (same storage span, offset,
    sizes, strides, dtype) that does not own it: writes show in both, and it dangles once the memory is
    freed. Pure metadata: made outside every dispatch mode, so a capture records nothing."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"_weak_ref_tensor: expected a Tensor, got {type(tensor).__name__}")
    storage = tensor.untyped_storage()
    with _disable_current_modes():
        borrowed = torch._C._construct_storage_from_data_pointer(storage.data_ptr(), tensor.device,
                                                                 storage.nbytes())
        return torch.empty(0, dtype=tensor.dtype, device=tensor.device).set_(
            borrowed, tensor.storage_offset(), tensor.size(), tensor.stride())
