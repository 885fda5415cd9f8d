"""``python -m runtime.demo`` (``make demo``): the operators against their references, then a small model
served as vLLM-Ascend serves it (batched paged prefill, decode from one captured graph with a task update
per step); exits with an error unless every operator is within its tolerance and every graph step equals
its eager run. On the GPU when present, else on the CPU (operators on the native execution path, graphs on the
host backend)."""

from __future__ import annotations

import random
import sys
import time

import torch

import npu_kernels as nk
import runtime

from .model import Config, Model
from .serving import Request, Server


LSE_TOLERANCE = (1e-4, 1e-4)


def _report(name: str, out: torch.Tensor, ref: torch.Tensor, tol: tuple[float, float]) -> bool:
    """Prints the largest difference; whether ``out`` is within ``tol`` (atol, rtol) of ``ref``."""
    err = (out.float() - ref.float()).abs().max().item()
    ok = torch.allclose(out.float(), ref.float(), atol=tol[0], rtol=tol[1])
    print(f"  {name:<56} {str(tuple(out.shape)):<18} max |operator - reference| = {err:.2e}"
          f"{'' if ok else '  OUTSIDE THE TOLERANCE'}")
    return ok


def operators(dev: torch.device) -> bool:
    """Each attention operator once, against its golden reference; whether all are within tolerance."""
    fp16 = nk.reference.tolerance(torch.float16)
    B, N, KV_N, S, D = 2, 8, 2, 512, 128
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, S, N * D, generator=g).half().to(dev)
    k = torch.randn(B, S, KV_N * D, generator=g).half().to(dev)
    causal = torch.ones(2048, 2048, dtype=torch.bool, device=dev).triu(1)
    kw = dict(num_heads=N, num_key_value_heads=KV_N, input_layout="BSH", scale_value=D ** -0.5, sparse_mode=3,
              atten_mask=causal, actual_seq_lengths=[S, S // 2], actual_seq_lengths_kv=[S, S // 2])
    ok = _report("prompt attention: BSH, GQA, causal, per-batch lengths", nk.npu_prompt_flash_attention(q, k, k, **kw),
                 nk.reference.npu_prompt_flash_attention(q, k, k, **kw), fp16)
    kw = dict(num_heads=N, num_key_value_heads=KV_N, input_layout="BSH", scale=D ** -0.5, softmax_lse_flag=True,
              sparse_mode=4, pre_tokens=S // 4, next_tokens=0, atten_mask=causal)
    out, lse = nk.npu_fused_infer_attention_score(q, k, k, **kw)
    ref, ref_lse = nk.reference.npu_fused_infer_attention_score(q, k, k, **kw)
    ok &= _report("fused attention: BSH, band (sparse 4), softmax_lse", out, ref, fp16)
    ok &= _report("fused attention: its softmax_lse", lse, ref_lse, LSE_TOLERANCE)
    qd = q[:, :1].contiguous()
    kw = dict(num_heads=N, num_key_value_heads=KV_N, input_layout="BSH", scale_value=D ** -0.5,
              actual_seq_lengths=[S, 100])
    ok &= _report("incremental attention: BSH, GQA, kv lengths", nk.npu_incre_flash_attention(qd, k, k, **kw),
                  nk.reference.npu_incre_flash_attention(qd, k, k, **kw), fp16)
    return ok


def requests(cfg: Config, count: int, seed: int = 1) -> list[Request]:
    rng = random.Random(seed)
    return [Request([rng.randrange(cfg.vocab) for _ in range(rng.randint(16, 192))], rng.randint(4, 16))
            for _ in range(count)]


def main() -> None:
    dev = nk.npu_device()
    print(f"device {dev}, runtime backend {runtime.backend().name}")
    print("operators against their golden references:")
    ok = operators(dev)
    cfg = Config()
    model = Model(cfg, dev)
    reqs = requests(cfg, 12)
    print(f"serving {len(reqs)} requests on a {cfg.layers}-layer model ({cfg.heads} query / {cfg.kv_heads} kv heads, "
          f"D={cfg.head_dim}, paged KV cache of {cfg.blocks} blocks of {cfg.block_size}), 8 at a time:")
    start = time.perf_counter()
    stats = Server(model, slots=8).serve(reqs)
    total = time.perf_counter() - start
    print(f"  prefill: {stats.prefill_tokens} prompt tokens in {stats.prefill_s:.2f} s "
          f"({stats.prefill_tokens / stats.prefill_s:.0f} tokens/s)")
    replayed = stats.steps - 1
    print(f"  decode: {stats.steps} steps, {stats.decoded} tokens, {stats.joined} requests joined while others "
          f"ran; per step {stats.eager_s / stats.steps * 1e3:.1f} ms eager; graph captured in "
          f"{stats.capture_s * 1e3:.0f} ms, then per step {stats.graph_s / max(replayed, 1) * 1e3:.1f} ms "
          f"(task update + replay)")
    print(f"  max |graph - eager| over the logits of every step: {stats.max_error:.2e}; total {total:.1f} s")
    if not ok or stats.max_error:
        sys.exit("FAILED: an operator outside its tolerance, or a graph step unlike its eager run")


if __name__ == "__main__":
    main()
