"""Gripper: the Franka Hand, driven from a child process so its blocking calls never freeze the loop.

pylibfranka's ``Gripper`` holds the GIL for the whole of each command (a grasp takes
seconds): called from the event loop, or from any thread of the controller's process, it
would freeze every Python thread there, the guardian included. So one child process (made
with :func:`~aiofranka.ampify`) owns the connection and runs the commands, and a thread in
it publishes the hand's state into a small shared-memory block that :attr:`Gripper.state`
reads without a round trip. Guide: docs/gripper.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import math
import secrets
import struct
import threading
from typing import Any

from .. import validation
from ..exceptions import GripperError, GripperStoppedError, RobotError, WorkerCrashedError

__all__ = ["STATE_PERIOD", "Gripper", "GripperState"]

#: Seconds between two state reads in the gripper's process (while no command runs there).
STATE_PERIOD = 0.05

# The shared block: a sequence number (odd while the child writes) and the state; at
# _CONTROL a flag the parent sets: stop the hand as the child exits.
_SEQ = struct.Struct("<Q")
_STATE = struct.Struct("<Q5d")  # seq, width, max_width, is_grasped, temperature, time
_CONTROL = _STATE.size
_BLOCK_BYTES = _CONTROL + _SEQ.size


@dataclasses.dataclass(frozen=True)
class GripperState:
    """A snapshot of the Franka Hand's state.

    ``width``: opening between the fingers (m); ``max_width``: the widest opening homing
    measured (m); ``is_grasped``: an object is held (the last grasp succeeded and nothing
    released it since); ``temperature``: of the hand (deg C); ``time``: the hand's clock
    when it sent this state (s).
    """

    width: float
    max_width: float
    is_grasped: bool
    temperature: float
    time: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def offload_machinery():
    """``(ampify, Owned)``, imported here: tens of milliseconds the first time, which the
    constructors pay so that a start from a running event loop does not."""
    from ..offload._shm import Owned
    from ..offload.to_process import ampify

    return ampify, Owned


def _read_block(buf) -> tuple | None:
    """The newest complete state in the block, or None when the child is writing right now."""
    for _ in range(64):
        values = _STATE.unpack_from(buf, 0)
        if not values[0] & 1 and _SEQ.unpack_from(buf, 0)[0] == values[0]:
            return values
    return None


def _plausible(width: float, max_width: float, homed: bool) -> bool:
    """Whether a state can come from a Franka Hand (``homed``: one with ``max_width`` > 0 came).

    libfranka takes any datagram that reaches the hand's UDP port as a state, cut to 23
    bytes. On a machine shared with other simulators, one of them can stream arm states to
    a port the hand's connection reuses: seen in a test, an arm at its home pose read as
    width 0.0078, max_width 0.0. A hand reports max_width 0 only until its first homing, and
    its fingers never open past the stroke.
    """
    if not (math.isfinite(width) and math.isfinite(max_width) and 0.0 <= max_width <= 0.2
            and -0.005 <= width <= 0.2):
        return False
    if max_width > 0.0:
        return width <= max_width + 0.005
    return not homed


class _Hand:
    """The child's side: owns ``pylibfranka.Gripper`` and publishes its state."""

    def __init__(self, ip: str, block_name: str, period: float) -> None:
        import pylibfranka

        from .._os import demote_to_normal
        from ..offload._shm import Mapped
        from .errors import translate_libfranka

        self._translate = translate_libfranka
        self._map = Mapped(block_name)
        self._buf = self._map.buf
        with translate_libfranka():
            self._hand = pylibfranka.Gripper(ip)
        demote_to_normal()  # in case connecting promoted us, as pylibfranka.Robot does
        self._lock = threading.Lock()
        self._seq = 0
        self._homed = False
        for _ in range(200):  # a few seconds at the hand's rate
            if self._publish():
                break
        else:
            raise GripperError(f"the Franka Hand at {ip} sent no plausible state")
        self._period = period
        self._closing = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="aiofranka-gripper-state", daemon=True)
        self._poller.start()

    def _publish(self) -> bool:
        """Read the hand's state and publish it; False (nothing published) for a stray datagram."""
        with self._translate():
            state = self._hand.read_once()
        if not _plausible(state.width, state.max_width, self._homed):
            return False
        self._homed = self._homed or state.max_width > 0.0
        with self._lock:
            buf = self._buf
            _SEQ.pack_into(buf, 0, self._seq + 1)
            _STATE.pack_into(buf, 0, self._seq + 1, state.width, state.max_width, float(state.is_grasped),
                             float(state.temperature), state.time.to_sec())
            self._seq += 2
            _SEQ.pack_into(buf, 0, self._seq)
        return True

    def _poll(self) -> None:
        while not self._closing.wait(self._period):
            try:
                self._publish()
            except Exception:  # noqa: BLE001 - a lost connection: the next command reports it
                self._closing.wait(1.0)

    def _run(self, name: str, *args: Any) -> bool:
        try:
            with self._translate():
                return bool(getattr(self._hand, name)(*args))
        except RobotError as exc:  # libfranka's CommandException and kin
            raise GripperError(f"the Franka Hand refused or failed {name}(): {exc}") from exc
        finally:
            try:
                self._publish()  # so that gripper.state is current when the await returns
            except Exception:  # noqa: BLE001 - the command's own outcome is what counts
                pass

    def move(self, width: float, speed: float) -> bool:
        return self._run("move", width, speed)

    def grasp(self, width: float, speed: float, force: float, epsilon_inner: float, epsilon_outer: float) -> bool:
        return self._run("grasp", width, speed, force, epsilon_inner, epsilon_outer)

    def homing(self) -> bool:
        return self._run("homing")

    def stop(self) -> bool:
        return self._run("stop")

    def _aiofranka_close(self) -> None:
        """Called by the child as it exits (after the command in flight has answered)."""
        self._closing.set()
        try:
            if _SEQ.unpack_from(self._buf, _CONTROL)[0]:
                self._hand.stop()  # the parent gave up on a command: end it cleanly
        except Exception:  # noqa: BLE001 - exiting anyway
            pass
        self._poller.join(1.0)
        self._buf = None
        self._map.close()


