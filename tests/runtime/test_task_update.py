"""Task groups and task update (DESIGN §4; spec/runtime.md §1.4–§1.7; §6.4 scenarios 3–7).

Every scenario runs for each updatable operator case in ``CASES``; an operator joins by adding one
``UpdatableCase``.
"""

import random
from dataclasses import dataclass
from typing import Callable

import pytest
import torch

import npu_kernels as nk
import toy_ops
from backend_setup import randn


@dataclass
class UpdatableCase:
    """An operator call with host length lists that task update changes. ``call`` returns the call's
    result: ``None`` for ``.out`` forms; for functional forms the tensor the capture writes."""

    name: str
    make: Callable          # make(device) -> dict of the call's tensors (kernels compiled by a first call)
    call: Callable          # call(state, lengths) -> result
    reference: Callable     # reference(state, lengths) -> expected output
    captured: list          # lengths at capture
    updated: list           # lengths of the update
    random_lengths: Callable  # random_lengths(rng) -> valid lengths
    reshaped: Callable      # reshaped(state) -> a state whose call has another static plan
    input_key: str          # an input that an update may replace by another tensor of its shape
    out_form: bool          # the caller passes the outputs (``out=``)
    host_steps: int = 16    # serving-loop steps on the host backend (kernels run in Triton's interpreter)


def _toy_make(device):
    x = randn(2, 128, 8, device=device)
    out = torch.empty(2, 8, device=device)
    torch.ops.rt_toy.prefix_sum_out(x, [1, 1], out)
    return {"x": x, "out": out}


TOY = UpdatableCase(
    name="toy_prefix_sum",
    make=_toy_make,
    call=lambda st, n: torch.ops.rt_toy.prefix_sum_out(st["x"], n, st["out"]),
    reference=lambda st, n: toy_ops.reference(st["x"], n),
    captured=[29, 7],
    updated=[100, 128],
    random_lengths=lambda rng: [rng.randint(0, 128) for _ in range(2)],
    reshaped=lambda st: dict(st, x=st["x"][..., :4]),
    input_key="x",
    out_form=True,
)

_PFA = dict(num_heads=2, input_layout="BNSD", scale_value=0.25, next_tokens=65535)


def _pfa_make(device):
    st = {n: randn(1, 2, 32, 16, device=device, dtype=torch.float16) for n in ("q", "k", "v")}
    torch.ops.npu.npu_prompt_flash_attention(st["q"], st["k"], st["v"], actual_seq_lengths=[1],
                                             actual_seq_lengths_kv=[1], **_PFA)
    return st


def _pfa(fn, st, n):
    return fn(st["q"], st["k"], st["v"], actual_seq_lengths=n, actual_seq_lengths_kv=n, **_PFA)


PROMPT = UpdatableCase(
    name="npu_prompt_flash_attention",
    make=_pfa_make,
    call=lambda st, n: _pfa(torch.ops.npu.npu_prompt_flash_attention, st, n),
    reference=lambda st, n: _pfa(nk.reference.npu_prompt_flash_attention, st, n),
    captured=[29],
    updated=[32],
    random_lengths=lambda rng: [rng.randint(1, 32)],
    reshaped=lambda st: {n: t.new_zeros(*t.shape[:-1], 32) for n, t in st.items() if n != "out"},
    input_key="k",
    out_form=False,
    host_steps=2,
)

_IFA = dict(num_heads=2, input_layout="BNSD", scale_value=0.25)


def _ifa_make(device):
    st = {"q": randn(2, 2, 1, 16, device=device, dtype=torch.float16),
          "k": randn(2, 2, 64, 16, device=device, dtype=torch.float16)}
    torch.ops.npu.npu_incre_flash_attention(st["q"], st["k"], st["k"], actual_seq_lengths=[1, 1], **_IFA)
    return st


def _ifa(fn, st, n):
    return fn(st["q"], st["k"], st["k"], actual_seq_lengths=n, **_IFA)


