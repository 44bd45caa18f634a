"""Whether the rescue thread may drive libfranka from C here, and why not.

The rescue thread calls libfranka's C++ functions on pylibfranka's objects
directly, which holds only under the assumptions listed in
``docs/rescue-abi.md``: x86-64 Linux, an extension built with the rescue
thread, and a pylibfranka whose layout was verified. :func:`rescue_refusal`
checks them before a session opens; the kernel checks each object it is
handed (``csrc/abi.c``, ``csrc/direct.cpp``).
"""

from __future__ import annotations

import logging
import sys

#: pylibfranka versions whose objects the rescue thread was verified against
#: (the pin in pyproject.toml; tests/test_rescue_sim.py checks the layout).
VERIFIED_PYLIBFRANKA = ("0.21.3",)

log = logging.getLogger("aiofranka")
_warned = False


def rescue_refusal() -> str | None:
    """``None`` if the rescue thread may run in this process, else the reason.

    Takes a few milliseconds the first time (package metadata): call it
    before a session opens, not inside one.
    """
    import platform

    machine = platform.machine()
    if not sys.platform.startswith("linux") or machine != "x86_64":
        return (f"the rescue thread needs x86-64 Linux, this is {sys.platform} {machine or 'unknown'} "
                "(it calls libfranka with the x86-64 convention for a returned struct)")
    from .. import _kernel

    if _kernel.RESCUE_UNAVAILABLE:
        return _kernel.RESCUE_UNAVAILABLE
    from importlib import metadata

    try:
        version = metadata.version("pylibfranka")
    except metadata.PackageNotFoundError:
        return "cannot tell which pylibfranka is installed (no package metadata)"
    if version not in VERIFIED_PYLIBFRANKA:
        return (f"pylibfranka {version} is not a version the rescue thread was verified with "
                f"({', '.join(VERIFIED_PYLIBFRANKA)})")
    return None


def warn_if_off(guardian: bool, rescue: str) -> None:
    """Log once per process, loudly, that the guardian runs without the rescue
    thread (``rescue`` is ``stats.rescue``: ``"off: <why>"``). A plain
    ``"off"`` is the user's choice (``rescue=False``) and is not reported."""
    global _warned
    if guardian and rescue.startswith("off: ") and not _warned:
        _warned = True
        log.warning("aiofranka: the rescue thread is OFF (%s). The guardian still covers a blocked event "
                    "loop, but nothing serves the robot while a thread holds the GIL: a long C call can "
                    "end the session in a reflex. See docs/rescue-abi.md.", rescue[5:])
