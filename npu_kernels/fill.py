"""Generated argument builders: a traced launch's kernel arguments (``plans.Traced``; up to ~100) and a
cached call's tensor arguments, each built in one expression instead of a loop over them. A source holds
positions only (values come from its namespace), so calls of other shapes reuse its compiled code.
"""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=1024)
def _code(source: str):
    return compile(source, "<npu_kernels.fill>", "exec")


def _define(name: str, source: str, namespace: dict):
    exec(_code(source), namespace)
    return namespace[name]


def _tuple(items: list) -> str:
    return f"({', '.join(items)},)" if items else "()"


def filler(template: list, direct: list, computed: list, blocks: list, pointer, alignment: int):
    """``fill(args, block) -> (values, aligned)``: ``values`` is ``template`` with position ``pos`` of each
    ``direct`` pair set to ``args[i]``, of each ``computed`` pair to the ``pointer(ptr, dtype)`` its
    ``View`` gives into ``args``, and each of ``blocks`` to ``block``; ``aligned`` tells whether every
    computed pointer is ``alignment``-byte aligned. Runs of constant arguments are sliced from the
    template."""
    namespace = {"t": tuple(template), "P": pointer}
    items: dict[int, str] = {}
    lines = []
    for pos, i in direct:
        items[pos] = f"a[{i}]"
    for k, (pos, view) in enumerate(computed):
        namespace[f"d{k}"], namespace[f"o{k}"] = view.dtype, view.byte_offset
        lines.append(f"    p{k} = P(a[{view.arg}].data_ptr() + o{k}, d{k})\n")
        items[pos] = f"p{k}"
    for pos in blocks:
        items[pos] = "b"
    parts, start = [], 0
    for pos in sorted(items):
        if pos > start:
            parts.append(f"*t[{start}:{pos}]")
        parts.append(items[pos])
        start = pos + 1
    if start < len(template):
        parts.append(f"*t[{start}:]")
    aligned = " and ".join(f"p{k}.ptr % {alignment} == 0" for k in range(len(computed))) or "True"
    return _define("fill", f"def fill(a, b):\n{''.join(lines)}    return {_tuple(parts)}, {aligned}\n", namespace)


def alignment_check(items: list, alignment: int):
    """``check(args)``: for every ``(i, offset, aligned)`` of ``items``, whether the address of ``args[i]``
    plus ``offset`` bytes is ``alignment``-byte aligned is ``aligned``."""
    namespace, terms = {}, []
    for k, (i, offset, aligned) in enumerate(items):
        address = f"a[{i}].data_ptr()"
        if offset:
            namespace[f"o{k}"] = offset
            address = f"({address} + o{k})"
        terms.append(f"{address} % {alignment} {'==' if aligned else '!='} 0")
    return _define("check", f"def check(a):\n    return {' and '.join(terms) or 'True'}\n", namespace)


def _picks(names: tuple, given, defaults: tuple, namespace: dict) -> list:
    """The expressions of ``picker``'s tuple (defaults go into ``namespace``)."""
    items = []
    for i, name in enumerate(names):
        if name in given:
            items.append(f"k[{name!r}]")
        else:
            namespace[f"d{i}"] = defaults[i] if defaults else None
            items.append(f"d{i}")
    return items


def picker(names: tuple, given, defaults: tuple = ()) -> object:
    """``pick(kwargs)``: the tuple of ``kwargs[name]`` for each of ``names``, for those not in ``given`` their
    ``defaults`` (None without) (``given``: the keyword arguments of a cached call's signature, which a
    call with that signature gives exactly)."""
    namespace: dict = {}
    return _define("pick", f"def pick(k):\n    return {_tuple(_picks(names, given, defaults, namespace))}\n",
                   namespace)


def matcher(nargs: int, order: tuple, present: frozenset, names: tuple, defaults: tuple, scope: dict) -> object:
    """``same(*args, kwargs)`` of a call given ``nargs`` tensors and the keywords ``order``, of which
    ``present`` are per-call values given (not None); ``names``/``defaults``: the per-call values as its plan
    picks them (``picker``). In ``scope``: ``L``, the objects of the last match at the other positions (the
    arguments, then the keywords outside ``present``), and ``R``, the plan's ``plans.Recent``. Returns None
    unless the call passes those objects under the same keywords; then the last block if its per-call values
    are the last ones (the same objects, equal contents), else them (each of ``present`` not None; None
    otherwise)."""
    fixed = [n for n in order if n not in present]
    last = [f"l{i}" for i in range(nargs + len(fixed))]
    objects = [f"a{i} is not l{i}" for i in range(nargs)]
    objects += [f"k[{n!r}] is not l{i}" for i, n in enumerate(fixed, nargs)]
    values = _picks(names, order, defaults, scope)
    lines = [f"def same({''.join(f'a{i}, ' for i in range(nargs))}k):",
             f"    {', '.join(last)}, = L",
             "    try:",
             f"        if len(k) != {len(order)} or {' or '.join(objects)}:",
             "            return None",
             f"        v = {_tuple(values)}",
             "    except KeyError:",
             "        return None",
             "    c, b, o = R.last",
             f"    if {' and '.join(f'v[{i}] is o[{i}]' for i in range(len(names))) or 'True'} and v == c:",
             "        return b",
             f"    return None if {' or '.join(f'k[{n!r}] is None' for n in present) or 'False'} else v",
             ""]
    return _define("same", "\n".join(lines), scope)
