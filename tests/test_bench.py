"""bench: FLOP and byte formulas against hand-computed values, the results writer, the host benchmark,
the correctness gate and the baselines' masks on tiny cases, and ``bench run`` without a GPU."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import npu_kernels as nk
from npu_kernels import launcher
from bench import baselines, flops, host, inputs, results, run
from bench.cases import FIA, IFA, PFA, Case, all_cases, select
from npu_kernels.masks import INT_MAX, Band, band_matrix

from .conftest import tolerance

ROOT = Path(__file__).resolve().parent.parent


def tiny(**kw) -> Case:
    base = dict(suite="prefill", name="tiny", op=PFA, B=1, N=2, KV_N=2, S1=6, S2=6, D=16, dtype=torch.float16)
    return Case(**{**base, **kw})


# --- FLOPs -----------------------------------------------------------------------------------------

def test_dense_flops():
    # 2 heads, D = Dv = 4, 3 query rows x 5 keys: 15 pairs, 2 matmuls of 2 FLOPs per multiply-add
    assert flops.attention_flops(2, 4, 4, [3], [5]) == 2 * 2 * 15 * (4 + 4) == 480


def test_causal_flops_use_fa3_half_square():
    # FA3/FA2 count causal S=4 as S^2/2 = 8 pairs, not S(S+1)/2 = 10: 4*B*S^2*H*D / 2 = 64
    assert tiny(S1=4, S2=4, sparse_mode=3).bands() == [(1 << 30, 0)]
    assert flops.attention_flops(1, 2, 2, [4], [4], [(1 << 30, 0)]) == 4 * 16 * 1 * 2 / 2 == 64
    # mode 2 and mode 3 coincide when Sq = Sk
    assert tiny(sparse_mode=2).flops() == tiny(sparse_mode=3).flops() == 2 * 2 * (6 * 6 / 2) * 32


def test_bottom_right_causal_with_fewer_queries():
    # Sq = 2, Sk = 6, mode 3: FA3 avg_k = (max(0, 6 - 2) + 6) / 2 = 5, so 10 pairs (exact count: 11)
    case = tiny(S1=2, S2=6, sparse_mode=3)
    assert case.bands() == [(1 << 30, 4)]
    assert flops.attended_pairs(2, 6, 1 << 30, 4) == 10
    assert flops.visible_pairs(2, 6, 1 << 30, 4) == 11


def test_top_left_causal_with_more_keys_is_counted_exactly():
    # mode 2, Sq = 3, Sk = 5: rows see 1, 2, 3 keys
    case = tiny(S1=3, S2=5, sparse_mode=2, N=1, KV_N=1, D=2)
    assert case.flops() == 2 * 1 * 6 * 4


def test_band_flops_exact():
    # mode 4, pre_tokens = 1, next_tokens = 0, S = 6: rows see 1, 2, 2, 2, 2, 2 keys = 11 pairs
    case = tiny(sparse_mode=4, pre=1, next=0, N=1, KV_N=1, D=8)
    assert case.bands() == [(1, 0)]
    assert case.flops() == 2 * 11 * 16
    # a 512-key window at 16k: 16384 * 512 - (1 + ... + 511) pairs
    big = tiny(S1=16384, S2=16384, sparse_mode=4, pre=511, next=0, N=16, KV_N=16, D=128)
    assert big.flops() == 2 * 16 * (16384 * 512 - 511 * 512 // 2) * 256


@pytest.mark.parametrize("q,kv,pre,nxt", [(7, 9, 2, 1), (9, 4, 0, 0), (5, 5, -1, 3), (6, 10, 3, -2), (4, 0, 1, 1)])
def test_visible_pairs_match_the_band_predicate(q, kv, pre, nxt):
    assert flops.visible_pairs(q, kv, pre, nxt) == int(band_matrix(q, kv, Band(pre, nxt, False)).sum())


def test_unequal_lengths_sum_per_batch():
    # B = 2, mode 3, lengths (q, kv) = (4, 4) and (2, 6): 8 + 10 pairs, 1 head, D = Dv = 2
    case = tiny(B=2, N=1, KV_N=1, S1=4, S2=6, D=2, sparse_mode=3, qlens=(4, 2), kvlens=(4, 6))
    assert case.flops() == 2 * (8 + 10) * 4
    dense = tiny(B=2, N=1, KV_N=1, S1=4, S2=6, D=2, qlens=(4, 2), kvlens=(4, 6))
    assert dense.flops() == 2 * (16 + 12) * 4


def test_gqa_flops_count_query_heads_bytes_count_kv_heads():
    case = tiny(N=8, KV_N=2, S1=4, S2=4, D=2)
    assert case.flops() == 2 * 8 * 16 * 4
    # Q 8*4*2, K and V 2*4*(2+2), O 8*4*2 elements of 2 bytes
    assert case.bytes() == flops.prefill_bytes(1, 8, 2, 4, 4, 2, 2, 2) == 2 * (64 + 32 + 64) == 320


def test_decode_bytes_and_flops():
    # 4 heads, 2 kv heads, one query row, kv lengths 10 and 3, D = Dv = 8, fp16
    qo = 2 * 4 * 1 * (8 + 8) * 2
    kv = (10 + 3) * 2 * 16 * 2
    assert flops.decode_bytes(4, 2, 1, [10, 3], 8, 8, 2) == qo + kv == 1088
    # paged, block 4: 3 + 1 blocks, int32 table entries
    assert flops.decode_bytes(4, 2, 1, [10, 3], 8, 8, 2, block_size=4) == 1088 + 4 * 4
    # int8 K/V and 64 bytes of scales
    assert flops.decode_bytes(4, 2, 1, [10, 3], 8, 8, 2, kv_elem=1, scale_bytes=64) == qo + kv // 2 + 64
    case = Case("decode", "d", IFA, 2, 4, 2, 1, 10, 8, torch.float16, kvlens=(10, 3))
    assert case.decode and case.flops() == 2 * 4 * 13 * 16
    assert case.bytes() == 1088
    int8 = Case("int8", "d8", IFA, 2, 4, 2, 1, 10, 8, torch.float16, kvlens=(10, 3), kv_int8=True)
    assert int8.bytes() == qo + kv // 2 + 2 * 2 * 2 * 8 * 2      # per-channel scale and offset, K and V


def test_peaks_and_roofline():
    assert flops.peaks("NVIDIA H100 80GB HBM3") == (989.4e12, 3.35e12)
    assert flops.peaks("NVIDIA H100 PCIe") == (756e12, 2.0e12)
    assert flops.peaks("NVIDIA H200") == (989.5e12, 4.8e12)
    assert flops.peaks("cpu: x86_64") == (None, None)
    assert flops.roofline_s(989.4e12, 1.0, 989.4e12, 3.35e12) == 1.0
    assert flops.roofline_s(1.0, 3.35e12, 989.4e12, 3.35e12) == 1.0
    assert flops.roofline_s(1.0, 1.0, None, None) is None


# --- the matrix ------------------------------------------------------------------------------------

def test_matrix_holds_the_prompt_issue_cases():
    names = {c.name: c for c in all_cases()}
    for s in ("4k", "8k", "16k"):
        full = names[f"pfa-fp16-d128-b{16384 // {'4k': 4096, '8k': 8192, '16k': 16384}[s]}-s{s}-full"]
        assert {"sdpa_flash", "sdpa_cudnn"} <= set(full.baselines)
    band = names["pfa-fp16-d128-b1-s16k-band512"]
    assert band.sparse_mode == 4 and band.compare_to in names and names[band.compare_to].sparse_mode == 0
    assert band.bands() == [(511, 0)]
    for c in names.values():
        if c.compare_to:
            assert c.compare_to in names, c.name
    modes = {c.sparse_mode for c in select("prefill") if c.compare_to}
    assert {2, 3, 4} <= modes
    assert {c.op for c in all_cases()} == {PFA, IFA, FIA}
    assert all(c.quick for c in select("all", quick=True))
    with pytest.raises(ValueError, match="suite"):
        select("nope")


# --- results ---------------------------------------------------------------------------------------

def test_results_round_trip(tmp_path):
    env = results.environment()
    assert {"gpu", "driver", "torch", "triton", "git_sha", "date"} <= set(env)
    assert env["torch"] == torch.__version__
    rows = [{"case": "a", "impl": "ours", "status": "ok", "time_us": 12.5, "tflops": 1.25},
            {"case": "b", "impl": "eager", "status": "unsupported", "note": "per-batch lengths"}]
    jpath, cpath = results.write("run-test", rows, env, tmp_path)
    back = results.read(jpath)
    assert back == {"kind": "run-test", "env": env, "rows": rows}
    with cpath.open() as f:
        lines = list(csv.DictReader(f))
    assert [r["case"] for r in lines] == ["a", "b"]
    assert lines[0]["gpu"] == env["gpu"] and lines[0]["git_sha"] == env["git_sha"]
    assert float(lines[0]["time_us"]) == 12.5 and lines[1]["note"] == "per-batch lengths"
    assert results.latest("run-test", tmp_path) == [jpath]


# --- host benchmark --------------------------------------------------------------------------------

def test_host_benchmark_on_a_tiny_matrix(tmp_path):
    matrix = [tiny(name="h-pfa", S1=64, S2=64, sparse_mode=3, N=4, KV_N=2),
              Case("decode", "h-ifa", IFA, 2, 4, 2, 1, 64, 16, torch.float16, kvlens=(64, 17)),
              Case("decode", "h-fia", FIA, 2, 4, 2, 1, 64, 16, torch.float16)]
    rows = host.run(matrix, rounds=2, per_round=5)
    assert [r["case"] for r in rows] == ["h-pfa", "h-ifa", "h-fia"]
    for r in rows:
        assert r["status"] == "ok"
        assert all(r[k] > 0 for k in ("first_us", "cached_us", "cached_us_best", "new_lengths_us", "update_us",
                                      "update_views_us", "update_groups_us"))
        assert r["first_us"] > r["cached_us_best"]            # planning is what a cached call skips
    assert "h-pfa" in host.table(rows)


def test_host_recording_launches_nothing():
    """Inside ``recording`` a call plans for compiled kernels and records its launch: nothing runs, and
    outputs of a shape come from one cached tensor (poisoned by the suite: it stays NaN)."""
    case = tiny(S1=8, S2=8)
    call, _ = inputs.make(case, nk.npu_device(), values=False)
    launches = []
    with host.recording():
        previous = launcher.set_recorder(lambda kernel, grid, args, options: launches.append(kernel))
        try:
            out = nk.npu_prompt_flash_attention(*call.args, **call.kwargs)
            again = nk.npu_prompt_flash_attention(*call.args, **call.kwargs)
        finally:
            launcher.set_recorder(previous)
    assert len(launches) == 2 and out is again and torch.isnan(out).all()


# --- correctness gate and baselines on tiny cases ---------------------------------------------------

def _run(c):
    return nk.npu_prompt_flash_attention(*c.args, **c.kwargs)


def _ref(c):
    return nk.reference.npu_prompt_flash_attention(*c.args, **c.kwargs)


def test_check_passes_and_reports_a_wrong_kernel(device):
    case = tiny(B=2, N=4, KV_N=2, S1=40, S2=40, sparse_mode=3, qlens=(40, 23), kvlens=(40, 31))
    call, _ = inputs.make(case, device)
    assert inputs.check(case, call, _run, _ref) is None
    wrong = inputs.check(case, call, lambda c: _run(c) * 1.01, _ref)
    assert wrong is not None and "elements off" in wrong


MASK_CASES = [
    tiny(name="dense", S1=24, S2=40),
    tiny(name="mode2", S1=24, S2=40, sparse_mode=2),
    tiny(name="mode3", S1=24, S2=40, sparse_mode=3),
    tiny(name="band", S1=40, S2=40, sparse_mode=4, pre=7, next=0),
    tiny(name="band-shifted", S1=24, S2=40, sparse_mode=4, pre=5, next=3),
    tiny(name="gqa", N=4, KV_N=1, S1=24, S2=24, sparse_mode=3),
]


@pytest.mark.parametrize("case", MASK_CASES, ids=lambda c: c.name)
def test_eager_baseline_computes_the_same_attention(case):
    """The eager baseline's mask (True = attend) keeps the pairs the operator's band keeps."""
    call, problem = inputs.make(case, torch.device("cpu"))
    expected = nk.reference.npu_prompt_flash_attention(*call.args, **call.kwargs).float()
    atol, rtol = tolerance(case.dtype)
    torch.testing.assert_close(baselines.prepare("eager", problem)().float(), expected, atol=atol, rtol=rtol)


@pytest.mark.parametrize("case", MASK_CASES, ids=lambda c: c.name)
def test_sdpa_arguments_compute_the_same_attention(case):
    """The SDPA backends' arguments (is_causal is top-left aligned; other bands as a boolean mask),
    run by the math backend, which every machine has."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    call, problem = inputs.make(case, torch.device("cpu"))
    kw = baselines.sdpa_kwargs(problem)
    assert ("is_causal" in kw) == (case.sparse_mode == 2 or (case.sparse_mode == 3 and case.S1 == case.S2))
    with sdpa_kernel([SDPBackend.MATH]):
        got = torch.nn.functional.scaled_dot_product_attention(problem.q.float(), problem.k.float(),
                                                               problem.v.float(), **kw)
    expected = nk.reference.npu_prompt_flash_attention(*call.args, **call.kwargs).float()
    atol, rtol = tolerance(case.dtype)
    torch.testing.assert_close(got, expected, atol=atol, rtol=rtol)


