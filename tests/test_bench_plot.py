"""bench plot: chart grouping, the PNGs, and the message when matplotlib is missing (rows are made up
for the test, not measurements)."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from bench import plot, results

ENV = {"gpu": "test", "git_sha": "abc", "date": "2026-01-01T00:00:00Z", "peak_bw": 3.35e12}
ROWS = [
    {"case": "p1", "suite": "prefill", "impl": "ours", "status": "ok", "S1": 4096, "S2": 4096, "D": 128,
     "dtype": "float16", "series": "non-causal", "tflops": 400.0},
    {"case": "p2", "suite": "prefill", "impl": "ours", "status": "ok", "S1": 1024, "S2": 1024, "D": 128,
     "dtype": "float16", "series": "non-causal", "tflops": 300.0},
    {"case": "p1", "suite": "prefill", "impl": "sdpa_flash", "status": "ok", "S1": 4096, "S2": 4096, "D": 128,
     "dtype": "float16", "series": "non-causal", "tflops": 330.0},
    {"case": "p3", "suite": "prefill", "impl": "ours", "status": "failed", "S1": 512, "S2": 512, "D": 128,
     "dtype": "float16", "series": "non-causal"},
    {"case": "d1", "suite": "decode", "impl": "ours", "status": "ok", "S1": 1, "S2": 16384, "D": 128,
     "dtype": "float16", "series": "IFA B=8", "tbps": 2.5, "tflops": 0.6},
    {"case": "g1", "suite": "graph", "impl": "ours", "status": "ok", "S1": 128, "S2": 128, "D": 128,
     "dtype": "float16", "series": "", "replay_us": 5.0},
]


def test_charts_group_rows_by_mode_and_skip_failures():
    charts = plot.charts({"env": ENV, "rows": ROWS})
    assert set(charts) == {"prefill float16 D=128: non-causal", "decode float16 D=128: IFA B=8"}
    assert charts["prefill float16 D=128: non-causal"] == {"ours": [(1024, 300.0), (4096, 400.0)],
                                                          "sdpa_flash": [(4096, 330.0)]}
    assert charts["decode float16 D=128: IFA B=8"] == {"ours": [(16384, 2.5)]}


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib (the bench extra) is not installed")
def test_plot_writes_pngs(tmp_path):
    jpath, _ = results.write("run-test", ROWS, ENV, tmp_path)
    pngs = plot.plot(jpath, tmp_path / "png")
    assert len(pngs) == 2
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_matplotlib_is_a_clear_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(SystemExit, match="needs matplotlib"):
        plot._pyplot()


def test_simple_progress_bar_yields_every_item(capsys):
    from bench.progress import _simple

    assert list(_simple(iter("abc"), 3, "cases")) == ["a", "b", "c"]
    err = capsys.readouterr().err
    assert "cases [" in err and err.rstrip().endswith("3/3")