INCRE = UpdatableCase(
    name="npu_incre_flash_attention",
    make=_ifa_make,
    call=lambda st, n: _ifa(torch.ops.npu.npu_incre_flash_attention, st, n),
    reference=lambda st, n: _ifa(nk.reference.npu_incre_flash_attention, st, n),
    captured=[29, 3],
    updated=[64, 40],
    random_lengths=lambda rng: [rng.randint(1, 64) for _ in range(2)],
    reshaped=lambda st: {n: t[..., :8] for n, t in st.items() if n != "out"},
    input_key="q",
    out_form=False,
    host_steps=2,
)

def _fia(fn, st, lengths_key, n, **extra):
    return fn(st["q"], st["k"], st["v"], num_heads=st["q"].shape[1], input_layout="BNSD", scale=st["scale"],
              pre_tokens=65535, next_tokens=65535, softmax_lse_flag=False, **{lengths_key: n}, **extra)


def _fia_make(q_shape, kv_len, lengths_key, warm):
    def make(device):
        B, N, S, D = q_shape
        st = {"q": randn(B, N, S, D, device=device, dtype=torch.float16),
              "k": randn(B, N, kv_len, D, device=device, dtype=torch.float16),
              "v": randn(B, N, kv_len, D, device=device, dtype=torch.float16), "scale": D ** -0.5}
        st["ws"] = _fia(nk._npu_fused_infer_attention_score_get_max_workspace, st, lengths_key, warm)
        st["out"], st["lse"] = torch.empty(B, N, S, D, dtype=torch.float16, device=device), \
            torch.empty(1, dtype=torch.float16, device=device)
        _fia_call(lengths_key)(st, warm)
        return st

    return make


def _fia_call(lengths_key):
    return lambda st, n: _fia(nk.npu_fused_infer_attention_score.out, st, lengths_key, n, workspace=st["ws"],
                              out=[st["out"], st["lse"]])


def _fia_reshaped(lengths_key, n):
    def reshaped(st):
        small = {name: st[name][..., :8] for name in ("q", "k", "v")}
        other = dict(st, **small, out=st["out"][..., :8], scale=st["scale"])
        other["ws"] = _fia(nk._npu_fused_infer_attention_score_get_max_workspace, other, lengths_key, n)
        return other

    return reshaped


FUSED_SEED = UpdatableCase(   # seeds/torch_npu-npu-graph_task_group_begin.md, as written
    name="fused_seed",
    make=_fia_make((1, 32, 1, 128), 1, "actual_seq_lengths", [29]),
    call=_fia_call("actual_seq_lengths"),
    reference=lambda st, n: _fia(nk.reference.npu_fused_infer_attention_score, st, "actual_seq_lengths", n)[0],
    captured=[29],
    updated=[100],
    random_lengths=lambda rng: [rng.randint(1, 200)],
    reshaped=_fia_reshaped("actual_seq_lengths", [100]),
    input_key="k",
    out_form=True,
    host_steps=2,
)

FUSED_KV = UpdatableCase(     # the usual decode update: key/value lengths per batch
    name="fused_kv_lengths",
    make=_fia_make((2, 2, 1, 16), 64, "actual_seq_lengths_kv", [1, 1]),
    call=_fia_call("actual_seq_lengths_kv"),
    reference=lambda st, n: _fia(nk.reference.npu_fused_infer_attention_score, st, "actual_seq_lengths_kv", n)[0],
    captured=[29, 3],
    updated=[64, 40],
    random_lengths=lambda rng: [rng.randint(1, 64) for _ in range(2)],
    reshaped=_fia_reshaped("actual_seq_lengths_kv", [64, 40]),
    input_key="v",
    out_form=True,
    host_steps=2,
)

CASES = [TOY, PROMPT, INCRE, FUSED_KV]


def _output(state):
    return state["out"]


def _close(case, state, lengths, got=None):
    want = case.reference(state, lengths)
    got = _output(state) if got is None else got
    torch.testing.assert_close(got.float(), want.float(), atol=2e-3, rtol=2e-3)