def test_flex_block_mask_keeps_the_band_and_lengths():
    """FlexAttention (unfused, on any machine) with the baseline's block mask gives the operator's
    attention: band, per-batch lengths (rows past the length are 0 in both), GQA."""
    from torch.nn.attention.flex_attention import flex_attention

    case = tiny(B=2, N=4, KV_N=2, S1=40, S2=40, sparse_mode=4, pre=5, next=3, qlens=(40, 30), kvlens=(40, 33))
    call, problem = inputs.make(case, torch.device("cpu"))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        got = flex_attention(problem.q.float(), problem.k.float(), problem.v.float(),
                             block_mask=baselines.flex_block_mask(problem), scale=problem.scale, enable_gqa=True)
    expected = nk.reference.npu_prompt_flash_attention(*call.args, **call.kwargs).float()
    atol, rtol = tolerance(case.dtype)
    torch.testing.assert_close(got, expected, atol=atol, rtol=rtol)


def test_sdpa_refuses_per_batch_lengths():
    case = tiny(B=2, qlens=(6, 3), kvlens=(6, 6))
    _, problem = inputs.make(case, torch.device("cpu"))
    with pytest.raises(baselines.Unsupported, match="per-batch lengths"):
        baselines.prepare("sdpa_flash", problem)


DECODE_INPUTS = [dict(), dict(kv_int8=True, block_size=32), dict(kvlens=(64, 17))]


