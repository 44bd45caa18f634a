"""Who serves the robot's cycle: the event loop, the guardian thread or the C rescue thread.

:class:`Cycle` owns the connection's control session while it is open: the
cycle lock, one read -> law -> safety -> write step (``Kernel.cycle``, one C
call), the ramp-down, a running ``move()``'s trajectory, played target rows
(``Controller.play``), robot-time waits and the loop's figures. The Controller drives it; the guardian talks to it
and to the :class:`~aiofranka.loop._schedule.Schedule` only through the
members documented here (see docs/architecture.md and docs/guardian.md).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import select
import threading
import time

import numpy as np

from .. import _kernel, validation
from ..exceptions import AiofrankaError, ControlLawError, ControllerStoppedError, EventLoopStallError
from ..robot.errors import translate
from ..stats import LatencyHistogram, LoopStats
from .command import IMPEDANCE, MODES, OSC, TORQUE, Commands
from ._schedule import Schedule
from ._served import KernelServing

__all__ = ["Cycle"]


def _settle(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


def user_error(exc: BaseException) -> BaseException:
    """What the user sees of an error that ended the loop: libfranka's translated, others as ControlLawError."""
    mapped = translate(exc)
    if mapped is not exc:
        mapped.__cause__ = exc
        return mapped
    if isinstance(exc, AiofrankaError):
        return exc
    wrapped = ControlLawError(f"the control loop raised {exc!r}")
    wrapped.__cause__ = exc
    return wrapped


class _Waiter:
    """A future resolved once the robot clock reaches ``deadline_ms``."""

    __slots__ = ("deadline_ms", "future")

    def __init__(self, deadline_ms: float, future: asyncio.Future) -> None:
        self.deadline_ms = deadline_ms
        self.future = future


