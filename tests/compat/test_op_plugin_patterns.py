"""The call patterns of Ascend/op-plugin's own tests of the attention operators (test/test_custom_ops/
test_prompt_flash_attention.py, test_incre_flash_attention.py, test_npu_fused_infer_attention_score*.py,
test_npu_fused_infer_attention_score_v2*.py), at small shapes, through torch_npu as runtime.compat provides
it: the argument forms, dtypes and layouts those tests pass, the matmul/softmax goldens they compare with,
and the torch_npu.testing helpers (TestCase.assertRtolEqual / assertEqual, SupportedDevices) with the
rules they judge by. Written here so that CI guards the patterns without the upstream files."""

import math
import unittest

import pytest
import torch

from runtime import compat

SCALE = 1 / 0.0078125     # the upstream fused tests' scale (128): a very peaked softmax


@pytest.fixture(scope="module")
def torch_npu():
    with compat.install():
        import torch_npu

        yield torch_npu


@pytest.fixture
def case(torch_npu):
    from torch_npu.testing.testcase import TestCase

    return TestCase()


def randn(*shape, dtype=torch.float16, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype).npu()


def golden_bnsd(q, k, v, scale):
    """Attention of BNSD tensors in float32 on the CPU, and its log-sum-exp (B, N, S1, 1)."""
    scores = q.cpu().float() @ k.cpu().float().transpose(2, 3) * scale
    return (scores.softmax(-1) @ v.cpu().float()).to(q.dtype), scores.logsumexp(-1, keepdim=True)


def test_prompt_flash_attention_bnsd_matches_the_fp16_matmul_softmax_golden(torch_npu, case):
    # upstream golden: fp16 matmul, clamp at finfo.min, softmax in float32 cast back, fp16 matmul
    q, k, v = (randn(1, 4, 48, 32, seed=s) for s in range(3))
    scores = torch.matmul(q.cpu(), k.cpu().transpose(2, 3)) * (1.0 / math.sqrt(32))
    scores = torch.max(scores, torch.full((1, 1), torch.finfo(scores.dtype).min))
    golden = torch.matmul(torch.nn.functional.softmax(scores, dim=-1, dtype=torch.float32).half(), v.cpu())
    out = torch_npu.npu_prompt_flash_attention(q, k, v, num_heads=4, input_layout="BNSD",
                                               scale_value=1.0 / math.sqrt(32), pre_tokens=65535, next_tokens=65535)
    case.assertRtolEqual(golden, out)


def test_incre_flash_attention_bsh_from_transposed_bnsd(torch_npu, case):
    q, k, v = randn(1, 4, 1, 32, seed=0), randn(1, 4, 40, 32, seed=1), randn(1, 4, 40, 32, seed=2)
    to_bsh = lambda t: torch.transpose(t, 1, 2).reshape(t.shape[0], t.shape[2], -1)    # noqa: E731
    out = torch_npu.npu_incre_flash_attention(to_bsh(q), to_bsh(k), to_bsh(v), num_heads=4, input_layout="BSH",
                                              scale_value=1.0 / math.sqrt(32))
    assert out.shape == (1, 1, 128) and out.dtype == torch.float16
    case.assertRtolEqual(to_bsh(golden_bnsd(q, k, v, 1.0 / math.sqrt(32))[0]), out.cpu())


