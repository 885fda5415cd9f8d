"""``get_npu_backend``: the ``torch.compile`` backend of torchair's configurations.

``max-autotune`` is the standard compiler (Inductor). ``reduce-overhead`` (and ``npugraph_ex``) trace the
graph Dynamo produced through AOTAutograd, as torchair does, and run the resulting aten graph, after the
event closure pass, through ``NPUGraph`` captures:
- with ``torch.compile(dynamic=True)`` symbolic sizes reach the graph as int inputs, and a Python float
  as a 0-d tensor input that the aten graph reads with tensor operations (AOTAutograd removes Dynamo's
  ``.item()``), so a replay reads the float from the captured input buffer instead of a host value
  read at capture; on CUDA that buffer lives on the device;
- one capture per input signature (shapes, dtypes, non-tensor values), after
  ``aclgraph_config.num_warmup_iters`` eager runs; ``nn.Parameter`` inputs and inputs the graph mutates
  (a KV cache) are captured as they are (a new address means a recapture), other tensor inputs are
  copied into the captured buffers before each replay (``debug.aclgraph.clone_input``);
- after ``debug.aclgraph.static_capture_size_limit`` captures the graph runs eagerly from then on;
- outputs are the captured buffers, or clones of them (``debug.aclgraph.enable_output_clone``);
- task update (§3.4 step 4): an ``npu`` operator call whose length lists (``actual_seq_lengths`` ...
  of the fused operator v1 and v2) hold graph inputs, or ``_npu_paged_attention`` whose ``context_lens``
  (argument 7) is a graph input, is captured behind an ExternalEvent in a task group; the ints of such
  lists that nothing else reads are left out of the signature, and each call replays, then updates the
  calls with the call's lengths on the update stream (after the previous replay) and records their
  events, without a recapture;
- captures share ``aclgraph_config.use_custom_pool`` when given, else one pool per compiled graph
  (``debug.aclgraph.disable_mempool_reuse_in_same_fx``: one pool per capture).
``debug.run_eagerly`` runs the graph without capture.
"""

from __future__ import annotations

import warnings

import torch
from torch import fx
from torch.utils import _pytree as pytree

from .. import backends, events, graphs, streams, tasks
from .config import CompilerConfig
from .passes import apply_event_closure, drop_wait_tensors, run_in_place, stream_scopes

UPDATE_KWARGS = ("actual_seq_lengths", "actual_seq_lengths_kv", "actual_shared_prefix_len", "actual_seq_qlen",
                 "actual_seq_kvlen")
UPDATE_TENSORS = {"_npu_paged_attention.default": (7, "context_lens")}   # op -> (position, name) of a tensor


def _is_input(x) -> bool:
    return isinstance(x, fx.Node) and x.op == "placeholder"


def _slots(node: fx.Node) -> list:
    """Where ``node`` (an ``npu`` operator call) takes lengths from graph inputs: ``("kwarg", name)`` for a
    length list of ``UPDATE_KWARGS`` whose nodes are graph inputs, ``("arg", i)`` / ``("kwarg", name)`` for
    a tensor of ``UPDATE_TENSORS`` that is one."""
    slots = [("kwarg", k) for k in UPDATE_KWARGS if isinstance(node.kwargs.get(k), (list, tuple))
             and any(_is_input(x) for x in node.kwargs[k])
             and all(_is_input(x) for x in node.kwargs[k] if isinstance(x, fx.Node))]
    if node.target.__name__ in UPDATE_TENSORS:
        position, name = UPDATE_TENSORS[node.target.__name__]
        slot = ("arg", position) if len(node.args) > position else ("kwarg", name)
        if _is_input(node.args[position] if slot[0] == "arg" else node.kwargs.get(name)):
            slots.append(slot)
    return slots


def _slot(node: fx.Node, slot: tuple):
    kind, where = slot
    return node.args[where] if kind == "arg" else node.kwargs[where]


