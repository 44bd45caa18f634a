"""Server mode: the 1 kHz loop in a process of its own, behind a synchronous API.

:class:`FrankaRemoteController` spawns a child that owns the robot and runs a
Controller on its own event loop. State comes back every cycle through a
shared-memory frame under a seqlock; commands go over the ``mpify`` channel
with reply timeouts. See docs/server.md.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import math
import os
import secrets
import threading

import numpy as np

from .. import _kernel, limits, validation
from ..exceptions import ControllerStateError, WorkerCrashedError
from .._os import fifo_priority, loop_thread_demotion, promote
from ..loop._bridge import call_on_loop
from ..loop.command import SETTABLE, TABLE, check_mode, validate
from ..offload._proxy import set_exit_timeout
from ..offload._shm import Mapped as _Mapped, Owned as _Owned
from ..offload.to_process import mpify
from ..robot import RobotState

__all__ = ["FrankaRemoteController"]

_LAYOUT = _kernel.FRAME_LAYOUT
_FRAME_LEN = _kernel.FRAME_LEN
#: Slot after the seqlocked frame: the loop's status, written by the child.
_STATUS = _FRAME_LEN
_IDLE, _RUNNING, _FAILED = 0, 1, 2
#: The next slot: how many commands the parent abandoned (Ctrl+C while it
#: waited for the reply). The child cancels a long command that started before
#: the count last rose, so the parent's next command (stop) is not queued
#: behind it.
_ABANDONED = _FRAME_LEN + 1
#: How often the child's command thread looks at that count during a long command (s).
_CANCEL_POLL_S = 0.02
_FRAME_BYTES = 8 * (_FRAME_LEN + 8)

#: Controller options forwarded as attributes (``torque_rate_limit`` is read-only).
_OPTIONS = ("torque_rate_limit", "joint_limit_margin", "joint_limit_stiffness", "joint_limit_damping",
            "stop_ramp", "switch_interval")


def _exit_grace(stop_ramp: float) -> float:
    """Seconds the child may take to ramp down and close: the ramp's robot
    time, doubled for a simulator at half speed, plus the close itself."""
    return 2.0 * stop_ramp + 2.0


def _controller_parameters() -> dict[str, object]:
    """The Controller's keyword options and their defaults."""
    from ..loop.controller import Controller

    parameters = inspect.signature(Controller.__init__).parameters
    return {name: p.default for name, p in parameters.items() if name not in ("self", "robot")}


