"""Demo: the operators eager against their references, then vLLM-Ascend's decode loop on a captured graph
with task update.

``python -m runtime.demo`` (``make demo``) runs on the GPU when present, else on the CPU (host backend,
kernels through Triton's interpreter: shapes are kept small there).
"""

from __future__ import annotations

import time

import torch

import npu_kernels as nk
import runtime


def _report(name: str, out: torch.Tensor, ref: torch.Tensor) -> None:
    err = (out.float() - ref.float()).abs().max().item()
    print(f"{name:<58} {str(tuple(out.shape)):<16} {str(out.dtype):<15} max |kernel - reference| = {err:.2e}")


def operators(dev: torch.device, gpu: bool) -> None:
    """Each operator once, against its golden reference."""
    B, N, KV_N, S, D = (2, 32, 8, 2048, 128) if gpu else (2, 4, 2, 48, 32)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, S, N * D, generator=g).half().to(dev)
    k = torch.randn(B, S, KV_N * D, generator=g).half().to(dev)
    causal = torch.ones(2048, 2048, dtype=torch.bool, device=dev).triu(1)
    kw = dict(num_heads=N, num_key_value_heads=KV_N, input_layout="BSH", scale_value=D ** -0.5, sparse_mode=3,
              atten_mask=causal, actual_seq_lengths=[S, S // 2], actual_seq_lengths_kv=[S, S // 2])
    _report("prompt attention: BSH, GQA, causal, per-batch lengths", nk.npu_prompt_flash_attention(q, k, k, **kw),
            nk.reference.npu_prompt_flash_attention(q, k, k, **kw))
    kw = dict(num_heads=N, num_key_value_heads=KV_N, input_layout="BSH", scale=D ** -0.5, softmax_lse_flag=True,
              sparse_mode=4, pre_tokens=S // 4, next_tokens=0, atten_mask=causal)
    out, lse = nk.npu_fused_infer_attention_score(q, k, k, **kw)
    ref, ref_lse = nk.reference.npu_fused_infer_attention_score(q, k, k, **kw)
    _report("fused attention: BSH, band (sparse 4), softmax_lse", out, ref)
    _report("fused attention: its softmax_lse", lse, ref_lse)


def main() -> None:
    dev = nk.npu_device()
    gpu = dev.type == "cuda"
    print(f"device {dev}, runtime backend {runtime.backend().name}")
    operators(dev, gpu)
    B, N, D, S = (8, 16, 128, 1024) if gpu else (2, 2, 16, 64)
    layers, steps = (4, 8) if gpu else (2, 3)
    kw = dict(num_heads=N, input_layout="BNSD", scale_value=D ** -0.5)
    torch.manual_seed(0)
    q = torch.randn(B, N, 1, D, dtype=torch.float16, device=dev)
    k = torch.randn(B, N, S, D, dtype=torch.float16, device=dev)

    lengths = [S // 2] * B
    out = nk.npu_incre_flash_attention(q, k, k, actual_seq_lengths=lengths, **kw)
    ref = nk.reference.npu_incre_flash_attention(q, k, k, actual_seq_lengths=lengths, **kw)
    _report("incremental attention: BNSD, kv lengths", out, ref)

    # Capture: per layer an ExternalEvent gate and the attention call in a task group.
    g = runtime.NPUGraph()
    events, handles, outs = [], [], []
    with runtime.graph(g):
        s = runtime.current_stream()
        for _ in range(layers):
            ev = runtime.ExternalEvent()
            ev.wait(s)
            ev.reset(s)
            runtime.graph_task_group_begin(s)
            outs.append(nk.npu_incre_flash_attention(q, k, k, actual_seq_lengths=[1] * B, **kw))
            handles.append(runtime.graph_task_group_end(s))
            events.append(ev)

    # Each step: host sync, replay (the graph waits at each gate), then per layer update + record.
    u = runtime.Stream()
    gen = torch.Generator().manual_seed(1)
    worst = 0.0
    start = time.perf_counter()
    for _ in range(steps):
        step = [torch.randint(1, S + 1, (B,), generator=gen).tolist() for _ in range(layers)]
        runtime.current_stream().synchronize()
        g.replay()
        with runtime.stream(u):
            for layer in range(layers):
                runtime.graph_task_update_begin(u, handles[layer])
                nk.npu_incre_flash_attention(q, k, k, actual_seq_lengths=step[layer], **kw)
                runtime.graph_task_update_end(u)
                events[layer].record(u)
        runtime.synchronize()
        for layer in range(layers):
            want = nk.reference.npu_incre_flash_attention(q, k, k, actual_seq_lengths=step[layer], **kw)
            worst = max(worst, (outs[layer].float() - want.float()).abs().max().item())
    elapsed = time.perf_counter() - start
    print(f"{steps} steps x {layers} layers, replay then task update: max |graph - reference| = {worst:.2e} "
          f"({elapsed / steps * 1e3:.1f} ms per step)")


if __name__ == "__main__":
    main()