def _value(held, values: dict):
    """The value of a slot's graph input, or its list with graph inputs replaced by their values."""
    if isinstance(held, fx.Node):
        return values[held]
    return [values[x] if isinstance(x, fx.Node) else x for x in held]


def _nodes(value) -> set:
    """The nodes in an argument value (nested lists, tuples, dicts)."""
    found: set = set()
    fx.node.map_arg(value, found.add)
    return found


def updatable_nodes(graph: fx.Graph) -> dict:
    """``npu`` operator calls that take lengths from graph inputs: node -> their slots (``_slots``)."""
    found = {}
    for node in graph.nodes:
        if node.op == "call_function" and str(node.target).split(".")[0] == "npu":
            slots = _slots(node)
            if slots:
                found[node] = slots
    return found


def update_only_inputs(updatable: dict) -> set:
    """The graph inputs held in the length lists of updatable calls and read nowhere else: a new value needs
    no recapture."""
    listed = {x for node, slots in updatable.items() for slot in slots if isinstance(_slot(node, slot), (list, tuple))
              for x in _nodes(_slot(node, slot))}

    def only_in_slots(p: fx.Node) -> bool:
        for user in p.users:
            slots = updatable.get(user, [])
            rest = [a for i, a in enumerate(user.args) if ("arg", i) not in slots] + \
                   [v for k, v in user.kwargs.items() if ("kwarg", k) not in slots]
            if not slots or p in _nodes(rest):
                return False
        return True

    return {p for p in listed if only_in_slots(p)}


class _UpdatedCall:
    """A call captured in a task group behind ``event``; re-issued with the call's lengths at each call."""

    def __init__(self, node: fx.Node, slots: list, args, kwargs, event, handle):
        self.node, self.slots, self.args, self.kwargs = node, slots, args, kwargs
        self.event, self.handle = event, handle

    def reissue(self, values: dict) -> None:
        args, kwargs = list(self.args), dict(self.kwargs)
        for slot in self.slots:
            kind, where = slot
            if kind == "arg":
                args[where] = _value(_slot(self.node, slot), values)
            else:
                kwargs[where] = _value(_slot(self.node, slot), values)
        self.node.target(*args, **kwargs)


class _CaptureInterpreter(fx.Interpreter):
    """Runs the graph in a capture, wrapping the updatable calls (ExternalEvent, task group)."""

    def __init__(self, gm: fx.GraphModule, updatable: dict):
        super().__init__(gm)
        self.updatable = updatable
        self.calls: list = []

    def run_node(self, n: fx.Node):
        if n not in self.updatable:
            return super().run_node(n)
        s = streams.current_stream()
        event = events.ExternalEvent()
        event.wait(s)
        event.reset(s)
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        tasks.graph_task_group_begin(s)
        result = n.target(*args, **kwargs)
        handle = tasks.graph_task_group_end(s)
        self.calls.append(_UpdatedCall(n, self.updatable[n], args, kwargs, event, handle))
        return result


def mutated_inputs(graph: fx.Graph) -> set:
    """Indices of the placeholders the graph writes (AOTAutograd ends the graph with ``copy_`` into them)."""
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    written = {n.args[0] for n in graph.nodes if n.op == "call_function" and n.target is torch.ops.aten.copy_.default}
    return {i for i, p in enumerate(placeholders) if p in written}


def _static_copy(a: torch.Tensor) -> torch.Tensor:
    """The captured buffer of input ``a``: a copy, on the device for a 0-d CPU tensor (a Python scalar)."""
    device = backends.backend().device if a.dim() == 0 and a.device.type == "cpu" else a.device
    return a.to(device, copy=True)


