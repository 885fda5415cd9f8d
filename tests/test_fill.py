"""``npu_kernels.fill``: a generated filler builds the same argument tuple as filling the template one
position at a time."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from npu_kernels.fill import alignment_check, filler, picker
from npu_kernels.plans import Pointer, View


@st.composite
def launches(draw):
    n = draw(st.integers(0, 40))
    kinds = draw(st.lists(st.sampled_from("cdpb"), min_size=n, max_size=n))   # constant/direct/pointer/block
    offsets = draw(st.lists(st.integers(0, 64), min_size=n, max_size=n))
    return kinds, offsets


@given(launches())
def test_filler_matches_filling_one_by_one(launch):
    kinds, offsets = launch
    args = tuple(torch.zeros(80, dtype=torch.float16) for _ in range(4))
    block = torch.zeros(4, dtype=torch.int32)
    template = [("constant", i) if k == "c" else None for i, k in enumerate(kinds)]
    direct = [(pos, pos % len(args)) for pos, k in enumerate(kinds) if k == "d"]
    computed = [(pos, View(pos % len(args), torch.float16, (8,), (1,), offsets[pos], False))
                for pos, k in enumerate(kinds) if k == "p"]
    blocks = [pos for pos, k in enumerate(kinds) if k == "b"]
    values, aligned = filler(template, direct, computed, blocks, Pointer, 16)(args, block)

    want = list(template)
    for pos, i in direct:
        want[pos] = args[i]
    for pos, view in computed:
        want[pos] = view.operand(args)
    for pos in blocks:
        want[pos] = block
    assert len(values) == len(want)
    for got, w in zip(values, want):
        if isinstance(w, Pointer):
            assert isinstance(got, Pointer) and (got.ptr, got.dtype) == (w.ptr, w.dtype)
        else:
            assert got is w
    assert aligned == all(view.operand(args).ptr % 16 == 0 for _, view in computed)


def test_alignment_check():
    t = torch.zeros(64, dtype=torch.float16)
    args = (t, t[1:], t[8:])                   # aligned, off by 2 bytes, aligned
    assert alignment_check([(0, 0, True), (2, 0, True)], 16)(args)
    assert not alignment_check([(0, 0, True), (1, 0, True)], 16)(args)
    assert alignment_check([(1, 0, False), (1, 14, True), (0, 2, False)], 16)(args)
    assert not alignment_check([(1, 14, False)], 16)(args)
    assert alignment_check([], 16)(args)


def test_traced_launch_is_traced_again_for_another_alignment():
    """A launch that read an operand's address runs its traced arguments while that operand keeps the
    alignment it was traced with; at another alignment the launch is built again."""
    from npu_kernels import launcher
    from npu_kernels.plans import Traced

    buf = torch.zeros(64, dtype=torch.float16)
    aligned, misaligned = buf[8:24], buf[1:17]
    block = torch.zeros(4, dtype=torch.int32)
    built = []

    def launch(ops, blk):
        built.append(ops[0].data_ptr() % 16 == 0)           # reads the address
        launcher.run("kernel", (1,), (ops[0], blk, 7), num_warps=4, num_stages=1)

    traced = Traced(launch, (aligned,), (View(0, torch.float16, (16,), (1,), 0, True),))
    seen = []
    previous = launcher.set_recorder(lambda kernel, grid, args, options: seen.append(args))
    try:
        traced((aligned,), block)
        traced((buf[0:16],), block)                           # another aligned address: the traced arguments
        assert built == [True] and seen[0] == (aligned, block, 7) and seen[1][0] is not aligned
        traced((misaligned,), block)
        assert built == [True, False] and seen[2][0] is misaligned
    finally:
        launcher.set_recorder(previous)


def test_picker_takes_the_given_names_and_defaults_the_others():
    kwargs = {"b": [1, 2], "d": None}
    assert picker(("a", "b", "c", "d"), kwargs)(kwargs) == (None, [1, 2], None, None)
    assert picker(("a", "b", "c", "d"), kwargs, (5, 6, 7, 8))(kwargs) == (5, [1, 2], 7, None)
    assert picker((), kwargs)(kwargs) == ()
