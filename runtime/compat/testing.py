"""``torch_npu.testing``: the test base class and decorators torch_npu's own tests import, so that they run
unmodified on the emulated part.

``testcase.TestCase`` is a ``unittest.TestCase`` that seeds torch and ``random`` before each test and
compares tensors in ``assertEqual`` (same shape, NaN at the same places, infinities only with
``allow_inf`` and then at the same places, largest absolute difference at most ``prec``, default
``1e-5``) and ``assertRtolEqual``, torch_npu's rule: same shape and dtype; bool tensors equal; two
bfloat16 tensors ``allclose`` with ``rtol = atol = prec16``; otherwise it fails when more than a fraction
``tol`` of the elements exceed the absolute difference ``tol`` and more than that fraction exceed the
relative difference ``tol`` (``tol`` is ``prec16`` for float16, else ``prec``).
``common_utils.SupportedDevices(families)`` skips a test unless the emulated part's family
(``Ascend910B`` or ``Ascend910_93``) is listed.
"""

from __future__ import annotations

import functools
import os
import random
import sys
import unittest
from collections.abc import Sequence
from numbers import Number

import torch

from . import platform
from .devices import set_device

# the dtypes assertRtolEqual compares (torch_npu's NumPy list; bfloat16 pairs are compared apart)
RTOL_DTYPES = (torch.bool, torch.uint16, torch.int16, torch.int32, torch.float16, torch.float32, torch.int8,
               torch.uint8, torch.int64, torch.float64)
CHUNK = 1 << 24      # elements compared at a time


def get_npu_device() -> str:
    """The device of the tests: ``npu:$SET_NPU_DEVICE``, by default ``npu:0``."""
    return f"npu:{os.environ.get('SET_NPU_DEVICE', '0')}"


def set_npu_device() -> str:
    device = get_npu_device()
    set_device(device)
    return device


class SupportedDevices:
    """Decorator: run the test only on the listed part families, else skip it naming the part."""

    def __init__(self, supported_devices: list[str]):
        self.supported_devices = supported_devices

    def __call__(self, fn):
        @functools.wraps(fn)
        def run_if_supported(test, *args, **kwargs):
            family = platform.device_family()
            if family not in self.supported_devices:
                raise unittest.SkipTest(f"Only run on {self.supported_devices!r}, current device is {family}.")
            return fn(test, *args, **kwargs)

        return run_if_supported


def run_tests() -> None:
    unittest.main(argv=sys.argv)


