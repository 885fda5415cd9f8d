"""Command line: ``python -m bench {run,plot,report,host,graph-host,cpu} ...`` (see ``bench/__init__.py``)."""

from __future__ import annotations

import argparse
import sys

SUITES = ("all", "prefill", "decode", "int8", "graph")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="time our kernels and the baselines on a GPU")
    run.add_argument("--suite", choices=SUITES, default="all")
    run.add_argument("--quick", action="store_true", help="only the cases marked quick")
    run.add_argument("--match", default="", help="only cases whose name contains this")
    run.add_argument("--out", default=None, help="results directory (default bench/results)")
    plot = sub.add_parser("plot", help="PNG charts from results of 'run'")
    plot.add_argument("files", nargs="*", help="result JSON files (default: the newest run)")
    plot.add_argument("--out", default=None, help="directory of the PNGs (default: beside the JSON)")
    rep = sub.add_parser("report", help="static report: AOT compile of every kernel variant for sm_80/sm_90")
    rep.add_argument("--arch", default="80,90", help="comma-separated SM versions")
    rep.add_argument("--variant", default="", help="comma-separated variant names (default: all)")
    rep.add_argument("--out", default=None)
    host = sub.add_parser("host", help="host time of validate + plan per call")
    host.add_argument("--suite", choices=SUITES + ("default",), default="default",
                      help="default: the quick prefill, decode and int8 cases")
    host.add_argument("--quick", action="store_true")
    host.add_argument("--match", default="")
    host.add_argument("--rounds", type=int, default=15)
    host.add_argument("--per-round", type=int, default=200)
    host.add_argument("--out", default=None)
    gh = sub.add_parser("graph-host", help="host backend: µs per recorded/replayed op, task update vs re-capture")
    gh.add_argument("--rounds", type=int, default=5)
    gh.add_argument("--per-round", type=int, default=20)
    gh.add_argument("--out", default=None)
    cpu = sub.add_parser("cpu", help="the operators' CPU execution path against torch SDPA on this CPU")
    cpu.add_argument("--quick", action="store_true", help="a small subset of the cases")
    cpu.add_argument("--match", default="", help="only cases whose name contains this (and no memory run)")
    cpu.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    cpu.add_argument("--reps", type=int, default=3, help="timed pairs per case (fewer past 30 s)")
    cpu.add_argument("--out", default=None)
    a = ap.parse_args(argv)

    if a.cmd == "run":
        from . import run as mod

        return mod.main(a.suite, a.quick, a.match, a.out)
    if a.cmd == "plot":
        from . import plot as mod

        return mod.main(a.files, a.out)
    if a.cmd == "report":
        from . import report as mod

        return mod.main([int(x) for x in a.arch.split(",")], [x for x in a.variant.split(",") if x], a.out)
    if a.cmd == "cpu":
        from . import cpu as mod

        return mod.main(a.quick, a.match, a.out, a.threads, a.reps)
    if a.cmd == "graph-host":
        from . import host_graph as mod

        return mod.main(a.out, a.rounds, a.per_round)
    from . import host as mod

    return mod.main(a.suite, a.quick, a.match, a.out, a.rounds, a.per_round)


if __name__ == "__main__":
    sys.exit(main())
