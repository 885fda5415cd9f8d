"""Shared test setup: hypothesis profiles, NaN-poisoned outputs, the npu device, tolerances."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, settings

import npu_kernels as nk
from npu_kernels import alloc
from npu_kernels.env import hypothesis_profile
from npu_kernels.reference import tolerance

settings.register_profile("ci", max_examples=25, derandomize=True, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                 HealthCheck.function_scoped_fixture])
settings.register_profile("thorough", max_examples=400, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                 HealthCheck.function_scoped_fixture])
settings.load_profile(hypothesis_profile())

@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    """Every operator output starts as NaN (float) or a sentinel (int), so unwritten elements show; the
    patch stays in place across the examples of a hypothesis test."""
    real = alloc.empty

    def poisoned(shape, dtype, device):
        t = real(shape, dtype, device)
        return t.fill_(math.nan) if t.is_floating_point() else t.fill_(-77 if t.dtype.is_signed else 77)

    monkeypatch.setattr(alloc, "empty", poisoned)


@pytest.fixture(scope="session")
def device() -> torch.device:
    return nk.npu_device()


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    assert not torch.isnan(actual).any(), "NaN in the output"
    atol, rtol = tolerance(dtype)
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=rtol)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def compile_only(*args: str, timeout: int = 1200) -> list[dict]:
    """Run ``python *args`` in a subprocess whose Triton is in compiled mode (``NPUK_COMPILE_ONLY=1``,
    no interpreter), as ahead-of-time compilation for a GPU target needs; its JSON lines."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(NPUK_COMPILE_ONLY="1", TRITON_DEFAULT_FP_FUSION="1")
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
