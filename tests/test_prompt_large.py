"""Address arithmetic in int64: element offsets past 2**31 (only the touched pages are allocated)."""

from __future__ import annotations

import pytest
import torch

import npu_kernels as nk
from npu_kernels.masks import INT_MAX

from .conftest import assert_close

pytestmark = pytest.mark.kernels     # the Triton kernels against the reference (the interpreter on the CPU)

# int32 itself, but batch 2 starts at 2 * BATCH_STRIDE > 2**31: the product must be formed in int64
BATCH_STRIDE = 2**30 + 2048


def _free_bytes(device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) * 1024 + int(info.get("SwapFree", "0 kB").split()[0]) * 1024


DEVICE = nk.npu_device()
NEED = 3 * BATCH_STRIDE * 2 if DEVICE.type == "cuda" else 0     # the CPU commits only the touched pages


@pytest.mark.skipif(NEED > _free_bytes(DEVICE), reason=f"needs {NEED / 2**30:.1f} GiB of free device memory")
def test_batch_offset_beyond_int32(device):
    storage = torch.empty(2 * BATCH_STRIDE + 3 * 16 * 16, dtype=torch.float16, device=device)

    def view(offset):
        return storage.as_strided((3, 1, 16, 16), (BATCH_STRIDE, 256, 16, 1), offset)
    g = torch.Generator().manual_seed(0)
    q, k, v = view(0), view(256), view(512)
    for t in (q, k, v):
        t.copy_(torch.randn(t.shape, generator=g).half())
    kw = dict(num_heads=1, input_layout="BNSD", scale_value=0.25, next_tokens=INT_MAX)
    out = nk.npu_prompt_flash_attention(q, k, v, **kw)
    small = [t.contiguous() for t in (q, k, v)]
    assert_close(out, nk.npu_prompt_flash_attention(*small, **kw), torch.float16)