@pytest.mark.parametrize("op", [IFA, FIA])
@pytest.mark.parametrize("extra", DECODE_INPUTS, ids=lambda e: "-".join(map(str, e)) or "contiguous")
def test_decode_inputs_follow_the_operator(op, extra, device):
    """Paged pools, block tables and antiquant scales as the operator reads them: the check passes, and
    the eager baseline on the gathered, dequantised K/V gives the operator's output."""
    case = Case("decode", "d", op, 2, 4, 2, 1, 64, 32, torch.float16, **extra)
    call, problem = inputs.make(case, device)
    fn, ref = getattr(nk, op), getattr(nk.reference, op)
    assert inputs.check(case, call, lambda c: fn(*c.args, **c.kwargs), lambda c: ref(*c.args, **c.kwargs)) is None
    out = call.out(fn(*call.args, **call.kwargs)).float()
    atol, rtol = tolerance(case.dtype)
    torch.testing.assert_close(baselines.prepare("eager", problem)().float(), out, atol=atol, rtol=rtol)


def test_int8_prompt_inputs(device):
    case = tiny(name="i8", S1=40, S2=40, D=32, sparse_mode=3, qkv_int8=True)     # int8: D a multiple of 32
    call, problem = inputs.make(case, device)
    assert call.args[0].dtype == torch.int8 and problem.q.dtype == torch.float16
    assert case.bytes() == 1 * (2 * 40 * 32 * 1 + 2 * 40 * 64 * 1 + 2 * 40 * 32 * 2)
    assert inputs.check(case, call, _run, _ref) is None