def _capture(rt, case, state, layers=1, after_layer=None):
    """The seed's capture: per layer an ExternalEvent wait/reset, then the call in a task group (then
    ``after_layer()``, captured work that reads the layer's output)."""
    g = rt.NPUGraph()
    events, handles = [], []
    with rt.graph(g):
        s = rt.current_stream()
        for _ in range(layers):
            ev = rt.ExternalEvent()
            ev.wait(s)
            ev.reset(s)
            rt.graph_task_group_begin(s)
            _capture_call(case, state)
            handles.append(rt.graph_task_group_end(s))
            events.append(ev)
            if after_layer is not None:
                after_layer()
    return g, events, handles


def _capture_call(case, state):
    result = case.call(state, case.captured)
    if not case.out_form:
        state["out"] = result


def _update(rt, case, state, u, handle, event, lengths):
    with rt.stream(u):
        rt.graph_task_update_begin(u, handle)
        case.call(state, lengths)
        rt.graph_task_update_end(u)
        event.record(u)


@pytest.fixture(params=CASES, ids=lambda c: c.name)
def case(request):
    return request.param


def _eager(case, state, lengths):
    result = case.call(state, lengths)
    return _output(state).clone() if case.out_form else result


@pytest.mark.parametrize("order", ["update_then_replay", "replay_then_update"])
@pytest.mark.parametrize("case", [FUSED_SEED, *CASES], ids=lambda c: c.name)
def test_seed_scenario(rt, device, case, order):
    """Capture with the captured lengths, update, replay: equal to the eager call with the new ones."""
    state = case.make(device)
    eager = _eager(case, state, case.updated)
    g, (ev,), (h,) = _capture(rt, case, state)
    u = rt.Stream()
    if order == "update_then_replay":
        _update(rt, case, state, u, h, ev, case.updated)
        g.replay()
    else:
        g.replay()
        _update(rt, case, state, u, h, ev, case.updated)
    rt.synchronize()
    assert torch.equal(_output(state), eager)
    _close(case, state, case.updated)


def test_update_persists_over_replays(rt, device, case):
    state = case.make(device)
    g, (ev,), (h,) = _capture(rt, case, state)
    u = rt.Stream()
    _update(rt, case, state, u, h, ev, case.updated)
    g.replay()
    rt.synchronize()
    _output(state).zero_()
    ev.record(u)
    g.replay()
    rt.synchronize()
    _close(case, state, case.updated)


def test_a_replay_before_the_update_ends_reads_its_blocks(rt, device, case):
    """An update writes its blocks on its stream by graph_task_update_end; a replay issued before that
    (the update stream synchronized) reads the blocks the update rewrote so far."""
    state = case.make(device)
    g, (ev,), (h,) = _capture(rt, case, state)
    u = rt.Stream()
    with rt.stream(u):
        rt.graph_task_update_begin(u, h)
        case.call(state, case.updated)
    u.synchronize()
    ev.record(rt.Stream())
    g.replay()
    rt.synchronize()
    _close(case, state, case.updated)
    with rt.stream(u):
        rt.graph_task_update_end(u)


def test_captured_lengths_hold_without_update(rt, device, case):
    state = case.make(device)
    g, (ev,), _ = _capture(rt, case, state)
    ev.record(rt.Stream())
    g.replay()
    rt.synchronize()
    _close(case, state, case.captured)


def test_serving_loop(rt, device, case):
    """vLLM-Ascend's decode loop: host sync, replay, then per layer update + record; four layers."""
    layers, steps = 4, (case.host_steps if rt.backend().name == "host" else 16)
    state = case.make(device)
    w = 0.5
    hidden = []                                   # per-layer work reading the task's output
    g, events, handles = _capture(rt, case, state, layers, after_layer=lambda: hidden.append(_output(state) * w))
    u = rt.Stream()
    rng = random.Random(0)
    for _ in range(steps):
        lengths = [case.random_lengths(rng) for _ in range(layers)]
        rt.current_stream().synchronize()
        g.replay()
        for layer in range(layers):
            _update(rt, case, state, u, handles[layer], events[layer], lengths[layer])
        rt.synchronize()
        for layer in range(layers):
            _close(case, state, lengths[layer], got=hidden[layer] / w)


