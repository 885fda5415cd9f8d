"""Task update through the Python entry points (``nk.npu_*``, what torch_npu's names are): a call passing
the objects of the task's last match with plain lengths takes the entry point's fast path (no planning,
no operator implementation); anything else takes the implementation's path. Both update alike.
"""

from dataclasses import dataclass
from typing import Callable

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import npu_kernels as nk
from backend_setup import randn
from npu_kernels import plans


@dataclass
class EntryCase:
    name: str
    make: Callable           # make(device) -> state
    call: Callable           # call(state, lengths) -> what the entry point returns
    reference: Callable      # reference(state, lengths) -> expected output
    output: Callable         # output(state, result of the captured call) -> the tensor replays write
    captured: list
    updated: list


def _qkv(device, q_shape, kv_shape):
    return {"q": randn(*q_shape, device=device, dtype=torch.float16),
            "k": randn(*kv_shape, device=device, dtype=torch.float16),
            "v": randn(*kv_shape, device=device, dtype=torch.float16)}


_PFA = dict(num_heads=2, input_layout="BNSD", scale_value=0.25, next_tokens=65535)
_IFA = dict(num_heads=2, input_layout="BNSD", scale_value=0.25)
_FIA = dict(num_heads=2, input_layout="BNSD", scale=0.25, pre_tokens=65535, next_tokens=65535)


def _pfa(fn, st, n):
    return fn(st["q"], st["k"], st["v"], actual_seq_lengths=n, actual_seq_lengths_kv=n, **_PFA)


def _ifa(fn, st, n):
    return fn(st["q"], st["k"], st["v"], actual_seq_lengths=n, **_IFA)


def _fia(fn, st, n, **extra):
    return fn(st["q"], st["k"], st["v"], actual_seq_lengths_kv=n, **_FIA, **extra)


def _fia_out_make(device):
    st = _qkv(device, (2, 2, 1, 16), (2, 2, 64, 16))
    st["ws"] = _fia(nk._npu_fused_infer_attention_score_get_max_workspace, st, [1, 1])
    st["out"], st["lse"] = torch.empty(2, 2, 1, 16, dtype=torch.float16, device=device), \
        torch.empty(1, dtype=torch.float16, device=device)
    return st


CASES = [
    EntryCase("prompt", lambda d: _qkv(d, (1, 2, 32, 16), (1, 2, 32, 16)),
              lambda st, n: _pfa(nk.npu_prompt_flash_attention, st, n),
              lambda st, n: _pfa(nk.reference.npu_prompt_flash_attention, st, n),
              lambda st, r: r, [29], [32]),
    EntryCase("incre", lambda d: _qkv(d, (2, 2, 1, 16), (2, 2, 64, 16)),
              lambda st, n: _ifa(nk.npu_incre_flash_attention, st, n),
              lambda st, n: _ifa(nk.reference.npu_incre_flash_attention, st, n),
              lambda st, r: r, [29, 3], [64, 40]),
    EntryCase("fused", lambda d: _qkv(d, (2, 2, 1, 16), (2, 2, 64, 16)),
              lambda st, n: _fia(nk.npu_fused_infer_attention_score, st, n),
              lambda st, n: _fia(nk.reference.npu_fused_infer_attention_score, st, n)[0],
              lambda st, r: r[0], [29, 3], [64, 40]),
    EntryCase("fused_out", _fia_out_make,
              lambda st, n: _fia(nk.npu_fused_infer_attention_score.out, st, n, workspace=st["ws"],
                                 out=[st["out"], st["lse"]]),
              lambda st, n: _fia(nk.reference.npu_fused_infer_attention_score, st, n)[0],
              lambda st, r: st["out"], [29, 3], [64, 40]),
]

LAYERS = 3


@pytest.fixture(params=CASES, ids=lambda c: c.name)
def case(request):
    return request.param


def _capture(rt, case, state):
    """``LAYERS`` calls in one task group; returns the graph, the handle and each call's output."""
    case.call(state, case.captured)                      # planned and compiled outside the capture
    g = rt.NPUGraph()
    with rt.graph(g):
        s = rt.current_stream()
        rt.graph_task_group_begin(s)
        outputs = [case.output(state, case.call(state, case.captured)) for _ in range(LAYERS)]
        handle = rt.graph_task_group_end(s)
    return g, handle, outputs


def _update(rt, case, state, handle, lengths):
    u = rt.Stream()
    with rt.stream(u):
        rt.graph_task_update_begin(u, handle)
        results = [case.call(state, lengths) for _ in range(LAYERS)]
        rt.graph_task_update_end(u)
    u.synchronize()
    return results


def _forbid_implementation(monkeypatch):
    """The implementations' update path (``plans.rewritten``) and planning (``plans.signature``) raise."""
    for name in ("rewritten", "signature"):
        def reached(*args, name=name, **kwargs):
            raise AssertionError(f"the update reached plans.{name}")

        monkeypatch.setattr(plans, name, reached)


def _check_replay(rt, case, state, g, outputs, lengths):
    g.replay()
    rt.synchronize()
    want = case.reference(state, lengths)
    for out in outputs:
        torch.testing.assert_close(out.float(), want.float(), atol=2e-3, rtol=2e-3)


def test_an_update_passing_the_captured_objects_takes_the_fast_path(rt, device, case, monkeypatch):
    """New lengths (one list for every layer, as vLLM passes them), then the same ones again: neither
    reaches the operator's implementation, and the replays compute the new lengths."""
    state = case.make(device)
    g, handle, outputs = _capture(rt, case, state)
    _update(rt, case, state, handle, list(case.captured))   # the update's first match records its objects
    _forbid_implementation(monkeypatch)
    for lengths in (case.updated, case.updated, case.captured):
        _update(rt, case, state, handle, lengths)
        _check_replay(rt, case, state, g, outputs, lengths)


