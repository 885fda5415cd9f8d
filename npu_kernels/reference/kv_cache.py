"""Golden KV-cache writes and reads (spec vllm-ascend-ops §2): one token (or index vector) at a time, in
plain PyTorch, with the operators' signatures and in-place semantics. Arguments are validated by the
operators' own checks, so layouts (ND/NZ) and errors are the same; the out-of-range policy is the one
of ``npu_kernels.ops.kv_cache`` (skip the write, or read zeros). Host loops: small inputs only.
"""

from __future__ import annotations

import torch

from ..ops import kv_cache as op


def _write(call: op.ScatterCall) -> None:
    for part in call.parts:
        cache = part.cache
        tokens = cache.token_view()                              # [nb, bs, H // c0, c0]
        for i, slot in enumerate(call.slots.tolist()):
            if 0 <= slot < cache.slots:
                tokens[slot // cache.block_size, slot % cache.block_size] = part.rows[i].reshape(tokens.shape[2:])


def _npu_reshape_and_cache(key, value, key_cache, value_cache, slot_indices) -> None:
    _write(op.validate_reshape_and_cache(key, value, key_cache, value_cache, slot_indices))


def _npu_reshape_and_cache_siso(key, key_cache, slot_indices) -> None:
    _write(op.validate_reshape_and_cache_siso(key, key_cache, slot_indices))


def npu_scatter_pa_kv_cache(key, value, key_cache, value_cache, slot_mapping, **kwargs) -> None:
    _write(op.validate_scatter_pa_kv_cache(key, value, key_cache, value_cache, slot_mapping, **kwargs))


def npu_scatter_pa_kv_cache_functional(key, value, key_cache, value_cache, slot_mapping,
                                       **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    key_cache, value_cache = key_cache.clone(), value_cache.clone()
    npu_scatter_pa_kv_cache(key, value, key_cache, value_cache, slot_mapping, **kwargs)
    return key_cache, value_cache


def npu_gather_pa_kv_cache(key_cache, value_cache, block_tables, seq_lens, key, value, *, seq_offset=None,
                           is_seq_lens_cumsum=False) -> None:
    """Request b's tokens 0..n_b-1 go to rows start_b.. of key/value; token t is at table column
    shift_b + t // bs (shift_b = seq_offset[b] / bs, truncated), slot t % bs of that block."""
    call = op.validate_gather_pa_kv_cache(key_cache, value_cache, block_tables, seq_lens, key, value,
                                          seq_offset=seq_offset, is_seq_lens_cumsum=is_seq_lens_cumsum)
    lens, table = seq_lens.tolist(), block_tables.tolist()
    offsets = [0] * call.batch if seq_offset is None else seq_offset.tolist()
    if is_seq_lens_cumsum:
        counts, start = [max(hi - lo, 0) for lo, hi in zip(lens, lens[1:])], lens[0]
    else:
        counts, start = [max(n, 0) for n in lens], 0
    bs, rows = call.parts[0].cache.block_size, key.shape[0]
    for b in range(call.batch):
        shift = int(offsets[b] / bs)                            # C division (truncates), as the NPU
        for t in range(max(0, -start), min(counts[b], rows - start)):
            col = shift + t // bs
            blk = table[b][col] if 0 <= col < len(table[b]) else -1
            for part in call.parts:
                cache = part.cache
                dst = part.rows[start + t]
                if 0 <= blk < cache.blocks:
                    dst.copy_(cache.token_view()[blk, t % bs].reshape(dst.shape))
                else:
                    dst.zero_()
        start += counts[b]


def npu_gather_pa_kv_cache_functional(key_cache, value_cache, block_tables, seq_lens, key, value,
                                      **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    key, value = key.clone(), value.clone()
    npu_gather_pa_kv_cache(key_cache, value_cache, block_tables, seq_lens, key, value, **kwargs)
    return key, value


def npu_scatter_nd_update_(self, indices, updates) -> torch.Tensor:
    """self[i_0, ..., i_{a-1}] = updates[k] for each index vector k of indices [..., a]."""
    call = op.validate_scatter_nd_update(self, indices, updates)
    vectors = indices.reshape(call.count, call.depth).tolist()
    rows = updates.reshape(call.count, *self.shape[call.depth:])
    for k, vector in enumerate(vectors):
        if all(0 <= i < n for i, n in zip(vector, self.shape)):
            self[tuple(vector)] = rows[k]
    return self


def npu_scatter_nd_update(self, indices, updates) -> torch.Tensor:
    return npu_scatter_nd_update_(self.clone(), indices, updates)