@pytest.mark.parametrize("s1", [1, 16], ids=["decode", "prefill"])
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_fused_bnsd_with_and_without_lse(torch_npu, case, s1, version):
    q, k, v = randn(1, 4, s1, 32, seed=0), randn(1, 4, 64, 32, seed=1), randn(1, 4, 64, 32, seed=2)
    golden, lse = golden_bnsd(q, k, v, SCALE)
    for flag in (True, False):
        if version == "v1":
            out, softmax_lse = torch_npu.npu_fused_infer_attention_score(
                q, k, v, num_heads=4, input_layout="BNSD", scale=SCALE, pre_tokens=65535, next_tokens=65535,
                softmax_lse_flag=flag)
        else:
            out, softmax_lse = torch_npu.npu_fused_infer_attention_score_v2(
                q, k, v, num_query_heads=4, input_layout="BNSD", softmax_scale=SCALE, pre_tokens=65535,
                next_tokens=65535, return_softmax_lse=flag)
        case.assertRtolEqual(golden, out.cpu())
        if flag:
            assert softmax_lse.shape == (1, 4, s1, 1) and softmax_lse.dtype == torch.float32
            case.assertRtolEqual(lse, softmax_lse.cpu())
        else:   # the current binding's placeholder: float32 of shape (0,)
            assert softmax_lse.shape == (0,) and softmax_lse.dtype == torch.float32


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_fused_out_with_max_workspace_and_infer_output(torch_npu, case, version):
    """The *_with_workspace tests: the workspace from _get_max_workspace, the outputs from _infer_output
    (query and value only: the schema's positional arguments), then .out; and .out into tensors the test
    allocated itself (a (1,) lse when the lse is not asked for)."""
    q, k, v = randn(1, 4, 1, 32, seed=0), randn(1, 4, 64, 32, seed=1), randn(1, 4, 64, 32, seed=2)
    golden, lse = golden_bnsd(q, k, v, SCALE)
    if version == "v1":
        op, infer, ws_fn = (torch_npu.npu_fused_infer_attention_score,
                            torch_npu._npu_fused_infer_attention_score_infer_output,
                            torch_npu._npu_fused_infer_attention_score_get_max_workspace)
        kw = lambda flag: dict(num_heads=4, input_layout="BNSD", softmax_lse_flag=flag)     # noqa: E731
        call = dict(scale=SCALE, pre_tokens=65535, next_tokens=65535)
    else:
        op, infer, ws_fn = (torch_npu.npu_fused_infer_attention_score_v2,
                            torch_npu._npu_fused_infer_attention_score_v2_infer_output,
                            torch_npu._npu_fused_infer_attention_score_v2_get_max_workspace)
        kw = lambda flag: dict(num_query_heads=4, input_layout="BNSD", return_softmax_lse=flag)     # noqa: E731
        call = dict(softmax_scale=SCALE, pre_tokens=65535, next_tokens=65535)
    for flag in (True, False):
        workspace = ws_fn(q, k, v, **kw(flag), **call)
        attention_out, softmax_lse = infer(q, v, **kw(flag))
        got = op.out(q, k, v, workspace=workspace, **kw(flag), **call, out=[attention_out, softmax_lse])
        assert got[0] is attention_out and got[1] is softmax_lse
        case.assertRtolEqual(golden, attention_out.cpu())
        if flag:
            case.assertRtolEqual(lse, softmax_lse.cpu())
        own = torch.randn(q.size(), dtype=torch.float16).npu(), torch.randn(*((1, 4, 1, 1) if flag else (1,))).npu()
        op.out(q, k, v, **kw(flag), **call, out=list(own))
        case.assertRtolEqual(golden, own[0].cpu())
    with pytest.raises(TypeError):      # the upstream v1 test passes (q, k, v): not the schema
        infer(q, k, v, **kw(True))


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_fused_ntd_tnd_all_ones_bf16_with_lists_of_lengths(torch_npu, case, version):
    """NTD_TND: query and key (N, T, 192), value (N, T, 128), bf16 ones, one sequence given as a list
    of lengths; the golden (softmax of a constant row times ones) is exactly one, compared at 1e-6."""
    q, k = torch.ones(2, 32, 192, dtype=torch.bfloat16).npu(), torch.ones(2, 32, 192, dtype=torch.bfloat16).npu()
    v = torch.ones(2, 32, 128, dtype=torch.bfloat16).npu()
    if version == "v1":
        out = torch_npu.npu_fused_infer_attention_score(
            q, k, v, num_heads=2, input_layout="NTD_TND", scale=SCALE, pre_tokens=65535, next_tokens=65535,
            actual_seq_lengths=[32], actual_seq_lengths_kv=[32], softmax_lse_flag=False)[0]
    else:
        out = torch_npu.npu_fused_infer_attention_score_v2(
            q, k, v, num_query_heads=2, input_layout="NTD_TND", softmax_scale=SCALE, pre_tokens=65535,
            next_tokens=65535, actual_seq_qlen=[32], actual_seq_kvlen=[32], return_softmax_lse=False)[0]
    scores = torch.matmul(q.cpu(), k.cpu().transpose(1, 2)) / 0.0078125
    golden = torch.matmul(torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype), v.cpu()).transpose(0, 1)
    assert out.shape == (32, 2, 128)
    case.assertRtolEqual(golden, out.cpu(), prec=0.000001, prec16=0.000001)