class _ControllerServer:
    """Lives in the child: owns the robot and the controller, runs their event loop."""

    def __init__(self, ip, robot_options: dict, controller_options: dict, frame_name: str,
                 priority: int | None = None) -> None:
        self._priority = priority
        self._frame = _Mapped(frame_name)
        self._status = np.frombuffer(self._frame.buf, dtype=np.float64, count=1, offset=8 * _STATUS)
        self._abandoned = np.frombuffer(self._frame.buf, dtype=np.float64, count=1, offset=8 * _ABANDONED)
        self._loop = asyncio.new_event_loop()
        self._robot = None
        self._controller = None
        self._closed = False
        ready: concurrent.futures.Future = concurrent.futures.Future()
        # The loop thread opens the connection: libfranka raises the priority
        # of the thread that connects, and that is the thread that reads states.
        self._thread = threading.Thread(target=self._main, args=(ip, robot_options, controller_options, ready),
                                        name="aiofranka-server-loop", daemon=True)
        self._thread.start()
        try:
            ready.result()
        except BaseException:
            self._thread.join(5.0)
            self._release_frame()
            raise

    def _main(self, ip, robot_options, controller_options, ready) -> None:
        from ..loop.controller import Controller
        from ..robot import Robot

        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            self._robot = Robot(ip, **robot_options)
            priority = self._priority
            if priority is None:
                # libfranka made this (the connecting) thread real-time and
                # Robot set its rt_priority: the other threads follow it.
                priority = fifo_priority()
            if priority is not None:
                self._raise_priority(priority)
                # Only the server's own code runs here: keep the priority under kernel serving too.
                loop_thread_demotion.keep_current_thread()
            self._controller = Controller(self._robot, **controller_options)
            self._controller.publish_to(self._frame.buf, self._robot.model.mass)
        except BaseException as exc:  # noqa: BLE001 - raised in the parent by mpify
            if self._robot is not None:
                self._robot.close()
            loop.close()
            ready.set_exception(exc)
            return
        ready.set_result(None)
        try:
            loop.run_forever()
        finally:
            loop.close()

    @staticmethod
    def _raise_priority(priority: int) -> None:
        """SCHED_FIFO for every thread of this process that exists now.

        Not only the loop thread: the command thread and mpify's watchdog take
        the GIL too, and one of them preempted by the user's busy script while
        holding it would keep a real-time loop thread waiting (priority
        inversion). The guardian, started later, takes the loop's priority.
        SCHED_RESET_ON_FORK keeps threads started later by libraries at the
        normal policy.
        """
        for thread in threading.enumerate():
            if thread.native_id is not None:
                promote(priority, reset_on_fork=True, tid=thread.native_id)

    # -- running things on the loop thread ---------------------------------

    def _on_loop(self, fn, *args, timeout: float | None = None):
        if self._closed:
            raise ControllerStateError("the remote controller was closed")
        return call_on_loop(self._loop, fn, *args, timeout=timeout)

    def _long_on_loop(self, fn, *args):
        """``_on_loop`` for a command that may take long (wait, move, a paced set):
        cancelled, like a cancelled coroutine in process, once the parent abandons it."""
        if self._closed:
            raise ControllerStateError("the remote controller was closed")
        started = float(self._abandoned[0])

        async def call():
            return await fn(*args)

        future = asyncio.run_coroutine_threadsafe(call(), self._loop)
        while True:
            try:
                return future.result(_CANCEL_POLL_S)
            except concurrent.futures.TimeoutError:
                if self._abandoned[0] > started:
                    future.cancel()  # cancels the coroutine on the loop; result() raises CancelledError

    def _loop_ended(self, controller) -> None:
        self._status[0] = _FAILED if controller.error is not None else _IDLE

    async def _start(self) -> None:
        controller = self._controller
        await controller.start()
        self._status[0] = _RUNNING
        controller.add_done_callback(self._loop_ended)

    def _check_fault(self) -> None:
        error = self._controller.error
        if error is not None:
            raise error

    def _assign(self, name: str, value) -> None:
        self._check_fault()
        if name in SETTABLE:
            self._controller.assign(name, value)  # validated once, in the parent
        else:
            setattr(self._controller, name, value)

    # -- the commands the parent sends ---------------------------------------

    def start(self) -> None:
        self._on_loop(self._start)

    def stop(self) -> None:
        self._on_loop(self._controller.stop)

    def switch(self, mode: str) -> None:
        self._on_loop(self._controller.switch, mode)

    def set_freq(self, hz) -> None:
        self._on_loop(self._controller.set_freq, hz)

    # Gains and targets arrive validated by the parent (FrankaRemoteController),
    # so the loop thread only swaps the arrays in.

    def set(self, name: str, array) -> None:
        self._long_on_loop(self._controller.set_validated, name, array)

    def move(self, q, speed: float, tolerance: float, timeout: float | None) -> None:
        controller = self._controller
        self._long_on_loop(lambda: controller.move(q, speed=speed, tolerance=tolerance, timeout=timeout))

    def wait(self, duration: float) -> None:
        self._long_on_loop(self._controller.wait, duration)

    def assign(self, name: str, value) -> None:
        controller = self._controller
        if name in SETTABLE:
            if name != "q_desired" or not controller.moving:
                # A whole-array swap is atomic under the GIL, and the loop and
                # the guardian read these attributes once per cycle: no hop onto
                # the loop needed. (A q_desired that interrupts a trajectory
                # settles the mover's future, which only the loop may do.)
                self._assign(name, value)
                return
        self._on_loop(self._assign, name, value)

    def get(self, name: str):
        if name in SETTABLE or name in _OPTIONS or name == "mode":
            return getattr(self._controller, name)  # plain attribute reads
        return self._on_loop(getattr, self._controller, name)

    def state(self) -> RobotState:
        return self._on_loop(getattr, self._controller, "state")

    def stats(self):
        return self._on_loop(getattr, self._controller, "stats")

    def info(self) -> dict:
        robot = self._robot
        simulator = robot.simulator
        return {"pid": os.getpid(), "robot": repr(robot),
                "simulator_pid": simulator.pid if simulator is not None else None}

    def _aiofranka_close(self) -> None:
        """Ramp the arm down, close the robot (and its simulator), end the loop."""
        if self._closed:
            return
        controller, robot = self._controller, self._robot
        try:
            if controller is not None:
                self._on_loop(controller.close, timeout=_exit_grace(controller.stop_ramp))
        except BaseException:  # noqa: BLE001 - closing regardless; the error was or will be reported
            pass
        self._closed = True
        try:
            self._loop.call_soon_threadsafe(self._loop.stop)
        except RuntimeError:  # the loop is already closed
            pass
        self._thread.join(5.0)
        if robot is not None:
            try:
                robot.close()  # and its simulator
            except ControllerStateError:
                pass  # the ramp never ended: the process exits and takes the session with it
        self._release_frame()

    def close(self) -> None:
        self._aiofranka_close()

    def _release_frame(self) -> None:
        if self._controller is not None:
            self._controller.publish_to(None)
        self._status = self._abandoned = None
        self._frame.close()


