"""A policy factory named on the command line: ``module:name`` or ``path/to/file.py:name``, and its arguments.

Shared by ``aiofranka serve`` and ``aiofranka profile`` (and their Python APIs).
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import os
import sys
from typing import Any, Callable

__all__ = ["factory_arguments", "literal", "load_factory"]


def literal(text: str) -> Any:
    """A Python literal, else the text itself (a plain word stays a string)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def factory_arguments(items: list[str]) -> tuple[list, dict]:
    """``VALUE`` and ``NAME=VALUE`` words as positional and keyword arguments (Python literals, else strings)."""
    args: list = []
    kwargs: dict = {}
    for item in items:
        name, sep, rest = item.partition("=")
        if sep and name.isidentifier():
            kwargs[name] = literal(rest)
        else:
            args.append(literal(item))
    return args, kwargs


def load_factory(spec: str) -> Callable[..., Any]:
    """The callable ``spec`` names: ``"package.module:name"`` (a dotted name allowed after the colon) or
    ``"path/to/file.py:name"``. A file's module is pickled by value, so an mpify child, which cannot import
    it by name, gets its code too."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"the factory must be 'module:name' or 'path/to/file.py:name', got {spec!r}")
    if module_name.endswith(".py") or os.sep in module_name:
        path = os.path.abspath(module_name)
        if not os.path.isfile(path):
            raise ValueError(f"the factory {spec!r}: no such file: {path!r}")
        name = "_aiofranka_factory_" + hashlib.sha1(path.encode()).hexdigest()[:8]
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
        from .offload._wire import import_cloudpickle

        import_cloudpickle().register_pickle_by_value(module)
    else:
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())  # like `python -m`: modules of the working directory
        module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"the factory {spec!r}: {module_name!r} has no {attr!r}") from None
    if not callable(obj):
        raise ValueError(f"the factory {spec!r} is not callable")
    return obj
