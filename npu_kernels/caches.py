"""The package's caches (plans, compiled launchers) in one registry, so that ``release()`` empties them
all (``torch.npu.empty_cache`` calls it)."""

from __future__ import annotations

from typing import Callable

_clearers: list[Callable[[], None]] = []


def register(clear: Callable[[], None]) -> Callable[[], None]:
    """Register ``clear`` (a function emptying one cache); returns it."""
    _clearers.append(clear)
    return clear


def release() -> None:
    """Empty every registered cache."""
    for clear in _clearers:
        clear()
