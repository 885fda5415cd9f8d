"""torchair on the runtime: multi-stream scopes and tagged events in compiled graphs, and the
reduce-overhead backend that captures compiled graphs in NPUGraphs (spec/runtime.md §3).

    from runtime import torchair
    cfg = torchair.CompilerConfig(); cfg.mode = "reduce-overhead"
    model = torch.compile(model, backend=torchair.get_npu_backend(compiler_config=cfg), fullgraph=True)
"""

from . import ops, scope
from .backend import get_npu_backend
from .config import CompilerConfig

__all__ = ["CompilerConfig", "get_npu_backend", "ops", "scope"]