def test_updates_return_spare_outputs(rt, device, case):
    """An update returns what torch_npu's does, outputs of the call's shapes that no kernel writes: the
    same ones on both paths and every update, none a captured tensor."""
    state = case.make(device)
    g, handle, outputs = _capture(rt, case, state)
    first = _update(rt, case, state, handle, case.updated)             # the implementation's path
    second = _update(rt, case, state, handle, case.updated)            # the fast path
    if case.name == "fused_out":
        assert all(r[0] is state["out"] and r[1] is state["lse"] for r in first + second)
        return
    flat = [t for r in first + second for t in (r if isinstance(r, tuple) else (r,))]
    reference = first[0] if isinstance(first[0], tuple) else (first[0],)
    for got, want in zip(flat, reference * (2 * LAYERS)):
        assert got is want
    assert reference[0].shape == outputs[0].shape and reference[0].dtype == outputs[0].dtype
    captured = {t.data_ptr() for t in outputs} | {t.data_ptr() for t in state.values() if torch.is_tensor(t)}
    assert not {t.data_ptr() for t in reference} & captured


def test_lengths_given_as_a_tensor_update_through_the_implementation(rt, device, case):
    state = case.make(device)
    g, handle, outputs = _capture(rt, case, state)
    _update(rt, case, state, handle, case.captured)
    _update(rt, case, state, handle, torch.tensor(case.updated))
    _check_replay(rt, case, state, g, outputs, case.updated)


def test_invalid_lengths_on_the_fast_path_are_refused(rt, device, case):
    """Lengths past the captured sequence length: the error names them; the update matched nothing."""
    state = case.make(device)
    g, handle, outputs = _capture(rt, case, state)
    _update(rt, case, state, handle, case.updated)
    u = rt.Stream()
    with rt.stream(u):
        rt.graph_task_update_begin(u, handle)
        with pytest.raises(ValueError, match="actual_seq_lengths.*every length must be in"):
            case.call(state, [10 ** 6] * len(case.updated))
        with pytest.raises(RuntimeError, match=f"contains unupdated tasks. total_num={LAYERS}, matched_num=0"):
            rt.graph_task_update_end(u)
    _update(rt, case, state, handle, case.captured)
    _check_replay(rt, case, state, g, outputs, case.captured)


class _Seen(TorchDispatchMode):
    """A dispatch mode of the caller's: it sees every operator, npu ones included."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_an_update_under_the_callers_dispatch_mode_reaches_it(rt, device, case):
    state = case.make(device)
    g, handle, outputs = _capture(rt, case, state)
    _update(rt, case, state, handle, case.updated)
    seen = _Seen()
    u = rt.Stream()
    with rt.stream(u):
        rt.graph_task_update_begin(u, handle)
        with seen:
            for _ in range(LAYERS):
                case.call(state, case.captured)
        rt.graph_task_update_end(u)
    u.synchronize()
    assert sum("npu." in op for op in seen.ops) >= LAYERS
    _check_replay(rt, case, state, g, outputs, case.captured)


def test_new_lengths_are_validated_once_per_update(rt, device, case, monkeypatch):
    """Each update passes a new list for every layer, with new contents, then with the same contents: the
    first layer validates it (``plans.fresh``), the others match it by identity."""
    state = case.make(device)
    g, handle, outputs = _capture(rt, case, state)
    _update(rt, case, state, handle, list(case.captured))
    made = []
    fresh = plans.fresh
    monkeypatch.setattr(plans, "fresh", lambda *args: made.append(1) or fresh(*args))
    for lengths in (list(case.updated), list(case.updated), list(case.captured)):
        _update(rt, case, state, handle, lengths)
        _check_replay(rt, case, state, g, outputs, lengths)
    assert len(made) == 3


def test_captured_objects_under_other_keywords_are_no_match(rt, device):
    """The update passes the captured objects in the captured order, but under each other's keywords:
    it is another call, which validation refuses."""
    q = randn(1, 2, 1, 16, device=device, dtype=torch.float16)
    k = randn(1, 1, 32, 16, device=device, dtype=torch.float16)
    two, one, n = 2, 1, [8]
    nk.npu_incre_flash_attention(q, k, k, actual_seq_lengths=n, num_heads=two, num_key_value_heads=one,
                                 input_layout="BNSD")
    g = rt.NPUGraph()
    with rt.graph(g):
        s = rt.current_stream()
        rt.graph_task_group_begin(s)
        nk.npu_incre_flash_attention(q, k, k, actual_seq_lengths=n, num_heads=two, num_key_value_heads=one,
                                     input_layout="BNSD")
        handle = rt.graph_task_group_end(s)
    u = rt.Stream()
    with rt.stream(u):
        rt.graph_task_update_begin(u, handle)
        nk.npu_incre_flash_attention(q, k, k, actual_seq_lengths=n, num_heads=two, num_key_value_heads=one,
                                     input_layout="BNSD")
        rt.graph_task_update_end(u)
        rt.graph_task_update_begin(u, handle)
        with pytest.raises(ValueError, match="num_heads"):
            nk.npu_incre_flash_attention(q, k, k, actual_seq_lengths=n, num_key_value_heads=two, num_heads=one,
                                         input_layout="BNSD")
        with pytest.raises(RuntimeError, match="contains unupdated tasks. total_num=1, matched_num=0"):
            rt.graph_task_update_end(u)