# --- the runner's decisions (timer stubbed: no number here is a measurement) -----------------------

class CountingTimer:
    calls = 0

    @classmethod
    def device_ms(cls, fn):
        cls.calls += 1
        fn()
        return 1.0

    @classmethod
    def graph_ms(cls, fns):
        cls.calls += 1
        return 1.0


ENV = {"peak_flops": None, "peak_bw": None, "l2_bytes": 1 << 20}


def test_runner_times_ours_and_the_baselines(device):
    CountingTimer.calls = 0
    case = tiny(name="r-ok", S1=32, S2=32, sparse_mode=3, baselines=("eager", "sdpa_flash"), compare_to="r-ok")
    rows = run.run_case(nk, case, ENV, device, CountingTimer)
    by = {r["impl"]: r for r in rows}
    assert by["ours"]["status"] == "ok" and by["ours"]["time_us"] == 1000.0
    assert by["ours"]["tflops"] == case.flops() / 1e-3 / 1e12 and by["ours"]["roofline_us"] is None
    assert by["eager"]["status"] == "ok"
    assert by["sdpa_flash"]["status"] in ("ok", "unsupported")      # no flash kernel on some machines
    assert CountingTimer.calls == 1 + sum(r["status"] == "ok" for r in rows if r["impl"] != "ours")
    run.compare(rows)
    assert by["ours"]["rel_to_compare"] == 1.0


