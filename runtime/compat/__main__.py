"""``python -m runtime.compat SCRIPT [ARGS...]``: run a torch_npu / torchair script unmodified.

The script runs as ``__main__`` with ``sys.argv == [SCRIPT, *ARGS]`` and its directory first on
``sys.path``, as ``python SCRIPT ARGS`` would (the current directory stays after it, where this package
may have been found); its exit status is the process's.
``python -m runtime.compat -m MODULE [ARGS...]`` runs a module the same way (``-m doctest FILE``,
``-m pytest ...``).
"""

from __future__ import annotations

import os
import runpy
import sys

from . import install

USAGE = "usage: python -m runtime.compat SCRIPT [ARGS...] | -m MODULE [ARGS...]"


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        raise SystemExit(0 if argv else 2)
    if argv[0] == "-m":
        if len(argv) < 2:
            print(f"python -m runtime.compat: -m needs a module name\n{USAGE}", file=sys.stderr)
            raise SystemExit(2)
        sys.argv = [argv[1], *argv[2:]]
        install()
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        return
    script = argv[0]
    if not os.path.isfile(script):
        print(f"python -m runtime.compat: can't open file {script!r}\n{USAGE}", file=sys.stderr)
        raise SystemExit(2)
    sys.argv = list(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    install()
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