def test_fused_v2_tnd_learnable_sink_against_a_float64_golden(torch_npu, case):
    """learnable_sink (N,) bf16: an extra logit of each row's softmax; the upstream golden is computed in
    float64 and both sides are compared in float64 (so the prec rule, not the bf16 one, applies)."""
    q, k, v = (randn(24, 4, 32, dtype=torch.bfloat16, seed=s) for s in range(3))
    sink = randn(4, dtype=torch.bfloat16, seed=3)
    out = torch_npu.npu_fused_infer_attention_score_v2(
        q, k, v, learnable_sink=sink, num_query_heads=4, input_layout="TND", softmax_scale=0.125,
        pre_tokens=65535, next_tokens=65535, actual_seq_qlen=[24], actual_seq_kvlen=[24], return_softmax_lse=True)[0]
    qd, kd, vd = (t.cpu().double().transpose(0, 1) for t in (q, k, v))          # (N, T, D)
    scores = qd @ kd.transpose(1, 2) * 0.125
    logits = torch.cat([scores, sink.cpu().double().view(4, 1, 1).expand(4, 24, 1)], dim=-1)
    golden = (logits.softmax(-1)[..., :-1] @ vd).transpose(0, 1)
    case.assertRtolEqual(golden, out.cpu().double(), prec=0.01)


def test_fused_tnd_paged_cache_with_query_and_kv_length_tensors(torch_npu, case):
    """The PA test: TND query (B, N, 192), a (blocks, block_size, KV_N*D) cache with Dv = 128, KV_N = 1,
    a (B, 32) int32 block table, actual_seq_lengths as a tensor of ones (decode) and kv lengths as int32."""
    query = torch.rand(2, 4, 192, generator=torch.Generator().manual_seed(0)).half().npu()
    key_cache = torch.rand(3, 128, 192, generator=torch.Generator().manual_seed(1)).half().npu()
    value_cache = torch.rand(3, 128, 128, generator=torch.Generator().manual_seed(2)).half().npu()
    block_table = torch.zeros(2, 32, dtype=torch.int32)
    block_table[0, :2], block_table[1, 0] = torch.tensor([2, 0]), 1
    seq_lens = torch.tensor([150, 69], dtype=torch.int32)
    out = torch_npu.npu_fused_infer_attention_score(
        query, key_cache, value_cache, num_heads=4, num_key_value_heads=1, input_layout="TND", scale=192 ** -0.5,
        block_table=block_table.npu(), block_size=128, actual_seq_lengths=torch.tensor([1, 2], dtype=torch.int32).npu(),
        actual_seq_lengths_kv=seq_lens)[0]
    assert out.shape == (2, 4, 128)
    for b in range(2):
        blocks = block_table[b, :math.ceil(int(seq_lens[b]) / 128)].long()
        keys = key_cache.cpu().float()[blocks].reshape(-1, 192)[:seq_lens[b]]
        values = value_cache.cpu().float()[blocks].reshape(-1, 128)[:seq_lens[b]]
        weights = (query.cpu().float()[b] @ keys.T * 192 ** -0.5).softmax(-1)
        case.assertRtolEqual((weights @ values).half(), out[b].cpu())