def test_compare_relates_cases_and_baselines():
    rows = [{"case": "full", "impl": "ours", "status": "ok", "time_us": 10.0, "tflops": 400.0},
            {"case": "causal", "impl": "ours", "status": "ok", "time_us": 6.0, "tflops": 300.0, "compare_to": "full"},
            {"case": "causal", "impl": "sdpa_flash", "status": "ok", "time_us": 9.0, "tflops": 200.0},
            {"case": "causal", "impl": "sdpa_cudnn", "status": "ok", "time_us": 4.5, "tflops": 400.0},
            {"case": "causal", "impl": "eager", "status": "unsupported"}]
    run.compare(rows)
    assert rows[1]["rel_to_compare"] == 0.75 and "rel_to_compare" not in rows[0]
    assert rows[1]["best_baseline"] == "sdpa_cudnn" and rows[1]["vs_best_baseline"] == 0.75
    assert "best_baseline" not in rows[0]


def test_runner_does_not_time_a_failing_case(device, monkeypatch):
    CountingTimer.calls = 0
    real = nk.npu_prompt_flash_attention
    monkeypatch.setattr(nk, "npu_prompt_flash_attention", lambda *a, **k: real(*a, **k) * 1.01)
    rows = run.run_case(nk, tiny(name="r-bad", S1=32, S2=32, baselines=("eager",)), ENV, device, CountingTimer)
    assert [(r["impl"], r["status"]) for r in rows] == [("ours", "failed")]
    assert "correctness" in rows[0]["note"] and CountingTimer.calls == 0


def test_runner_skips_missing_and_unimplemented_operators(device, monkeypatch):
    CountingTimer.calls = 0
    missing = Case("decode", "r-missing", "npu_no_such_operator", 1, 2, 2, 1, 16, 16, torch.float16)
    (row,) = run.run_case(nk, missing, ENV, device, CountingTimer)
    assert row["status"] == "skipped" and row["note"] == "operator not available: npu_kernels.npu_no_such_operator"

    def unimplemented(*a, **k):
        raise NotImplementedError("query: this path is not implemented yet")

    monkeypatch.setattr(nk, "npu_prompt_flash_attention", unimplemented)
    (row,) = run.run_case(nk, tiny(name="r-ni"), ENV, device, CountingTimer)
    assert row["status"] == "skipped" and row["note"].startswith("not implemented")
    assert CountingTimer.calls == 0


def test_task_update_case_captures_updates_and_replays(device):
    """The graph suite's capture and task update, on the runtime's backend of this machine."""
    import runtime as rt

    case = tiny(name="u", B=2, S1=24, S2=24, sparse_mode=3, layers=2)
    call, _ = inputs.make(case, device)
    shorter = run.updated_lengths(case, call)
    assert shorter["actual_seq_lengths"] == [17, 17] and "actual_seq_lengths" not in call.kwargs
    g, outs, update_us = run.capture_and_update(rt, nk.npu_prompt_flash_attention, call, shorter, layers=2, reps=1)
    assert update_us > 0 and len(outs) == 2
    g.replay()
    rt.synchronize()
    expected = nk.npu_prompt_flash_attention(*call.args, **shorter)
    for out in outs:
        assert torch.equal(out, expected)
        assert (out[:, :, 17:] == 0).all()


# --- bench run without a GPU -----------------------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given when no CUDA device exists")
def test_run_without_gpu_exits_nonzero_with_the_message(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    p = subprocess.run([sys.executable, "-m", "bench", "run", "--suite", "prefill", "--quick", "--out", str(tmp_path)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    assert "needs a CUDA device" in p.stderr and "nothing was measured" in p.stderr
    assert not list(tmp_path.iterdir())                                   # no result file, no numbers


@pytest.mark.skipif(INT_MAX != 2147483647, reason="the band clamp assumes torch_npu's INT_MAX")
def test_band_clamp_of_default_tokens():
    assert tiny().bands() == [(1 << 30, 1 << 30)]


def test_graph_host_measures_every_row():
    """``bench graph-host`` on the host backend: per-op capture/replay costs and task update vs re-capture."""
    from bench import host_graph

    rows = host_graph.measure(rounds=1, per_round=2)
    assert [r["case"] for r in rows] == ["eager issue", "capture", "replay",
                                         f"task update of {host_graph.LAYERS} incremental-attention calls",
                                         "re-capture of the same graph", "re-capture / task update"]
    assert all(r["value"] > 0 for r in rows)