def test_serving_loop_without_sync_reports_flag_merge(rt, device, case):
    """Records of step i+1 land before step i's replay consumed step i's: the device would hang."""
    state = case.make(device)
    g, (ev,), (h,) = _capture(rt, case, state)
    u, gate = rt.Stream(), rt.ExternalEvent()
    gate.wait(rt.current_stream())          # the replay stream is still busy with earlier work
    with pytest.raises(rt.FlagMergeError, match=ev.name):
        for _ in range(2):
            g.replay()
            _update(rt, case, state, u, h, ev, case.updated)
        gate.record(rt.Stream())
        rt.synchronize()


def test_new_input_tensor_is_copied_in(rt, device, case):
    state = case.make(device)
    g, (ev,), (h,) = _capture(rt, case, state)
    key = case.input_key
    fresh = dict(state, **{key: randn(*state[key].shape, device=device, dtype=state[key].dtype)})
    u = rt.Stream()
    u.wait_stream(rt.current_stream())      # the new tensor is copied in on u: order it after its producer
    _update(rt, case, fresh, u, h, ev, case.updated)
    g.replay()
    rt.synchronize()
    _close(case, fresh, case.updated, got=_output(state))
    torch.testing.assert_close(state[key], fresh[key])


def test_update_with_other_shape_is_refused(rt, device, case):
    state = case.make(device)
    g, (ev,), (h,) = _capture(rt, case, state)
    other = case.reshaped(state)
    u = rt.Stream()
    with rt.stream(u):
        rt.graph_task_update_begin(u, h)
        with pytest.raises(RuntimeError, match="static plan differs"):
            case.call(other, case.updated)
        with pytest.raises(RuntimeError, match="contains unupdated tasks. total_num=1, matched_num=0"):
            rt.graph_task_update_end(u)


@pytest.mark.parametrize("case", [c for c in CASES if c.out_form], ids=lambda c: c.name)
def test_update_into_other_outputs_is_refused(rt, device, case):
    state = case.make(device)
    g, (ev,), (h,) = _capture(rt, case, state)
    u = rt.Stream()
    other = dict(state, out=state["out"].clone())
    with rt.stream(u):
        rt.graph_task_update_begin(u, h)
        with pytest.raises(RuntimeError, match="output tensors must be the captured ones"):
            case.call(other, case.updated)
        with pytest.raises(RuntimeError, match="unupdated"):
            rt.graph_task_update_end(u)


@pytest.mark.parametrize("passed", ["captured", "views", "new input"])
@pytest.mark.parametrize("case", [PROMPT, INCRE, FUSED_KV], ids=lambda c: c.name)
def test_update_of_the_captured_call_is_not_planned(rt, device, case, passed, monkeypatch):
    """An update passing the captured tensors, other tensors viewing their memory alike (vLLM's weak
    references) or a new input of the same shape (copied in), with the captured static arguments, finds
    its plan without a signature; its lengths are still validated (on an error the update stays open with
    nothing matched)."""
    from npu_kernels import plans

    state = case.make(device)
    g, (ev,), (h,) = _capture(rt, case, state)
    if passed == "views":
        upd = {n: t.view(t.shape) if isinstance(t, torch.Tensor) else t for n, t in state.items()}
    elif passed == "new input":
        key = case.input_key
        upd = dict(state, **{key: randn(*state[key].shape, device=device, dtype=state[key].dtype)})
    else:
        upd = state
    u = rt.Stream()
    u.wait_stream(rt.current_stream())      # a new input is copied in on u: order it after its producer

    def no_signature(*args, **kwargs):
        raise AssertionError("the update computed a signature")

    monkeypatch.setattr(plans, "signature", no_signature)
    with rt.stream(u):
        rt.graph_task_update_begin(u, h)
        with pytest.raises(ValueError, match="actual_seq_lengths.*every length must be in"):
            case.call(upd, [10 ** 6] * len(case.updated))
        with pytest.raises(RuntimeError, match="contains unupdated tasks. total_num=1, matched_num=0"):
            rt.graph_task_update_end(u)
        rt.graph_task_update_begin(u, h)
        case.call(upd, case.updated)
        rt.graph_task_update_end(u)
        ev.record(u)
    g.replay()
    rt.synchronize()
    _close(case, upd, case.updated, got=_output(state))
    if passed == "new input":
        torch.testing.assert_close(state[case.input_key], upd[case.input_key])


