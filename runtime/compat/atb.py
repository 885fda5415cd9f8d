"""``torch.ops.atb``: torch_npu's namespace of the ATB operators that npu_kernels provides
(``_npu_paged_attention`` and its workspace helper, ``_npu_reshape_and_cache(_siso)``).

torch_npu registers these operators in namespace ``atb`` and binds ``torch_npu.<name>`` to them; npu_kernels
registers them in ``npu``. Here each ``atb`` operator has the ``npu`` operator's schema and is a
CompositeImplicitAutograd alias of it, so it becomes the ``npu`` call before any dispatch mode or tracer
sees it: captures, task update, auto dispatch and torch.compile handle ``torch.ops.atb.<name>`` as they
handle ``torch.ops.npu.<name>``.
"""

from __future__ import annotations

import torch

OPERATORS = ("_npu_paged_attention", "_npu_paged_attention_get_workspace", "_npu_reshape_and_cache",
             "_npu_reshape_and_cache_siso")


def _alias(op: torch._ops.OpOverload):
    def call(*args, **kwargs):
        return op(*args, **kwargs)

    return call


def library() -> torch.library.Library:
    """Define the ``atb`` operators; ``_destroy()`` of the returned library removes them."""
    lib = torch.library.Library("atb", "FRAGMENT")
    for name in OPERATORS:
        op = getattr(torch.ops.npu, name).default
        lib.define(str(op._schema).split("::", 1)[1])
        lib.impl(name, _alias(op), "CompositeImplicitAutograd")
    return lib