class Cycle(KernelServing):
    """One control session's cycle and everything that decides who serves it.

    With kernel serving (``_served.py``) the kernel's C thread serves every
    cycle and this class only publishes what the law reads.

    Members the guardian uses: ``lock`` (held by whoever serves a cycle),
    ``guard_running``, ``session_finished``, ``has_control``,
    ``guardian_active``, ``loop_back``, ``state_fd``, ``wait_mode``,
    :meth:`start_watch`, :meth:`stop_watch`, :meth:`state_ready`,
    :meth:`claim_next`, :meth:`serve_from_guardian`, :meth:`guardian_done`,
    :meth:`stall_stop`.
    """

    #: Rescue thread: how long without any cycle written before it steps in,
    #: and how long a state must then wait unserved before it serves it (ns).
    RESCUE_AFTER_NS = 1_200_000
    RESCUE_GRACE_NS = 300_000
    #: Socket mode: how long after a state was due the loop reads anyway (ns).
    SILENCE_NS = 100_000_000

    def __init__(self, robot, buf, commands: Commands, schedule: Schedule, *, mode: int, wait_mode: str,
                 rescue: bool, rescue_state: str, stop_ramp: float) -> None:
        self.robot = robot
        self.buf = buf
        self.kernel = buf.kernel
        self.commands = commands
        self.schedule = schedule
        self._mode = mode
        self.init_serving()
        commands.listener = self.push_law
        self.wait_mode = wait_mode
        self.state_fd = robot.state_fd
        self.rescue = rescue
        self.rescue_state = rescue_state
        self.stop_ramp = stop_ramp
        self._torques_type = robot.torques_type
        self._zero_params = (commands.zero7,)
        self.compute_ns = LatencyHistogram()
        self.period_ns = LatencyHistogram()
        self.read_wait_ns = LatencyHistogram()
        # The robot connection is used only by the holder of this lock: the
        # loop or the guardian. (The rescue thread, which has no GIL, is kept
        # apart by a lock the kernel takes only inside Kernel.cycle.)
        self.lock = threading.Lock()
        self.ctl = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.session_done: asyncio.Future | None = None
        self.stop_requested = False
        self.law_error: BaseException | None = None
        self.session_finished = False
        self.guardian_active = False
        self.loop_back = False
        self.guard_running = False
        self._ramp_left = -1
        self._ramp_total = 1
        self._traj = None
        self._traj_k = 0
        self._traj_done: asyncio.Future | None = None
        # Target rows: the event loop only ever writes _rows_next (a new play)
        # and the cycle only _rows (the switch), so a guardian cycle between
        # two bytecodes of play_rows() cannot lose a switch.
        self._rows = None
        self._rows_next = None
        self.rows_played = 0
        self.rows_starved = 0
        self.rows_late = 0
        self._waiters: list[_Waiter] = []
        self._next_wake_ms = math.inf
        self._timerfd = -1
        self._state_poll = None
        self._silence_armed_ns = 0
        self.reset_figures()

    @property
    def mode(self) -> int:
        """The law's mode index (command.MODES)."""
        return self._mode

    @mode.setter
    def mode(self, index: int) -> None:
        self._mode = index
        self.push_law()

    # -- a session's start and end ------------------------------------------------

    def reset_figures(self) -> None:
        self.cycles = 0
        self.min_success = 1.0
        self.robot_start_ms = -1
        self.guardian_cycles = 0
        self.rows_played = 0
        self.rows_starved = 0
        self.rows_late = 0
        self._last_read_ns = 0
        self.compute_ns.clear()
        self.period_ns.clear()
        self.read_wait_ns.clear()

    def prepare(self, loop: asyncio.AbstractEventLoop) -> None:
        """Reset the per-session state before a session opens."""
        self.loop = loop
        self.serving = False
        self.stop_requested = False
        self.session_finished = False
        self.law_error = None
        self._silence_armed_ns = 0
        self._ramp_left = -1
        self.buf.tau_last[:] = 0.0
        self.buf.tau_command[:] = 0.0
        self.reset_figures()
        self.kernel.new_session()
        self.schedule.reset()

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Register the event loop's wakeups: the state socket or a timer."""
        if self.wait_mode == "timerfd":
            if self._timerfd < 0:
                self._timerfd = _kernel.timerfd_create()
            loop.add_reader(self._timerfd, self.on_ready)
        elif self.wait_mode == "socket":
            if self._timerfd < 0:
                self._timerfd = _kernel.timerfd_create()
            loop.add_reader(self._timerfd, self.on_silence)
            self._state_poll = select.poll()
            self._state_poll.register(self.state_fd, select.POLLIN)
            loop.add_reader(self.state_fd, self.on_ready)
            # libuv (uvloop) makes a watched descriptor non-blocking;
            # libfranka's own reads on it must block.
            os.set_blocking(self.state_fd, True)

    def open(self, done: asyncio.Future) -> None:
        """The first cycle is written: serve from the event loop from now on."""
        self.session_done = done
        if self.wait_mode != "yield" and not self.serving:
            # Cycles run in the readiness callback itself (on_ready), the
            # shortest path from a wakeup to the robot.
            self.arm_timer()

    def detach(self) -> None:
        """The session is over: stop the rescue thread and the event loop's wakeups."""
        self.kernel.rescue_stop()  # before the session's C++ objects can go
        self.stop_serving()
        self.ctl = None
        self.session_done = None
        self._traj = None
        self._rows_next = None
        self._rows = None
        self.guard_running = False
        loop = self.loop
        if self._timerfd >= 0 and loop is not None:
            loop.remove_reader(self._timerfd)
        if self.wait_mode == "socket" and loop is not None and self.state_fd is not None:
            loop.remove_reader(self.state_fd)
            try:
                os.set_blocking(self.state_fd, True)
            except OSError:
                pass

    def fail_waiters(self, error: BaseException | None) -> None:
        """Robot-time waits and a running move() end with ControllerStoppedError."""
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

    def close(self) -> None:
        """Release the timer's descriptor, after :meth:`detach` (the next session makes a new one)."""
        if self._timerfd >= 0:
            os.close(self._timerfd)
            self._timerfd = -1

    @property
    def has_control(self) -> bool:
        """A control session is open."""
        return self.ctl is not None

    def start_rescue(self, after_ns: int, grace_ns: int, priority: int) -> None:
        """Start the kernel's rescue thread for this session (see the Controller's ``rescue``)."""
        if not self.rescue or self.rescue_state != "on":  # refused in Controller.start()
            return
        robot = self.robot
        layout = robot.direct_layout()
        if isinstance(layout, str):
            return
        try:
            self.kernel.rescue_start(self.ctl, robot.torques([0.0] * 7), robot.state_fd, layout[0], layout[1],
                                     after_ns, grace_ns, priority, robot.error_types)
        except (RuntimeError, OSError, TypeError, ValueError) as exc:  # ValueError: serve_cpu no longer allowed
            self.rescue_state = f"off: {exc}"
        else:
            self.rescue_state = "on"

    # -- serving from the event loop ------------------------------------------------

    def state_ready(self) -> bool:
        """Socket mode: whether a state is waiting (another server may have
        taken it: the rescue thread). True where that cannot be told."""
        poll = self._state_poll
        return poll is None or bool(poll.poll(0))

    def claim_next(self) -> None:
        """A Python thread serves from now on: the rescue thread yields the states."""
        self.kernel.claim_next()

    def on_ready(self) -> None:
        """The state socket became readable (or the timer fired): serve one cycle.

        Level-triggered readiness can be reported again after a cycle already
        drained the socket, so the socket is polled (under the lock) first.
        """
        if self.guardian_active:
            # Running at all means the event loop is back: the guardian may
            # already have read the state that woke us.
            self.loop_back = True
        if self.wait_mode == "timerfd":
            _kernel.timerfd_clear(self._timerfd)
        self.serve(need_state=True)

    def on_silence(self) -> None:
        """Socket mode: no state long after one was due. Read anyway: ``readOnce``
        then waits for libfranka's own timeout and reports the lost connection."""
        _kernel.timerfd_clear(self._timerfd)
        self.kernel.read_anyway()  # even if the rescue thread served the last state
        self.serve()

    def serve(self, need_state: bool = False) -> None:
        """Serve one cycle from the event loop, unless the guardian has it.

        ``need_state``: serve only if a state is waiting (socket mode).
        """
        done = self.session_done
        if done is None or done.done() or self.session_finished:
            # After motion_finished no state comes, and a readOnce would wait
            # for one with the GIL held.
            return
        lock = self.lock
        if self.guardian_active or not lock.acquire(False):
            # The guardian is serving: tell it we are back; it hands the
            # cycle back at the next cycle boundary.
            self.loop_back = True
            if self.wait_mode == "timerfd":
                # Check again shortly (not at once: a deadline already past
                # would spin the event loop and starve the guardian of the GIL).
                schedule = self.schedule
                _kernel.timerfd_arm(self._timerfd, max(schedule.next_due_ns - schedule.margin_ns,
                                                       time.monotonic_ns() + 200_000))
            return
        if need_state and not self.state_ready():
            lock.release()  # nothing to read (drained, or served by the rescue thread)
            if self.kernel.time_ms > self.buf.time_ms:
                self.after_rescue(False)
            return
        try:
            finished = self.run(False, False)  # Kernel.cycle claims the due cycle first
        except BaseException as exc:  # noqa: BLE001 - handed to the loop coroutine
            done.set_exception(exc)
            return
        finally:
            lock.release()
        if finished:
            done.set_result(None)
        elif self.wait_mode != "yield":
            self.arm_timer()

    def arm_timer(self) -> None:
        """timerfd mode: wake a learned margin before the next state is due.
        Socket mode: wake if no state has come long after it was due."""
        due = self.schedule.next_due_ns
        if self.wait_mode == "timerfd":
            _kernel.timerfd_arm(self._timerfd, due - self.schedule.margin_ns)
        elif due + self.SILENCE_NS // 2 > self._silence_armed_ns:
            # Re-armed only when less than half the window is left: one
            # syscall every ~50 ms instead of every cycle.
            self._silence_armed_ns = due + self.SILENCE_NS
            _kernel.timerfd_arm(self._timerfd, self._silence_armed_ns)

    # -- serving from the guardian thread ----------------------------------------------

    def start_watch(self, threshold_ns: int, wake_fd: int, priority: int | None) -> None:
        """Start the kernel's watch thread: it writes ``wake_fd`` (an eventfd)
        when a due cycle went unclaimed for ``threshold_ns`` (socket mode: once
        its state waited that much more), and sleeps otherwise."""
        state_fd = self.state_fd if self.wait_mode == "socket" else None
        self.kernel.watch_start(threshold_ns, -1 if state_fd is None else state_fd, wake_fd, priority or 0)

    def stop_watch(self) -> None:
        """Stop and join the watch thread (idempotent); it writes ``wake_fd`` no more."""
        self.kernel.watch_stop()

    def serve_from_guardian(self) -> bool:
        """One cycle served by the guardian (the caller holds ``lock``)."""
        return self.run(False, True)

    def guardian_done(self, error: BaseException | None) -> None:
        """The guardian ended the session (finished ramp-down, or an error)."""
        self.guard_running = False  # the session is over: nothing more to serve
        loop, done = self.loop, self.session_done
        if loop is None or done is None:
            return

        def settle() -> None:
            if not done.done():
                if error is None:
                    done.set_result(None)
                else:
                    done.set_exception(error)

        loop.call_soon_threadsafe(settle)

    def stall_stop(self, culprit: str, elapsed_ms: float, limit_ms: float) -> None:
        """on_stall="stop": ramp the arm down and report the stall."""
        if self.law_error is None:
            self.law_error = EventLoopStallError(
                f"the event loop was blocked for more than {limit_ms:.0f} ms "
                f"(by {culprit}); the arm was ramped down", culprit=culprit, duration_ms=elapsed_ms)
            self.request_stop()

    # -- one cycle --------------------------------------------------------------------

    def run(self, initial: bool = False, from_guardian: bool = False) -> bool:
        """One read -> compute -> safety -> write cycle. Returns True when the session ended.

        The targets are chosen here, then ``Kernel.cycle`` reads the state,
        computes the law and the safety filter and writes the command in one
        C call, so no other thread can take the GIL between read and write.
        """
        scale = 1.0
        if self.law_error is not None:
            scale = 0.0
        elif self.stop_requested:
            if self._ramp_left < 0:
                self._ramp_left = self._ramp_total = max(1, int(self.stop_ramp * 1000.0))
            if self._ramp_left > 0:
                self._ramp_left -= 1
            scale = self._ramp_left / self._ramp_total
        finishing = self.stop_requested and scale == 0.0
        mode = self.mode
        try:
            params = self.law_params(mode, from_guardian) if scale > 0.0 else self._zero_params
        except Exception as exc:  # noqa: BLE001 - reported from the next await
            self.fail_law(ControlLawError(f"the {MODES[self.mode]} law raised {exc!r}; ramping down"), exc)
            params, finishing, scale = self._zero_params, True, 0.0
        if initial:
            # The first command is zero torque; targets are then set from that state.
            params, scale = self._zero_params, 0.0
        if params is self._zero_params:
            mode = TORQUE
        # flags: bit 0 finish if zero, bit 1 the guardian serves (the recorder's server column)
        served = self.kernel.cycle(self.ctl, self._torques_type, mode, scale, finishing | (from_guardian << 1),
                                   *params)
        if served is None:
            self.after_rescue(from_guardian)
            return False
        state, now, success, t_call, t_read, t_write, flags = served
        buf = self.buf
        buf.raw = state
        buf.time_ms = now
        buf.success_rate = success
        if initial:
            self.commands.retarget(buf.q, buf.ee)
            self.robot_start_ms = now
        else:
            waited = t_read - t_call
            self.period_ns.push(t_read - self._last_read_ns)
            self.read_wait_ns.push(waited)
            self.schedule.observe(waited)
        self._last_read_ns = t_read
        if success < self.min_success and self.cycles >= 100:
            self.min_success = success
        self.compute_ns.push(t_write - t_read)
        self.cycles += 1
        if flags & 1 and self.law_error is None:
            self.fail_law(ControlLawError(f"the {MODES[self.mode]} law produced a non-finite torque; ramping down"))
        if flags & 2:
            self.session_finished = True  # motion_finished was written
        if from_guardian:
            self.guardian_cycles += 1
        if now >= self._next_wake_ms:
            if from_guardian:
                self.loop.call_soon_threadsafe(self._wake, now)
            else:
                self._wake(now)
        return bool(flags & 2)

    def law_params(self, mode: int, from_guardian: bool = False) -> tuple:
        """The arrays the active law reads this cycle (advancing a trajectory, indexing target rows)."""
        c = self.commands
        traj = self._traj
        rows = self._rows_next
        if rows is not None and rows is not self._rows:
            # A new play switches at a cycle boundary, once its start is due.
            if self.kernel.time_ms + 1 >= rows.start_ms:
                if self.kernel.time_ms + 1 > rows.start_ms:
                    self.rows_late += 1
                self._rows = rows
        rows = self._rows
        ee_desired = c.ee_desired
        if rows is not None:
            # Rows are indexed by robot time (the state this cycle reads), so a
            # late or lost cycle does not delay the path; past the last row it is held.
            k = self.kernel.time_ms + 1 - rows.start_ms
            if k >= rows.n:
                k = rows.n - 1
                self.rows_starved += 1
            if rows.joint:
                q_desired = rows.position_rows[k]
                dq_desired = rows.velocity_rows[k]
            else:
                q_desired = c.q_desired
                dq_desired = c.dq_desired
                ee_desired = rows.pose_rows[k]
        elif traj is not None:
            k = self._traj_k
            q_desired = traj.position_rows[k]
            dq_desired = traj.velocity_rows[k]
            if k + 1 < traj.n:
                self._traj_k = k + 1
            else:
                c.q_desired = traj.final
                self._traj = None
                done = self._traj_done
                if done is not None:
                    if from_guardian:
                        self.loop.call_soon_threadsafe(_settle, done)
                    elif not done.done():
                        done.set_result(None)
        else:
            q_desired = c.q_desired
            dq_desired = c.dq_desired
        if mode == IMPEDANCE:
            return (q_desired, dq_desired, c.kp, c.kd)
        if mode == OSC:
            return (ee_desired, c.ee_kp, c.ee_kd, q_desired, c.null_kp, c.null_kd)
        return (c.torque,)

    def after_rescue(self, from_guardian: bool) -> None:
        """The rescue thread served the state that woke us. We are back: it
        leaves the next states to us; robot-time waits see the time it
        reached; the silence timer counts from now."""
        kernel = self.kernel
        kernel.claim_next()
        self.schedule.restart_after_rescue()
        now = kernel.time_ms
        if now >= self._next_wake_ms:
            if from_guardian:
                self.loop.call_soon_threadsafe(self._wake, now)
            else:
                self._wake(now)

    def fail_law(self, error: ControlLawError, cause: BaseException | None = None) -> None:
        error.__cause__ = cause
        self.law_error = error
        self.request_stop()

    def snapshot(self):
        """A consistent copy of the latest state, whoever served it."""
        if self.serving:
            return self.kernel_snapshot()
        kernel = self.kernel
        while True:  # a rescue cycle writes the arrays without the GIL: copy between its writes
            seq = kernel.seq()
            snapshot = self.buf.snapshot(self.robot.model)
            if not seq & 1 and kernel.seq() == seq:
                break
            time.sleep(0)
        if kernel.time_ms > snapshot.time_ms:  # served by the rescue thread since the last Python cycle
            snapshot = dataclasses.replace(snapshot, time_ms=kernel.time_ms, success_rate=kernel.success_rate)
        return snapshot

    def figures(self, guardian, wall_start_ns: int, switch_interval_s: float,
                cpu_wake_latency_us: int | None = None) -> LoopStats:
        """The loop's figures since the session's start, with the guardian's."""
        wall = (time.monotonic_ns() - wall_start_ns) / 1e9 if wall_start_ns else 0.0
        robot_time = (self.buf.time_ms - self.robot_start_ms) / 1000.0 if self.robot_start_ms >= 0 else 0.0
        lost, rescued, rescues, longest_rescue_ns, _, _ = self.kernel.counters()
        served = self.kernel_cycles()
        cpu, moves, follows = self.kernel.place_status()
        schedule = self.schedule
        return LoopStats(
            cycles=self.cycles + rescued + served,
            lost_cycles=lost,
            min_success_rate=self.min_success if self.cycles else float("nan"),
            compute=self.compute_ns.summary(),
            period=self.period_ns.summary(),
            robot_time_s=robot_time,
            wall_time_s=wall,
            mode=MODES[self.mode],
            switch_interval_s=switch_interval_s,
            read_wait=self.read_wait_ns.summary(),
            wait=self.wait_mode,
            late_wakeups=schedule.late_wakeups,
            wake_margin_us=schedule.margin_ns / 1000.0 if self.wait_mode == "timerfd" else 0.0,
            stalls=guardian.stall_count if guardian else 0,
            longest_stall_ms=guardian.longest_stall_ms if guardian else 0.0,
            culprits=guardian.records() if guardian else (),
            takeovers=guardian.takeovers if guardian else 0,
            guardian_cycles=self.guardian_cycles,
            longest_takeover_ms=guardian.longest_takeover_ms if guardian else 0.0,
            rescue=self.rescue_state,
            rescues=rescues,
            rescued_cycles=rescued,
            longest_rescue_ms=longest_rescue_ns / 1e6,
            serve="kernel" if self.kernel_serve and (self.serving or served) else "loop",
            kernel_cycles=served,
            serve_cpu=cpu,
            serve_moves=moves,
            serve_follows=follows,
            cpu_wake_latency_us=cpu_wake_latency_us,
        )

    # -- robot-time waits -----------------------------------------------------------------

    def wait_until(self, deadline_ms: float) -> asyncio.Future:
        """A future resolved (on the loop) once the robot clock reaches ``deadline_ms``."""
        future = self.loop.create_future()
        self._waiters.append(_Waiter(deadline_ms, future))
        if deadline_ms < self._next_wake_ms:
            self._next_wake_ms = deadline_ms
            if self.serving:
                self.arm_wake()
        return future

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

    # -- a running move() -----------------------------------------------------------------

    @property
    def moving(self) -> bool:
        """A ``move()`` trajectory is being followed."""
        return self._traj is not None

    def follow(self, trajectory) -> asyncio.Future:
        """Follow ``trajectory`` from the next cycle; the future settles at its end."""
        self.cancel_trajectory("a new move() started")
        done = self.loop.create_future()
        self._traj_done = done
        self._traj_k = 0
        self._traj = trajectory
        if self.serving:
            self.kernel_follow(trajectory)
        return done

    def finish_trajectory(self) -> None:
        """Kernel serving: the move's last row is reached; its target becomes ``q_desired``."""
        traj = self._traj
        if traj is None:
            return
        self.commands.q_desired = traj.final  # pushed before the rows go
        self.kernel_end_move()
        self._traj = None
        done = self._traj_done
        if done is not None and not done.done():
            done.set_result(None)

    def is_following(self, trajectory) -> bool:
        return self._traj is trajectory

    def hold_trajectory_here(self) -> None:
        """The joint target becomes where the trajectory has got to."""
        traj = self._traj
        if traj is not None:
            k = self.kernel_move_row() if self.serving else self._traj_k
            row = traj.positions[min(max(k, 0), traj.n - 1)]
            self.commands.q_desired = validation.vector("q_desired", row, 7)

    def cancel_trajectory(self, reason: str) -> None:
        if self._traj is None:
            return
        self._traj = None
        self.commands.dq_desired = self.commands.zero7
        if self.serving:
            self.kernel_end_move()
        done = self._traj_done
        if done is not None and not done.done():
            done.set_exception(ControllerStoppedError(f"move() was interrupted: {reason}"))
            done.exception()  # mark retrieved: the mover may already be gone

    # -- played target rows ---------------------------------------------------------------

    @property
    def playing(self):
        """The target rows being followed (or due to start), else ``None``."""
        return self._rows_next

    def play_rows(self, rows) -> None:
        """Follow ``rows`` (a checked :class:`~aiofranka.loop.trajectory.TargetRows`) from its ``start_ms``.

        Until then the cycle keeps following what it followed. A running
        ``move()`` is interrupted.
        """
        self.cancel_trajectory("target rows are played")
        self.rows_played += 1
        if self.serving:
            self.kernel_play(rows)
        self._rows_next = rows

    def target_at(self, time_ms: int, joint: bool) -> np.ndarray:
        """What the cycle will command at robot time ``time_ms`` as ``q_desired`` (``joint``) or ``ee_desired``."""
        rows = self._rows_next
        if rows is not None and rows is not self._rows and time_ms < rows.start_ms:
            rows = self._rows  # the pending play has not started by then
        if rows is not None and rows.joint == joint:
            return rows.row_at(time_ms).copy()
        return (self.commands.q_desired if joint else self.commands.ee_desired).copy()

    def hold_rows_here(self, reason: str) -> None:
        """Stop following rows: the target becomes the row of the current cycle."""
        rows = self.kernel_current_rows() if self.serving else self._rows
        self._rows_next = None
        self._rows = None
        if rows is not None:
            now = self.kernel.time_ms + 1
            if rows.joint:
                self.commands.q_desired = validation.vector("q_desired", rows.row_at(now), 7)
                self.commands.dq_desired = self.commands.zero7
            else:
                self.commands.ee_desired = validation.pose("ee_desired", rows.row_at(now))
        if self.serving:
            self.kernel.clear_rows()  # after the targets above were pushed

    # -- ending without the loop ------------------------------------------------------------

    def emergency_ramp(self, guardian) -> None:
        """Bring the command to zero at the rate limit, blocking; best effort.

        The guardian is stopped first and the lock taken, so the robot
        connection still has a single user.
        """
        if self.ctl is None or self.session_finished:
            return
        self.kernel.rescue_stop()
        self.guard_running = False
        if guardian is not None and threading.current_thread() is not guardian:
            guardian.stop()
        if not self.lock.acquire(timeout=2.0):
            return
        try:
            self.buf.tau_desired[:] = 0.0
            self.robot.ramp_down(self.ctl, self.kernel, self.buf)
        finally:
            self.lock.release()
