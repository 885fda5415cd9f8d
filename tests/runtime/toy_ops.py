"""A small updatable operator for the runtime tests, submitted like the npu operators.

``rt_toy::prefix_sum_out(x, actual_seq_lengths, out)``: ``out[b] = x[b, :actual_seq_lengths[b]].sum(0)``
for ``x`` [B, S, D]. The lengths travel in the parameter block; the kernel reads them on the device
(Triton on CUDA; torch on the CPU, where the host backend runs it). ``rt_toy::prefix_sum`` is the
functional form (allocates ``out``) and has an auto-dispatch handler that captures the ``_out`` form.
"""

from __future__ import annotations

import torch

import runtime
from npu_kernels import tasks
from npu_kernels.device import interpreted, use_interpreter

if interpreted():
    use_interpreter()
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

runtime.register_task_namespace("rt_toy")


@triton.jit
def _prefix_sum_kernel(x_ptr, len_ptr, out_ptr, stride_x_b, stride_x_s, stride_o_b,
                       S: tl.constexpr, D: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    i_b = tl.program_id(0)
    length = tl.load(len_ptr + i_b)
    o_s = tl.arange(0, BLOCK_S)
    o_d = tl.arange(0, BLOCK_D)
    m_x = (o_s[:, None] < length) & (o_s[:, None] < S) & (o_d[None, :] < D)
    b_x = tl.load(x_ptr + i_b * stride_x_b + o_s[:, None] * stride_x_s + o_d[None, :], mask=m_x, other=0.0)  # [BS, BD]
    tl.store(out_ptr + i_b * stride_o_b + o_d, tl.sum(b_x.to(tl.float32), 0).to(out_ptr.dtype.element_ty),
             mask=o_d < D)


def _launch(x: torch.Tensor, out: torch.Tensor):
    B, S, D = x.shape

    def launch(block: torch.Tensor) -> None:
        if x.is_cuda:
            _prefix_sum_kernel[(B,)](x, block, out, x.stride(0), x.stride(1), out.stride(0), S, D,
                                     triton.next_power_of_2(S), triton.next_power_of_2(D))
        else:
            keep = torch.arange(S)[None, :] < block[:, None]                    # [B, S]
            out.copy_((x * keep[..., None]).sum(1))

    return launch


@torch.library.custom_op("rt_toy::prefix_sum_out", mutates_args=("out",))
def prefix_sum_out(x: torch.Tensor, actual_seq_lengths: list[int], out: torch.Tensor) -> None:
    B, S, D = x.shape
    if len(actual_seq_lengths) != B or not all(0 <= n <= S for n in actual_seq_lengths):
        raise ValueError(f"actual_seq_lengths={actual_seq_lengths}: need {B} values in [0, {S}]")
    params = torch.tensor(actual_seq_lengths, dtype=torch.int32)
    static = ("prefix_sum", tuple(x.shape), x.dtype, tuple(out.shape))
    tasks.submit(tasks.Task("rt_toy.prefix_sum", static, params, x.device, _launch(x, out), (x,), (out,)))


@torch.library.custom_op("rt_toy::prefix_sum", mutates_args=())
def prefix_sum(x: torch.Tensor, actual_seq_lengths: list[int]) -> torch.Tensor:
    out = x.new_empty(x.shape[0], x.shape[2])
    prefix_sum_out(x, actual_seq_lengths, out)
    return out


@runtime.register_npu_graph_handler(["prefix_sum"])
class PrefixSumHandler(runtime.NpuGraphOpHandler):
    """Captures ``prefix_sum`` as ``prefix_sum_out`` into an output allocated at capture."""

    @classmethod
    def prepare_capture(cls, func, args, kwargs):
        x = args[0]
        out = x.new_empty(x.shape[0], x.shape[2])
        return torch.ops.rt_toy.prefix_sum_out.default, (*args, out), kwargs

    @classmethod
    def postprocess_result(cls, result, kwargs):
        return None

    UPDATE_SPECS = {"prefix_sum_out": [("arg", 1, "actual_seq_lengths")]}


def reference(x: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    return torch.stack([x[b, :n].sum(0) for b, n in enumerate(lengths)])
