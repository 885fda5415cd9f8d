"""vLLM-Ascend's graph code, unmodified, on the emulated npu (written against vLLM-Ascend 182b75e):

- the FULL decode graph: ``AscendAttentionMetadataBuilder`` builds each step's metadata (pinned host
  memory), ``ACLGraphWrapper`` captures a step of ``AscendAttentionBackendImpl`` (``full_graph_fia``: the
  fused operator's ``.out`` in a task group behind an ExternalEvent, weak references to its tensors)
  and replays it, and ``update_full_graph_params`` task-updates the key/value lengths after each replay;
  the output is checked against the reference at every step;
- the FULL decode graph on ATB paged attention (``full_graph_pa``: ``_npu_paged_attention`` with its
  workspace in a task group), task-updated after each replay with ``update_paged_attention_graph_param``;
- the compiler without npugraph_ex: torchair's reduce-overhead backend compiles a graph piece.

    python -m runtime.compat tests/compat/vllm_ascend_full_graph.py VLLM_ASCEND_CHECKOUT

vllm itself is not installed: ``vllm_stub`` stands in for it, with values for the vllm names whose
behaviour the code paths read. Prints a ``step ... max error`` line per replay (``paged step ...`` for the
paged attention graph) and ``ok`` at the end.
"""

import collections
import dataclasses
import enum
import logging
import sys
import types

import torch
import torch_npu

sys.path.insert(0, sys.argv[1])

import vllm_stub  # noqa: E402

import npu_kernels as nk  # noqa: E402

B, N, KV_N, D, BLOCK, BLOCKS = 4, 4, 2, 16, 128, 8     # decode batch of 4 tokens, paged KV cache
PA_TOKENS = 3                                           # decode batch of the paged attention graph


class CUDAGraphMode(enum.Enum):
    NONE = 0
    PIECEWISE = 1
    FULL = 2
    FULL_DECODE_ONLY = 3
    FULL_AND_PIECEWISE = 4


@dataclasses.dataclass
class CUDAGraphOptions:
    debug_log_enable: bool = True
    gc_disable: bool = True
    weak_ref_output: bool = True


class Logger(logging.Logger):
    def info_once(self, msg, *args, **kwargs):
        self.info(msg, *args)

    debug_once = warning_once = info_once


BatchDescriptor = collections.namedtuple("BatchDescriptor", "num_tokens uniform")

config = types.SimpleNamespace(
    model_config=types.SimpleNamespace(hf_config=types.SimpleNamespace(model_type="llama"), max_model_len=256,
                                       hf_text_config=types.SimpleNamespace(model_type="llama"), runner_type="generate",
                                       dtype=torch.float16),
    kv_transfer_config=None, quant_config=None, speculative_config=None,
    scheduler_config=types.SimpleNamespace(enable_chunked_prefill=True),
    parallel_config=types.SimpleNamespace(decode_context_parallel_size=1, prefill_context_parallel_size=1),
    compilation_config=types.SimpleNamespace(cudagraph_mode=CUDAGraphMode.FULL))
context = types.SimpleNamespace(batch_descriptor=BatchDescriptor(B, True), cudagraph_runtime_mode=CUDAGraphMode.FULL,
                                attn_metadata={}, capturing=False, is_draft_model=False, sinks=None)


