"""ProcessProxy: the parent's handle on an object that lives in a child process (made by mpify).

The handle forwards every name it does not define to the remote object (``await proxy.attr``,
``await proxy.method(...)``); its machinery lives in a private ``_Link``, so no name of the
proxy's own shadows one of the remote object's. Requests go out as frames on a socket pair
(``_wire``), large payloads through shared memory (``_shm``); the running event loop reads the
replies with ``add_reader``, blocking callers poll the pipe themselves. The child is started and
awaited by a helper thread, so making or stopping a proxy never blocks an event loop. Design,
cancellation and worker death: docs/async.md (how mpify works).
"""

from __future__ import annotations

import math
import threading
from typing import Any, Callable

from ..exceptions import OffloadError
from ._link import Link, ProxyStats, running_loop
from ._wire import CALL, GETATTR

__all__ = ["ProcessProxy", "ProxyStats", "running_loop"]


_RESERVED_PREFIX = "_aiofranka_"


class _RemoteMember:
    """``proxy.name``: call it for the method, or await it for the attribute's value."""

    __slots__ = ("_link", "_name")

    def __init__(self, link: Link, name: str) -> None:
        self._link = link
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any):
        name = self._name
        return self._link.request(CALL, (name, args, kwargs), name)  # one coroutine, no wrapper

    def __await__(self):
        return self._link.request(GETATTR, self._name, self._name).__await__()

    def __repr__(self) -> str:
        return f"<remote member {self._name!r} of {self._link.describe()}>"


