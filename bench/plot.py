"""``python -m bench plot``: PNG charts from the JSON results of ``bench run``.

Prefill: TFLOP/s against sequence length, one chart per (head dim, series), a line per implementation.
Decode: achieved bandwidth (TB/s) against context length, one chart per series, a line per
implementation, with the GPU's peak bandwidth when known. matplotlib is an optional dependency
(``pip install .[bench]``).
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path
from typing import Optional

from . import results


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("bench plot needs matplotlib: pip install 'npu-kernels[bench]' (or pip install matplotlib)")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def charts(data: dict) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """{chart title: {implementation: [(x, y), ...]}} from one result file's rows."""
    out: dict = defaultdict(lambda: defaultdict(list))
    for r in data["rows"]:
        if r.get("status") != "ok" or r.get("suite") == "graph":
            continue
        if r.get("S1", 0) > 1 and r.get("tflops"):
            title = f"prefill {r['dtype']} D={r['D']}: {r['series']}"
            out[title][r["impl"]].append((r["S2"], r["tflops"]))
        elif r.get("tbps"):
            title = f"decode {r['dtype']} D={r['D']}: {r['series']}"
            out[title][r["impl"]].append((r["S2"], r["tbps"]))
    return {t: {impl: sorted(pts) for impl, pts in lines.items()} for t, lines in out.items()}


def plot(path: Path, out_dir: Optional[Path] = None) -> list[Path]:
    plt = _pyplot()
    data = results.read(path)
    env = data["env"]
    out_dir = Path(out_dir or Path(path).with_suffix(""))
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for title, lines in charts(data).items():
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        decode = title.startswith("decode")
        for impl, pts in sorted(lines.items()):
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", label=impl, linewidth=2.5 if impl == "ours" else 1.2)
        if decode and env.get("peak_bw"):
            ax.axhline(env["peak_bw"] / 1e12, color="grey", linestyle="--", label="peak HBM")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context length (keys)" if decode else "sequence length (keys)")
        ax.set_ylabel("TB/s" if decode else "TFLOP/s (FA3 FLOP count)")
        ax.set_title(f"{title}\n{env['gpu']}, git {env['git_sha']}", fontsize=9)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        png = out_dir / f"{results.slug(title)}.png"
        fig.savefig(png, dpi=110)
        plt.close(fig)
        written.append(png)
    return written


def main(paths: list[str], out_dir: Optional[str] = None) -> int:
    files = [Path(p) for p in paths] or results.latest("run")[:1]
    if not files:
        print(f"no results of 'bench run' under {results.RESULTS}; run 'python -m bench run' on a GPU first",
              file=sys.stderr)
        return 1
    for f in files:
        for png in plot(f, Path(out_dir) if out_dir else None):
            print(png)
    return 0
