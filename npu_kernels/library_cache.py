"""torch.library registration of the KV-cache operators and ``npu_attention_update`` in namespace ``npu``
(schemas as torch_npu's, spec vllm-ascend-ops §2-§3), and their Python entry points.

Arguments a call writes are declared ``(a!)``; the fake implementations validate (so a traced call fails
as an eager one does) and return nothing or new tensors. torch_npu keeps ``_npu_reshape_and_cache(_siso)``
in namespace ``atb``; here every operator is ``torch.ops.npu.<name>``. ``npu_scatter_nd_update_``
returns ``self``: it is a composite of ``_npu_scatter_nd_update_into`` (which returns nothing), so
torch.compile can functionalise it, as ``npu_fused_infer_attention_score.out`` does. The Python entry
points are ``library.public``'s: the implementation directly where nothing needs the dispatcher.
"""

from __future__ import annotations

import torch

from .library import LIB, define, public
from .ops import attention_update, kv_cache

SCATTER_KW = "Tensor? compress_lens=None, Tensor? compress_seq_offsets=None, Tensor? seq_lens=None, " \
             "str? cache_mode='PA_NZ'"
GATHER_KW = "Tensor? seq_offset=None, bool is_seq_lens_cumsum=False"


def _checked(validate):
    """Fake implementation of an in-place operator: validates, writes nothing."""
    def fake(*args, **kwargs) -> None:
        validate(*args, **kwargs)

    return fake


def _scatter_functional_fake(key, value, key_cache, value_cache, slot_mapping, **kwargs):
    kv_cache.validate_scatter_pa_kv_cache(key, value, key_cache, value_cache, slot_mapping, **kwargs)
    return torch.empty_like(key_cache), torch.empty_like(value_cache)


def _gather_functional_fake(key_cache, value_cache, block_tables, seq_lens, key, value, **kwargs):
    kv_cache.validate_gather_pa_kv_cache(key_cache, value_cache, block_tables, seq_lens, key, value, **kwargs)
    return torch.empty_like(key), torch.empty_like(value)


def _scatter_nd_fake(self, indices, updates):
    kv_cache.validate_scatter_nd_update(self, indices, updates)
    return torch.empty(self.shape, dtype=self.dtype, device=self.device)


def _attention_update_fake(lse, local_out, update_type):
    return attention_update.outputs(attention_update.validate(lse, local_out, update_type))


define("_npu_reshape_and_cache(Tensor key, Tensor value, Tensor(a!) key_cache, Tensor(b!) value_cache, "
       "Tensor slot_indices) -> ()", kv_cache._npu_reshape_and_cache,
       _checked(kv_cache.validate_reshape_and_cache))
define("_npu_reshape_and_cache_siso(Tensor key, Tensor(a!) key_cache, Tensor slot_indices) -> ()",
       kv_cache._npu_reshape_and_cache_siso, _checked(kv_cache.validate_reshape_and_cache_siso))
define("npu_scatter_pa_kv_cache(Tensor key, Tensor value, Tensor(a!) key_cache, Tensor(b!) value_cache, "
       f"Tensor slot_mapping, *, {SCATTER_KW}) -> ()", kv_cache.npu_scatter_pa_kv_cache,
       _checked(kv_cache.validate_scatter_pa_kv_cache))
define("npu_scatter_pa_kv_cache_functional(Tensor key, Tensor value, Tensor key_cache, Tensor value_cache, "
       f"Tensor slot_mapping, *, {SCATTER_KW}) -> (Tensor, Tensor)", kv_cache.npu_scatter_pa_kv_cache_functional,
       _scatter_functional_fake)
define("npu_gather_pa_kv_cache(Tensor key_cache, Tensor value_cache, Tensor block_tables, Tensor seq_lens, "
       f"Tensor(a!) key, Tensor(b!) value, *, {GATHER_KW}) -> ()", kv_cache.npu_gather_pa_kv_cache,
       _checked(kv_cache.validate_gather_pa_kv_cache))
