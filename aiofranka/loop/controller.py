"""The Controller: a 1 kHz torque loop that lives on the asyncio event loop.

The loop is clocked by the robot's own state packets: the event loop sleeps
until the next state and serves each cycle in one C call (read, law, safety,
write). This module is the user's facade: options, gains and targets,
lifecycle, waits, motion and figures. Who serves each cycle lives in
:mod:`aiofranka.loop._cycle`; see docs/architecture.md and docs/timing.md.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import sys
import threading
import time

import numpy as np

from .. import _os, limits, validation
from ..exceptions import ControllerStateError, ControllerStoppedError
from ..pacing import DeadlineGrid
from ..robot import Robot, RobotState, _abi as _rescue_abi
from ..robot.errors import translate
from ..stats import LoopStats, PlaybackStats  # noqa: F401 - the types of the figures
from . import command
from ._bridge import call_on_loop
from ._cycle import Cycle, user_error
from ._schedule import Schedule
from .command import MODES, SETTABLE, Commands
from .guardian import Guardian, watch_gc
from .recorder import Recorder
from .trajectory import TargetRows, follow, plan_joint_motion

_log = logging.getLogger("aiofranka")

__all__ = ["Controller", "FrankaController", "MODES", "SETTABLE"]


class Controller:
    """A 1 kHz torque / impedance controller whose loop runs on the asyncio event loop.

    Modes (see :meth:`switch`): ``"impedance"`` (joint impedance: ``kp``,
    ``kd``, ``q_desired``), ``"osc"`` (operational-space impedance: ``ee_kp``,
    ``ee_kd``, ``ee_desired``, with a null-space pull towards ``q_desired``
    weighted by ``null_kp``, ``null_kd``) and ``"torque"`` (raw ``torque``).
    Every mode passes through the same safety filter.

    Gains and targets are attributes: assigning one validates it (shape,
    finiteness, sign, a proper rotation for poses, joint limits) and publishes
    it whole for the next cycle.

    Keyword-only options (docs/controller.md has the table, with defaults and units):
    ``mode``; ``torque_rate_limit`` (N m per cycle, below 1); ``joint_limit_margin``,
    ``joint_limit_stiffness``, ``joint_limit_damping`` (the guard band near joint
    limits); ``stop_ramp`` (s to fade the torque on stop); ``switch_interval``
    (``sys.setswitchinterval`` while running); ``wait`` (``"socket"``, ``"timerfd"``,
    ``"yield"`` or ``"auto"``: how the loop waits for the next state);
    ``stall_threshold`` (s a due cycle may go unclaimed before it is a stall);
    ``guardian`` (a thread serves cycles while the event loop is blocked);
    ``on_stall`` (``"warn"``, ``"silent"`` or ``"stop"`` after ``stall_limit`` s);
    ``rescue`` (a GIL-free C thread serves cycles while another thread holds the
    GIL; ``stats.rescue`` says whether it runs, and why not); ``gc_freeze``
    (freeze the collector's view of the existing heap while running); ``serve``
    (``"kernel"``: the rescue thread serves every cycle from C and the event loop
    only publishes targets, docs/kernel-serving.md; ``"loop"``: the event loop
    serves each cycle, backed by the guardian and the rescue thread; ``"auto"``:
    the kernel where the rescue thread can run, else the loop); ``serve_cpu``
    (where that C thread runs: ``"auto"`` keeps it on the CPU the states arrive
    on, busy or not, and where it cannot follow them does what ``"least-busy"``
    does: move it off a CPU another thread keeps busy when another CPU has room;
    an int pins it to that CPU, ``None`` leaves it to the scheduler;
    docs/kernel-serving.md#placement);
    ``cpu_wake_latency`` (s an idle CPU may take to wake while a session runs, a
    PM QoS request: 0 keeps idle CPUs polling, ``None`` leaves the system's
    setting; needs root, docs/controller.md#cpu-wake-up-latency).

    Example::

        import asyncio
        from aiofranka import Controller, Robot

        async def main():
            with Robot() as robot:              # the embedded simulator
                async with Controller(robot) as controller:
                    q = controller.state.q
                    q[0] += 0.2
                    await controller.move(q)
                    print(controller.stats.table())

        asyncio.run(main())
    """

    #: Rescue thread timing (ns); see :class:`~aiofranka.loop._cycle.Cycle`.
    RESCUE_AFTER_NS = Cycle.RESCUE_AFTER_NS
    RESCUE_GRACE_NS = Cycle.RESCUE_GRACE_NS

    def __init__(self, robot: Robot, *, mode: str = "impedance", torque_rate_limit: float = 0.95,
                 joint_limit_margin: float = 0.1, joint_limit_stiffness: float = 100.0,
                 joint_limit_damping: float = 5.0, stop_ramp: float = 0.1, switch_interval: float = 1e-4,
                 wait: str = "auto", stall_threshold: float = 3e-4, guardian: bool = True,
                 on_stall: str = "warn", stall_limit: float = 0.5, gc_freeze: bool = True,
                 rescue: bool | None = None, serve: str = "auto", serve_cpu: int | str | None = "auto",
                 cpu_wake_latency: float | None = 0.0) -> None:
        if not isinstance(robot, Robot):
            raise TypeError(f"robot must be an aiofranka.Robot, got {type(robot).__name__}")
        self._robot = robot
        mode_index = command.check_mode(mode)
        rate = validation.positive("torque_rate_limit", torque_rate_limit)
        if rate >= limits.DTAU_MAX_PER_CYCLE:
            raise ValueError(f"torque_rate_limit must be below {limits.DTAU_MAX_PER_CYCLE} N m per cycle "
                             f"(the robot's tolerance), got {torque_rate_limit!r}")
        margin = validation.positive("joint_limit_margin", joint_limit_margin, upper=0.5)
        stiffness = float(command.gains("joint_limit_stiffness", joint_limit_stiffness, 1)[0])
        damping = float(command.gains("joint_limit_damping", joint_limit_damping, 1)[0])
        stop_ramp = validation.positive("stop_ramp", stop_ramp, upper=5.0)
        self._switch_interval = validation.positive("switch_interval", switch_interval, upper=0.1)
        if wait not in ("auto", "socket", "timerfd", "yield"):
            raise ValueError(f"wait must be 'auto', 'socket', 'timerfd' or 'yield', got {wait!r}")
        if wait == "socket" and robot.state_fd is None:
            raise ValueError("wait='socket' needs the robot's UDP socket, which was not identified; "
                             "use 'timerfd' or 'yield'")
        if wait == "timerfd" and not _os.IS_LINUX:
            raise ValueError("wait='timerfd' needs Linux; use 'socket' or 'yield'")
        if wait == "auto":
            if robot.state_fd is not None:
                wait = "socket"
            else:
                wait = "timerfd" if _os.IS_LINUX else "yield"
        self._wait_mode = wait
        self._stall_threshold_ns = int(1e9 * validation.positive("stall_threshold", stall_threshold, upper=0.1))
        self._gc_freeze = bool(gc_freeze)
        if on_stall not in ("warn", "silent", "stop"):
            raise ValueError(f"on_stall must be 'warn', 'silent' or 'stop', got {on_stall!r}")
        if on_stall == "stop" and not guardian:
            raise ValueError("on_stall='stop' needs guardian=True: the guardian is what ramps the arm down")
        self._takeover = bool(guardian)
        if rescue is None:
            rescue = self._takeover
        if not isinstance(rescue, bool):
            raise TypeError(f"rescue must be True, False or None, got {rescue!r}")
        rescue_on = rescue and wait == "socket"
        rescue_state = "off" if not rescue else "on" if rescue_on else f"off: needs wait='socket', not {wait!r}"
        if serve not in ("auto", "kernel", "loop"):
            raise ValueError(f"serve must be 'auto', 'kernel' or 'loop', got {serve!r}")
        if serve == "kernel" and not rescue_on:
            raise ValueError(f"serve='kernel' needs the rescue thread (rescue=True and wait='socket'): {rescue_state}")
        if serve == "kernel" and on_stall == "stop":
            raise ValueError("on_stall='stop' needs serve='loop': with serve='kernel' a blocked event loop "
                             "does not hold up the arm, and no guardian watches it")
        if on_stall == "stop" or not rescue_on:
            serve = "loop" if serve == "auto" else serve
        self._serve = serve
        place = _place_mode(serve_cpu)
        if cpu_wake_latency is None:
            self._wake_latency_us = None
        else:
            latency = validation.real("cpu_wake_latency", cpu_wake_latency, minimum=0.0)
            if latency > 0.1:
                raise ValueError(f"cpu_wake_latency must be at most 0.1 s, got {cpu_wake_latency!r}")
            self._wake_latency_us = round(1e6 * latency)
        self._wake_latency_in_force: int | None = None
        self._wake_latency_entered = False
        self._on_stall = on_stall
        self._stall_limit_ns = int(1e9 * validation.positive("stall_limit", stall_limit, upper=60.0))

        #: The gains and targets the law reads, in named fields (see :mod:`aiofranka.loop.command`).
        self.commands = Commands()
        # Loop storage, allocated once; the C kernel works on these arrays.
        self._buf = robot.state_buffer(dtau_max=np.full(7, rate), margin=margin, stiffness=stiffness,
                                       damping=damping)
        self._kernel = self._buf.kernel
        self._kernel.place(place, _robot_ip(robot))  # the C thread's placement (place.c), applied when it starts
        self._schedule = Schedule(self._kernel, learn_margin=wait == "timerfd")
        self._cycle = Cycle(robot, self._buf, self.commands, self._schedule, mode=mode_index, wait_mode=wait,
                            rescue=rescue_on, rescue_state=rescue_state, stop_ramp=stop_ramp)
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None
        self._closed = False
        self._set_period_ms: float | None = None
        self._set_grid: DeadlineGrid | None = None
        self._switch_interval_in_force = switch_interval
        self._loop_sched_saved: tuple | None = None
        self._loop_demoted = False  # loop_thread_demotion entered for this session
        self._guardian: Guardian | None = None
        self._last_guardian: Guardian | None = None
        self._wall_start_ns = 0
        self._loop_thread = 0
        # Set while no session holds the robot: stop_from_thread() waits on it.
        self._session_over = threading.Event()
        self._session_over.set()

    # -- options (validated; fixed while running where the loop depends on them) --

    @property
    def torque_rate_limit(self) -> float:
        """Largest change of the commanded torque per cycle (N m)."""
        return float(self._buf.dtau_max[0])

    def _kernel_option(name: str, check, doc: str):  # noqa: N805 - class-body helper
        def getter(self) -> float:
            return getattr(self._kernel, name)

        def setter(self, value) -> None:
            setattr(self._kernel, name, check(value))

        return property(getter, setter, doc=doc)

    joint_limit_margin = _kernel_option(
        "margin", lambda v: validation.positive("joint_limit_margin", v, upper=0.5),
        "Width of the guard band near each joint limit (rad).")
    joint_limit_stiffness = _kernel_option(
        "stiffness", lambda v: float(command.gains("joint_limit_stiffness", v, 1)[0]),
        "Spring of the joint-limit guard (N m/rad).")
    joint_limit_damping = _kernel_option(
        "damping", lambda v: float(command.gains("joint_limit_damping", v, 1)[0]),
        "Damper of the joint-limit guard (N m s/rad).")
    del _kernel_option

    @property
    def stop_ramp(self) -> float:
        """Seconds over which the law's torque fades to zero on stop."""
        return self._cycle.stop_ramp

    @stop_ramp.setter
    def stop_ramp(self, value: float) -> None:
        self._cycle.stop_ramp = validation.positive("stop_ramp", value, upper=5.0)

    @property
    def switch_interval(self) -> float:
        """``sys.setswitchinterval`` while running (s); takes effect at the next start."""
        return self._switch_interval

    @switch_interval.setter
    def switch_interval(self, value: float) -> None:
        self._switch_interval = validation.positive("switch_interval", value, upper=0.1)

    # -- gains and targets: attributes made from the command table ----------------

    def assign(self, name: str, array: np.ndarray) -> None:
        """Publish a gain or target already validated by :func:`aiofranka.loop.command.validate`.

        For callers that validate in another thread (server mode, ``Franka``);
        call it on the controller's loop while a ``move()`` may run (assigning
        ``q_desired`` interrupts it). Plain code assigns the attribute instead.
        """
        cycle = self._cycle
        if name == "q_desired":
            cycle.cancel_trajectory("q_desired was assigned")
        rows = cycle.playing
        if rows is not None and name == ("q_desired" if rows.joint else "ee_desired"):
            cycle.hold_rows_here(f"{name} was assigned")
        setattr(self.commands, name, array)

    def _make_property(setting: command.Setting):  # noqa: N805 - class-body helper
        name = setting.name

        def getter(self) -> np.ndarray:
            return getattr(self.commands, name)

        def setter(self, value) -> None:
            self.assign(name, setting.validate(name, value))

        return property(getter, setter, doc=setting.doc)

    for _setting in command.TABLE:
        locals()[_setting.name] = _make_property(_setting)
    del _make_property, _setting

    @property
    def mode(self) -> str:
        """The active control mode."""
        return MODES[self._cycle.mode]

    def switch(self, mode: str) -> None:
        """Change the control mode, re-targeting to the current pose so nothing jumps.

        ``q_desired`` and ``ee_desired`` become the current joint positions and
        pose, ``torque`` becomes zero, and a running ``move()`` is interrupted.
        """
        index = command.check_mode(mode)
        self._raise_stored_error()
        self._cycle.cancel_trajectory(f"switch({mode!r}) was called")
        self._cycle.hold_rows_here(f"switch({mode!r}) was called")
        self.commands.retarget(self._buf.q, self._buf.ee)
        self._cycle.mode = index

    # -- lifecycle -----------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while the loop is commanding the robot."""
        return self._task is not None and not self._task.done()

    @property
    def error(self) -> BaseException | None:
        """The error that ended the last session, until :meth:`stop` raises it (else ``None``)."""
        return self._error

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop the controller last started on (``None`` before the first start)."""
        return self._loop

    @property
    def moving(self) -> bool:
        """A :meth:`move` is in progress."""
        return self._cycle.moving

    async def start(self) -> None:
        """Start the 1 kHz loop; returns once the first command has been written.

        Recovers from a previous reflex first. Targets are set to the current
        pose, and the torque starts from zero, so the arm does not jump.
        """
        if self._closed:
            raise ControllerStateError("this controller was closed; create a new one")
        if self.running:
            raise ControllerStateError("the controller is already running")
        loop = asyncio.get_running_loop()
        self._error = None
        robot = self._robot
        if not robot.claim(self):
            raise ControllerStateError("another controller is driving this robot; stop it first")
        self._session_over.clear()
        self._loop = loop
        self._loop_thread = threading.get_ident()
        cycle = self._cycle
        cycle.prepare(loop)
        self._last_guardian = None
        self._wall_start_ns = 0
        # Everything slow happens before the session opens: once it is open the
        # robot expects a command every millisecond.
        if cycle.rescue:  # decided before the session opens: the checks take milliseconds
            refusal = _rescue_abi.rescue_refusal() or robot.direct_layout()
            cycle.rescue_state = f"off: {refusal}" if isinstance(refusal, str) else "on"
        if self._serve == "kernel" and cycle.rescue_state != "on":
            robot.release(self)
            self._session_over.set()
            raise ControllerStateError(f"serve='kernel' needs the rescue thread, which is {cycle.rescue_state}")
        cycle.kernel_serve = self._serve != "loop" and cycle.rescue_state == "on"
        # With the kernel serving, the event loop's thread keeps its policy and
        # the interpreter its switch interval: no Python runs per cycle.
        self._switch_interval_in_force = None if cycle.kernel_serve else self._switch_interval
        if not cycle.kernel_serve:
            self._loop_sched_saved = _os.promote_current_thread(getattr(robot, "rt_priority", None))
            _os.switch_interval.enter(self._switch_interval)
        if self._gc_freeze:
            _os.gc_freezer.enter()
        if self._wake_latency_us is not None:
            self._wake_latency_in_force = _os.cpu_wake_latency.enter(self._wake_latency_us)
            self._wake_latency_entered = True
        try:
            if not cycle.kernel_serve:
                cycle.attach(loop)
                self._start_guardian(loop)
            if robot.in_reflex():
                robot.recover()
            cycle.ctl = robot.start_torque_control()
        except BaseException as exc:
            self._finish(None, None)
            raise exc
        first = loop.create_future()
        self._task = loop.create_task(self._run(first), name="aiofranka-control-loop")
        await first
        self._raise_stored_error()

    def _rescue_priority(self) -> int:
        """SCHED_FIFO priority of the C thread: two above the event loop's thread,
        or above the robot's where that thread runs normal (0: normal as well)."""
        above = _os.fifo_priority_above(2)
        if above is None and getattr(self._robot, "rt_priority", None):
            above = min(99, self._robot.rt_priority + 2)
        return above or 0

    def _start_guardian(self, loop) -> None:
        self._cycle.guard_running = True
        watch_gc(True)
        priority = _os.fifo_priority_above(1)  # above the loop and user threads
        self._guardian = Guardian(self._cycle, self._schedule, threshold_ns=self._stall_threshold_ns, loop=loop,
                                  loop_thread_id=threading.get_ident(), rt_priority=priority,
                                  takeover=self._takeover, log_stalls=self._on_stall != "silent",
                                  stop_after_ns=self._stall_limit_ns if self._on_stall == "stop" else None)
        self._guardian.start()

    async def stop(self) -> None:
        """Ramp the torque down to zero, end the session, and raise any loop error.

        Idempotent: a second call returns at once (or raises nothing further).
        If the loop died with an error, that error is raised here (once).
        """
        task = self._task
        if task is not None and not task.done():
            self._cycle.request_stop()
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                if not task.done():
                    raise
        error, self._error = self._error, None
        if error is not None:
            raise error

    def stop_from_thread(self, timeout: float | None = None) -> None:
        """:meth:`stop` from a thread other than the event loop's: ramp down, block until the session has ended.

        The event loop (or, while it is blocked, the guardian) serves the ramp.
        An error that ended the loop is kept for :meth:`stop` to raise.
        Raises :class:`~aiofranka.ControllerStateError` when called on the
        event loop's own thread or while that loop is not running (nothing
        could serve the ramp and end the session: ``await controller.stop()``
        there instead), and when the session has not ended within ``timeout``
        seconds (default: twice ``stop_ramp`` plus 2 s). :meth:`Robot.close`
        calls it for the controller that holds the robot.
        """
        task, loop = self._task, self._loop
        if task is None or task.done():
            return  # not running (or ending now: _finish already ran or runs without us)
        if threading.get_ident() == self._loop_thread:
            raise ControllerStateError(
                "the controller is running on this thread's event loop, which cannot wait here for its "
                "ramp-down: await controller.stop() first (or leave `async with Controller(...)` before "
                "closing the robot)")
        if loop is None or loop.is_closed() or not loop.is_running():
            raise ControllerStateError(
                "the controller's event loop is not running, so nothing can ramp the arm down and end the "
                "session: run controller.stop() on that loop first")
        if timeout is None:
            timeout = 2.0 * self.stop_ramp + 2.0
        self._cycle.request_stop()  # read by whoever serves the next cycle
        if not self._session_over.wait(timeout):
            raise ControllerStateError(
                f"the controller did not finish its ramp-down within {timeout:.1f} s (is its event loop "
                "blocked?); the session is still open")

    async def close(self) -> None:
        """Stop (if running) and refuse further starts. Idempotent."""
        try:
            await self.stop()
        finally:
            self._closed = True
            self._cycle.close()

    async def __aenter__(self) -> "Controller":
        await self.start()
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            await self.stop()
            return
        # Never mask the body's exception with the loop's.
        try:
            await self.stop()
        except Exception as stop_error:
            if stop_error is not exc and hasattr(exc, "add_note"):
                exc.add_note(f"aiofranka: stopping the controller also raised {stop_error!r}")

    def add_done_callback(self, fn) -> None:
        """Call ``fn(controller)`` on the loop when the running session ends."""
        self._require_running()
        self._task.add_done_callback(lambda _task: fn(self))

    def call_from_thread(self, fn, *args, timeout: float | None = None):
        """Run ``fn(*args)`` on the controller's event loop from another thread; return its result.

        ``fn`` may return an awaitable, which is awaited there. Raises
        :class:`~aiofranka.ControllerStateError` when the controller is not
        running, ``RuntimeError`` when called from the loop's own thread (it
        would wait for itself), and ``TimeoutError`` past ``timeout`` seconds.
        """
        loop = self._loop
        if loop is None or not self.running:
            raise ControllerStateError("the controller is not running; start it first")
        return call_on_loop(loop, fn, *args, timeout=timeout)

    # -- waiting and rate-limited updates --------------------------------------

    def _raise_stored_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _require_running(self) -> None:
        self._raise_stored_error()
        if not self.running:
            raise ControllerStateError("the controller is not running; await controller.start() first")

    async def _await_loop(self, future: asyncio.Future) -> None:
        try:
            await future
        except ControllerStoppedError:
            self._raise_stored_error()
            raise

    async def wait(self, duration: float) -> None:
        """Sleep ``duration`` seconds of robot time; raises if the loop dies meanwhile."""
        if not (isinstance(duration, (int, float)) and math.isfinite(duration) and duration >= 0):
            raise ValueError(f"duration must be a finite number >= 0, got {duration!r}")
        self._require_running()
        await self._await_loop(self._cycle.wait_until(self._kernel.time_ms + duration * 1000.0))

    def set_freq(self, hz: float | None) -> None:
        """Pace :meth:`set` at ``hz`` on the robot clock (``None``: no pacing)."""
        if hz is None:
            self._set_period_ms = None
        else:
            self._set_period_ms = 1000.0 / validation.positive("hz", hz, upper=1000.0)
        self._set_grid = None

    async def set(self, name: str, value) -> None:
        """Validate and publish a gain or target, paced by :meth:`set_freq`.

        With a frequency set, each call returns at the next tick of a fixed
        grid on the robot clock (drift-free: the grid does not move with call
        jitter); after an overrun the grid skips the missed ticks instead of
        bursting.
        """
        await self.set_validated(name, command.validate(name, value))

    async def set_validated(self, name: str, array: np.ndarray) -> None:
        """:meth:`set` for an array already validated by :func:`aiofranka.loop.command.validate`."""
        self._require_running()
        period = self._set_period_ms
        if period is not None:
            now = self._kernel.time_ms
            grid = self._set_grid
            if grid is None:  # the first call after set_freq() anchors the grid
                grid = self._set_grid = DeadlineGrid(period, on_overrun="skip", due=now)
            overran = not grid.due > now
            if not overran:
                await self._await_loop(self._cycle.wait_until(grid.due))
                now = self._kernel.time_ms
            grid.next_due(now, overran=overran)
        self.assign(name, array)

    # -- motion ----------------------------------------------------------------

    async def move(self, q=None, *, speed: float = 0.3, tolerance: float = 0.01,
                   timeout: float | None = None) -> None:
        """Move to joint positions ``q`` (rad; default: the home pose
        :data:`aiofranka.limits.Q_HOME`) on a jerk-limited trajectory; return on arrival.

        The trajectory (ruckig) respects ``speed`` times the FR3 velocity,
        acceleration and jerk limits and is tracked in impedance mode (the
        controller switches to it). Returns when the trajectory is finished and
        every joint is within ``tolerance`` rad of ``q``. Raises
        :class:`MotionTimeoutError` after ``timeout`` seconds of robot time
        (default: the trajectory's duration plus 2 s), and
        :class:`ControllerStoppedError` if the controller stops or another
        command (``switch()``, a new ``move()``, assigning ``q_desired``)
        interrupts it. If the call is cancelled or times out, the arm holds
        where the trajectory had got to.
        """
        target = validation.joint_positions("q", limits.Q_HOME if q is None else q)
        speed = validation.positive("speed", speed, upper=1.0)
        tolerance = validation.positive("tolerance", tolerance)
        if timeout is not None:
            timeout = validation.positive("timeout", timeout)
        self._require_running()
        cycle = self._cycle
        cycle.hold_rows_here("move() was called")
        if cycle.moving:
            # Hold where the running motion is now, then plan from the arm's state.
            cycle.hold_trajectory_here()
            cycle.cancel_trajectory("a new move() started")
        trajectory = plan_joint_motion(self._buf.q, self._buf.dq, target, speed=speed)
        await trajectory.sample()
        self._require_running()
        if cycle.mode != command.IMPEDANCE:
            self.switch("impedance")
        await follow(cycle, trajectory, target, tolerance=tolerance, timeout=timeout,
                     wait=self._await_loop, check=self._raise_stored_error)

    # -- target rows (a policy's interpolated chunks) -----------------------------

    def play(self, rows: TargetRows) -> None:
        """Follow ``rows`` (:class:`~aiofranka.loop.trajectory.TargetRows`) from ``rows.start_ms`` of robot time.

        Joint rows are followed in impedance mode (``q_desired`` and
        ``dq_desired``), pose rows in osc mode (``ee_desired``); the controller
        switches mode first when needed. Until ``start_ms`` the loop keeps its
        current target (or the rows it was playing); the switch happens at a
        cycle boundary. After the last row the target is held there, and the
        held cycles are counted in :attr:`playback`. Rows are checked here
        (finite, joint positions inside the FR3 limits, proper rotations),
        never in the loop. Assigning the target the rows drive, ``switch()``,
        ``move()`` or :meth:`stop_playing` ends the playback where it has got to.
        """
        if not isinstance(rows, TargetRows):
            raise TypeError(f"rows must be an aiofranka.loop.trajectory.TargetRows, got {type(rows).__name__}")
        rows.check()
        self._require_running()
        if rows.joint and self._cycle.mode != command.IMPEDANCE:
            self.switch("impedance")
        elif not rows.joint and self._cycle.mode != command.OSC:
            self.switch("osc")
        self._cycle.play_rows(rows)

    @property
    def playing(self) -> bool:
        """Target rows are being followed (or are due to start)."""
        return self._cycle.playing is not None

    def stop_playing(self) -> None:
        """Stop following target rows; the target stays where they had got to."""
        self._cycle.hold_rows_here("stop_playing() was called")

    def target_at(self, time_ms: int, *, joint: bool = True) -> np.ndarray:
        """The target the loop will command at robot time ``time_ms``: ``q_desired`` (``joint``) or ``ee_desired``.

        Follows played rows (the first row before their start, the last after their end).
        """
        return self._cycle.target_at(int(time_ms), joint)

    @property
    def time_ms(self) -> int:
        """The robot's millisecond counter at the latest state (cheap: no snapshot)."""
        return int(self._kernel.time_ms)

    @property
    def playback(self) -> PlaybackStats:
        """A frozen snapshot of the playback figures since the last start."""
        cycle = self._cycle
        rows = cycle.playing
        held, late = cycle.kernel_playback() if cycle.serving else (cycle.rows_starved, cycle.rows_late)
        return PlaybackStats(playing=rows is not None, start_ms=rows.start_ms if rows is not None else -1,
                             end_ms=rows.end_ms if rows is not None else -1, plays=cycle.rows_played,
                             held_cycles=held, late_switches=late)

    # -- state and figures -------------------------------------------------

    @property
    def state(self) -> RobotState:
        """A consistent snapshot of the latest state (copies; safe to keep)."""
        if not self.running:
            return self._robot.read()
        return self._cycle.snapshot()

    def record(self, fields=None, *, seconds: float = 10.0, overwrite: bool = False) -> Recorder:
        """Record ``fields`` (None: all; see docs/recorder.md) of every cycle from the next one on.

        The kernel writes one row per cycle served (by the loop, the guardian or
        the rescue thread) into a ring of ``seconds`` x 1,000 rows; when it is
        full the first rows are kept, or with ``overwrite`` the latest, and
        :attr:`Recorder.dropped` counts the rest. One recording at a time;
        stop it with :meth:`Recorder.stop` or use it as a (async) context manager.
        """
        if self._closed:
            raise ControllerStateError("the controller is closed")
        return Recorder(self._kernel, fields, seconds=seconds, overwrite=overwrite)

    def publish_to(self, frame, mass=None) -> None:
        """Have every cycle copy the state into ``frame`` (a shared buffer) under a seqlock; ``None`` stops."""
        if frame is None:
            self._kernel.publish_to(None)
        else:
            self._kernel.publish_to(frame, mass)

    @property
    def stats(self) -> LoopStats:
        """A frozen snapshot of the loop's figures since the last start."""
        interval = self._switch_interval_in_force
        return self._cycle.figures(self._guardian or self._last_guardian, self._wall_start_ns,
                                   sys.getswitchinterval() if interval is None else interval,
                                   self._wake_latency_in_force)

    # -- the session -------------------------------------------------------------

    async def _run(self, first: asyncio.Future) -> None:
        # The control handle is only ever read from the cycle, never bound to a
        # local: a stored error's traceback keeps its frames' locals, and a
        # handle kept alive that way would hold pylibfranka's one control
        # session open and make the next start() fail.
        error: BaseException | None = None
        cycle = self._cycle
        self._wall_start_ns = time.monotonic_ns()
        try:
            if cycle.run(initial=True):
                return
            cycle.start_rescue(self.RESCUE_AFTER_NS, self.RESCUE_GRACE_NS, self._rescue_priority())
            _rescue_abi.warn_if_off(self._takeover, cycle.rescue_state)
            if cycle.kernel_serve and not cycle.start_serving():
                # The rescue thread did not start after all: the event loop serves.
                _log.warning("kernel serving is off (%s); the event loop serves the cycles", cycle.rescue_state)
                cycle.kernel_serve = False
                cycle.attach(self._loop)
                self._start_guardian(self._loop)
            elif cycle.kernel_serve:
                # No cycle waits on this thread now: its Python must not outrank
                # the simulator's or the user's threads (docs/kernel-serving.md).
                _os.loop_thread_demotion.enter()
                self._loop_demoted = True
            first.set_result(None)
            done = self._loop.create_future()
            cycle.open(done)
            if self._wait_mode == "yield":
                while not done.done():
                    # While the guardian holds the cycle, back off instead of
                    # spinning the event loop (it needs the GIL to serve).
                    await asyncio.sleep(0.001 if cycle.guardian_active else 0)
                    cycle.serve()
            await done
        except asyncio.CancelledError as exc:
            # Cancelled from outside: finish the session synchronously so the
            # arm is not left with a stale torque.
            error = ControllerStoppedError("the control loop task was cancelled")
            cycle.emergency_ramp(self._guardian)
            raise exc
        except BaseException as exc:  # noqa: BLE001 - stored and re-raised to the user
            error = user_error(exc)
            if translate(exc) is exc:
                # Not the robot ending the session (reflex, network): our own
                # fault mid-cycle. The session is still open, so ramp it down.
                cycle.emergency_ramp(self._guardian)
        finally:
            if error is None and cycle.law_error is not None:
                error = cycle.law_error
            self._finish(error, first)

    def _finish(self, error: BaseException | None, first: asyncio.Future | None) -> None:
        cycle = self._cycle
        cycle.detach()
        cycle.close()  # its descriptor goes with the session, not with the Controller
        if self._switch_interval_in_force is not None:
            _os.switch_interval.leave(self._switch_interval_in_force)
        if self._gc_freeze:
            _os.gc_freezer.leave()
        if self._wake_latency_entered:
            self._wake_latency_entered = False
            _os.cpu_wake_latency.leave(self._wake_latency_us)
        self._robot.release(self)
        saved, self._loop_sched_saved = self._loop_sched_saved, None
        _os.restore_thread_scheduling(saved)
        if self._loop_demoted:
            self._loop_demoted = False
            _os.loop_thread_demotion.leave()
        if self._guardian is not None:
            self._last_guardian = self._guardian
            self._guardian.stop()
            self._guardian = None
        if error is not None:
            self._error = error
        if first is not None and not first.done():
            if error is not None:
                first.set_exception(error)
                first.exception()
            else:
                first.set_result(None)
        cycle.fail_waiters(error)
        self._session_over.set()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Controller {self.mode} {state} on {self._robot!r}>"


#: The name aiofranka 0.9's guide gives the in-process controller (docs/migration.md).
FrankaController = Controller


def _robot_ip(robot) -> bytes | None:
    """The robot's IPv4 address as 4 bytes, the one sender placement may follow; None if unknown."""
    try:
        return socket.inet_aton(socket.gethostbyname(robot.ip)) if robot.ip else None
    except (OSError, TypeError, UnicodeError):
        return None


def _place_mode(serve_cpu) -> int:
    """The kernel's placement code for ``serve_cpu`` (-1 auto, -2 off, -3 least-busy, else the CPU), validated."""
    if serve_cpu == "auto":
        return -1
    if serve_cpu == "least-busy":
        return -3
    if serve_cpu is None:
        return -2
    if isinstance(serve_cpu, bool) or not isinstance(serve_cpu, int):
        raise TypeError(f"serve_cpu must be 'auto', 'least-busy', None or a CPU number, got {serve_cpu!r}")
    allowed = sorted(_os.allowed_cpus())
    if serve_cpu not in allowed:
        raise ValueError(f"serve_cpu must be one of the CPUs this process may run on {allowed}, got {serve_cpu}")
    return serve_cpu
