"""The asyncio Controller: a 1 kHz torque loop that lives on the event loop.

The loop is clocked by the robot's own state packets. By default the event
loop sleeps, GIL released, until libfranka's UDP socket holds the next state
(``wait="socket"``); the readiness callback then serves one cycle: one C call
(``Kernel.cycle``) reads the state, computes the active law from preallocated
arrays, passes it through the safety filter (rate limit, saturation,
joint-limit guard) and writes the command, with no interpreter eval loop in
between, so no other thread can take the GIL mid-cycle. Figures are recorded
and the callback returns; other coroutines run until the next state.

One cycle is :meth:`Controller._cycle`, a plain synchronous method that any
owner of the cycle lock may call: the event loop (``_serve``) or the guardian
thread, which serves cycles while the event loop is blocked (see
:mod:`aiofranka.guardian`). See docs/timing.md and docs/guardian.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import math
import os
import select
import sys
import threading
import time

import numpy as np

from . import limits, validation
from . import _kernel, _rescue_abi
from .exceptions import (
    AiofrankaError,
    ControlLawError,
    ControllerStateError,
    ControllerStoppedError,
    EventLoopStallError,
    MotionTimeoutError,
    translate,
)
from .guardian import Guardian, watch_gc
from .robot import Robot, RobotState
from .threads import restore_thread_scheduling, thread_scheduling
from .timing import LatencyHistogram, LoopStats
from .trajectory import plan_joint_motion

__all__ = ["Controller", "MODES"]

#: Control modes accepted by :meth:`Controller.switch`.
MODES = ("impedance", "osc", "torque")

_IMPEDANCE, _OSC, _TORQUE = range(3)
_MODE_INDEX = {name: i for i, name in enumerate(MODES)}

# Defaults: joint gains of libfranka's joint impedance example; Cartesian gains
# in N/m, N m/rad (stiffness) and N s/m, N m s/rad (damping).
DEFAULT_KP = (600.0, 600.0, 600.0, 600.0, 250.0, 150.0, 50.0)
DEFAULT_KD = (50.0, 50.0, 50.0, 50.0, 30.0, 25.0, 15.0)
DEFAULT_EE_KP = (1000.0, 1000.0, 1000.0, 60.0, 60.0, 60.0)
DEFAULT_EE_KD = (60.0, 60.0, 60.0, 6.0, 6.0, 6.0)
DEFAULT_NULL_KP = (10.0, 10.0, 10.0, 10.0, 5.0, 5.0, 2.0)
DEFAULT_NULL_KD = (2.0, 2.0, 2.0, 2.0, 1.0, 1.0, 0.5)

_GAINS = {"kp": 7, "kd": 7, "ee_kp": 6, "ee_kd": 6, "null_kp": 7, "null_kd": 7}
_TARGETS = ("q_desired", "ee_desired", "torque")
SETTABLE = tuple(_GAINS) + _TARGETS


def _settle(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


class _SwitchInterval:
    """Process-wide ``sys.setswitchinterval`` shared by every running controller.

    The first controller to start saves the interpreter's interval; while any
    runs, the smallest requested interval is in force; the last to stop
    restores the saved one.
    """

    def __init__(self) -> None:
        self._saved: float | None = None
        self._active: list[float] = []

    def enter(self, interval: float) -> None:
        if not self._active:
            self._saved = sys.getswitchinterval()
        self._active.append(interval)
        sys.setswitchinterval(min(self._active))

    def leave(self, interval: float) -> None:
        if interval not in self._active:
            return
        self._active.remove(interval)
        if self._active:
            sys.setswitchinterval(min(self._active))
        elif self._saved is not None:
            sys.setswitchinterval(self._saved)
            self._saved = None


_switch_interval = _SwitchInterval()


class _GcFreezer:
    """``gc.freeze()`` while any controller runs; ``gc.unfreeze()`` after the last."""

    def __init__(self) -> None:
        self._count = 0

    def enter(self) -> None:
        if self._count == 0:
            gc.collect()
            gc.freeze()
        self._count += 1

    def leave(self) -> None:
        if self._count == 0:
            return
        self._count -= 1
        if self._count == 0:
            gc.unfreeze()


_gc_freezer = _GcFreezer()


class _Waiter:
    """A future resolved by the loop once the robot clock reaches ``deadline_ms``."""

    __slots__ = ("deadline_ms", "future")

    def __init__(self, deadline_ms: float, future: asyncio.Future) -> None:
        self.deadline_ms = deadline_ms
        self.future = future


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

    Keyword-only options:

    * ``mode``: the mode to start in (default ``"impedance"``).
    * ``torque_rate_limit``: largest change of commanded torque per cycle (N m,
      default 0.95; the robot tolerates < 1).
    * ``joint_limit_margin``, ``joint_limit_stiffness``, ``joint_limit_damping``:
      the guard band near joint limits (rad, N m/rad, N m s/rad).
    * ``stop_ramp``: seconds over which the law's torque is faded to zero on stop.
    * ``switch_interval``: ``sys.setswitchinterval`` while running (seconds;
      restored on stop), so threads get the GIL often enough (see docs/timing.md).
    * ``wait``: how the loop waits for the next state. ``"socket"`` lets the
      event loop sleep, GIL released, until libfranka's UDP socket has the
      next state, so ``readOnce`` returns at once (needs ``robot.state_fd``).
      ``"timerfd"`` (Linux) sleeps until shortly before the state is due (a
      learned margin) and then blocks in ``readOnce`` briefly. ``"yield"``
      yields once and blocks in ``readOnce`` (holding the GIL) until the state
      arrives. ``"auto"`` (default) picks the first available in that order.
    * ``stall_threshold``: how late (s) the loop may be to claim a due cycle
      before the guardian records an event-loop stall and names its culprit.
    * ``guardian``: when the event loop does not claim a due cycle in time,
      a guardian thread serves cycles itself (same law, latest targets, same
      safety filter) until the loop is back, then hands the cycle back at a
      cycle boundary (default True). ``False`` leaves the guardian watching
      only: stalls are still named, but a long one ends in the
      communication reflex.
    * ``on_stall``: ``"warn"`` (default) logs each culprit once;
      ``"silent"`` takes over without logging; ``"stop"`` takes over but, once
      a stall lasts ``stall_limit`` seconds (default 0.5), ramps the arm down
      and raises :class:`~aiofranka.EventLoopStallError` from the next await.
    * ``rescue``: with ``wait="socket"``, run a rescue thread (default: as
      ``guardian``, so ``guardian=False`` leaves a stall uncovered):
      a C thread, real-time above the loop and the guardian, that never needs
      the GIL. When no cycle has been written for ``RESCUE_AFTER_NS`` and a
      state then waits unserved, it serves cycles itself through libfranka
      (the loop's law with its last targets and gains, zero target velocity,
      the same safety filter) until a Python cycle shows the loop is back.
      It covers what the guardian cannot: a thread that holds the GIL and is
      descheduled, or C code that never releases it. It needs the layout of
      libfranka's objects, measured at the first start
      (:meth:`Robot.direct_layout`); where that fails, ``stats.rescue`` says
      why and the loop runs without it.
    * ``gc_freeze``: call ``gc.freeze()`` when the loop starts (and
      ``gc.unfreeze()`` when it stops), so the garbage collector's periodic
      passes skip everything that existed before: on a process holding a large
      library heap, those passes otherwise stall the event loop for
      milliseconds.

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

    #: Wake margin before a state is due: start, bounds, growth on a late wakeup
    #: and decay per early cycle (ns). The margin is learned per session.
    MARGIN_START_NS = 300_000
    MARGIN_MIN_NS = 120_000
    MARGIN_MAX_NS = 700_000
    MARGIN_GROW_NS = 60_000
    MARGIN_DECAY_NS = 1_000
    #: readOnce returning faster than this means the state was already waiting.
    EARLY_NS = 15_000
    #: Rescue thread: how long without any cycle written before it steps in,
    #: and how long a state must then wait unserved before it serves it (ns).
    RESCUE_AFTER_NS = 1_200_000
    RESCUE_GRACE_NS = 300_000
    #: Bounds of the learned state period (ns).
    PERIOD_MIN_NS = 900_000
    PERIOD_MAX_NS = 5_000_000

    def __init__(self, robot: Robot, *, mode: str = "impedance", torque_rate_limit: float = 0.95,
                 joint_limit_margin: float = 0.1, joint_limit_stiffness: float = 100.0,
                 joint_limit_damping: float = 5.0, stop_ramp: float = 0.1, switch_interval: float = 1e-4,
                 wait: str = "auto", stall_threshold: float = 3e-4, guardian: bool = True,
                 on_stall: str = "warn", stall_limit: float = 0.5, gc_freeze: bool = True,
                 rescue: bool | None = None) -> None:
        if not isinstance(robot, Robot):
            raise TypeError(f"robot must be an aiofranka.Robot, got {type(robot).__name__}")
        self._robot = robot
        self._mode = self._mode_index(mode)
        rate = validation.positive("torque_rate_limit", torque_rate_limit)
        if rate >= limits.DTAU_MAX_PER_CYCLE:
            raise ValueError(f"torque_rate_limit must be below {limits.DTAU_MAX_PER_CYCLE} N m per cycle "
                             f"(the robot's tolerance), got {torque_rate_limit!r}")
        margin = validation.positive("joint_limit_margin", joint_limit_margin, upper=0.5)
        stiffness = float(validation.gains("joint_limit_stiffness", joint_limit_stiffness, 1)[0])
        damping = float(validation.gains("joint_limit_damping", joint_limit_damping, 1)[0])
        self._stop_ramp = validation.positive("stop_ramp", stop_ramp, upper=5.0)
        self._switch_interval = validation.positive("switch_interval", switch_interval, upper=0.1)
        if wait not in ("auto", "socket", "timerfd", "yield"):
            raise ValueError(f"wait must be 'auto', 'socket', 'timerfd' or 'yield', got {wait!r}")
        if wait == "socket" and robot.state_fd is None:
            raise ValueError("wait='socket' needs the robot's UDP socket, which was not identified; "
                             "use 'timerfd' or 'yield'")
        if wait == "timerfd" and not sys.platform.startswith("linux"):
            raise ValueError("wait='timerfd' needs Linux; use 'socket' or 'yield'")
        if wait == "auto":
            if robot.state_fd is not None:
                wait = "socket"
            else:
                wait = "timerfd" if sys.platform.startswith("linux") else "yield"
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
        self._rescue = rescue and wait == "socket"
        self._rescue_state = "off" if not rescue else "on" if self._rescue else f"off: needs wait='socket', not {wait!r}"
        self._on_stall = on_stall
        self._stall_limit_ns = int(1e9 * validation.positive("stall_limit", stall_limit, upper=60.0))

        # Gains and targets: read-only arrays, replaced whole on assignment.
        self._kp = validation.gains("kp", DEFAULT_KP, 7)
        self._kd = validation.gains("kd", DEFAULT_KD, 7)
        self._ee_kp = validation.gains("ee_kp", DEFAULT_EE_KP, 6)
        self._ee_kd = validation.gains("ee_kd", DEFAULT_EE_KD, 6)
        self._null_kp = validation.gains("null_kp", DEFAULT_NULL_KP, 7)
        self._null_kd = validation.gains("null_kd", DEFAULT_NULL_KD, 7)
        self._zero7 = validation.vector("dq_desired", np.zeros(7), 7)
        self._q_desired = validation.vector("q_desired", limits.Q_HOME, 7)
        self._dq_desired = self._zero7
        self._ee_desired = validation.pose("ee_desired", np.eye(4))
        self._torque = self._zero7

        # Loop storage, allocated once; the C kernel works on these arrays.
        self._buf = robot.state_buffer(dtau_max=np.full(7, rate), margin=margin, stiffness=stiffness,
                                       damping=damping)
        self._kernel = self._buf.kernel
        self._torques_type = robot.torques_type
        self._zero_params = (self._zero7,)
        self._compute_ns = LatencyHistogram()
        self._period_ns = LatencyHistogram()
        self._read_wait_ns = LatencyHistogram()

        self._task: asyncio.Task | None = None
        self._ctl = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None
        self._stop_requested = False
        self._closed = False
        self._waiters: list[_Waiter] = []
        self._next_wake_ms = math.inf
        self._traj = None
        self._traj_k = 0
        self._traj_done: asyncio.Future | None = None
        self._set_period_ms: float | None = None
        self._next_set_ms: float | None = None
        self._law_error: BaseException | None = None
        self._ramp_left = -1
        self._ramp_total = 1
        self._switch_interval_in_force = switch_interval
        self._loop_sched_saved: tuple | None = None
        # Pacing: when the next state is due, and the guardian's view of it.
        self._timerfd = -1
        self._session_done: asyncio.Future | None = None
        self._state_poll = None
        # Ownership of the robot connection, cycle by cycle: the loop and the
        # guardian each serve a cycle only while holding this lock. (The
        # rescue thread, which has no GIL, is kept apart by a lock the kernel
        # takes only inside Kernel.cycle.)
        self._cycle_lock = threading.Lock()
        self._guardian_active = False
        self._loop_back = False
        self._session_finished = False
        self._silence_armed_ns = 0
        self._epoch = 0
        self._claimed_epoch = 0
        self._due = (0, 0)
        self._period_est_ns = 1_000_000
        self._margin_ns = self.MARGIN_START_NS
        self._anchor_t = 0
        self._anchor_ms = 0
        self._base_t = 0
        self._base_ms = 0
        self._next_due_ns = 0
        self._guardian = None
        self._guard_running = False
        self._reset_figures()

    # -- options (validated; fixed while running where the loop depends on them) --

    @property
    def torque_rate_limit(self) -> float:
        """Largest change of the commanded torque per cycle (N m)."""
        return float(self._buf.dtau_max[0])

    @property
    def joint_limit_margin(self) -> float:
        """Width of the guard band near each joint limit (rad)."""
        return self._kernel.margin

    @joint_limit_margin.setter
    def joint_limit_margin(self, value: float) -> None:
        self._kernel.margin = validation.positive("joint_limit_margin", value, upper=0.5)

    @property
    def joint_limit_stiffness(self) -> float:
        """Spring of the joint-limit guard (N m/rad)."""
        return self._kernel.stiffness

    @joint_limit_stiffness.setter
    def joint_limit_stiffness(self, value: float) -> None:
        self._kernel.stiffness = float(validation.gains("joint_limit_stiffness", value, 1)[0])

    @property
    def joint_limit_damping(self) -> float:
        """Damper of the joint-limit guard (N m s/rad)."""
        return self._kernel.damping

    @joint_limit_damping.setter
    def joint_limit_damping(self, value: float) -> None:
        self._kernel.damping = float(validation.gains("joint_limit_damping", value, 1)[0])

    @property
    def stop_ramp(self) -> float:
        """Seconds over which the law's torque fades to zero on stop."""
        return self._stop_ramp

    @stop_ramp.setter
    def stop_ramp(self, value: float) -> None:
        self._stop_ramp = validation.positive("stop_ramp", value, upper=5.0)

    @property
    def switch_interval(self) -> float:
        """``sys.setswitchinterval`` while running (s); takes effect at the next start."""
        return self._switch_interval

    @switch_interval.setter
    def switch_interval(self, value: float) -> None:
        self._switch_interval = validation.positive("switch_interval", value, upper=0.1)

    # -- validation helpers -------------------------------------------------

    @staticmethod
    def _mode_index(mode: str) -> int:
        if mode not in _MODE_INDEX:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        return _MODE_INDEX[mode]

    @staticmethod
    def _validate(name: str, value) -> np.ndarray:
        if name in _GAINS:
            return validation.gains(name, value, _GAINS[name])
        if name == "q_desired":
            return validation.joint_positions("q_desired", value)
        if name == "ee_desired":
            return validation.pose("ee_desired", value)
        if name == "torque":
            return validation.torques("torque", value)
        raise ValueError(f"name must be one of {SETTABLE}, got {name!r}")

    def _assign(self, name: str, array: np.ndarray) -> None:
        if name == "q_desired":
            self._cancel_trajectory("q_desired was assigned")
        setattr(self, "_" + name, array)

    # -- gains and targets as validated attributes ---------------------------

    def _make_property(name: str, doc: str):  # noqa: N805 - class-body helper
        def getter(self) -> np.ndarray:
            return getattr(self, "_" + name)

        def setter(self, value) -> None:
            self._assign(name, self._validate(name, value))

        return property(getter, setter, doc=doc)

    kp = _make_property("kp", "Joint stiffness, (7,) N m/rad (impedance mode).")
    kd = _make_property("kd", "Joint damping, (7,) N m s/rad (impedance mode).")
    ee_kp = _make_property("ee_kp", "Task stiffness (x, y, z, rx, ry, rz), (6,) N/m and N m/rad (osc mode).")
    ee_kd = _make_property("ee_kd", "Task damping, (6,) N s/m and N m s/rad (osc mode).")
    null_kp = _make_property("null_kp", "Null-space posture stiffness, (7,) N m/rad (osc mode).")
    null_kd = _make_property("null_kd", "Null-space posture damping, (7,) N m s/rad (osc mode).")
    q_desired = _make_property(
        "q_desired", "Joint target (rad): the impedance set point, and the posture of the osc null space.")
    ee_desired = _make_property("ee_desired", "End-effector target pose, 4x4 in the base frame (osc mode).")
    torque = _make_property("torque", "Commanded joint torques, (7,) N m (torque mode; still rate-limited).")
    del _make_property

    @property
    def mode(self) -> str:
        """The active control mode."""
        return MODES[self._mode]

    def switch(self, mode: str) -> None:
        """Change the control mode, re-targeting to the current pose so nothing jumps.

        ``q_desired`` and ``ee_desired`` become the current joint positions and
        pose, ``torque`` becomes zero, and a running ``move()`` is interrupted.
        """
        index = self._mode_index(mode)
        self._raise_stored_error()
        self._cancel_trajectory(f"switch({mode!r}) was called")
        self._retarget()
        self._mode = index

    def _retarget(self) -> None:
        buf = self._buf
        self._q_desired = validation.vector("q_desired", buf.q, 7)
        self._dq_desired = self._zero7
        self._ee_desired = validation.pose("ee_desired", buf.ee)
        self._torque = self._zero7

    # -- lifecycle -----------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while the loop is commanding the robot."""
        return self._task is not None and not self._task.done()

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
        self._loop = loop
        self._stop_requested = False
        self._session_finished = False
        self._silence_armed_ns = 0
        self._law_error = None
        self._ramp_left = -1
        self._buf.tau_last[:] = 0.0
        self._buf.tau_command[:] = 0.0
        self._reset_figures()
        self._kernel.new_session()
        self._margin_ns = self.MARGIN_START_NS
        self._period_est_ns = 1_000_000
        self._epoch = self._claimed_epoch = 0
        self._due = (0, 0)
        # Everything slow happens before the session opens: once it is open the
        # robot expects a command every millisecond.
        self._switch_interval_in_force = self._switch_interval
        self._promote_loop_thread()
        _switch_interval.enter(self._switch_interval)
        if self._gc_freeze:
            _gc_freezer.enter()
        try:
            if self._wait_mode == "timerfd":
                if self._timerfd < 0:
                    self._timerfd = _kernel.timerfd_create()
                loop.add_reader(self._timerfd, self._on_ready)
            elif self._wait_mode == "socket":
                if self._timerfd < 0:
                    self._timerfd = _kernel.timerfd_create()
                loop.add_reader(self._timerfd, self._on_silence)
                self._state_poll = select.poll()
                self._state_poll.register(robot.state_fd, select.POLLIN)
                loop.add_reader(robot.state_fd, self._on_ready)
                # libuv (uvloop) makes a watched descriptor non-blocking;
                # libfranka's own reads on it must block.
                os.set_blocking(robot.state_fd, True)
            self._start_guardian(loop)
            if self._rescue:  # decided before the session opens: the checks take milliseconds
                refusal = _rescue_abi.rescue_refusal() or robot.direct_layout()
                self._rescue_state = f"off: {refusal}" if isinstance(refusal, str) else "on"
            if robot.in_reflex():
                robot.recover()
            self._ctl = robot.start_torque_control()
        except BaseException as exc:
            self._finish(None, None)
            raise exc
        first = loop.create_future()
        self._task = loop.create_task(self._run(first), name="aiofranka-control-loop")
        await first
        self._raise_stored_error()

    def _promote_loop_thread(self) -> None:
        """Run the event-loop thread at the robot's real-time priority for the session.

        libfranka makes the thread that connects real-time; a loop on another
        thread would run at normal priority, where it can be descheduled for
        tens of milliseconds while it holds the GIL, and then neither it nor the
        guardian can serve the robot. The thread's own policy is put back when
        the session ends.
        """
        self._loop_sched_saved = None
        priority = getattr(self._robot, "rt_priority", None)
        if priority is None:
            return
        saved = thread_scheduling(threading.get_native_id())
        if saved is None or saved[1] & ~getattr(os, "SCHED_RESET_ON_FORK", 0) != os.SCHED_OTHER:
            return  # already real-time (or batch/idle on purpose): leave it
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(priority))
            self._loop_sched_saved = saved
        except (OSError, AttributeError):  # not permitted here: stay as we are
            pass

    def _restore_loop_thread(self) -> None:
        saved, self._loop_sched_saved = self._loop_sched_saved, None
        restore_thread_scheduling(saved)

    def _start_guardian(self, loop) -> None:
        self._guard_running = True
        watch_gc(True)
        priority = None
        try:
            if os.sched_getscheduler(0) & ~getattr(os, "SCHED_RESET_ON_FORK", 0) == os.SCHED_FIFO:
                priority = min(99, os.sched_getparam(0).sched_priority + 1)  # above the loop and user threads
        except (OSError, AttributeError):
            pass
        self._guardian = Guardian(self, threshold_ns=self._stall_threshold_ns, loop=loop,
                                  loop_thread_id=threading.get_ident(), rt_priority=priority,
                                  takeover=self._takeover, log_stalls=self._on_stall != "silent",
                                  stop_after_ns=self._stall_limit_ns if self._on_stall == "stop" else None)
        self._guardian.start()

    def _start_rescue(self) -> None:
        """Start the kernel's rescue thread for this session (see ``rescue``)."""
        if not self._rescue or self._rescue_state != "on":  # refused in start()
            return
        robot = self._robot
        layout = robot.direct_layout()
        if isinstance(layout, str):
            return
        priority = 0
        try:
            if os.sched_getscheduler(0) & ~getattr(os, "SCHED_RESET_ON_FORK", 0) == os.SCHED_FIFO:
                priority = min(99, os.sched_getparam(0).sched_priority + 2)  # above the guardian
        except (OSError, AttributeError):
            pass
        pf = robot._pf
        errors = (pf.ControlException, pf.NetworkException, getattr(pf, "FrankaException", RuntimeError))
        try:
            self._kernel.rescue_start(self._ctl, robot.torques([0.0] * 7), robot.state_fd, layout[0], layout[1],
                                      self.RESCUE_AFTER_NS, self.RESCUE_GRACE_NS, priority, errors)
        except (RuntimeError, OSError, TypeError) as exc:
            self._rescue_state = f"off: {exc}"
        else:
            self._rescue_state = "on"

    def _state_ready(self) -> bool:
        """Socket mode: whether a state is waiting (another server may have
        taken it: the rescue thread). True where that cannot be told."""
        poll = self._state_poll
        return poll is None or bool(poll.poll(0))

    def _on_ready(self) -> None:
        """The state socket became readable (or the timer fired): serve one cycle.

        Runs as an event-loop callback. Level-triggered readiness can be
        reported again after a cycle already drained the socket, so the socket
        is polled (under the cycle lock) before reading.
        """
        if self._guardian_active:
            # Running at all means the event loop is back: the guardian may
            # already have read the state that woke us.
            self._loop_back = True
        if self._wait_mode == "timerfd":
            _kernel.timerfd_clear(self._timerfd)
        self._serve(need_state=True)

    def _on_silence(self) -> None:
        """Socket mode: no state arrived long after one was due. Read anyway:
        ``readOnce`` then waits for libfranka's own timeout and reports the
        lost connection."""
        _kernel.timerfd_clear(self._timerfd)
        self._kernel.read_anyway()  # even if the rescue thread served the last state
        self._serve()

    def _serve(self, need_state: bool = False) -> None:
        """Serve one cycle from the event loop, unless the guardian has it.

        ``need_state``: serve only if a state is waiting (socket mode).
        """
        done = self._session_done
        if done is None or done.done() or self._session_finished:
            # After motion_finished no state comes, and a readOnce would wait
            # for one with the GIL held.
            return
        lock = self._cycle_lock
        if self._guardian_active or not lock.acquire(False):
            # The guardian is serving: tell it we are back; it hands the
            # cycle back at the next cycle boundary.
            self._loop_back = True
            if self._wait_mode == "timerfd":
                # Check again shortly (not at once: a deadline already past
                # would spin the event loop and starve the guardian of the GIL).
                _kernel.timerfd_arm(self._timerfd, max(self._next_due_ns - self._margin_ns,
                                                       time.monotonic_ns() + 200_000))
            return
        if need_state and not self._state_ready():
            lock.release()  # nothing to read (drained, or served by the rescue thread)
            if self._kernel.time_ms > self._buf.time_ms:
                self._after_rescue(False)
            return
        try:
            self._claimed_epoch = self._epoch
            finished = self._cycle()
        except BaseException as exc:  # noqa: BLE001 - handed to the loop coroutine
            done.set_exception(exc)
            return
        finally:
            lock.release()
        if finished:
            done.set_result(None)
        elif self._wait_mode != "yield":
            self._arm_timer()

    # -- called by the guardian thread while it holds the cycle ---------------

    def _guardian_cycle(self) -> bool:
        """One cycle served by the guardian (the caller holds ``_cycle_lock``)."""
        self._claimed_epoch = self._epoch
        return self._cycle(from_guardian=True)

    def _guardian_done(self, error: BaseException | None) -> None:
        """The guardian ended the session (finished ramp-down, or an error)."""
        self._guard_running = False  # the session is over: nothing more to serve
        loop, done = self._loop, self._session_done
        if loop is None or done is None:
            return

        def settle() -> None:
            if not done.done():
                if error is None:
                    done.set_result(None)
                else:
                    done.set_exception(error)

        loop.call_soon_threadsafe(settle)

    def _stall_stop(self, culprit: str, elapsed_ms: float) -> None:
        """on_stall="stop": ramp the arm down and report the stall."""
        if self._law_error is None:
            self._law_error = EventLoopStallError(
                f"the event loop was blocked for more than {self._stall_limit_ns / 1e6:.0f} ms "
                f"(by {culprit}); the arm was ramped down", culprit=culprit, duration_ms=elapsed_ms)
            self._stop_requested = True

    #: Socket mode: how long after a state was due the loop reads anyway (ns).
    SILENCE_NS = 100_000_000

    def _arm_timer(self) -> None:
        """timerfd mode: wake a learned margin before the next state is due.
        Socket mode: wake if no state has come long after it was due."""
        if self._wait_mode == "timerfd":
            _kernel.timerfd_arm(self._timerfd, self._next_due_ns - self._margin_ns)
        elif self._next_due_ns + self.SILENCE_NS // 2 > self._silence_armed_ns:
            # Re-armed only when less than half the window is left: one
            # syscall every ~50 ms instead of every cycle.
            self._silence_armed_ns = self._next_due_ns + self.SILENCE_NS
            _kernel.timerfd_arm(self._timerfd, self._silence_armed_ns)

    async def stop(self) -> None:
        """Ramp the torque down to zero, end the session, and raise any loop error.

        Idempotent: a second call returns at once (or raises nothing further).
        If the loop died with an error, that error is raised here (once).
        """
        task = self._task
        if task is not None and not task.done():
            self._stop_requested = True
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                if not task.done():
                    raise
        error, self._error = self._error, None
        if error is not None:
            raise error

    async def close(self) -> None:
        """Stop (if running) and refuse further starts. Idempotent."""
        try:
            await self.stop()
        finally:
            self._closed = True
            if self._timerfd >= 0:
                os.close(self._timerfd)
                self._timerfd = -1

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

    # -- waiting and rate-limited updates --------------------------------------

    def _raise_stored_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _require_running(self) -> None:
        self._raise_stored_error()
        if not self.running:
            raise ControllerStateError("the controller is not running; await controller.start() first")

    def _wait_robot_ms(self, deadline_ms: float) -> asyncio.Future:
        future = self._loop.create_future()
        self._waiters.append(_Waiter(deadline_ms, future))
        if deadline_ms < self._next_wake_ms:
            self._next_wake_ms = deadline_ms
        return future

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
        await self._await_loop(self._wait_robot_ms(self._buf.time_ms + duration * 1000.0))

    def set_freq(self, hz: float | None) -> None:
        """Pace :meth:`set` at ``hz`` on the robot clock (``None``: no pacing)."""
        if hz is None:
            self._set_period_ms = None
        else:
            self._set_period_ms = 1000.0 / validation.positive("hz", hz, upper=1000.0)
        self._next_set_ms = None

    async def set(self, name: str, value) -> None:
        """Validate and publish a gain or target, paced by :meth:`set_freq`.

        With a frequency set, each call returns at the next tick of a fixed
        grid on the robot clock (drift-free: the grid does not move with call
        jitter); after an overrun the grid skips the missed ticks instead of
        bursting.
        """
        await self._set_validated(name, self._validate(name, value))

    async def _set_validated(self, name: str, array: np.ndarray) -> None:
        self._require_running()
        period = self._set_period_ms
        if period is not None:
            now = self._buf.time_ms
            tick = self._next_set_ms if self._next_set_ms is not None else float(now)
            if tick > now:
                await self._await_loop(self._wait_robot_ms(tick))
            now = self._buf.time_ms
            tick += period
            if tick <= now:  # overran: skip the ticks already missed
                tick += period * math.ceil((now - tick) / period + 1e-9)
            self._next_set_ms = tick
        self._assign(name, array)

    # -- motion ----------------------------------------------------------------

    async def move(self, q, *, speed: float = 0.3, tolerance: float = 0.01, timeout: float | None = None) -> None:
        """Move to joint positions ``q`` on a jerk-limited trajectory; return on arrival.

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
        target = validation.joint_positions("q", q)
        speed = validation.positive("speed", speed, upper=1.0)
        tolerance = validation.positive("tolerance", tolerance)
        if timeout is not None:
            timeout = validation.positive("timeout", timeout)
        self._require_running()
        if self._traj is not None:
            # Hold where the running motion is now, then plan from the arm's state.
            self._hold_trajectory_here()
            self._cancel_trajectory("a new move() started")
        trajectory = plan_joint_motion(self._buf.q, self._buf.dq, target, speed=speed)
        await trajectory.sample()
        self._require_running()
        if self._mode != _IMPEDANCE:
            self.switch("impedance")
        self._cancel_trajectory("a new move() started")
        done = self._loop.create_future()
        self._traj_done = done
        self._traj_k = 0
        self._traj = trajectory
        limit_ms = 1000.0 * (timeout if timeout is not None else trajectory.duration + 2.0)
        deadline_ms = self._buf.time_ms + limit_ms
        timer = self._wait_robot_ms(deadline_ms)
        try:
            await asyncio.wait({done, timer}, return_when=asyncio.FIRST_COMPLETED)
            if done.done():
                done.result()  # raises if interrupted
                while np.max(np.abs(self._buf.q - target)) > tolerance and not timer.done():
                    await self._await_loop(self._wait_robot_ms(self._buf.time_ms + 5))
            if timer.done() and np.max(np.abs(self._buf.q - target)) > tolerance:
                timer.result()  # raises ControllerStoppedError if the loop ended
                self._raise_stored_error()
                if self._traj is trajectory:
                    self._hold_trajectory_here()
                    self._cancel_trajectory("move() timed out")
                error = np.max(np.abs(self._buf.q - target))
                raise MotionTimeoutError(f"move() did not arrive within {limit_ms / 1000.0:.2f} s of robot time "
                                         f"(largest joint error {error:.4f} rad)")
        except ControllerStoppedError:
            self._raise_stored_error()
            raise
        except asyncio.CancelledError:
            if self._traj is trajectory:
                self._hold_trajectory_here()
                self._cancel_trajectory("move() was cancelled")
            raise
        finally:
            if not timer.done():
                timer.cancel()

    def _hold_trajectory_here(self) -> None:
        traj = self._traj
        if traj is not None:
            row = traj.positions[min(self._traj_k, traj.n - 1)]
            self._q_desired = validation.vector("q_desired", row, 7)

    def _cancel_trajectory(self, reason: str) -> None:
        if self._traj is None:
            return
        self._traj = None
        self._dq_desired = self._zero7
        done = self._traj_done
        if done is not None and not done.done():
            done.set_exception(ControllerStoppedError(f"move() was interrupted: {reason}"))
            done.exception()  # mark retrieved: the mover may already be gone

    # -- state and figures -------------------------------------------------

    @property
    def state(self) -> RobotState:
        """A consistent snapshot of the latest state (copies; safe to keep)."""
        if not self.running:
            return self._robot.read()
        kernel = self._kernel
        while True:  # a rescue cycle writes the arrays without the GIL: copy between its writes
            seq = kernel.seq()
            snapshot = self._buf.snapshot(self._robot.model)
            if not seq & 1 and kernel.seq() == seq:
                break
            time.sleep(0)
        if kernel.time_ms > snapshot.time_ms:  # served by the rescue thread since the last Python cycle
            snapshot = dataclasses.replace(snapshot, time_ms=kernel.time_ms, success_rate=kernel.success_rate)
        return snapshot

    @property
    def stats(self) -> LoopStats:
        """A frozen snapshot of the loop's figures since the last start."""
        wall = (time.monotonic_ns() - self._wall_start_ns) / 1e9 if self._wall_start_ns else 0.0
        robot_time = (self._buf.time_ms - self._robot_start_ms) / 1000.0 if self._robot_start_ms >= 0 else 0.0
        guardian = self._guardian or self._last_guardian
        lost, rescued, rescues, longest_rescue_ns, _, _ = self._kernel.counters()
        return LoopStats(
            cycles=self._cycles + rescued,
            lost_cycles=lost,
            min_success_rate=self._min_success if self._cycles else float("nan"),
            compute=self._compute_ns.summary(),
            period=self._period_ns.summary(),
            robot_time_s=robot_time,
            wall_time_s=wall,
            mode=self.mode,
            switch_interval_s=self._switch_interval_in_force,
            read_wait=self._read_wait_ns.summary(),
            wait=self._wait_mode,
            late_wakeups=self._late_wakeups,
            wake_margin_us=self._margin_ns / 1000.0 if self._wait_mode == "timerfd" else 0.0,
            stalls=guardian.stall_count if guardian else 0,
            longest_stall_ms=guardian.longest_stall_ms if guardian else 0.0,
            culprits=guardian.records() if guardian else (),
            takeovers=guardian.takeovers if guardian else 0,
            guardian_cycles=self._guardian_cycles,
            longest_takeover_ms=guardian.longest_takeover_ms if guardian else 0.0,
            rescue=self._rescue_state,
            rescues=rescues,
            rescued_cycles=rescued,
            longest_rescue_ms=longest_rescue_ns / 1e6,
        )

    def _reset_figures(self) -> None:
        self._cycles = 0
        self._min_success = 1.0
        self._last_read_ns = 0
        self._robot_start_ms = -1
        self._wall_start_ns = 0
        self._compute_ns.clear()
        self._period_ns.clear()
        self._read_wait_ns.clear()
        self._late_wakeups = 0
        self._last_guardian = None
        self._guardian_cycles = 0

    # -- the loop --------------------------------------------------------------

    async def _run(self, first: asyncio.Future) -> None:
        # The control handle is only ever read from self._ctl, never bound to a
        # local: a stored error's traceback keeps its frames' locals, and a
        # handle kept alive that way would hold pylibfranka's one control
        # session open and make the next start() fail.
        error: BaseException | None = None
        self._wall_start_ns = time.monotonic_ns()
        try:
            if self._cycle(initial=True):
                return
            self._start_rescue()
            _rescue_abi.warn_if_off(self._takeover, self._rescue_state)
            first.set_result(None)
            done = self._loop.create_future()
            self._session_done = done
            if self._wait_mode == "yield":
                while not done.done():
                    # While the guardian holds the cycle, back off instead of
                    # spinning the event loop (it needs the GIL to serve).
                    await asyncio.sleep(0.001 if self._guardian_active else 0)
                    self._serve()
            else:
                # Cycles run in the readiness callback itself (_on_ready), the
                # shortest path from a wakeup to the robot; this coroutine
                # waits for the session to end.
                self._arm_timer()
            await done
        except asyncio.CancelledError as exc:
            # Cancelled from outside: finish the session synchronously so the
            # arm is not left with a stale torque.
            error = ControllerStoppedError("the control loop task was cancelled")
            self._emergency_ramp()
            raise exc
        except BaseException as exc:  # noqa: BLE001 - stored and re-raised to the user
            error = self._as_user_error(exc)
            if translate(exc) is exc:
                # Not the robot ending the session (reflex, network): our own
                # fault mid-cycle. The session is still open, so ramp it down.
                self._emergency_ramp()
        finally:
            if error is None and self._law_error is not None:
                error = self._law_error
            self._finish(error, first)

    def _as_user_error(self, exc: BaseException) -> BaseException:
        mapped = translate(exc)
        if mapped is not exc:
            mapped.__cause__ = exc
            return mapped
        if isinstance(exc, AiofrankaError):
            return exc
        wrapped = ControlLawError(f"the control loop raised {exc!r}")
        wrapped.__cause__ = exc
        return wrapped

    def _finish(self, error: BaseException | None, first: asyncio.Future | None) -> None:
        self._kernel.rescue_stop()  # before the session's C++ objects can go
        self._ctl = None
        self._session_done = None
        self._traj = None
        _switch_interval.leave(self._switch_interval_in_force)
        if self._gc_freeze:
            _gc_freezer.leave()
        self._robot.release(self)
        self._restore_loop_thread()
        self._guard_running = False
        if self._guardian is not None:
            self._last_guardian = self._guardian
            self._guardian.stop()
            self._guardian = None
        if self._timerfd >= 0 and self._loop is not None:
            self._loop.remove_reader(self._timerfd)
        if self._wait_mode == "socket" and self._loop is not None and self._robot.state_fd is not None:
            self._loop.remove_reader(self._robot.state_fd)
            try:
                os.set_blocking(self._robot.state_fd, True)
            except OSError:
                pass
        if error is not None:
            self._error = error
        if first is not None and not first.done():
            if error is not None:
                first.set_exception(error)
                first.exception()
            else:
                first.set_result(None)
        stopped = ControllerStoppedError("the controller stopped")
        if error is not None:
            stopped.__cause__ = error
        for waiter in self._waiters:
            if not waiter.future.done():
                waiter.future.set_exception(stopped)
                waiter.future.exception()
        self._waiters.clear()
        self._next_wake_ms = math.inf
        if self._traj_done is not None and not self._traj_done.done():
            self._traj_done.set_exception(stopped)
            self._traj_done.exception()

    def _emergency_ramp(self) -> None:
        """Bring the command to zero at the rate limit, blocking; best effort.

        The guardian is stopped first and the cycle lock taken, so the robot
        connection still has a single user.
        """
        if self._ctl is None or self._session_finished:
            return
        self._kernel.rescue_stop()
        self._guard_running = False
        guardian = self._guardian
        if guardian is not None and threading.current_thread() is not guardian:
            guardian.stop()
        if not self._cycle_lock.acquire(timeout=2.0):
            return
        try:
            self._ramp_to_zero()
        finally:
            self._cycle_lock.release()

    def _ramp_to_zero(self) -> None:
        kernel, torques = self._kernel, self._robot.torques
        self._buf.tau_desired[:] = 0.0
        try:
            for _ in range(200):
                self._ctl.readOnce()
                command = torques(kernel.finish(0.0))
                finished = not self._buf.tau_command.any()
                command.motion_finished = finished
                self._ctl.writeOnce(command)
                kernel.update_last()
                if finished:
                    return
        except Exception:  # noqa: BLE001 - the session is already ending; the robot holds
            return

    def _cycle(self, initial: bool = False, from_guardian: bool = False) -> bool:
        """One read -> compute -> safety -> write cycle. Returns True when the session ended.

        The targets are chosen here, then ``Kernel.cycle`` reads the state,
        computes the law and the safety filter and writes the command in one
        C call, so no other thread can take the GIL between read and write.
        """
        scale = 1.0
        if self._law_error is not None:
            scale = 0.0
        elif self._stop_requested:
            if self._ramp_left < 0:
                self._ramp_left = self._ramp_total = max(1, int(self._stop_ramp * 1000.0))
            if self._ramp_left > 0:
                self._ramp_left -= 1
            scale = self._ramp_left / self._ramp_total
        finishing = self._stop_requested and scale == 0.0
        mode = self._mode
        try:
            params = self._law_params(mode, from_guardian) if scale > 0.0 else self._zero_params
        except Exception as exc:  # noqa: BLE001 - reported from the next await
            self._fail_law(ControlLawError(f"the {self.mode} law raised {exc!r}; ramping down"), exc)
            params, finishing, scale = self._zero_params, True, 0.0
        if initial:
            # The first command is zero torque; targets are then set from that state.
            params, scale = self._zero_params, 0.0
        if params is self._zero_params:
            mode = _TORQUE
        served = self._kernel.cycle(self._ctl, self._torques_type, mode, scale, finishing, *params)
        if served is None:
            self._after_rescue(from_guardian)
            return False
        state, now, success, t_call, t_read, t_write, flags = served
        buf = self._buf
        buf.raw = state
        buf.time_ms = now
        buf.success_rate = success
        waited = t_read - t_call
        if initial:
            self._retarget()
            self._robot_start_ms = now
            self._anchor_t, self._anchor_ms = t_read, now
            self._base_t, self._base_ms = t_read, now
        else:
            self._period_ns.push(t_read - self._last_read_ns)
            self._read_wait_ns.push(waited)
            # Learn when states arrive. ``t_read`` is never earlier than the
            # arrival, and is later by whatever delayed us, so the schedule
            # follows the lower envelope of the reads: an earlier read than
            # predicted moves it at once, a later one only by a sixteenth.
            # The period comes from that schedule's slope over about a second
            # (a loaded simulator runs slower than 1 kHz; the robot does not).
            predicted = self._anchor_t + (now - self._anchor_ms) * self._period_est_ns
            if t_read <= predicted:
                self._anchor_t = t_read
            else:
                self._anchor_t = predicted + ((t_read - predicted) >> 4)
            self._anchor_ms = now
            span = now - self._base_ms
            if span >= 1024:
                period = (self._anchor_t - self._base_t) // span
                self._period_est_ns = min(max(period, self.PERIOD_MIN_NS), self.PERIOD_MAX_NS)
                self._base_t, self._base_ms = self._anchor_t, now
            if self._wait_mode != "timerfd":
                pass
            elif waited > self.EARLY_NS:
                if self._margin_ns > self.MARGIN_MIN_NS:
                    self._margin_ns -= self.MARGIN_DECAY_NS
            else:
                self._late_wakeups += 1
                if self._margin_ns < self.MARGIN_MAX_NS:
                    self._margin_ns += self.MARGIN_GROW_NS
        self._last_read_ns = t_read
        if success < self._min_success and self._cycles >= 100:
            self._min_success = success
        self._compute_ns.push(t_write - t_read)
        self._cycles += 1
        if flags & 1 and self._law_error is None:
            self._fail_law(ControlLawError(f"the {self.mode} law produced a non-finite torque; ramping down"))
        # Publish when the next state is due, for the pause and the guardian.
        due = self._anchor_t + (now + 1 - self._anchor_ms) * self._period_est_ns
        self._next_due_ns = due
        self._epoch += 1
        self._due = (self._epoch, due)
        if flags & 2:
            self._session_finished = True  # motion_finished was written
        if from_guardian:
            self._guardian_cycles += 1
        if now >= self._next_wake_ms:
            if from_guardian:
                self._loop.call_soon_threadsafe(self._wake, now)
            else:
                self._wake(now)
        return bool(flags & 2)

    def _law_params(self, mode: int, from_guardian: bool = False) -> tuple:
        """The arrays the active law reads this cycle (advancing a trajectory)."""
        traj = self._traj
        if traj is not None:
            k = self._traj_k
            q_desired = traj.position_rows[k]
            dq_desired = traj.velocity_rows[k]
            if k + 1 < traj.n:
                self._traj_k = k + 1
            else:
                self._q_desired = traj.final
                self._traj = None
                done = self._traj_done
                if done is not None:
                    if from_guardian:
                        self._loop.call_soon_threadsafe(_settle, done)
                    elif not done.done():
                        done.set_result(None)
        else:
            q_desired = self._q_desired
            dq_desired = self._dq_desired
        if mode == _IMPEDANCE:
            return (q_desired, dq_desired, self._kp, self._kd)
        if mode == _OSC:
            return (self._ee_desired, self._ee_kp, self._ee_kd, q_desired, self._null_kp, self._null_kd)
        return (self._torque,)

    def _after_rescue(self, from_guardian: bool) -> None:
        """The rescue thread served the state that woke us. We are back: it
        leaves the next states to us; robot-time waits see the time it
        reached; the silence timer counts from now."""
        kernel = self._kernel
        kernel.claim_next()
        self._next_due_ns = time.monotonic_ns() + self._period_est_ns
        now = kernel.time_ms
        if now >= self._next_wake_ms:
            if from_guardian:
                self._loop.call_soon_threadsafe(self._wake, now)
            else:
                self._wake(now)

    def _fail_law(self, error: ControlLawError, cause: BaseException | None = None) -> None:
        error.__cause__ = cause
        self._law_error = error
        self._stop_requested = True

    def _wake(self, now: int) -> None:
        nearest = math.inf
        keep = []
        for waiter in self._waiters:
            if waiter.deadline_ms <= now:
                if not waiter.future.done():
                    waiter.future.set_result(None)
            else:
                keep.append(waiter)
                nearest = min(nearest, waiter.deadline_ms)
        self._waiters[:] = keep
        self._next_wake_ms = nearest

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Controller {self.mode} {state} on {self._robot!r}>"
