"""Progress bar for long runs: tqdm when installed, else a one-line bar on stderr."""

from __future__ import annotations

import sys
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], total: int, desc: str) -> Iterator[T]:
    try:
        from tqdm import tqdm
    except ImportError:
        return _simple(items, total, desc)
    return iter(tqdm(items, total=total, desc=desc, file=sys.stderr, dynamic_ncols=True))


def _simple(items: Iterable[T], total: int, desc: str, width: int = 30) -> Iterator[T]:
    for n, item in enumerate(items):
        done = width * n // max(total, 1)
        sys.stderr.write(f"\r{desc} [{'#' * done}{'.' * (width - done)}] {n}/{total}")
        sys.stderr.flush()
        yield item
    sys.stderr.write(f"\r{desc} [{'#' * width}] {total}/{total}\n")
    sys.stderr.flush()