def _make_forwarded(name: str, writable: bool, doc: str):
    def getter(self):
        return self._call("get", name)

    if not writable:
        return property(getter, doc=doc)

    def setter(self, value) -> None:
        if name in SETTABLE:
            value = validate(name, value)
        self._call("assign", name, value)

    return property(getter, setter, doc=doc)


class FrankaRemoteController:
    """A :class:`~aiofranka.Controller` running in a child process, driven synchronously.

    The constructor spawns the child, which connects to the robot at ``ip``
    (``None``: starts the embedded simulator there) and builds the controller;
    it blocks until both are ready (about a second with the simulator). The
    child's event loop runs the 1 kHz loop and nothing else, so the calling
    script may hold the GIL as long as it likes. No asyncio is needed here: every method blocks until the
    child has answered.

    Keyword-only options:

    * ``robot``: keyword arguments for :class:`~aiofranka.Robot` in the child
      (``collision_thresholds``, ``sim``, ...).
    * ``priority``: run the child's threads (the loop, the guardian, the
      command thread) SCHED_FIFO at this priority (1-99; needs root or
      CAP_SYS_NICE, else the constructor raises ``PermissionError``).
      ``None`` (default): when libfranka made the connecting thread real-time
      (it does when permitted; :class:`~aiofranka.Robot` then sets its
      ``rt_priority``, 80 by default), the other threads of the child follow
      it, so none waits behind a normal-priority thread holding the child's
      GIL; otherwise everything stays normal. On a machine where the
      user's script and the loop share few cores, it keeps the loop's wake-ups
      ahead of the script's CPU work (see docs/server.md for figures).
    * ``timeout``: seconds to wait for the reply to a command (default 2.0);
      ``set``, ``move`` and ``wait`` add the time they are meant to take.
      :class:`~aiofranka.CallTimeoutError` is raised past it.
    * ``start_timeout``: seconds the child may take to start (default 60).
    * everything else is passed to :class:`~aiofranka.Controller` (``mode``,
      ``torque_rate_limit``, ``stop_ramp``, ``guardian``, ...).

    The API mirrors the Controller's: :meth:`start`, :meth:`stop`,
    :attr:`state`, :meth:`switch`, :meth:`set_freq`, :meth:`set`,
    :meth:`move`, :meth:`wait`, :attr:`stats`, and the gains, targets and
    options as attributes. Values are validated here, so a bad one raises at
    once with the parameter's name. An error in the child (a reflex, a law
    that failed) is raised by the next command, as itself; a child that died
    raises :class:`~aiofranka.WorkerCrashedError`. :meth:`close` (or leaving
    the ``with`` block) ramps the arm down and ends the child; so does the
    parent's exit, even by a signal.

    Like :func:`~aiofranka.mpify`, it spawns a process: keep the script's
    top-level code under ``if __name__ == "__main__":``.

    Example::

        from aiofranka import FrankaRemoteController

        if __name__ == "__main__":
            with FrankaRemoteController() as ctl:      # started, simulator
                q = ctl.state.q
                q[0] += 0.2
                ctl.move(q)
                print(ctl.stats.table())
    """

    def __init__(self, ip: str | None = None, *, robot: dict | None = None, priority: int | None = None,
                 timeout: float = 2.0, start_timeout: float = 60.0, **options) -> None:
        if ip is not None and (not isinstance(ip, str) or not ip.strip()):
            raise ValueError(f"ip must be an address string or None, got {ip!r}")
        if asyncio._get_running_loop() is not None:  # checked before a child is spawned
            raise RuntimeError(
                "FrankaRemoteController blocks while its server starts and on every command; "
                "inside a running event loop use the in-process Controller, or create and drive "
                "it from a thread (await asyncio.to_thread(...))"
            )
        if robot is not None and not isinstance(robot, dict):
            raise TypeError(f"robot must be a dict of Robot keyword arguments, got {type(robot).__name__}")
        if priority is not None and not (isinstance(priority, int) and 1 <= priority <= 99):
            raise ValueError(f"priority must be an int in 1..99 or None, got {priority!r}")
        self._timeout = validation.positive("timeout", timeout, upper=3600.0)
        start_timeout = validation.positive("start_timeout", start_timeout, upper=3600.0)
        known = _controller_parameters()
        for name in options:
            if name not in known:
                raise TypeError(f"unknown Controller option {name!r}; expected one of {tuple(known)}")
        self._proxy = None
        self._closed = False
        self._frame = _Owned(f"afkr{secrets.token_hex(6)}", _FRAME_BYTES)  # mode 0600
        self._frame_name = self._frame.name
        try:
            self._view = np.frombuffer(self._frame.buf, dtype=np.float64, count=_FRAME_LEN + 2)
            self._snap = np.zeros(_FRAME_LEN)
            self._proxy = mpify(_ControllerServer, ip, dict(robot or {}), options, self._frame.name, priority,
                                start_timeout=start_timeout)
        except BaseException:
            self._view = None
            self._frame.unlink()
            raise
        try:
            info = self._proxy.call_sync_timeout(self._timeout, "info")
        except BaseException:
            self._closed = False
            self.close()
            raise
        self._child_pid = info["pid"]
        self._robot_repr = info["robot"]
        self._simulator_pid = info["simulator_pid"]
        # Valid: the child's Controller accepted it.
        self._set_exit_grace(float(options.get("stop_ramp", known["stop_ramp"])))

    def _set_exit_grace(self, stop_ramp: float) -> None:
        # At interpreter exit the child gets its ramp-down (and then some)
        # before it is killed: a kill mid-ramp ends in a reflex on the arm.
        set_exit_timeout(self._proxy, _exit_grace(stop_ramp) + 1.0)

    # -- plumbing ----------------------------------------------------------

    def _call(self, name: str, *args, extra: float = 0.0):
        if self._closed:
            raise ControllerStateError("this FrankaRemoteController was closed; create a new one")
        try:
            return self._proxy.call_sync_timeout(self._timeout + extra, name, *args)
        except BaseException as exc:
            if not isinstance(exc, Exception) and self._view is not None:
                # Ctrl+C (KeyboardInterrupt) while the child works on the command:
                # the child cancels it, so that the stop that follows runs at once.
                self._view[_ABANDONED] += 1
            raise

    def _read_frame(self) -> np.ndarray | None:
        if _kernel.seqlock_read(self._view, self._snap) is None:
            return None
        return self._snap

    # -- lifecycle ----------------------------------------------------------

    @property
    def pid(self) -> int:
        """The child process's pid."""
        return self._child_pid

    @property
    def simulator_pid(self) -> int | None:
        """The pid of the embedded simulator the child started (``None`` with a real robot)."""
        return self._simulator_pid

    @property
    def running(self) -> bool:
        """True while the child's loop is commanding the robot (no round trip)."""
        return not self._closed and self._view[_STATUS] == _RUNNING

    def start(self) -> None:
        """Start the loop; returns once the first command was written (recovers from a reflex first)."""
        self._call("start", extra=10.0)

    def stop(self) -> None:
        """Ramp down and end the loop (the child stays, ready to start again); raises a stored loop error."""
        self._call("stop", extra=6.0)  # stop_ramp is at most 5 s

    def close(self) -> None:
        """Stop the loop if it runs, close the robot, end the child. Idempotent."""
        if self._closed:
            return
        self._closed = True
        proxy = self._proxy
        try:
            if proxy is not None and proxy.running:
                try:
                    proxy.call_sync_timeout(20.0, "close")
                except Exception:  # noqa: BLE001 - ending the child regardless
                    pass
        finally:
            if proxy is not None:
                proxy.stop(timeout=5.0)
            self._view = None
            self._frame.unlink()

    def __enter__(self) -> "FrankaRemoteController":
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self.running:
                self.stop()
        except Exception as stop_error:
            if exc is None:
                raise
            if hasattr(exc, "add_note"):
                exc.add_note(f"aiofranka: stopping the remote controller also raised {stop_error!r}")
        finally:
            self.close()

    def __del__(self) -> None:
        if getattr(self, "_closed", True) is False and getattr(self, "_proxy", None) is not None:
            try:
                self.close()
            except Exception:  # noqa: BLE001 - interpreter shutdown
                pass

    # -- state and figures ------------------------------------------------------

    @property
    def state(self) -> RobotState:
        """The latest state, read from shared memory without a round trip while running.

        While the loop is not running, the child reads the robot (a round
        trip). ``jacobian`` comes from aiofranka's FR3 kinematics at the
        published pose, ``mass`` from libfranka's model. Raises
        :class:`~aiofranka.WorkerCrashedError` if the child died: the frame
        would be stale.
        """
        if self._closed:
            raise ControllerStateError("this FrankaRemoteController was closed; create a new one")
        if not self._proxy.running:
            raise WorkerCrashedError(f"the server process (pid {self._child_pid}) is gone")
        if self._view[_STATUS] != _RUNNING:
            return self._call("state")
        frame = self._read_frame()
        if frame is None:
            raise WorkerCrashedError("the state frame stayed mid-write for a second: the server process "
                                     "stopped writing")
        return _state_from_frame(frame)

    @property
    def stats(self):
        """The child's :class:`~aiofranka.LoopStats` (a round trip)."""
        return self._call("stats")

    @property
    def mode(self) -> str:
        """The active control mode."""
        return self._call("get", "mode")

    # -- commands -----------------------------------------------------------------

    def switch(self, mode: str) -> None:
        """Change mode, re-targeting to the current pose (see :meth:`Controller.switch`)."""
        check_mode(mode)
        self._call("switch", mode)

    def set_freq(self, hz: float | None) -> None:
        """Pace :meth:`set` at ``hz`` on the robot clock (``None``: no pacing)."""
        self._set_period = None if hz is None else 1.0 / validation.positive("hz", hz, upper=1000.0)
        self._call("set_freq", hz)

    _set_period: float | None = None

    def set(self, name: str, value) -> None:
        """Validate and publish a gain or target, paced by :meth:`set_freq` (blocks until its tick)."""
        array = validate(name, value)
        self._call("set", name, array, extra=self._set_period or 0.0)

    def move(self, q=None, *, speed: float = 0.3, tolerance: float = 0.01, timeout: float | None = None) -> None:
        """Move to ``q`` (default: the home pose) on a jerk-limited trajectory and return on
        arrival (see :meth:`Controller.move`).

        Without ``timeout`` the child's own limit applies (the trajectory's
        duration plus 2 s of robot time); the reply is awaited for up to 120 s.
        """
        target = validation.joint_positions("q", limits.Q_HOME if q is None else q)
        speed = validation.positive("speed", speed, upper=1.0)
        tolerance = validation.positive("tolerance", tolerance)
        if timeout is not None:
            timeout = validation.positive("timeout", timeout)
        extra = 120.0 if timeout is None else timeout * 1.5 + 1.0
        self._call("move", target, speed, tolerance, timeout, extra=extra)

    def wait(self, duration: float) -> None:
        """Sleep ``duration`` seconds of robot time in the child; raises if the loop dies meanwhile."""
        if not (isinstance(duration, (int, float)) and math.isfinite(duration) and duration >= 0):
            raise ValueError(f"duration must be a finite number >= 0, got {duration!r}")
        self._call("wait", float(duration), extra=duration * 1.5 + 1.0)

    for _setting in TABLE:
        locals()[_setting.name] = _make_forwarded(_setting.name, True, _setting.doc)
    del _setting
    torque_rate_limit = _make_forwarded("torque_rate_limit", False, "Largest torque change per cycle (N m).")
    joint_limit_margin = _make_forwarded("joint_limit_margin", True, "Joint-limit guard band (rad).")
    joint_limit_stiffness = _make_forwarded("joint_limit_stiffness", True, "Guard stiffness (N m/rad).")
    joint_limit_damping = _make_forwarded("joint_limit_damping", True, "Guard damping (N m s/rad).")
    @property
    def stop_ramp(self) -> float:
        """Seconds over which torque fades to zero on stop (at most 5)."""
        return self._call("get", "stop_ramp")

    @stop_ramp.setter
    def stop_ramp(self, value: float) -> None:
        value = validation.positive("stop_ramp", value, upper=5.0)
        self._call("assign", "stop_ramp", value)
        self._set_exit_grace(value)

    switch_interval = _make_forwarded("switch_interval", True, "sys.setswitchinterval while running (s).")

    def __repr__(self) -> str:
        if self._closed:
            return "<FrankaRemoteController closed>"
        state = "running" if self.running else "stopped"
        return f"<FrankaRemoteController {state}, pid {self._child_pid}, {self._robot_repr}>"


def _state_from_frame(frame: np.ndarray) -> RobotState:
    def part(name: str) -> np.ndarray:
        start, length = _LAYOUT[name]
        return frame[start:start + length].copy()

    return RobotState(
        q=part("q"), dq=part("dq"), ee=part("ee").reshape(4, 4).T.copy(),
        jacobian=part("jacobian").reshape(7, 6).T.copy(), mass=part("mass").reshape(7, 7).T.copy(),
        tau_ext=part("tau_ext"), tau_measured=part("tau_measured"), tau_command=part("tau_command"),
        success_rate=float(frame[_LAYOUT["success_rate"][0]]), time_ms=int(frame[_LAYOUT["time_ms"][0]]),
    )