class _Capture:
    """One captured NPUGraph with its static inputs, outputs and updated calls."""

    def __init__(self, gm: fx.GraphModule, updatable: dict, args: tuple, pool, config: CompilerConfig,
                 kept: set):
        clone = config.debug.aclgraph.clone_input
        self.cloned = [isinstance(a, torch.Tensor) and clone and not isinstance(a, torch.nn.Parameter)
                       and i not in kept for i, a in enumerate(args)]
        self.static = [_static_copy(a) if c else a for a, c in zip(args, self.cloned)]
        self.addresses = [a.data_ptr() if isinstance(a, torch.Tensor) and not c else None
                          for a, c in zip(args, self.cloned)]   # inputs captured as they are
        self.graph = graphs.NPUGraph()
        interpreter = _CaptureInterpreter(gm, updatable)
        with graphs.graph(self.graph, pool=pool, capture_error_mode=config.aclgraph_config.capture_error_mode):
            self.outputs = interpreter.run(*self.static)
        self.calls = interpreter.calls
        self.placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        self.replayed = streams.Event()      # recorded after each replay; the next updates wait for it

    def stale(self, args) -> bool:
        """An input captured as it is (a parameter, or any tensor without clone_input) moved."""
        return any(addr is not None and a.data_ptr() != addr for a, addr in zip(args, self.addresses))

    def run(self, args, clone_output: bool):
        for dst, src, cloned in zip(self.static, args, self.cloned):
            if cloned:
                dst.copy_(src)
        self.graph.replay()
        if self.calls:
            self.update(args, streams.shared_stream("torchair update", priority=-1))
        if clone_output:
            return pytree.tree_map(lambda o: o.clone() if isinstance(o, torch.Tensor) else o, self.outputs)
        return self.outputs

    def update(self, args, u) -> None:
        """Replay-then-update, ordered after the previous step's replay on the device."""
        values = dict(zip(self.placeholders, args))
        u.wait_event(self.replayed)
        with streams.stream(u):
            for call in self.calls:
                tasks.graph_task_update_begin(u, call.handle)
                call.reissue(values)
                tasks.graph_task_update_end(u)
                call.event.record(u)
        self.replayed.record(streams.current_stream())


class GraphRunner:
    """The compiled function of one FX graph in reduce-overhead mode."""

    def __init__(self, gm: fx.GraphModule, config: CompilerConfig):
        self.gm = gm
        self.config = config
        run_in_place(gm, reinplace=not config.debug.aclgraph.disable_reinplace_inplaceable_ops_pass)
        self.stream_scopes = apply_event_closure(gm)
        self.updatable = updatable_nodes(gm.graph)
        update_only = update_only_inputs(self.updatable)
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        self.update_inputs = {i for i, p in enumerate(placeholders) if p in update_only}
        self.mutated = mutated_inputs(gm.graph)   # captured as they are
        self.captures: dict = {}     # input signature -> _Capture
        self.capture_count = 0
        self.eager = False           # the capture limit was reached
        self.pool = None             # this graph's pool, shared by its captures

    def _signature(self, args) -> tuple:
        """Shapes, dtypes and values of the inputs, less the lengths that only task update reads."""
        return tuple(None if i in self.update_inputs
                     else (tuple(a.shape), a.dtype, a.device) if isinstance(a, torch.Tensor) else (type(a), a)
                     for i, a in enumerate(args))

    def __call__(self, *args):
        if self.eager:
            return self.gm(*args)
        key = self._signature(args)
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
        return _Capture(self.gm, self.updatable, args, self._pool(), self.config, self.mutated)

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
        stream_scopes(gm)
        if config.debug.run_eagerly:
            apply_event_closure(gm)
            return gm.forward
        if config.mode == "max-autotune":
            from torch._inductor.compile_fx import compile_fx

            drop_wait_tensors(gm)
            return compile_fx(gm, example_inputs, decompositions=custom_decompositions)
        from torch._functorch.aot_autograd import aot_module_simplified

        return aot_module_simplified(gm, example_inputs, fw_compiler=lambda g, _: GraphRunner(g, config),
                                     decompositions=custom_decompositions, keep_inference_input_mutations=True)

    return backend