def test_fused_full_quant_int8_all_ones(torch_npu, case):
    """int8 query/key/value with dequant_scale1/quant_scale1/dequant_scale2/quant_scale2 of shape (1,):
    the output is int8 (quant_scale2 given) and, for all-ones inputs and unit scales, all ones; the
    upstream test checks it as ``assertRtolEqual(out.equal(golden), True)``."""
    q = torch.ones(1, 4, 2, 32, dtype=torch.int8).npu()
    k, v = torch.ones(1, 4, 64, 32, dtype=torch.int8).npu(), torch.ones(1, 4, 64, 32, dtype=torch.int8).npu()
    one = torch.ones(1).npu()
    out = torch_npu.npu_fused_infer_attention_score(
        q, k, v, dequant_scale1=one, dequant_scale2=one, quant_scale1=one, quant_scale2=one, num_heads=4,
        input_layout="BNSD", scale=SCALE, pre_tokens=65535, next_tokens=65535, softmax_lse_flag=False)[0]
    assert out.dtype == torch.int8
    case.assertRtolEqual(out.equal(torch.ones(1, 4, 2, 32, dtype=torch.int8).npu()), True)


def test_fused_checks_refuse_the_inputs_of_upstream_tests_that_upstream_skips(torch_npu):
    """Upstream skips these cases (outdated CANN) and they pass inputs the operator's rules refuse: a
    4-D query with TND, and a query_rope head dim of 16 (64 is the one supported)."""
    q = randn(1, 4, 1, 32)
    with pytest.raises(ValueError, match="TND needs 3 dimensions"):
        torch_npu.npu_fused_infer_attention_score(q, q, q, num_heads=4, input_layout="TND", scale=SCALE,
                                                  softmax_lse_flag=True)
    with pytest.raises(ValueError, match="rope head dim must be 64"):
        torch_npu.npu_fused_infer_attention_score(
            q, randn(1, 4, 64, 32), randn(1, 4, 64, 32), query_rope=randn(1, 4, 1, 16),
            key_rope=randn(1, 4, 64, 16), num_heads=4, input_layout="BNSD", scale=SCALE)


def test_supported_devices_skips_other_families_and_unittest_skip_wins(torch_npu):
    from torch_npu.testing.common_utils import SupportedDevices
    from torch_npu.testing.testcase import TestCase

    class Case(TestCase):
        @SupportedDevices(["Ascend950"])
        def test_950(self):
            pass

        @unittest.skip("Skipping due to outdated CANN version")
        @SupportedDevices(["Ascend910B"])
        def test_skipped(self):
            raise AssertionError("not run")

        @SupportedDevices(["Ascend910B"])
        def test_910b(self, device="npu"):
            self.assertRtolEqual(torch.ones(2, 3).npu(), torch.ones(2, 3))

    result = unittest.TestResult()
    unittest.defaultTestLoader.loadTestsFromTestCase(Case).run(result)
    assert result.testsRun == 3 and not result.failures and not result.errors
    assert sorted(reason for _, reason in result.skipped) == [
        "Only run on ['Ascend950'], current device is Ascend910B.", "Skipping due to outdated CANN version"]


def test_assert_rtol_equal_counts_elements_over_both_tolerances(case):
    # float32, prec 1e-4: 1 of 10000 elements far off is within the fraction; 2 are not
    x = torch.zeros(10000)
    case.assertRtolEqual(x, x.clone().index_fill_(0, torch.tensor([7]), 5.0))
    with pytest.raises(AssertionError, match="result error"):
        case.assertRtolEqual(x, x.clone().index_fill_(0, torch.tensor([7, 8]), 5.0))
    # large values: every element over the absolute tolerance but none over the relative one
    case.assertRtolEqual(torch.full((100,), 1e6), torch.full((100,), 1e6 + 50))
    # tiny values: every element over the relative tolerance but none over the absolute one
    case.assertRtolEqual(torch.full((100,), 1e-8), torch.full((100,), 3e-8))
    # float16 is judged by prec16 (1e-3), both for the tolerance and for the fraction
    ones16 = torch.ones(1000, dtype=torch.float16)
    case.assertRtolEqual(ones16, ones16 + torch.arange(1000).eq(0).half() * 0.5)
    with pytest.raises(AssertionError, match="result error"):
        case.assertRtolEqual(ones16, ones16 + torch.arange(1000).lt(2).half() * 0.5)
    case.assertRtolEqual(ones16, ones16 + torch.arange(1000).lt(2).half() * 0.5, prec16=0.01)