def install_vllm():
    vllm_stub.install(version="0.27.1")
    vllm_stub.define("vllm.envs", VLLM_LOGGING_LEVEL="INFO", VLLM_USE_V2_MODEL_RUNNER=False)
    vllm_stub.define("vllm.config", CUDAGraphMode=CUDAGraphMode, get_current_vllm_config=lambda: config)
    vllm_stub.define("vllm.config.compilation", CUDAGraphMode=CUDAGraphMode)
    vllm_stub.define("vllm.forward_context", get_forward_context=lambda: context, BatchDescriptor=BatchDescriptor)
    vllm_stub.define("vllm.compilation.counter", compilation_counter=types.SimpleNamespace(num_cudagraph_captured=0))
    vllm_stub.define("vllm.compilation.cuda_graph", CUDAGraphOptions=CUDAGraphOptions)
    vllm_stub.define("vllm.compilation.monitor", validate_cudagraph_capturing_enabled=lambda: None)
    pool = torch.npu.graph_pool_handle()
    vllm_stub.define("vllm.platforms", current_platform=types.SimpleNamespace(get_global_graph_pool=lambda: pool))
    vllm_stub.define("vllm.logger", logger=Logger("vllm"))
    offloader = types.SimpleNamespace(sync_prev_onload=lambda: None, join_after_forward=lambda: None)
    vllm_stub.define("vllm.model_executor.offloader.base", get_offloader=lambda: offloader)
    vllm_stub.define("vllm.utils.math_utils", cdiv=lambda a, b: -(-a // b))
    build_info = types.ModuleType("vllm_ascend._build_info")    # written by vLLM-Ascend's setup.py
    build_info.__device_type__ = "A2"
    sys.modules["vllm_ascend._build_info"] = build_info


def common_metadata(attention_v1, block_table, lengths):
    """What vLLM's model runner hands the metadata builder for a decode step (one token per request)."""
    seq_lens = torch.tensor(lengths, dtype=torch.int32)
    reqs = len(lengths)
    return types.SimpleNamespace(
        num_reqs=reqs, num_actual_tokens=reqs, max_query_len=1, causal=True, context_parallel_metadata=None,
        query_start_loc_cpu=torch.arange(reqs + 1, dtype=torch.int32), block_table_tensor=block_table,
        _seq_lens_cpu=seq_lens, seq_lens_cpu=seq_lens, seq_lens=seq_lens.npu(),
        slot_mapping=torch.zeros(reqs, dtype=torch.int32).npu(),
        attn_state=attention_v1.AscendAttentionState.DecodeOnly)


def main():
    install_vllm()
    from vllm_ascend import ops  # noqa: F401  (first, as vLLM-Ascend's worker imports it)
    from vllm_ascend.attention import attention_v1
    from vllm_ascend.compilation import acl_graph
    from vllm_ascend.device.device_config import check_ascend_device_type

    check_ascend_device_type()            # the emulated SoC is the A2 part the "build" targets
    g = torch.Generator().manual_seed(0)
    key_cache, value_cache = (torch.randn(BLOCKS, BLOCK, KV_N, D, generator=g).half().npu() for _ in range(2))
    query = torch.randn(B, N, D, generator=g).half().npu()
    output = torch.empty(B, N, D, dtype=torch.float16).npu()
    block_table = torch.randperm(BLOCKS, generator=g)[:B * 2].view(B, 2).to(torch.int32).npu()
    layer = "model.layers.0.self_attn.attn"
    builder = attention_v1.AscendAttentionMetadataBuilder(types.SimpleNamespace(), [layer], config, torch.device("npu"))
    capture_metadata = builder.build_for_graph_capture(common_metadata(attention_v1, block_table, [1] * B))
    context.attn_metadata = {layer: capture_metadata}

    impl = attention_v1.AscendAttentionBackendImpl(
        num_heads=N, head_size=D, scale=D ** -0.5, num_kv_heads=KV_N, alibi_slopes=None, sliding_window=None,
        kv_cache_dtype="auto", logits_soft_cap=None, attn_type="decoder", kv_sharing_target_layer_name=None)
    impl.key_cache, impl.value_cache = key_cache, value_cache

    def forward(query, output):
        return impl.forward_fused_infer_attention(query, None, None, context.attn_metadata[layer], output)

    acl_graph.set_graph_params([B, PA_TOKENS])
    wrapper = acl_graph.ACLGraphWrapper(forward, config, CUDAGraphMode.FULL, CUDAGraphOptions())
    update_stream = torch.npu.Stream()
    wrapper(query, output)                                       # capture
    assert isinstance(acl_graph.get_graph_params().handles[B][0], torch_npu._C._NPUTaskGroupHandle)
    context.capturing = False
    for step, lengths in enumerate(([7, 130, 256, 1], [200, 3, 64, 255], [1, 1, 1, 1])):
        metadata = builder.build(0, common_metadata(attention_v1, block_table.clone(), lengths))
        context.attn_metadata = {layer: metadata}
        replayed = wrapper(query, output)                        # replay, then update: vLLM-Ascend's order
        acl_graph.update_full_graph_params(attention_v1.AscendAttentionBackend, update_stream, context, B, config)
        torch.npu.synchronize()
        want = nk.reference.npu_fused_infer_attention_score(
            query, key_cache.view(BLOCKS, BLOCK, -1), value_cache.view(BLOCKS, BLOCK, -1),
            block_table=block_table, input_layout="TND", block_size=BLOCK, num_heads=N,
            num_key_value_heads=KV_N, scale=D ** -0.5, actual_seq_lengths=metadata.actual_seq_lengths_q,
            actual_seq_lengths_kv=lengths, sparse_mode=3, atten_mask=metadata.attn_mask)[0]
        error = (output.float() - want.float()).abs().max().item()
        print(f"step {step} lengths {lengths} max error {error:.2e}")
        assert error < 2e-3 and replayed.data_ptr() == output.data_ptr()
    paged_attention_graph(acl_graph, attention_v1, builder, impl, update_stream, block_table)
    torchair_fallback()
    print("ok")


def paged_attention_graph(acl_graph, attention_v1, builder, impl, update_stream, block_table):
    """The FULL decode graph on ``_npu_paged_attention`` (``full_graph_pa``: the operator in a task group
    with its workspace), task-updated after each replay with ``update_paged_attention_graph_param``."""
    from vllm_ascend.attention.utils import update_paged_attention_graph_param

    g = torch.Generator().manual_seed(1)
    query = torch.randn(PA_TOKENS, N, D, generator=g).half().npu()
    output = torch.empty(PA_TOKENS, N, D, dtype=torch.float16).npu()
    table = block_table[:PA_TOKENS]
    metadata = builder.build_for_graph_capture(common_metadata(attention_v1, table, [1] * PA_TOKENS))
    context.batch_descriptor = BatchDescriptor(PA_TOKENS, True)

    def forward(query, output):
        return impl.forward_paged_attention(query, metadata, output)

    wrapper = acl_graph.ACLGraphWrapper(forward, config, CUDAGraphMode.FULL, CUDAGraphOptions())
    wrapper(query, output)                                       # capture
    context.capturing = False
    params = acl_graph.get_graph_params()
    for step, lengths in enumerate(([7, 256, 130], [200, 1, 0], [64, 3, 255])):
        seq_lens = torch.tensor(lengths, dtype=torch.int32)
        output.fill_(5.0)
        wrapper(query, output)                                   # replay, then update
        with torch.npu.stream(update_stream):
            update_paged_attention_graph_param(update_stream, params.handles[PA_TOKENS][0],
                                               params.events[PA_TOKENS][0], params.attn_params[PA_TOKENS][0],
                                               table, seq_lens)
        torch.npu.synchronize()
        want = torch.full_like(output, 5.0)
        nk.reference._npu_paged_attention(query, impl.key_cache, impl.value_cache, KV_N, N, D ** -0.5, table,
                                          seq_lens, want)
        error = (output.float() - want.float()).abs().max().item()
        print(f"paged step {step} lengths {lengths} max error {error:.2e}")
        assert error < 2e-3


def torchair_fallback():
    """vLLM-Ascend's compiler without npugraph_ex installed: torchair's reduce-overhead backend (run eagerly,
    vLLM's graph wrapper captures) compiles a graph piece."""
    from vllm_ascend.compilation import compiler_interface

    def piece(x, w, n: int):
        return (torch.relu(x @ w)[:n] * 2,)

    x, w = torch.randn(6, 8).npu(), torch.randn(8, 8).npu()
    options = types.SimpleNamespace(enable_static_kernel=False)
    compiled, cache = compiler_interface.npugraph_ex_compile(torch.fx.symbolic_trace(piece), [x, w, 4], {}, config,
                                                             options, None)
    torch.testing.assert_close(compiled(x, w, 4)[0], piece(x, w, 4)[0])
    assert cache is None and torch.npu.is_jit_compile_false()
    print("torchair fallback compiled")


if __name__ == "__main__":
    main()