class TestCase(unittest.TestCase):
    """torch_npu's test base class (see the module docstring)."""

    precision = 1e-5

    @classmethod
    def setUpClass(cls):
        cls.npu_device = set_npu_device()

    def setUp(self):
        seed = int(os.environ.get("SEED", "666"))
        torch.manual_seed(seed)
        random.seed(seed)

    def assertEqual(self, x, y, prec=None, message="", allow_inf=False, exact_dtype=None):
        if isinstance(prec, str) and not message:
            prec, message = None, prec
        prec = self.precision if prec is None else prec
        tensors = isinstance(x, torch.Tensor), isinstance(y, torch.Tensor)
        if all(tensors):
            self._assert_tensors_close(x, y, prec, message, allow_inf, exact_dtype)
        elif any(tensors) and isinstance(y if tensors[0] else x, Number):      # a one-element tensor
            self.assertEqual(float(x), float(y), prec, message)
        elif isinstance(x, Number) and isinstance(y, Number) and not isinstance(x, bool):
            self.assertLessEqual(abs(x - y), prec, message)
        elif isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
            super().assertEqual(len(x), len(y), message)
            for a, b in zip(x, y):
                self.assertEqual(a, b, prec, message, allow_inf, exact_dtype)
        else:
            super().assertEqual(x, y, message or None)

    def _assert_tensors_close(self, x, y, prec, message, allow_inf, exact_dtype):
        super().assertEqual(x.shape, y.shape, message or None)
        if exact_dtype:
            super().assertEqual(x.dtype, y.dtype, message or None)
        if x.numel() == 0:
            return
        a, b = x.detach().cpu().double(), y.detach().cpu().double()
        nan = torch.isnan(a)
        self.assertTrue(torch.equal(nan, torch.isnan(b)), message or "NaN at different places")
        diff = (a - b).abs().masked_fill(nan, 0)
        if allow_inf:
            diff = diff.masked_fill(torch.isinf(a) & (a == b), 0)
        self.assertLessEqual(diff.max().item(), prec, message or None)

    def assertRtolEqual(self, x, y, prec=1.0e-4, prec16=1.0e-3, auto_trans_dtype=False, message=None):
        if isinstance(x, Sequence) and isinstance(y, Sequence):
            for a, b in zip(x, y):
                self.assertRtolEqual(a, b, prec, prec16, auto_trans_dtype, message)
            return
        if isinstance(x, torch.Tensor) and isinstance(y, Sequence):
            y = torch.as_tensor(y, dtype=x.dtype, device=x.device)
        elif isinstance(x, Sequence) and isinstance(y, torch.Tensor):
            x = torch.as_tensor(x, dtype=y.dtype, device=y.device)
        x, y = _as_tensor(x), _as_tensor(y)
        if auto_trans_dtype:
            x = x.to(y.dtype)
        if x.dtype == y.dtype == torch.bfloat16:
            if x.shape != y.shape:
                self.fail("shape error!")
            if not torch.allclose(x.cpu(), y.cpu(), rtol=prec16, atol=prec16):
                self.fail("result error!")
            return
        if x.shape != y.shape:
            self.fail("shape error")
        if x.dtype != y.dtype:
            self.fail("dtype error")
        if x.dtype not in RTOL_DTYPES:
            self.fail(f"required dtype in {RTOL_DTYPES}")
        if x.dtype == torch.bool:
            if not torch.equal(x.cpu(), y.cpu()):
                self.fail("result error")
            return
        tol, minimum = (prec16, 6e-8) if x.dtype == torch.float16 else (prec, 1e-9)
        over_abs, over_rel = self._count_over_tolerance(x, y, tol, minimum, message)
        if over_abs > x.numel() * tol and over_rel > x.numel() * tol:
            self.fail(message or f"result error: {over_abs} elements over {tol} absolutely, {over_rel} relatively, "
                                 f"of {x.numel()}")

    def _count_over_tolerance(self, x, y, tol, minimum, message) -> tuple[int, int]:
        """The numbers of elements whose |y - x| exceeds ``tol``, and whose |y - x| / (max(|x|, |y|) + minimum)
        does; computed in the tensors' floating dtype, or for integers as NumPy does (a wrapping subtraction,
        then float64); chunked to bound memory."""
        over_abs = over_rel = 0
        for a, b in zip(x.detach().reshape(-1).split(CHUNK), y.detach().reshape(-1).split(CHUNK)):
            a, b = a.cpu(), b.cpu()
            nan = torch.isnan(a)
            if not torch.equal(nan, torch.isnan(b)):
                self.fail(message or "NaN at different places")
            if a.is_floating_point():
                diff = (b - a).masked_fill(nan, 0).abs()
                deno = torch.maximum(a.abs(), b.abs())
            else:   # in int64, wrapped back to the dtype as NumPy's subtraction wraps (uint16 has no arithmetic)
                diff = (b.long() - a.long()).to(a.dtype).long().abs().double()
                deno = torch.maximum(a.long().abs(), b.long().abs()).double()
            over_abs += int((~(diff <= tol)).sum())
            over_rel += int((~(diff / (deno + minimum) <= tol)).sum())
        return over_abs, over_rel


def _as_tensor(v) -> torch.Tensor:
    """A tensor of ``v``; a Python float becomes float64, as a NumPy scalar array would."""
    return torch.as_tensor(v, dtype=torch.float64) if type(v) is float else torch.as_tensor(v)
