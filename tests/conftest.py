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
from npu_kernels import alloc, caches
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


def _cpu_kernels(monkeypatch, how: str) -> None:
    """Run operators on the CPU as ``how`` (``NPUK_CPU_KERNELS``); plans record how they run, so the
    plan caches are emptied now and when the test ends."""
    monkeypatch.setenv("NPUK_CPU_KERNELS", how)
    caches.release()


# (condition, reason) of the tests that use each execution-path fixture (``pytest_collection_modifyitems``)
PATH_SKIPS = {
    "native_path": (nk.npu_device().type != "cpu", "the native path runs on the CPU only"),
    "triton_path": (nk.npu_device().type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1",
                    "Triton kernels need a GPU or Triton's interpreter (TRITON_INTERPRET=1 when triton was imported)"),
}


def _paths(item) -> set:
    """The execution-path fixtures a test runs on: its own, ``path``'s parameter, or the kernels' default."""
    names = set(getattr(item, "fixturenames", ()))
    callspec = getattr(item, "callspec", None)
    if "path" in names and callspec is not None and "path" in callspec.params:
        names.add(f"{callspec.params['path']}_path")
    if item.get_closest_marker("kernels") and not names & {"path", "native_path"}:
        names.add("triton_path")
    return names


def pytest_collection_modifyitems(items):
    for item in items:
        for fixture in _paths(item) & PATH_SKIPS.keys():
            condition, reason = PATH_SKIPS[fixture]
            item.add_marker(pytest.mark.skipif(condition, reason=reason))


@pytest.fixture
def native_path(monkeypatch, device):
    """The CPU execution path (vectorised PyTorch)."""
    _cpu_kernels(monkeypatch, "native")
    yield
    caches.release()


@pytest.fixture
def triton_path(monkeypatch, device):
    """The Triton kernels: on the GPU, or in Triton's interpreter on the CPU."""
    _cpu_kernels(monkeypatch, "triton")
    yield
    caches.release()


@pytest.fixture(params=["native", "triton"])
def path(request):
    """Both: the CPU execution path and the Triton kernels."""
    request.getfixturevalue(f"{request.param}_path")
    return request.param


@pytest.fixture(autouse=True)
def kernel_tests_run_the_kernels(request):
    """Tests marked ``kernels`` check the Triton kernels against the reference: on the CPU they run them
    in Triton's interpreter; every other test runs the default (the native path on the CPU)."""
    if request.node.get_closest_marker("kernels") and "path" not in request.fixturenames \
            and "native_path" not in request.fixturenames:
        request.getfixturevalue("triton_path")


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
