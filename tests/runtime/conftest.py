import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import runtime  # noqa: E402
from backend_setup import active  # noqa: E402


@pytest.fixture(params=runtime.available_backends())
def rt(request):
    """Each backend present in turn."""
    yield from active(request.param)


@pytest.fixture
def host_rt():
    """The host backend (behaviour only it has, such as poisoned outputs of a capture)."""
    yield from active("host")


@pytest.fixture
def device(rt):
    return rt.backend().device