define("npu_gather_pa_kv_cache_functional(Tensor key_cache, Tensor value_cache, Tensor block_tables, "
       f"Tensor seq_lens, Tensor key, Tensor value, *, {GATHER_KW}) -> (Tensor, Tensor)",
       kv_cache.npu_gather_pa_kv_cache_functional, _gather_functional_fake)
define("_npu_scatter_nd_update_into(Tensor(a!) self, Tensor indices, Tensor updates) -> ()",
       kv_cache.npu_scatter_nd_update_, _checked(kv_cache.validate_scatter_nd_update))
define("npu_scatter_nd_update(Tensor self, Tensor indices, Tensor updates) -> Tensor",
       kv_cache.npu_scatter_nd_update, _scatter_nd_fake)
define("npu_attention_update(Tensor[] lse, Tensor[] local_out, int update_type) -> (Tensor out, Tensor lse_out)",
       attention_update.npu_attention_update, _attention_update_fake)


def _scatter_nd_update_(self, indices, updates):
    torch.ops.npu._npu_scatter_nd_update_into(self, indices, updates)
    return self


LIB.define("npu_scatter_nd_update_(Tensor(a!) self, Tensor indices, Tensor updates) -> Tensor(a!)")
LIB.impl("npu_scatter_nd_update_", _scatter_nd_update_, "CompositeImplicitAutograd")

_npu_reshape_and_cache = public("_npu_reshape_and_cache", kv_cache._npu_reshape_and_cache,
                                "torch_npu._npu_reshape_and_cache (spec vllm-ascend-ops §2.1).")
_npu_reshape_and_cache_siso = public("_npu_reshape_and_cache_siso", kv_cache._npu_reshape_and_cache_siso,
                                     "torch_npu._npu_reshape_and_cache_siso (spec vllm-ascend-ops §2.2).")
npu_scatter_pa_kv_cache = public("npu_scatter_pa_kv_cache", kv_cache.npu_scatter_pa_kv_cache,
                                 "torch_npu.npu_scatter_pa_kv_cache (spec vllm-ascend-ops §2.3).")
npu_scatter_pa_kv_cache_functional = public(
    "npu_scatter_pa_kv_cache_functional", kv_cache.npu_scatter_pa_kv_cache_functional,
    "torch_npu.npu_scatter_pa_kv_cache_functional (spec vllm-ascend-ops §2.3).")
npu_gather_pa_kv_cache = public("npu_gather_pa_kv_cache", kv_cache.npu_gather_pa_kv_cache,
                                "torch_npu.npu_gather_pa_kv_cache (spec vllm-ascend-ops §2.4).")
npu_gather_pa_kv_cache_functional = public(
    "npu_gather_pa_kv_cache_functional", kv_cache.npu_gather_pa_kv_cache_functional,
    "torch_npu.npu_gather_pa_kv_cache_functional (spec vllm-ascend-ops §2.4).")
npu_scatter_nd_update_ = public("npu_scatter_nd_update_", _scatter_nd_update_,
                                "torch_npu.npu_scatter_nd_update_ (spec vllm-ascend-ops §2.5): returns self.")
npu_scatter_nd_update = public("npu_scatter_nd_update", kv_cache.npu_scatter_nd_update,
                               "torch_npu.npu_scatter_nd_update (spec vllm-ascend-ops §2.5).")


def npu_attention_update(lse, local_out, update_type: int):
    """torch_npu.npu_attention_update (spec vllm-ascend-ops §3): (out, lse_out), lse_out None unless
    update_type == 1."""
    if not lse or not local_out:            # a call without tensors has no dispatch key: its error comes first
        attention_update.validate(lse, local_out, update_type)
    out, lse_out = torch.ops.npu.npu_attention_update(lse, local_out, update_type)
    return out, lse_out if update_type == 1 else None
