"""Host reads of unfinished work raise as ``.item()`` does, whatever reads the memory (issue 18, 6).

``tolist``, ``numpy``, ``__array__`` and printing read tensor memory without an aten call; on the device
they are copies to the host on the current stream, like ``.item()``.
"""

import numpy as np
import pytest
import torch

READS = {
    "item": lambda t: t[0].item(),
    "tolist": lambda t: t.tolist(),
    "numpy": lambda t: t.numpy(),
    "asarray": lambda t: np.asarray(t),
    "repr": repr,
    "str": str,
    "format": lambda t: f"{t}",
    "print": print,
}


@pytest.mark.parametrize("read", READS.values(), ids=READS.keys())
def test_read_behind_an_unrecorded_wait_raises(host_rt, read):
    ev = host_rt.ExternalEvent()
    ev.wait(host_rt.current_stream())
    y = torch.ones(3) * 7           # queued behind the wait
    with pytest.raises(host_rt.DeadlockError, match=f"would hang.*{ev.name}"):
        read(y)


@pytest.mark.parametrize("read", READS.values(), ids=READS.keys())
def test_read_of_a_capture_in_progress_raises(host_rt, read):
    x = torch.ones(3)
    with pytest.raises(RuntimeError, match="operation not permitted when stream is capturing"):
        with host_rt.graph(host_rt.NPUGraph()):
            read(x * 2)


def test_reads_wait_for_the_record_that_releases_them(host_rt):
    ev = host_rt.ExternalEvent()
    ev.wait(host_rt.current_stream())
    y = torch.arange(3.0) * 2
    ev.record(host_rt.Stream())
    assert y.tolist() == [0.0, 2.0, 4.0]
    ev.wait(host_rt.current_stream())
    z = y + 1
    ev.record(host_rt.Stream())
    assert np.array_equal(z.numpy(), [1.0, 3.0, 5.0]) and "5." in repr(z)


def test_reads_on_an_idle_stream_see_the_memory_as_it_is(host_rt):
    """As ``.item()`` (and a copy on the device): a read orders after its own stream only."""
    ev = host_rt.ExternalEvent()
    s = host_rt.Stream()
    ev.wait(s)
    with host_rt.stream(s):
        y = torch.ones(2) * 3
    assert np.isnan(y.numpy()).all() and "nan" in repr(y)
    ev.record(host_rt.Stream())
    assert y.tolist() == [3.0, 3.0]