def test_update_with_another_static_value_is_refused(rt, device):
    """The captured tensors with another scale: planned, and refused as a different static plan."""
    state = FUSED_KV.make(device)
    g, (ev,), (h,) = _capture(rt, FUSED_KV, state)
    u = rt.Stream()
    with rt.stream(u):
        rt.graph_task_update_begin(u, h)
        with pytest.raises(RuntimeError, match="static plan differs"):
            FUSED_KV.call(dict(state, scale=0.5), FUSED_KV.updated)
        with pytest.raises(RuntimeError, match="unupdated"):
            rt.graph_task_update_end(u)


def test_what_an_update_may_pass_for_a_captured_tensor():
    from npu_kernels.tasks import Task
    from runtime.tasks import _tensors

    def task(*args, roles="i"):
        return Task("op", None, torch.zeros(0, dtype=torch.int32), torch.device("cpu"), run=lambda b, a: None,
                    args=args, roles=roles)

    a, b = torch.zeros(3), torch.ones(3)
    assert _tensors("update", task(a), task(a)) == ((a,), [])
    assert _tensors("update", task(a), task(b)) == ((a,), [(a, b)])
    table = torch.zeros(4, 3)
    args, copies = _tensors("update", task(table), task(table[:2]))       # fewer rows of the same memory
    assert args[0].shape == (2, 3) and args[0].data_ptr() == table.data_ptr() and copies == []
    own = torch.zeros(3)
    assert _tensors("update", task(a, own, roles="is"), task(a, b, roles="is")) == ((a, own), [])
    with pytest.raises(RuntimeError, match="input 0 is .*float64.*captured one is .*float32"):
        _tensors("update", task(a), task(b.double()))
    with pytest.raises(RuntimeError, match="output tensors must be the captured ones"):
        _tensors("update", task(a, roles="o"), task(b, roles="o"))


def test_count_errors(rt, device, case):
    state = case.make(device)
    g, events, handles = _capture(rt, case, state)
    u = rt.Stream()
    with rt.stream(u):
        rt.graph_task_update_begin(u, handles[0])
        with pytest.raises(RuntimeError, match="contains unupdated tasks. total_num=1, matched_num=0"):
            rt.graph_task_update_end(u)
        rt.graph_task_update_begin(u, handles[0])
        case.call(state, case.updated)
        with pytest.raises(RuntimeError, match="The number of tasks cannot exceed the size of the task group"):
            case.call(state, case.updated)
        rt.graph_task_update_end(u)


def test_non_task_work_in_update_mode_is_refused(rt, device, case):
    state = case.make(device)
    g, _, (h,) = _capture(rt, case, state)
    u = rt.Stream()
    with rt.stream(u):
        rt.graph_task_update_begin(u, h)
        with pytest.raises(RuntimeError, match="RT_ERROR_TASK_NOT_SUPPORT"):
            state[case.input_key].copy_(torch.zeros_like(state[case.input_key]))
        case.call(state, case.updated)
        rt.graph_task_update_end(u)


def test_group_and_update_stream_errors(rt, device, case):
    state = case.make(device)
    s = rt.Stream()
    with pytest.raises(RuntimeError, match="is not capturing"):
        rt.graph_task_group_begin(s)
    g = rt.NPUGraph()
    with rt.graph(g):
        cs = rt.current_stream()
        rt.graph_task_group_begin(cs)
        with pytest.raises(RuntimeError, match="Task group is repeatedly started"):
            rt.graph_task_group_begin(cs)
        case.call(state, case.captured)
        h = rt.graph_task_group_end(cs)
        with pytest.raises(RuntimeError, match="no task group was begun"):
            rt.graph_task_group_end(cs)
        with pytest.raises(RuntimeError, match="is capturing"):
            rt.graph_task_update_begin(cs, h)
        with pytest.raises(RuntimeError, match="still capturing"):
            rt.graph_task_update_begin(s, h)
    u1, u2 = rt.Stream(), rt.Stream()
    rt.graph_task_update_begin(u1, h)
    with pytest.raises(RuntimeError, match="The handle only can be updated by one stream"):
        rt.graph_task_update_begin(u2, h)
    with pytest.raises(RuntimeError, match="Task group is repeatedly started, or a task group is being updated"):
        rt.graph_task_update_begin(u1, h)
    with pytest.raises(RuntimeError, match="not in task-update mode"):
        rt.graph_task_update_end(u2)
    with rt.stream(u1):
        case.call(state, case.updated)
    rt.graph_task_update_end(u1)
    g.reset()
    with pytest.raises(RuntimeError, match="invalid: its graph was reset"):
        rt.graph_task_update_begin(u1, h)


