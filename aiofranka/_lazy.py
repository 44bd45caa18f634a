"""Names a package exports but imports on first use (PEP 562), so ``import aiofranka`` stays light."""

from __future__ import annotations

import importlib
import sys
from typing import Callable, Iterable


def lazy_exports(package: str, table: dict[str, str], names: Iterable[str]) -> tuple[Callable, Callable]:
    """The module-level ``__getattr__`` and ``__dir__`` for ``package``: ``table`` maps each lazy name to
    the (relative) module defining it; a name, once imported, is kept in the package."""
    listed = sorted(names)

    def __getattr__(name: str):
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return listed

    return __getattr__, __dir__
