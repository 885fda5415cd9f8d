"""A serving loop in the way of vLLM-Ascend on the demo model: requests of different lengths are prefilled
together (token-major, paged, causal), then decoded one token per step from one captured graph, whose
attention calls are updated before each replay (new kv lengths, numbers of requests and block tables) as
requests finish and new ones join. Each step also runs eagerly, the reference for the graph's result."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

import npu_kernels as nk
import runtime as rt

from .model import Model, Step


@dataclass
class Request:
    prompt: list[int]
    max_new: int
    blocks: list[int] = field(default_factory=list)
    generated: list[int] = field(default_factory=list)

    @property
    def length(self) -> int:
        return len(self.prompt) + len(self.generated)

    @property
    def done(self) -> bool:
        return len(self.generated) >= self.max_new


@dataclass
class Stats:
    prefill_tokens: int = 0
    prefill_s: float = 0.0
    steps: int = 0
    decoded: int = 0
    eager_s: float = 0.0
    capture_s: float = 0.0     # the first step: capture (its replay included)
    graph_s: float = 0.0       # the other steps: load, task update, replay
    max_error: float = 0.0
    joined: int = 0


class Server:
    """Runs ``slots`` requests at a time; the decode graph has one token row per slot."""

    def __init__(self, model: Model, slots: int):
        self.model, self.slots = model, slots
        cfg, dev = model.cfg, model.device
        self.free_blocks = list(range(cfg.blocks))
        self.running: list[Request] = []
        self.waiting: list[Request] = []
        self.width = cfg.blocks                                   # block-table columns
        self.tokens = torch.zeros(slots, dtype=torch.long, device=dev)
        self.slot_ids = torch.full((slots,), -1, dtype=torch.int32, device=dev)
        self.table = torch.zeros(slots, self.width, dtype=torch.int32, device=dev)
        self.graph = None
        self.stats = Stats()

    # requests and blocks

    def _table_rows(self, requests: list[Request]) -> torch.Tensor:
        rows = torch.zeros(len(requests), self.width, dtype=torch.int32)
        for i, r in enumerate(requests):
            rows[i, :len(r.blocks)] = torch.tensor(r.blocks, dtype=torch.int32)
        return rows.to(self.model.device)

    def _slot(self, r: Request, position: int) -> int:
        bs = self.model.cfg.block_size
        return r.blocks[position // bs] * bs + position % bs

    def admit(self) -> list[Request]:
        """Move waiting requests into free slots (blocks for prompt and answer) and prefill them together."""
        bs = self.model.cfg.block_size
        joining = []
        while self.waiting and len(self.running) + len(joining) < self.slots:
            r = self.waiting[0]
            need = -(-(len(r.prompt) + r.max_new) // bs)
            if need > len(self.free_blocks):
                break
            r.blocks = [self.free_blocks.pop() for _ in range(need)]
            joining.append(self.waiting.pop(0))
        if joining:
            self._prefill(joining)
            self.running += joining
        return joining

    def _prefill(self, requests: list[Request]) -> None:
        cum, tokens, slots = [], [], []
        for r in requests:
            tokens += r.prompt
            slots += [self._slot(r, p) for p in range(len(r.prompt))]
            cum.append(len(tokens))
        dev = self.model.device
        step = Step(torch.tensor(tokens, device=dev), torch.tensor(slots, dtype=torch.int32, device=dev),
                    self._table_rows(requests), cum, [len(r.prompt) for r in requests])
        start = time.perf_counter()
        logits = self.model.forward(step)
        for r, end in zip(requests, cum):
            r.generated.append(int(logits[end - 1].argmax()))
        self.stats.prefill_s += time.perf_counter() - start
        self.stats.prefill_tokens += len(tokens)

    # decode

    def _step(self) -> Step:
        """The decode step of the running requests: row i is request i's newest token; rows past them
        are padding (slot -1, outside every request)."""
        n = len(self.running)
        tokens = [r.generated[-1] for r in self.running] + [0] * (self.slots - n)
        slots = [self._slot(r, r.length - 1) for r in self.running] + [-1] * (self.slots - n)
        dev = self.model.device
        return Step(torch.tensor(tokens, device=dev), torch.tensor(slots, dtype=torch.int32, device=dev),
                    self._table_rows(self.running), list(range(1, n + 1)), [r.length for r in self.running])

    def _load(self, step: Step) -> Step:
        """Copy a step's inputs into the graph's input tensors; the step over them."""
        self.tokens.copy_(step.tokens)
        self.slot_ids.copy_(step.slots)
        self.table[:step.block_table.shape[0]].copy_(step.block_table)
        return Step(self.tokens, self.slot_ids, self.table[:len(step.q_cum)], step.q_cum, step.kv_lens)

    def _capture(self, step: Step) -> None:
        """One graph of the whole decode step; each layer's attention in a task group (``.out`` with the
        workspace of ``_get_max_workspace``, as vLLM-Ascend's full-graph mode captures it)."""
        self.calls, self.handles = [], []
        graph = rt.NPUGraph()
        s = rt.Stream()
        with rt.graph(graph, stream=s):
            def attention(layer, q, key_cache, value_cache, kw):
                if not self.calls:
                    self.workspace = nk._npu_fused_infer_attention_score_get_max_workspace(q, key_cache, value_cache,
                                                                                         **kw)
                out, lse = nk._npu_fused_infer_attention_score_infer_output(q, value_cache, input_layout="TND",
                                                                            num_heads=kw["num_heads"],
                                                                            num_key_value_heads=kw["num_key_value_heads"],
                                                                            block_table=kw["block_table"])
                rt.graph_task_group_begin(s)
                nk.npu_fused_infer_attention_score.out(q, key_cache, value_cache, workspace=self.workspace,
                                                       out=[out, lse], **kw)
                self.handles.append(rt.graph_task_group_end(s))
                self.calls.append((q, key_cache, value_cache, out, lse))
                return out

            self.logits = self.model.forward(step, attention)
        self.graph, self.update_stream = graph, rt.Stream()

    def _update(self, step: Step) -> None:
        """Task update of every layer's attention with this step's lengths and block table."""
        u = self.update_stream
        kw = self.model.attention_kwargs(step)
        with rt.stream(u):
            for handle, (q, key_cache, value_cache, out, lse) in zip(self.handles, self.calls):
                rt.graph_task_update_begin(u, handle)
                nk.npu_fused_infer_attention_score.out(q, key_cache, value_cache, workspace=self.workspace,
                                                       out=[out, lse], **kw)
                rt.graph_task_update_end(u)
        rt.current_stream().wait_stream(u)

    def decode(self) -> None:
        """One decode step: eager (the reference), then the graph: load, update, replay."""
        n = len(self.running)
        step = self._step()
        start = time.perf_counter()
        eager = self.model.forward(step)
        rt.synchronize()
        self.stats.eager_s += time.perf_counter() - start
        start = time.perf_counter()
        capturing = self.graph is None
        if capturing:
            self._capture(self._load(step))
        else:
            self._update(self._load(step))
        self.graph.replay()
        rt.synchronize()
        if capturing:
            self.stats.capture_s += time.perf_counter() - start
        else:
            self.stats.graph_s += time.perf_counter() - start
        self.stats.max_error = max(self.stats.max_error, float((self.logits[:n] - eager[:n]).abs().max()))
        for r, token in zip(self.running, self.logits[:n].argmax(-1).tolist()):
            r.generated.append(token)
        self.stats.steps += 1
        self.stats.decoded += n
        finished = [r for r in self.running if r.done]
        for r in finished:
            self.free_blocks += r.blocks
        self.running = [r for r in self.running if not r.done]

    def serve(self, requests: list[Request]) -> Stats:
        self.waiting = list(requests)
        self.admit()
        while self.running:
            self.decode()
            self.stats.joined += len(self.admit()) if self.graph is not None else 0
        return self.stats