def test_only_tasks_inside_a_group(rt, device, case):
    state = case.make(device)
    with pytest.raises(RuntimeError, match="ACL_ERROR_RT_TASK_TYPE_NOT_SUPPORT"):
        with rt.graph(rt.NPUGraph()):
            cs = rt.current_stream()
            rt.graph_task_group_begin(cs)
            state[case.input_key].mul_(2)
    assert not rt.is_current_stream_capturing()


def test_auto_dispatch_update_broadcasts(rt, device):
    x = randn(2, 128, 8, device=device)
    g = rt.NPUGraph()
    with rt.graph(g, auto_dispatch_capture=True):
        a = torch.ops.rt_toy.prefix_sum(x, [3, 4])
        b = torch.ops.rt_toy.prefix_sum(x * 2, [5, 6])
    assert a is None and b is None
    outs = [r.args[2] for r in g._records]    # the outputs the handler allocated at capture
    g.update([{"actual_seq_lengths": [100, 128]}])
    g.replay()
    rt.synchronize()
    torch.testing.assert_close(outs[0], toy_ops.reference(x, [100, 128]))
    torch.testing.assert_close(outs[1], toy_ops.reference(x * 2, [100, 128]))
    g.replay()
    g.update([{"actual_seq_lengths": [1, 2]}, {"actual_seq_lengths": [2, 1]}])
    rt.synchronize()
    torch.testing.assert_close(outs[1], toy_ops.reference(x * 2, [2, 1]))
    with pytest.raises(RuntimeError, match="expected 1 or one per captured updatable call"):
        g.update([{}, {}, {}])


def test_update_without_auto_dispatch_is_refused(rt, device):
    x = randn(2, 128, 8, device=device)
    g = rt.NPUGraph()
    with rt.graph(g):
        torch.ops.rt_toy.prefix_sum(x, [3, 4])
    with pytest.raises(RuntimeError, match="does not support update, Try to capture by setting auto_dispatch_capture=True"):
        g.update([{"actual_seq_lengths": [1, 1]}])


@pytest.mark.parametrize("order", ["update_then_replay", "replay_then_update"])
def test_auto_dispatch_of_the_fused_operator(rt, device, order):
    """A functional fused call is captured in its out form and updated by ``NPUGraph.update``."""
    st = FUSED_KV.make(device)
    g = rt.NPUGraph()
    with rt.graph(g, auto_dispatch_capture=True):
        out, lse = _fia(torch.ops.npu.npu_fused_infer_attention_score, st, "actual_seq_lengths_kv", [29, 3])
    new = {"actual_seq_lengths_kv": [64, 40]}
    if order == "update_then_replay":
        g.update([new])
        g.replay()
    else:
        g.replay()
        g.update([new])
    rt.synchronize()
    want = _fia(nk.reference.npu_fused_infer_attention_score, st, "actual_seq_lengths_kv", [64, 40])[0]
    torch.testing.assert_close(out.float(), want.float(), atol=2e-3, rtol=2e-3)


def test_capture_end_with_an_open_group_is_an_error(rt, device):
    state = TOY.make(device)
    with pytest.raises(RuntimeError, match="has no graph_task_group_end"):
        with rt.graph(rt.NPUGraph()):
            rt.graph_task_group_begin(rt.current_stream())
            TOY.call(state, TOY.captured)
    assert not rt.is_current_stream_capturing()
