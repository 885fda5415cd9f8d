"""``get_npu_backend``: the ``torch.compile`` backend of torchair's configurations.

``max-autotune`` is the standard compiler (Inductor). ``reduce-overhead`` (and ``npugraph_ex``) run the
FX graph Dynamo produced, after the event closure pass, through ``NPUGraph`` captures:
- one capture per input signature (shapes, dtypes, non-tensor values), after
  ``aclgraph_config.num_warmup_iters`` eager runs; ``nn.Parameter`` inputs are captured as they are
  (a new address means a recapture), other tensor inputs are copied into the captured buffers before
  each replay (``debug.aclgraph.clone_input``);
- after ``debug.aclgraph.static_capture_size_limit`` captures the graph runs eagerly from then on;
- outputs are the captured buffers, or clones of them (``debug.aclgraph.enable_output_clone``);
- captures share ``aclgraph_config.use_custom_pool`` when given, else one pool per compiled graph
  (``debug.aclgraph.disable_mempool_reuse_in_same_fx``: one pool per capture).
``debug.run_eagerly`` runs the graph without capture.
"""

from __future__ import annotations

import warnings

import torch
from torch import fx

from .. import graphs, streams
from .config import CompilerConfig
from .passes import apply_event_closure


def _signature(args) -> tuple:
    return tuple((tuple(a.shape), a.dtype, a.device) if isinstance(a, torch.Tensor) else (type(a), a) for a in args)


class _Capture:
    """One captured NPUGraph with its static inputs and outputs."""

    def __init__(self, gm: fx.GraphModule, args: tuple, pool, config: CompilerConfig):
        clone = config.debug.aclgraph.clone_input
        self.static = [a.clone() if isinstance(a, torch.Tensor) and clone and not isinstance(a, torch.nn.Parameter)
                       else a for a in args]
        self.addresses = [a.data_ptr() if isinstance(a, torch.Tensor) else None for a in self.static]
        self.graph = graphs.NPUGraph()
        with graphs.graph(self.graph, pool=pool, capture_error_mode=config.aclgraph_config.capture_error_mode):
            self.outputs = gm(*self.static)

    def stale(self, args) -> bool:
        """A captured-as-is input (parameter, or any input without clone_input) moved."""
        return any(s is a and a.data_ptr() != addr for s, a, addr in zip(self.static, args, self.addresses)
                   if isinstance(a, torch.Tensor))

    def run(self, args, clone_output: bool):
        for dst, src in zip(self.static, args):
            if isinstance(dst, torch.Tensor) and dst is not src:
                dst.copy_(src)
        self.graph.replay()
        if clone_output:
            return type(self.outputs)(o.clone() if isinstance(o, torch.Tensor) else o for o in self.outputs)
        return self.outputs


class GraphRunner:
    """The compiled function of one FX graph in reduce-overhead mode."""

    def __init__(self, gm: fx.GraphModule, config: CompilerConfig):
        self.gm = gm
        self.config = config
        self.stream_scopes = apply_event_closure(gm)
        self.captures: dict = {}     # input signature -> _Capture
        self.capture_count = 0
        self.eager = False           # the capture limit was reached
        self.pool = None             # this graph's pool, shared by its captures

    def __call__(self, *args):
        if self.eager:
            return self.gm(*args)
        key = _signature(args)
        capture = self.captures.get(key)
        if capture is None or capture.stale(args):
            limit = self.config.debug.aclgraph.static_capture_size_limit
            if self.capture_count >= limit:
                warnings.warn(f"reduce-overhead: {self.capture_count} captures reached "
                              f"static_capture_size_limit={limit}; running this graph eagerly from now on")
                self.eager = True
                self.captures.clear()
                return self.gm(*args)
            capture = self.captures[key] = self._capture(args)
        return capture.run(args, self.config.debug.aclgraph.enable_output_clone)

    def _capture(self, args) -> _Capture:
        for _ in range(self.config.aclgraph_config.num_warmup_iters):
            self.gm(*args)
        streams.synchronize()
        self.capture_count += 1
        return _Capture(self.gm, args, self._pool(), self.config)

    def _pool(self):
        if self.config.aclgraph_config.use_custom_pool is not None:
            return self.config.aclgraph_config.use_custom_pool
        if self.config.debug.aclgraph.disable_mempool_reuse_in_same_fx:
            return None
        if self.pool is None:
            self.pool = graphs.graph_pool_handle()
        return self.pool


def get_npu_backend(compiler_config: CompilerConfig | None = None, custom_decompositions=None):
    """A ``torch.compile`` backend for ``compiler_config`` (default: ``CompilerConfig()``)."""
    config = CompilerConfig() if compiler_config is None else compiler_config
    config.check()

    def backend(gm: fx.GraphModule, example_inputs):
        if config.debug.run_eagerly:
            apply_event_closure(gm)
            return gm.forward
        if config.mode == "max-autotune":
            from torch._inductor.compile_fx import compile_fx

            return compile_fx(gm, example_inputs, decompositions=custom_decompositions)
        return GraphRunner(gm, config)

    return backend
