"""Argument checks that raise errors naming the argument, the value and the rule."""

from __future__ import annotations

from typing import Any


def require(ok: bool, arg: str, value: Any, rule: str, exc: type[Exception] = ValueError) -> None:
    """Raise ``exc`` with "<arg>=<value>: <rule>" unless ``ok``."""
    if not ok:
        raise exc(f"{arg}={_show(value)}: {rule}")


def not_implemented(arg: str, what: str) -> NotImplementedError:
    return NotImplementedError(f"{arg}: {what} is not implemented yet")


def _show(value: Any) -> str:
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape is not None and dtype is not None:
        return f"Tensor(shape={tuple(shape)}, dtype={dtype})"
    return repr(value)
