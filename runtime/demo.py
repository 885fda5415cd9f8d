"""The project's main job: the operators against their references, then a captured graph whose
attention lengths are updated after capture (torch_npu's task-update scenario).

    python -m runtime.demo

Runs on the GPU when one is present, else on the CPU (Triton interpreter, host graph backend).
"""

from __future__ import annotations

import time

import torch

import npu_kernels as nk
import runtime


def _report(name: str, out: torch.Tensor, ref: torch.Tensor, seconds: float) -> None:
    err = (out.float() - ref.float()).abs().max().item()
    print(f"{name:<44} shape={tuple(out.shape)!s:<18} dtype={str(out.dtype):<15} "
          f"max|out-ref|={err:.2e}  ({seconds * 1e3:.1f} ms)")


def operators(dev: torch.device) -> None:
    g = torch.Generator().manual_seed(0)
    B, N, KV_N, S, D = 2, 8, 2, 96, 64
    q = torch.randn(B, S, N * D, generator=g).half().to(dev)
    k = torch.randn(B, S, KV_N * D, generator=g).half().to(dev)
    v = torch.randn(B, S, KV_N * D, generator=g).half().to(dev)
    causal = torch.ones(2048, 2048, dtype=torch.bool).triu(1).to(dev)
    cases = {
        "prompt: BSH, GQA 8/2, causal (sparse 3)": dict(sparse_mode=3, atten_mask=causal,
                                                         actual_seq_lengths=[96, 50]),
        "prompt: BSH, band (sparse 4, pre 16, next 0)": dict(sparse_mode=4, atten_mask=causal, pre_tokens=16,
                                                              next_tokens=0),
    }
    for name, extra in cases.items():
        kw = dict(num_heads=N, num_key_value_heads=KV_N, input_layout="BSH", scale_value=D ** -0.5, **extra)
        start = time.perf_counter()
        out = nk.npu_prompt_flash_attention(q, k, v, **kw)
        runtime.synchronize()
        _report(name, out, nk.reference.npu_prompt_flash_attention(q, k, v, **kw), time.perf_counter() - start)


def graph_update(dev: torch.device) -> None:
    """Capture with lengths [29] in a task group, update to [100] on another stream, replay."""
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 4, 128, 64, generator=g).half().to(dev)
    k = torch.randn(1, 4, 128, 64, generator=g).half().to(dev)
    v = torch.randn(1, 4, 128, 64, generator=g).half().to(dev)
    kw = dict(num_heads=4, input_layout="BNSD", scale_value=0.125, next_tokens=65535)
    capture_stream, update_stream = runtime.Stream(), runtime.Stream()
    graph = runtime.NPUGraph()
    with runtime.graph(graph, stream=capture_stream):
        runtime.graph_task_group_begin(capture_stream)
        out = nk.npu_prompt_flash_attention(q, k, v, actual_seq_lengths=[29], **kw)
        handle = runtime.graph_task_group_end(capture_stream)
    with runtime.stream(update_stream):
        runtime.graph_task_update_begin(update_stream, handle)
        nk.npu_prompt_flash_attention(q, k, v, actual_seq_lengths=[100], **kw)
        runtime.graph_task_update_end(update_stream)
    update_stream.synchronize()
    graph.replay()
    runtime.synchronize()
    eager = nk.npu_prompt_flash_attention(q, k, v, actual_seq_lengths=[100], **kw)
    print(f"graph: captured with lengths [29], updated to [100], replayed; equal to eager [100]: "
          f"{torch.equal(out, eager)}")


def main() -> None:
    dev = nk.npu_device()
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU (Triton interpreter, host graphs)"
    print(f"npu device: {dev} — {where}; graph backend: {runtime.backend().name}")
    operators(dev)
    graph_update(dev)


if __name__ == "__main__":
    main()
