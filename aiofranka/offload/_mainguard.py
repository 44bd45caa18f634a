"""The ``if __name__ == "__main__":`` check made before a child process is spawned.

A spawned child re-imports the user's main script; a call to mpify()/ampify() at its top level
would start a child that starts a child. See docs/async.md (the main-module guard).
"""

from __future__ import annotations

import ast
import functools
import multiprocessing.process
import os
import sys

__all__ = ["check_main_guard", "check_not_bootstrapping", "main_call_site"]

_GUARD_HELP = (
    "mpify()/ampify() was called while the main script is being imported{where}. A spawned "
    "child process re-imports the main script, so the code that starts a child process must "
    "not run at import time; otherwise every child starts another child (and re-runs "
    "everything above the call, such as opening a robot connection). Put the script's "
    "top-level code under a guard:\n\n"
    "    if __name__ == \"__main__\":\n"
    "        main()\n"
)


def check_not_bootstrapping() -> None:
    """Raise if this process is a spawned child still importing the main module."""
    if getattr(multiprocessing.process.current_process(), "_inheriting", False):
        raise RuntimeError(_GUARD_HELP.format(where=" by a spawned child process"))


def main_call_site() -> tuple[str, int] | None:
    """(file, line) of the main script's top-level statement that led to this call, if any."""
    main = sys.modules.get("__main__")
    if main is None or getattr(main, "__file__", None) is None:
        return None  # interactive session or ``python -c``: spawn does not re-import anything
    main_globals = main.__dict__
    site = None
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals is main_globals and frame.f_code.co_name == "<module>":
            site = (frame.f_code.co_filename, frame.f_lineno)
        frame = frame.f_back
    return site


def _main_test(test: ast.expr) -> str | None:
    """'eq' / 'ne' when ``test`` is ``__name__ == "__main__"`` (either side) / ``!=``."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and len(test.comparators) == 1):
        return None
    sides = (test.left, test.comparators[0])
    names = [s for s in sides if isinstance(s, ast.Name) and s.id == "__name__"]
    consts = [s for s in sides if isinstance(s, ast.Constant) and s.value == "__main__"]
    if len(names) != 1 or len(consts) != 1:
        return None
    if isinstance(test.ops[0], ast.Eq):
        return "eq"
    if isinstance(test.ops[0], ast.NotEq):
        return "ne"
    return None


@functools.lru_cache(maxsize=16)
def _guard_ranges(filename: str, mtime: float) -> tuple[tuple[int, int], ...] | None:
    try:
        with open(filename, "rb") as handle:
            tree = ast.parse(handle.read(), filename)
    except (OSError, SyntaxError, ValueError):
        return None
    ranges = []
    for node in tree.body:
        if isinstance(node, ast.If):
            kind = _main_test(node.test)
            body = node.body if kind == "eq" else node.orelse if kind == "ne" else []
            if body:
                ranges.append((body[0].lineno, max(n.end_lineno or n.lineno for n in body)))
    return tuple(ranges)


def check_main_guard(site: tuple[str, int] | None) -> None:
    """Raise RuntimeError if ``site`` is a top-level line of the main script outside the guard."""
    if site is None:
        return
    filename, lineno = site
    try:
        mtime = os.stat(filename).st_mtime
    except OSError:
        return
    ranges = _guard_ranges(filename, mtime)
    if ranges is None or any(start <= lineno <= end for start, end in ranges):
        return
    raise RuntimeError(_GUARD_HELP.format(where=f" (called from {filename}, line {lineno}, at the top level)"))

