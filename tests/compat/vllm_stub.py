"""A stand-in for the vllm package, which is not installed: every ``vllm.*`` module imports, and any
attribute of it is a placeholder class (subclassable, callable, usable in annotations and as a decorator)
unless ``define`` gave it a value. vLLM-Ascend's own modules and torch_npu/torchair are never stubbed."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types


class _PlaceholderType(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _placeholder(name)

    def __or__(cls, other):
        return cls

    def __ror__(cls, other):
        return cls

    def __getitem__(cls, item):
        return cls


class Placeholder(metaclass=_PlaceholderType):
    """What a vllm name that the test does not define stands for."""

    def __init__(self, *args, **kwargs):
        pass

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return Placeholder()

    def __call__(self, *args, **kwargs):
        if len(args) == 1 and callable(args[0]) and not kwargs:
            return args[0]                # used as a decorator
        return Placeholder()


def _placeholder(name: str) -> type:
    return _PlaceholderType(name, (Placeholder,), {})


class _Module(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = _placeholder(name)
        setattr(self, name, value)
        return value


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "vllm" or fullname.startswith("vllm."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _Module(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


def install(version: str) -> None:
    sys.meta_path.insert(0, _Finder())
    define("vllm", __version__=version)


def define(module: str, **names) -> types.ModuleType:
    """Give ``vllm`` module ``module`` these attributes (importing it first)."""
    __import__(module)
    target = sys.modules[module]
    for name, value in names.items():
        setattr(target, name, value)
    return target
