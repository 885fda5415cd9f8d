"""How the host backend issues an aten call without running it: outputs from shape inference, a thunk
that computes them later.

Outputs are allocated from the meta kernels and poisoned (NaN, or the dtype's maximum) until the thunk
runs; an in-place or ``out=`` call returns the tensors it writes, as on the device. Shape inference
runs Python reference kernels, so its result is cached per call signature (shapes, strides, dtypes,
scalar arguments); the cache keeps the ``INFERRED_LIMIT`` signatures used last and is emptied by the
backend's ``empty_cache``.
"""

from __future__ import annotations

import collections
import threading

import torch
from torch.utils import _pytree as pytree

INFERRED_LIMIT = 4096   # signatures kept (about 0.7 KiB each)


def poison_(t: torch.Tensor) -> None:
    if t.dtype.is_floating_point or t.dtype.is_complex:
        t.fill_(float("nan"))
    elif t.dtype == torch.bool:
        t.fill_(True)
    else:
        t.fill_(torch.iinfo(t.dtype).max)


class _Inferred:
    """Output descriptions by call signature, the least recently used dropped past ``INFERRED_LIMIT``."""

    def __init__(self):
        self.entries: collections.OrderedDict = collections.OrderedDict()
        self.lock = threading.Lock()

    def get(self, key):
        with self.lock:
            entry = self.entries.get(key)
            if entry is not None:
                self.entries.move_to_end(key)
            return entry

    def put(self, key, entry) -> None:
        with self.lock:
            self.entries[key] = entry
            while len(self.entries) > INFERRED_LIMIT:
                self.entries.popitem(last=False)

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()

    def __len__(self) -> int:
        return len(self.entries)


inferred = _Inferred()


def _signature(func, leaves: list):
    """Cache key of a call's shape inference, and the distinct tensors among ``leaves`` in order."""
    tensors: dict = {}
    key = [func]
    for x in leaves:
        if isinstance(x, torch.Tensor):
            index = tensors.setdefault(id(x), (len(tensors), x))[0]
            key.append((index, x.shape, x.stride(), x.dtype))
        elif isinstance(x, torch.device):
            key.append("device")
        else:
            key.append((type(x), x))  # 1, 1.0 and True are equal keys but give other dtypes
    return tuple(key), [x for _, x in tensors.values()]


def _infer(func, leaves: list, spec, tensors: list):
    """Output description: per output leaf ("arg", index of the tensor it is), ("new", shape, stride,
    dtype) or ("value", v); from the meta kernels."""
    metas = [torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta") for t in tensors]
    index = {id(t): i for i, t in enumerate(tensors)}
    meta_leaves = [metas[index[id(x)]] if isinstance(x, torch.Tensor)
                   else torch.device("meta") if isinstance(x, torch.device) else x for x in leaves]
    args, kwargs = pytree.tree_unflatten(meta_leaves, spec)
    try:
        out = func(*args, **kwargs)
    except Exception as e:
        raise RuntimeError(f"host backend cannot queue {func}: no shape inference for it on 'meta' ({e})") from e
    arg_of = {id(m): i for i, m in enumerate(metas)}
    out_leaves, out_spec = pytree.tree_flatten(out)
    desc = tuple(("arg", arg_of[id(m)]) if isinstance(m, torch.Tensor) and id(m) in arg_of
                 else ("new", m.shape, m.stride(), m.dtype) if isinstance(m, torch.Tensor)
                 else ("value", m) for m in out_leaves)
    return desc, out_spec


def _describe(func, leaves: list, spec):
    key, tensors = _signature(func, leaves)
    try:
        entry = inferred.get(key)
    except TypeError:  # an unhashable argument: no caching
        return _infer(func, leaves, spec, tensors), tensors
    if entry is None:
        entry = _infer(func, leaves, spec, tensors)
        inferred.put(key, entry)
    return entry, tensors


def record(func, args: tuple, kwargs: dict):
    """Outputs of ``func`` (poisoned, or the tensors it writes) and a thunk computing them."""
    leaves, spec = pytree.tree_flatten((args, kwargs))
    (desc, out_spec), tensors = _describe(func, leaves, spec)
    outs, fresh = [], []
    for i, d in enumerate(desc):
        if d[0] == "arg":
            outs.append(tensors[d[1]])
        elif d[0] == "new":
            t = torch.empty_strided(d[1], d[2], dtype=d[3])
            poison_(t)
            outs.append(t)
            fresh.append((i, t))
        else:
            outs.append(d[1])

    def thunk():
        results = pytree.tree_leaves(func(*args, **kwargs))
        for i, t in fresh:
            t.copy_(results[i])

    thunk.label = str(func)
    return pytree.tree_unflatten(outs, out_spec), thunk
