"""Anti-quantisation parameters of int8 key/value (spec ops §4.4): combined (``antiquant_*``) or separated
(``key_/value_antiquant_*``), modes 0-5, as the prefill kernel's [X, KV_N, Y] views (``sources.AntiQuant``)."""

from __future__ import annotations

from typing import Optional

import torch

from ... import checks
from ...errors import require
from ...layouts import Layout
from ..sources import PER_CHANNEL, PER_ROW, PER_TOKEN, AntiQuant

NAMES = ("antiquant_scale", "antiquant_offset", "key_antiquant_scale", "key_antiquant_offset",
         "value_antiquant_scale", "value_antiquant_offset")


def separated(kw) -> bool:
    return kw["key_antiquant_scale"] is not None or kw["value_antiquant_scale"] is not None


def channel_only(key: torch.Tensor, kw) -> bool:
    """Float K/V, or int8 with per-channel/per-tensor parameters only (what the decode kernels read)."""
    if key.dtype != torch.int8:
        return True
    if separated(kw):
        return kw["key_antiquant_mode"] in (0, 2) and kw["value_antiquant_mode"] in (0, 2)
    return kw["antiquant_mode"] == 0


def channel_shape(layout: Layout, kv_n: int, d: int) -> tuple[int, ...]:
    """The per-channel (2, ...) shape of the combined parameters for ``layout``."""
    return {"BNSD": (2, kv_n, 1, d), "BSND": (2, kv_n, d), "BSH": (2, kv_n * d)}.get(layout.inp, (2, kv_n, d))


_SHAPES = {1: "(1, B, S2)", 3: "(B, KV_N, S2)", 4: "(blocks, block_size)", 5: "(blocks, KV_N, block_size)"}


def _covers(mode: int, v: torch.Tensor, kv_n: int, batch: Optional[int], s2: Optional[int]) -> bool:
    """Per-token parameters by position (modes 1, 3) have one row per batch and cover S2 keys; ``None``:
    not known yet (checked per call)."""
    return mode not in (1, 3) or ((batch is None or v.shape[0] == batch) and (s2 is None or v.shape[2] >= s2))


def _view(name: str, mode: int, t: torch.Tensor, kv_n: int, width: int, batch: Optional[int], s2: Optional[int],
          paged: bool, query_dtype: torch.dtype) -> torch.Tensor:
    """One parameter of key or value as the kernel's [X, KV_N, Y] view."""
    checks.tensor(name, t)
    if mode in (0, 2):
        require(t.dtype == query_dtype, name, t, f"per-channel/per-tensor parameters have the query dtype {query_dtype}")
        if mode == 2:
            require(tuple(t.shape) == (kv_n,), name, t, f"mode 2 (per tensor and head) needs shape (KV_N={kv_n},)")
            return t.reshape(1, kv_n, 1).expand(1, kv_n, width)
        require(t.numel() in (1, kv_n * width), name, t, f"per-tensor needs 1 element, per-channel KV_N*D = {kv_n * width}")
        return t.reshape(1, 1, 1).expand(1, kv_n, width) if t.numel() == 1 else t.reshape(1, kv_n, width)
    require(t.dtype == torch.float32, name, t, f"per-token parameters (mode {mode}) are float32")
    if mode in (4, 5):
        require(paged, name, t, f"mode {mode} (parameters managed like the paged cache) needs block_table")
    v = t.reshape(-1, 1, t.shape[-1]) if mode in (1, 4) else t
    ok = v.dim() == 3 and v.shape[1] == (1 if mode in (1, 4) else kv_n) and _covers(mode, v, kv_n, batch, s2)
    require(ok, name, t, f"mode {mode} needs {_SHAPES[mode]} with B={batch}, KV_N={kv_n}, S2 >= {s2}")
    return v.expand(v.shape[0], kv_n, v.shape[2])        # shared by the heads: stride 0


