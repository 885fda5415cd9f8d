"""What a compiled kernel executes: its SASS (``nvdisasm``, shipped with Triton) read back into counts.

A *loop* is a backward branch and the instructions from its target to it, unless they hold an
unconditional EXIT (the jumps back from the out-of-line retry stubs of barrier waits, placed after the
kernel's end, are not loops). The *main loop* is the
innermost loop with the most tensor-core instructions (HGMMA/IGMMA on sm_90, HMMA/IMMA on sm_80); among
equals the shortest, i.e. the steady-state loop rather than a masked copy of it. Its cost is the number
of instructions on the shortest path from the loop head to the back branch (forward branches inside the
body may be taken): what one warp issues per iteration when no optional work (masking, partial blocks)
runs. The longest such path is what it issues when every optional step inside the body runs (e.g. the
user-mask load of a mixed tile, which the prefill kernel's mask summary skips for all-visible tiles).
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass

_INSTR = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_LABEL = re.compile(r"^\s*(\.L_x_\d+):")
_TARGET = re.compile(r"(\.L_x_\d+)")
_GUARD = re.compile(r"^@!?U?P[T\d]+\s+")
_WIDTH = re.compile(r"\.(8|16|32|64|128)\b")
TENSOR_CORE = ("HGMMA", "IGMMA", "HMMA", "IMMA")
WARPGROUP_MMA = ("HGMMA", "IGMMA")
LOAD_KINDS = {"UTMALDG": "tma", "LDGSTS": "cp.async", "LDG": "ldg"}


@dataclass(frozen=True)
class Instr:
    op: str            # opcode with modifiers, e.g. "HGMMA.64x64x16.F32"
    guarded: bool      # executes under a predicate
    text: str

    @property
    def base(self) -> str:
        return self.op.split(".")[0]


@dataclass(frozen=True)
class Loop:
    start: int         # index of the first instruction (the back branch's target)
    end: int           # index of the back branch
    path: int          # instructions on the shortest path through one iteration
    counts: Counter    # opcode (without modifiers) -> instructions in the body
    longest: int = 0   # instructions on the longest path through one iteration


def disassemble(cubin: bytes, nvdisasm: str) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([nvdisasm, "-c", f.name], capture_output=True, text=True, check=True).stdout


def parse(sass: str) -> tuple[list[Instr], dict[str, int]]:
    """Instructions in address order and the index each label points at."""
    instrs, labels, pending = [], {}, []
    for line in sass.splitlines():
        if m := _LABEL.match(line):
            pending.append(m.group(1))
        elif m := _INSTR.match(line):
            body = m.group(2)
            for name in pending:
                labels[name] = len(instrs)
            pending = []
            bare = _GUARD.sub("", body)
            instrs.append(Instr(bare.split()[0] if bare else "", bare != body, body))
    return instrs, labels


def _branch_target(ins: Instr, labels: dict[str, int]):
    if ins.base != "BRA":
        return None
    m = _TARGET.search(ins.text)
    return labels.get(m.group(1)) if m else None


def _path(instrs: list[Instr], labels: dict[str, int], start: int, end: int, pick=min) -> int:
    """Instructions on the shortest (``pick=min``) or longest (``max``) path from ``start`` to ``end``
    along forward branches and fall-throughs."""
    unreached = None
    dist = [unreached] * (end + 1)
    dist[start] = 1

    def reach(k: int, d: int) -> None:
        dist[k] = d if dist[k] is unreached else pick(dist[k], d)

    for k in range(start, end):
        if dist[k] is unreached:
            continue
        target = _branch_target(instrs[k], labels)
        if target is not None and k < target <= end:
            reach(target, dist[k] + 1)
            if not instrs[k].guarded:
                continue
        if instrs[k].base != "EXIT" or instrs[k].guarded:
            reach(k + 1, dist[k] + 1)
    return len(instrs) + 1 if dist[end] is unreached else dist[end]


def loops(instrs: list[Instr], labels: dict[str, int]) -> list[Loop]:
    out = []
    for end, ins in enumerate(instrs):
        start = _branch_target(ins, labels)
        if start is not None and start <= end \
                and not any(i.base == "EXIT" and not i.guarded for i in instrs[start:end + 1]):
            body = Counter(i.base for i in instrs[start:end + 1])
            out.append(Loop(start, end, _path(instrs, labels, start, end), body,
                            _path(instrs, labels, start, end, max)))
    return out


def _mma(lp: Loop) -> int:
    return sum(lp.counts[t] for t in TENSOR_CORE)


def main_loop(instrs: list[Instr], labels: dict[str, int]):
    """The innermost loop with the most tensor-core instructions (the shortest among equals); None
    without one."""
    found = [lp for lp in loops(instrs, labels) if _mma(lp)]
    inner = [lp for lp in found if not any(o is not lp and lp.start <= o.start and o.end <= lp.end for o in found)]
    return min(inner, key=lambda lp: (-_mma(lp), lp.path), default=None)


def spill_bytes(instrs: list[Instr]) -> int:
    """Bytes moved by local-memory stores and loads (STL/LDL): register spills in Triton kernels, which
    use no local arrays (ptxas counts "spill stores/loads" the same, statically)."""
    total = 0
    for i in instrs:
        if i.base in ("STL", "LDL"):
            m = _WIDTH.search(i.op)
            total += int(m.group(1)) // 8 if m else 4
    return total


def load_kinds(counts: Counter) -> dict[str, int]:
    return {name: counts[op] for op, name in LOAD_KINDS.items()}