def _transfer(result: asyncio.Future, call: asyncio.Future) -> None:
    """Hand the child's answer to the waiting caller, unless stop() or close() answered first."""
    if call.cancelled():
        if not result.done():
            result.cancel()
        return
    error = call.exception()
    if result.done():
        return
    if error is None:
        result.set_result(call.result())
    elif isinstance(error, WorkerCrashedError):
        wrapped = GripperError(f"the gripper's process died during the command: {error}")
        wrapped.__cause__ = error
        result.set_exception(wrapped)
    else:
        result.set_exception(error)


class Gripper:
    """The Franka Hand, its blocking libfranka calls run in a child process.

    ``Gripper(ip)`` connects to the hand of the robot at ``ip`` (port 1338); ``robot.gripper``
    gives the one of a ``Robot(..., gripper=True)``. The first command (or :meth:`start`)
    starts the child, without blocking the event loop (0.5-2 s). Every command is a
    coroutine; the hand runs one at a time, in the order they were awaited:

    * :meth:`move` ``(width, speed)``, :meth:`grasp` ``(width, speed, force, epsilon_inner,
      epsilon_outer)``, :meth:`homing`: ``True`` on success. A grasp that closes on nothing
      (no object inside ``width - epsilon_inner .. width + epsilon_outer``) returns ``False``;
      a command the hand refuses or fails raises :class:`~aiofranka.GripperError`.
    * :meth:`stop`: stops the hand; the command in flight, and any waiting, raise
      :class:`~aiofranka.GripperStoppedError`. Cancelling the task that awaits a command also
      stops the hand.
    * :attr:`state`: the latest :class:`GripperState`, read from shared memory (never blocks).

    Values are checked before anything is sent (``ValueError`` naming the parameter): widths
    in 0..``max_width`` m (once the hand was homed), speeds and forces positive, epsilons
    non-negative.

    Example::

        import asyncio
        from aiofranka import Robot

        async def main():
            with Robot(gripper=True, sim={"gripper_object_width": 0.04}) as robot:
                gripper = robot.gripper
                await gripper.homing()
                held = await gripper.grasp(0.04, speed=0.05, force=20.0)
                print(held, gripper.state.width)      # True 0.04

        if __name__ == "__main__":
            asyncio.run(main())
    """

    def __init__(self, ip: str, *, start_timeout: float = 60.0, close_timeout: float = 5.0) -> None:
        if not isinstance(ip, str) or not ip.strip():
            raise ValueError(f"ip must be an address string, got {ip!r}")
        offload_machinery()
        self.ip = ip
        self._start_timeout = validation.positive("start_timeout", start_timeout)
        self._close_timeout = validation.positive("close_timeout", close_timeout)
        self._proxy = None
        self._block = None
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._turn: asyncio.Lock | None = None
        self._starting: asyncio.Future | None = None
        self._in_flight: asyncio.Future | None = None
        self._epoch = 0
        self._background: set[asyncio.Task] = set()
        self._last_seq = -1
        self._last_state: GripperState | None = None

    # -- lifecycle -----------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while the gripper's process runs and accepts commands."""
        return not self._closed and self._proxy is not None and self._proxy.running

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def busy(self) -> bool:
        """A command is in flight (its result not yet delivered)."""
        return self._in_flight is not None and not self._in_flight.done()

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            old = self._loop
            if old is not None and not old.is_closed() and old.is_running():
                raise RuntimeError("this Gripper is in use by another running event loop")
            self._loop = loop
            self._turn = asyncio.Lock()
            self._starting = None
        return loop

    def _check_open(self) -> None:
        if self._closed:
            raise GripperStoppedError("this gripper was closed; create a new one")

    async def start(self) -> None:
        """Start the gripper's process and connect to the hand; idempotent.

        Returns once the first state has been read. The event loop keeps running meanwhile.
        Raises :class:`~aiofranka.RobotConnectionError` if the hand cannot be reached.
        """
        self._check_open()
        self._bind_loop()
        if self.running:
            return
        if self._starting is None or self._starting.done():
            self._starting = asyncio.ensure_future(self._start())
        starting = self._starting
        await asyncio.shield(starting)  # a cancelled caller leaves the start to the others

    async def _start(self) -> None:
        ampify, Owned = offload_machinery()
        old, self._proxy = self._proxy, None
        if old is not None:  # its process died: reap it before starting another
            await old.astop(timeout=0)
        self._release_block()
        block = Owned(f"afkg{secrets.token_hex(4)}", _BLOCK_BYTES)  # named afkg<hex>-<pid>
        try:
            proxy = await ampify(_Hand, self.ip, block.name, STATE_PERIOD, start_timeout=self._start_timeout)
        except WorkerCrashedError as exc:
            block.unlink()
            raise GripperError(f"the gripper's process died while starting: {exc}") from exc
        except BaseException:
            block.unlink()
            raise
        if self._closed:  # closed while starting
            await proxy.astop(self._close_timeout)
            block.unlink()
            raise GripperStoppedError("the gripper was closed while it started")
        self._block = block
        self._last_seq = -1
        self._last_state = None
        for _ in range(1000):  # the child published a state before it reported ready
            if self._read_state() is not None:
                break
            await asyncio.sleep(0.001)
        self._proxy = proxy

    async def _ready(self):
        """The running proxy, started on first use."""
        self._check_open()
        self._bind_loop()
        if not self.running:
            await self.start()
            self._check_open()
        return self._proxy

    async def close(self) -> None:
        """Close the gripper; idempotent. No further commands after it.

        A command in flight raises :class:`~aiofranka.GripperStoppedError` at once; the
        gripper's process lets the hand finish it (libfranka cannot interrupt one), stops
        the hand, and exits (killed after ``close_timeout`` seconds). An idle hand is left
        as it is, so an object it holds stays held.
        """
        if self._closed:
            return
        proxy = self._begin_close()
        starting = self._starting
        if starting is not None and not starting.done():
            try:
                await asyncio.shield(starting)  # it sees _closed and stops its own process
            except BaseException:  # noqa: BLE001 - reported to start()'s callers
                pass
        if proxy is not None:
            await proxy.astop(self._close_timeout)
        self._finish_close()

    def close_sync(self) -> None:
        """:meth:`close` for synchronous code (``Robot.close()`` uses it): blocks while the
        process exits. Call it on the gripper's event loop thread, or with that loop stopped."""
        if self._closed:
            return
        proxy = self._begin_close()
        if proxy is not None:
            proxy.stop(self._close_timeout)
        self._finish_close()

    def _begin_close(self):
        self._closed = True
        busy = self.busy
        self._interrupt("the gripper was closed")
        proxy = self._proxy
        if proxy is not None and busy and self._block is not None:
            _SEQ.pack_into(self._block.buf, _CONTROL, 1)  # the child stops the hand as it exits
        return proxy

    def _finish_close(self) -> None:
        self._release_block()
        for task in list(self._background):
            task.cancel()

    def _release_block(self) -> None:
        block, self._block = self._block, None
        if block is not None:
            block.unlink()

    async def __aenter__(self) -> "Gripper":
        await self.start()
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running" if self.running else "not started"
        return f"<Gripper {self.ip} {state}>"

    # -- state ----------------------------------------------------------------

    @property
    def state(self) -> GripperState:
        """The hand's latest state, published by the gripper's process every
        ``STATE_PERIOD`` s while no command runs there, and when each command ends (while a
        command runs, it is the state from before the command). Never blocks."""
        self._check_open()
        block = self._block
        if block is None:
            raise GripperError("the gripper is not started: await gripper.start() (or a command) first")
        return self._read_state()

    def _read_state(self) -> GripperState | None:
        values = _read_block(self._block.buf)
        # None: the child is writing this instant, so the previous state is still the newest.
        if values is not None and values[0] != self._last_seq:
            _seq, width, max_width, grasped, temperature, stamp = values
            self._last_seq = values[0]
            self._last_state = GripperState(width, max_width, bool(grasped), temperature, stamp)
        return self._last_state

    # -- commands -------------------------------------------------------------

    def _check_width(self, width: float) -> None:
        max_width = self.state.max_width
        if max_width > 0.0 and width > max_width:  # 0: not homed yet, the hand judges
            raise ValueError(f"width must be at most the hand's max_width, {max_width} m, got {width!r}")

    async def move(self, width: float, speed: float) -> bool:
        """Move the fingers to ``width`` (m) at ``speed`` (m/s); ``True`` on arrival.

        Raises :class:`~aiofranka.GripperError` if the hand cannot (e.g. an object is in
        the way on the real hand).
        """
        width = validation.real("width", width, minimum=0.0)
        speed = validation.positive("speed", speed)
        return await self._command("move", width, speed, width=width)

    async def grasp(self, width: float, speed: float, force: float, epsilon_inner: float = 0.005,
                    epsilon_outer: float = 0.005) -> bool:
        """Close on an object ``width`` m wide at ``speed`` (m/s) with ``force`` (N).

        Returns ``True`` when the fingers stop on something between ``width -
        epsilon_inner`` and ``width + epsilon_outer`` (m), and ``False`` when the grasp
        misses (the fingers close on nothing, or on something of another size): a missed
        grasp is an answer, not an error.
        """
        width = validation.real("width", width, minimum=0.0)
        speed = validation.positive("speed", speed)
        force = validation.positive("force", force)
        epsilon_inner = validation.real("epsilon_inner", epsilon_inner, minimum=0.0)
        epsilon_outer = validation.real("epsilon_outer", epsilon_outer, minimum=0.0)
        return await self._command("grasp", width, speed, force, epsilon_inner, epsilon_outer, width=width)

    async def homing(self) -> bool:
        """Close and reopen the fingers to measure ``max_width``; ``True`` on success."""
        return await self._command("homing")

    async def stop(self) -> bool:
        """Stop the hand; idempotent. Returns the hand's answer.

        The command in flight and any waiting raise :class:`~aiofranka.GripperStoppedError`
        at once. The hand cannot be interrupted mid-command (neither the real one nor the
        simulator's), so the stop reaches it when the command in flight has ended, and
        releases the squeeze of a grasp; this call returns then.
        """
        proxy = await self._ready()
        self._interrupt("gripper.stop() was called")
        return await self._answer(proxy.call("stop"))

    def _interrupt(self, reason: str) -> None:
        """Fail the command in flight and the waiting ones (on the gripper's loop)."""
        self._epoch += 1
        result = self._in_flight
        if result is None or result.done():
            return
        loop = result.get_loop()
        if loop.is_closed():
            return
        error = GripperStoppedError(f"{reason} while this command ran")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop or not loop.is_running():
            if not result.done():
                result.set_exception(error)
        else:
            loop.call_soon_threadsafe(lambda: result.done() or result.set_exception(error))

    async def _answer(self, coro) -> Any:
        try:
            return await coro
        except WorkerCrashedError as exc:
            raise GripperError(f"the gripper's process died: {exc}") from exc

    async def _command(self, name: str, *args: Any, width: float | None = None) -> bool:
        proxy = await self._ready()
        if width is not None:
            self._check_width(width)
        epoch = self._epoch
        async with self._turn:  # one command at a time: a waiting one can still be withdrawn
            if self._closed:
                raise GripperStoppedError("the gripper was closed before this command ran")
            if epoch != self._epoch:
                raise GripperStoppedError("gripper.stop() was called before this command ran")
            loop = asyncio.get_running_loop()
            result = loop.create_future()
            call = loop.create_task(proxy.call(name, *args), name=f"aiofranka-gripper-{name}")
            call.add_done_callback(functools.partial(_transfer, result))
            self._in_flight = result
            try:
                return await result
            except asyncio.CancelledError:
                call.cancel()  # the late answer is dropped
                if self._in_flight is result and not self._closed:
                    self._stop_soon(proxy)
                raise
            finally:
                if self._in_flight is result:
                    self._in_flight = None

    def _stop_soon(self, proxy) -> None:
        """Stop the hand after a cancelled command, without making the cancelled task wait."""

        async def stop() -> None:
            try:
                await proxy.call("stop")
            except Exception:  # noqa: BLE001 - best effort: the next command reports a broken hand
                pass

        task = asyncio.get_running_loop().create_task(stop(), name="aiofranka-gripper-stop")
        self._background.add(task)
        task.add_done_callback(self._background.discard)