class ProcessProxy:
    """Calls into an object that lives in a spawned child process; made by :func:`mpify`.

    Every method of the child's object becomes a coroutine, and awaiting an attribute
    fetches its value::

        import asyncio
        from aiofranka import mpify

        class Counter:
            def __init__(self, start):
                self.value = start
                self._calls = 0

            def add(self, n):
                self.value += n
                self._calls += 1
                return self.value

        async def main():
            async with mpify(Counter, 10) as counter:   # returns at once; the child starts meanwhile
                print(await counter.add(5))   # 15 (waits for the child first)
                print(await counter.value)    # 15
                print(await counter._calls)   # 1

        if __name__ == "__main__":
            asyncio.run(main())

    Every name the proxy does not define itself reaches the remote object, private-looking
    ones included; a name the object lacks raises ``AttributeError`` naming it. The proxy's own
    names (``call``, ``get``, ``call_sync``, ``call_sync_timeout``, ``get_sync``, ``ready``,
    ``stop``, ``astop``, ``running``, ``stats``, ``pid``) and dunder names reach the object
    through ``await proxy.call(name, ...)`` / ``await proxy.get(name)``. Outside the event loop
    use :meth:`call_sync` / :meth:`get_sync`.

    Calls may overlap (``asyncio.gather``); the child runs them one at a time, in the order
    they were sent. Calls made while the child starts wait for it; :meth:`ready` waits
    without calling, and raises why the child could not start (the factory's exception).

    NumPy arrays in arguments and results travel through shared memory (see docs/async.md);
    an array comes back as a fresh copy (read-only arrays stay read-only).

    Cancellation: cancelling an awaiting call does not stop the child's work; its reply is
    discarded when it arrives and the proxy stays usable.

    Worker death: if the child dies, pending and later calls raise
    :class:`~aiofranka.exceptions.WorkerCrashedError`. After :meth:`stop` / :meth:`astop`
    they raise :class:`~aiofranka.exceptions.WorkerStoppedError`.

    A proxy serves one event loop at a time; it moves to another loop once the previous one
    stopped running.
    """

    # The instance dict holds only the remote members made so far (see __getattr__).
    __slots__ = ("_aiofranka_link", "__dict__", "__weakref__")

    def __init__(self, link: Link) -> None:
        object.__setattr__(self, "_aiofranka_link", link)

    # ----------------------------------------------------------------- the remote object's names

    def __getattr__(self, name: str) -> _RemoteMember:
        # Reached only for names the proxy lacks: every one of them is the remote object's.
        if name.startswith(_RESERVED_PREFIX) or (name.startswith("__") and name.endswith("__")):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        member = _RemoteMember(self._aiofranka_link, name)
        # Kept, so the next `proxy.name` is a plain lookup: reaching __getattr__ costs ~2 µs.
        self.__dict__[name] = member
        return member

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(
            f"cannot set {name!r} through a ProcessProxy: the object lives in the child process; "
            f"give it a method that sets it and call that"
        )

    def __repr__(self) -> str:
        return f"<ProcessProxy {self._aiofranka_link.describe()}>"

    # ----------------------------------------------------------------- public surface

    @property
    def pid(self) -> int | None:
        """The child's process id (None until the child has been spawned)."""
        return self._aiofranka_link._pid

    @property
    def running(self) -> bool:
        """True while the child runs and the proxy accepts calls (False while it starts)."""
        return self._aiofranka_link.running()

    @property
    def stats(self) -> ProxyStats:
        """A snapshot of this proxy's traffic counters."""
        return self._aiofranka_link._counters.snapshot()

    async def call(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """Run ``obj.name(*args, **kwargs)`` in the child and return its result."""
        return await self._aiofranka_link.request(CALL, (name, args, kwargs), name)

    async def get(self, name: str, /) -> Any:
        """Return the value of attribute ``name`` of the child's object."""
        return await self._aiofranka_link.request(GETATTR, name, name)

    async def ready(self) -> None:
        """Wait until the child has built its object.

        Raises why it cannot take calls: the factory's exception (with the child's
        traceback as ``__cause__``), :class:`~aiofranka.exceptions.OffloadError` if the child
        was not ready within ``start_timeout``, ``RuntimeError`` for a main script without
        its ``__main__`` guard, :class:`~aiofranka.exceptions.WorkerStoppedError` after a stop.
        """
        link = self._aiofranka_link
        if not link._started:
            await link.until_started()
        link.check_usable()

    def call_sync(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """Blocking :meth:`call` for code outside the event loop (not inside a coroutine)."""
        return self._aiofranka_link.request_sync(CALL, (name, args, kwargs), name)

    def call_sync_timeout(self, timeout: float, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """:meth:`call_sync` that gives up after ``timeout`` seconds.

        Raises :class:`~aiofranka.exceptions.CallTimeoutError` then; the call may still run
        in the child, and its late reply is discarded.
        """
        if not (isinstance(timeout, (int, float)) and timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
        return self._aiofranka_link.request_sync(CALL, (name, args, kwargs), name, timeout)

    def get_sync(self, name: str, /) -> Any:
        """Blocking :meth:`get` for code outside the event loop."""
        return self._aiofranka_link.request_sync(GETATTR, name, name)

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop the child: ask it to exit, wait up to ``timeout`` s, then SIGKILL it.

        Pending calls fail with :class:`~aiofranka.exceptions.WorkerStoppedError`, as do later
        ones. Idempotent. A child still starting is killed at once. Outside an event loop it
        returns once the child is gone. Called on a running event loop's thread it never
        blocks it: it returns at once and a helper thread waits for the child's exit
        (``await proxy.astop()`` waits for that too).
        """
        link = self._aiofranka_link
        if running_loop() is not None:
            link.stop_soon(timeout)
        else:
            link.stop_blocking(timeout)

    async def astop(self, timeout: float | None = 5.0) -> None:
        """:meth:`stop` that returns once the child is gone, without blocking the event loop."""
        await self._aiofranka_link.astop(timeout)

    def __enter__(self) -> "ProcessProxy":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    async def __aenter__(self) -> "ProcessProxy":
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.astop()


# -- the launcher's interface (to_process.py) -----------------------------------


def start(launch: Callable[[], tuple], start_timeout: float) -> ProcessProxy:
    """A proxy whose child ``launch()`` spawns in a helper thread, which then awaits its READY.

    ``launch`` returns ``(process, conn, pool, token)``. Returns at once.
    """
    link = Link()
    threading.Thread(target=link.run_start, args=(launch, start_timeout),
                     name="aiofranka-mpify-start", daemon=True).start()
    return ProcessProxy(link)


def wait_started(proxy: ProcessProxy, timeout: float) -> None:
    """Block until ``proxy``'s child is ready; raise why it is not (the factory's error...)."""
    link = proxy._aiofranka_link
    if not link.wait_started_sync(timeout):
        raise OffloadError(f"the mpify child process could not be started within {timeout} s")
    link.check_usable()


def link_of(proxy: ProcessProxy) -> Link:
    """The machinery behind ``proxy`` (for tests and the launcher)."""
    return proxy._aiofranka_link


def set_exit_timeout(proxy: ProcessProxy, seconds: float) -> None:
    """At interpreter exit, give the child ``seconds`` to wind down before SIGKILL (default 1 s).

    Server mode sets it from ``stop_ramp``: its child ramps the arm down on the way out.
    """
    proxy._aiofranka_link.exit_timeout = float(seconds)
