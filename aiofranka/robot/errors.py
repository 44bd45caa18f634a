"""pylibfranka's exceptions translated into aiofranka's tree, in one place.

pylibfranka's exceptions share no base of their own (they derive from
``RuntimeError``); :func:`translate_libfranka` wraps every call into
libfranka and re-raises them as :mod:`aiofranka.exceptions` classes, with the
original as ``__cause__``; a reflex carries its error names.
"""

from __future__ import annotations

import contextlib
import re
from typing import Iterator

from ..exceptions import (
    AiofrankaError,
    CommandError,
    InvalidOperationError,
    RealtimeError,
    ReflexError,
    RobotConnectionError,
    RobotError,
)

__all__ = ["reflex_names", "translate", "translate_libfranka"]


_ERROR_LIST = re.compile(r"\[([^\]]*)\]")


def reflex_names(text: str) -> list[str]:
    """Extract libfranka error names from a message such as ``... ["a", "b"]``."""
    match = _ERROR_LIST.search(text)
    if not match:
        return []
    return [name.strip().strip('"').strip("'") for name in match.group(1).split(",") if name.strip()]


def translate(exc: BaseException) -> BaseException:
    """Return the aiofranka exception for a pylibfranka one (or ``exc`` itself)."""
    name = type(exc).__name__
    message = str(exc)
    if name == "ControlException":
        errors = reflex_names(message)
        return ReflexError(message, errors) if errors or "reflex" in message else RobotError(message)
    if name == "NetworkException":
        return RobotConnectionError(message)
    if name == "CommandException":
        return CommandError(message)
    if name == "RealtimeException":
        return RealtimeError(message)
    if name == "InvalidOperationException":
        return InvalidOperationError(message)
    if name in ("FrankaException", "IncompatibleVersionException", "ModelException", "ProtocolException"):
        return RobotError(message)
    return exc


@contextlib.contextmanager
def translate_libfranka() -> Iterator[None]:
    """Re-raise pylibfranka exceptions as aiofranka ones, chained with ``from``."""
    try:
        yield
    except AiofrankaError:
        raise
    except RuntimeError as exc:
        mapped = translate(exc)
        if mapped is exc:
            if type(exc) is not RuntimeError:
                raise
            # pylibfranka also raises bare RuntimeErrors (e.g. "Net Exception"
            # once the connection is broken).
            text = str(exc)
            mapped = RobotConnectionError(text) if "net" in text.lower() else RobotError(text)
        raise mapped from exc
