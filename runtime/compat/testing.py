"""``torch_npu.testing``: the test base class and decorators torch_npu's own tests import, so that they run
unmodified on the emulated part.

``testcase.TestCase`` is a ``unittest.TestCase`` that seeds torch and ``random`` before each test and
compares tensors in ``assertEqual`` (same shape, NaN at the same places, infinities only with
``allow_inf`` and then at the same places, largest absolute difference at most ``prec``, default
``1e-5``) and ``assertRtolEqual`` (fails when more than a fraction ``prec`` of the
elements, ``prec16`` for float16, exceed both that absolute and that relative difference).
``common_utils.SupportedDevices(families)`` skips a test unless the emulated part's family
(``Ascend910B`` or ``Ascend910_93``) is listed.
"""

from __future__ import annotations

import functools
import os
import random
import sys
import unittest
from numbers import Number

import torch

from . import platform
from .devices import set_device


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
        if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
            for a, b in zip(x, y):
                self.assertRtolEqual(a, b, prec, prec16, auto_trans_dtype, message)
            return
        x, y = torch.as_tensor(x), torch.as_tensor(y)
        if auto_trans_dtype:
            x = x.to(y.dtype)
        self.assertEqual(tuple(x.shape), tuple(y.shape), message or "shape error")
        self.assertEqual(x.dtype, y.dtype, message or "dtype error")
        tol = prec16 if x.dtype in (torch.float16, torch.bfloat16) else prec
        a, b = x.detach().cpu().double(), y.detach().cpu().double()
        nan = torch.isnan(a)
        self.assertTrue(torch.equal(nan, torch.isnan(b)), message or "NaN at different places")
        diff = (a - b).abs().masked_fill(nan, 0)
        relative = diff / (torch.maximum(a.abs(), b.abs()).masked_fill(nan, 0) + 1e-9)
        bad = ((diff > tol) & (relative > tol)).sum().item()
        if bad > a.numel() * tol:
            self.fail(message or f"result error: {bad} of {a.numel()} elements differ by more than {tol}")
