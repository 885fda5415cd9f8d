"""torch.library registration of the operators in namespace ``npu`` (schemas as torch_npu's)."""

from __future__ import annotations

import torch

from .ops import incre, prompt

LIB = torch.library.Library("npu", "FRAGMENT")

PROMPT_SCHEMA = (
    "npu_prompt_flash_attention(Tensor query, Tensor key, Tensor value, *, Tensor? padding_mask=None, "
    "Tensor? atten_mask=None, Tensor? pse_shift=None, int[]? actual_seq_lengths=None, "
    "Tensor? deq_scale1=None, Tensor? quant_scale1=None, Tensor? deq_scale2=None, Tensor? quant_scale2=None, "
    "Tensor? quant_offset2=None, int num_heads=1, float scale_value=1.0, int pre_tokens=2147483647, "
    "int next_tokens=0, str input_layout=\"BSH\", int num_key_value_heads=0, "
    "int[]? actual_seq_lengths_kv=None, int sparse_mode=0) -> Tensor"
)


def define(schema: str, impl, fake) -> None:
    """Define ``schema`` with ``impl`` on CPU and CUDA and ``fake`` for tracing."""
    name = schema.split("(", 1)[0]
    LIB.define(schema)
    for key in ("CPU", "CUDA"):
        LIB.impl(name, impl, key)
    torch.library.register_fake(f"npu::{name}", fake, lib=LIB)


def _prompt_fake(query, key, value, **kwargs):
    return prompt.output(prompt.validate(query, key, value, **kwargs))


define(PROMPT_SCHEMA, prompt.npu_prompt_flash_attention, _prompt_fake)


def npu_prompt_flash_attention(query, key, value, **kwargs) -> torch.Tensor:
    """torch_npu.npu_prompt_flash_attention (keyword arguments as torch_npu; spec ops §2)."""
    return torch.ops.npu.npu_prompt_flash_attention(query, key, value, **kwargs)


INCRE_SCHEMA = (
    "npu_incre_flash_attention(Tensor query, Tensor key, Tensor value, *, Tensor? padding_mask=None, "
    "Tensor? atten_mask=None, Tensor? pse_shift=None, SymInt[]? actual_seq_lengths=None, "
    "Tensor? antiquant_scale=None, Tensor? antiquant_offset=None, Tensor? block_table=None, "
    "Tensor? dequant_scale1=None, Tensor? quant_scale1=None, Tensor? dequant_scale2=None, "
    "Tensor? quant_scale2=None, Tensor? quant_offset2=None, Tensor? kv_padding_size=None, int num_heads=1, "
    "float scale_value=1.0, str input_layout=\"BSH\", int num_key_value_heads=0, int block_size=0, "
    "int inner_precise=1) -> Tensor"
)


def _incre_fake(query, key, value, **kwargs):
    return incre.output(incre.validate(query, key, value, **kwargs))


define(INCRE_SCHEMA, incre.npu_incre_flash_attention, _incre_fake)


def npu_incre_flash_attention(query, key, value, **kwargs) -> torch.Tensor:
    """torch_npu.npu_incre_flash_attention (keyword arguments as torch_npu; spec ops §3)."""
    return torch.ops.npu.npu_incre_flash_attention(query, key, value, **kwargs)
