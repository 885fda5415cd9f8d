"""What an intercepted operator call is, as far as streams and graphs care.

``task``       an operator of a task namespace (``npu``, ``air`` and those added with
               ``register_task_namespace``): its Python implementation runs at once and issues its
               device work through the runtime (``npu``: ``npu_kernels.tasks.submit``, which decides
               whether to launch, capture or update; ``air``: stream scopes and events).
``view``       returns aliases of its inputs without writing them: metadata only, always run at once.
``alloc``      allocates without reading or writing data (``empty`` and friends): run at once.
``host_read``  returns a host value (number, bool) computed from tensor data: needs the data now.
``device``     everything else: device work, ordered on the current stream.
"""

from __future__ import annotations

import functools

import torch

_task_namespaces = {"npu", "air"}

_ALLOC = {
    torch.ops.aten.empty.memory_format,
    torch.ops.aten.empty_strided.default,
    torch.ops.aten.empty_like.default,
    torch.ops.aten.new_empty.default,
    torch.ops.aten.new_empty_strided.default,
}


def register_task_namespace(namespace: str) -> None:
    """Treat the operators of ``namespace`` like ``npu`` ones: they submit tasks."""
    _task_namespaces.add(namespace)
    op_kind.cache_clear()


@functools.cache
def op_kind(func: torch._ops.OpOverload) -> str:
    if func.namespace in _task_namespaces:
        return "task"
    if func in _ALLOC:
        return "alloc"
    returns = func._schema.returns
    if returns and all(r.alias_info is not None and not r.alias_info.is_write for r in returns):
        return "view"
    if any(not isinstance(r.type, (torch.TensorType, torch.ListType, torch.OptionalType)) for r in returns):
        return "host_read"
    return "device"