def test_assert_rtol_equal_bf16_pairs_are_allclose_at_prec16(case):
    a = torch.ones(10000, dtype=torch.bfloat16)
    with pytest.raises(AssertionError, match="result error"):   # one element off fails, whatever the fraction
        case.assertRtolEqual(a, a.clone().index_fill_(0, torch.tensor([3]), 2.0))
    case.assertRtolEqual(a, a * 1.0078125, prec16=0.01)
    with pytest.raises(AssertionError, match="shape error"):
        case.assertRtolEqual(a, a[:-1])


def test_assert_rtol_equal_argument_forms(case):
    case.assertRtolEqual(True, True)
    with pytest.raises(AssertionError, match="result error"):
        case.assertRtolEqual(torch.tensor(False).item(), True)
    case.assertRtolEqual(1.0, 1.00001)
    case.assertRtolEqual([torch.ones(2), torch.zeros(3)], (torch.ones(2), torch.zeros(3)))
    case.assertRtolEqual(torch.tensor([1.0, 2.0]), [1.0, 2.0])
    case.assertRtolEqual(torch.ones(3, dtype=torch.float16), torch.ones(3), auto_trans_dtype=True)
    with pytest.raises(AssertionError, match="dtype error"):
        case.assertRtolEqual(torch.ones(3, dtype=torch.float16), torch.ones(3))
    with pytest.raises(AssertionError):
        case.assertRtolEqual(torch.tensor([1.0, float("nan")]), torch.tensor([float("nan"), 1.0]))
    case.assertRtolEqual(torch.tensor([1.0, float("nan")]), torch.tensor([1.0, float("nan")]))
    # integers subtract with wrap-around as NumPy does: uint8 1 - 2 is 255, uint16 has no torch arithmetic
    with pytest.raises(AssertionError, match="result error"):
        case.assertRtolEqual(torch.tensor([2], dtype=torch.uint8), torch.tensor([1], dtype=torch.uint8))
    case.assertRtolEqual(torch.arange(5).to(torch.uint16), torch.arange(5).to(torch.uint16))
    with pytest.raises(AssertionError, match="result error"):
        case.assertRtolEqual(torch.tensor([2]).to(torch.uint16), torch.tensor([1]).to(torch.uint16))
    with pytest.raises(AssertionError, match="required dtype"):
        case.assertRtolEqual(torch.ones(2, dtype=torch.complex64), torch.ones(2, dtype=torch.complex64))


def test_assert_equal_forms(case):
    case.assertEqual(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0 + 1e-6]))
    case.assertEqual(torch.tensor([3.0]), 3.0)
    case.assertEqual(torch.tensor([1.0]), torch.tensor([1.05]), 0.1)
    case.assertEqual(torch.tensor([1.0]), torch.tensor([1.0]), "a message in place of prec")
    case.assertEqual([1, (2.0, torch.ones(1))], [1, (2.0, torch.ones(1))])
    with pytest.raises(AssertionError):
        case.assertEqual(torch.tensor([1.0]), torch.tensor([1.001]))


def test_npu_config_allow_internal_format_is_settable(torch_npu):
    torch.npu.config.allow_internal_format = False
    torch_npu.npu.config.allow_internal_format = True
    with pytest.raises(AttributeError):
        torch.npu.config.allow_internal_format  # noqa: B018  (write-only, as on torch_npu)