def parameters(key: torch.Tensor, layout: Layout, kv_n: int, d: int, dv: int, batch: Optional[int],
               s2: Optional[int], paged: bool, q_s: int, query_dtype, kw) -> tuple[Optional[AntiQuant], Optional[AntiQuant]]:
    """Combined or separated K/V anti-quantisation as the key's and the value's parameters. Per-token
    parameters by position cover ``batch`` batches and ``s2`` keys; None where that varies per call
    (token-major batches, paged kv lengths): ``cover`` checks it then."""
    if key.dtype != torch.int8:
        for n in NAMES:
            require(kw[n] is None, n, kw[n], f"only with int8 key/value (key is {key.dtype})")
        return None, None
    if separated(kw):
        modes = kw["key_antiquant_mode"], kw["value_antiquant_mode"]
        params = [(kw[f"{w}_antiquant_scale"], kw[f"{w}_antiquant_offset"]) for w in ("key", "value")]
        for w, (sc, _) in zip(("key", "value"), params):
            require(sc is not None, f"{w}_antiquant_scale", None, "key and value anti-quant scales go together")
        require(all(m in range(6) for m in modes), "key_antiquant_mode", modes[0], "modes are 0-5")
        require(modes[0] == modes[1] or modes == (0, 1), "value_antiquant_mode", modes[1],
                f"must equal key_antiquant_mode ({modes[0]}), or be 1 with key mode 0")
        prefix = "{}_antiquant"
    else:
        require(kw["antiquant_scale"] is not None, "antiquant_scale", None, "int8 key/value need anti-quant scales")
        mode = kw["antiquant_mode"]
        require(mode in (0, 1), "antiquant_mode", mode, "must be 0 (per channel/tensor) or 1 (per token)")
        scale, offset = kw["antiquant_scale"], kw["antiquant_offset"]
        checks.tensor("antiquant_scale", scale)
        require(scale.shape[0] == 2, "antiquant_scale", scale, "the first axis is 2 (key, value)")
        if mode == 0:
            channel = channel_shape(layout, kv_n, d)
            require(tuple(scale.shape) in ((2,), channel), "antiquant_scale", scale,
                    f"must be per-tensor (2,) or per-channel {channel} (index 0 key, 1 value)")
        modes = (mode, mode)
        params = [(scale[i], None if offset is None else offset[i]) for i in range(2)]
        prefix = "antiquant"
    require(q_s == 1 or all(m in (0, 1) for m in modes), "key_antiquant_mode", modes[0],
            "a query length above 1 supports modes 0 and 1 only")
    out = []
    for which, (mode, (sc, of), width) in enumerate(zip(modes, params, (d, dv))):
        name = prefix.format(("key", "value")[which])
        if mode == 0 and sc.numel() != 1:
            require(dv == d, f"{name}_scale", sc, f"per-channel parameters need equal key and value head dims ({d}, {dv})")
        view = _view(f"{name}_scale", mode, sc, kv_n, max(d, dv), batch, s2, paged, query_dtype)
        off = None
        if of is not None:
            checks.tensor(f"{name}_offset", of)
            require(of.shape == sc.shape and of.dtype == sc.dtype, f"{name}_offset", of,
                    f"must match the scale's shape {tuple(sc.shape)} and dtype {sc.dtype}")
            off = _view(f"{name}_offset", mode, of, kv_n, max(d, dv), batch, s2, paged, query_dtype)
        kernel_mode = PER_CHANNEL if mode in (0, 2) else PER_TOKEN if mode in (1, 3) and paged else PER_ROW
        out.append(AntiQuant(kernel_mode, view, off, name, mode))
    return out[0], out[1]


def cover(aq: Optional[AntiQuant], kv_n: int, batch: int, s2: int) -> None:
    """The per-call part of the per-token rule: ``batch`` batches and ``s2`` keys covered."""
    if aq is not None and not _covers(aq.api_mode, aq.scale, kv_n, batch, s2):
        require(False, f"{aq.name}_scale", aq.scale,
                f"mode {aq.api_mode} needs {_SHAPES[aq.api_mode]} with B={batch}, KV_N={kv_n}, S2 >= {s2}")
