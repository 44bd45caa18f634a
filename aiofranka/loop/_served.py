"""Kernel serving, the Python side: the C thread serves every cycle, the event loop only publishes.

A mixin of :class:`~aiofranka.loop._cycle.Cycle` (it uses the Cycle's own
members). While ``serving`` is true, the kernel's rescue thread, which never
takes the GIL, reads each state, computes the law and writes the command
(``csrc/serve.c``); the event loop is not woken per cycle. What the loop does
instead:

* every change of a gain, a target or the mode is pushed whole to the kernel
  (``Commands`` calls :meth:`push_law` on every assignment);
* played rows and ``move()`` trajectories are handed to the kernel, which
  indexes them by robot time;
* robot-time waits and a move's end ask the kernel to write an eventfd once
  the robot clock reaches them (``wake_at``); the session's end, a failed law
  and libfranka's errors write it too;
* ``stop()`` asks the kernel for the ramp-down, which ends with ``motion_finished``.

See docs/kernel-serving.md.
"""

from __future__ import annotations

import math
import os
import time

from ..exceptions import ControlLawError
from .command import IMPEDANCE, MODES, OSC, TORQUE

#: ``wake_at`` for "no robot time is awaited".
_NEVER = 1 << 62


class KernelServing:
    """Cycle's members for kernel serving (see the module docstring)."""

    def init_serving(self) -> None:
        self.serving = False
        self.kernel_serve = False  # this session was planned with kernel serving
        self._wake_fd = -1
        self._move_start_ms = 0
        self._move_end_ms: int | None = None
        self._held_at_move = 0
        self._move_held = 0

    # -- a session's start and end ------------------------------------------------------

    def start_serving(self) -> bool:
        """Hand the cycles to the kernel (the rescue thread runs). False where it cannot."""
        if self.rescue_state != "on" or not self.kernel_serve:
            return False
        kernel, loop = self.kernel, self.loop
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        loop.add_reader(self._wake_fd, self.on_kernel_wake)
        self.serving = True
        self.push_law()
        self._held_at_move = self._move_held = 0
        kernel.serve_start(self._wake_fd)
        if self.stop_requested:  # a stop asked for before the kernel served
            self.request_stop()
        return True

    def stop_serving(self) -> None:
        """The session is over (the rescue thread was stopped): drop the wakeups and the rows."""
        self.serving = False
        if self._wake_fd >= 0:
            if self.loop is not None:
                self.loop.remove_reader(self._wake_fd)
            os.close(self._wake_fd)
            self._wake_fd = -1
        self._move_end_ms = None
        self.kernel.clear_rows()

    def request_stop(self) -> None:
        """Ramp the arm down and end the session (from any thread)."""
        self.stop_requested = True
        if self.serving:
            cycles = 1 if self.law_error is not None else max(1, int(self.stop_ramp * 1000.0))
            self.kernel.ramp(cycles)

    # -- what the law reads ----------------------------------------------------------------

    def push_law(self) -> None:
        """Publish the current mode, gains and targets to the kernel (a no-op unless serving)."""
        if not self.serving:
            return
        c = self.commands
        mode = self._mode
        if mode == IMPEDANCE:
            self.kernel.set_law(mode, 1.0, c.q_desired, c.dq_desired, c.kp, c.kd)
        elif mode == OSC:
            self.kernel.set_law(mode, 1.0, c.ee_desired, c.ee_kp, c.ee_kd, c.q_desired, c.null_kp, c.null_kd)
        else:
            self.kernel.set_law(TORQUE, 1.0, c.torque)

    def kernel_play(self, rows) -> None:
        """Hand ``rows`` to the kernel; it switches to them at ``rows.start_ms``."""
        if self._rows_next is not None and self.kernel.rows_status()[4] is None:
            self._rows = self._rows_next  # the last play has switched in: it is what a new one replaces
        if rows.joint:
            self.kernel.play_rows(rows.start_ms, rows.positions, rows.velocities)
        else:
            self.kernel.play_rows(rows.start_ms, None, None, rows.poses.reshape(rows.n, 16))

    def kernel_current_rows(self):
        """The rows the kernel follows now (a pending play not counted)."""
        latest = self._rows_next
        if latest is None:
            return None
        _, _, _, current, pending = self.kernel.rows_status()
        if pending is None and current is not None:
            return latest
        return self._rows

    def kernel_playback(self) -> tuple[int, int]:
        """(held cycles, late switches) of played rows, a move's own held cycles left out."""
        _, held, late, _, _ = self.kernel.rows_status()
        return held - self._move_held, late

    # -- move() ------------------------------------------------------------------------------

    def kernel_follow(self, trajectory) -> None:
        """A move's rows go to the kernel from the next state on; its end wakes the loop."""
        start = self.kernel.time_ms + 1
        self._move_start_ms = start
        self._move_end_ms = start + trajectory.n - 1
        self._held_at_move = self.kernel.rows_status()[1]
        self.kernel.play_rows(start, trajectory.positions, trajectory.velocities)
        self.arm_wake()

    def kernel_move_row(self) -> int:
        """The index of the row the kernel commands now in a running move."""
        return self.kernel.time_ms + 1 - self._move_start_ms

    def kernel_end_move(self) -> None:
        """Hold the target where the move's rows leave it (``q_desired`` set first) and drop them."""
        if self._move_end_ms is None:
            return
        self._move_end_ms = None
        self.kernel.clear_rows()
        self._move_held += self.kernel.rows_status()[1] - self._held_at_move

    # -- wakeups -------------------------------------------------------------------------------

    def arm_wake(self) -> None:
        """Ask the kernel to wake the loop at the nearest robot time awaited."""
        nearest = self._next_wake_ms
        if self._move_end_ms is not None and self._move_end_ms < nearest:
            nearest = self._move_end_ms
        self.kernel.wake_at(math.ceil(nearest) if nearest != math.inf else _NEVER)

    def on_kernel_wake(self) -> None:
        """The kernel wrote the eventfd: a robot time was reached, the session ended, or the law failed."""
        try:
            os.eventfd_read(self._wake_fd)
        except BlockingIOError:
            pass
        _, failed, finished, error, now, _ = self.kernel.serve_status()
        done = self.session_done
        if done is None or done.done():
            return
        if error:
            try:  # raises libfranka's error, as pylibfranka's own type
                self.kernel.cycle(self.ctl, self._torques_type, TORQUE, 0.0, 0, self.commands.zero7)
            except BaseException as exc:  # noqa: BLE001 - handed to the loop coroutine
                done.set_exception(exc)
            return
        if failed and self.law_error is None:
            self.fail_law(ControlLawError(f"the {MODES[self._mode]} law produced a non-finite torque; "
                                          "ramping down"))
        self.buf.time_ms = now
        self.buf.success_rate = self.kernel.success_rate
        if now >= self._next_wake_ms:
            self._wake(now)  # first: a waiter sees the last state before the session ends
        if finished:
            self.session_finished = True
            done.set_result(None)
            return
        if self._move_end_ms is not None and now >= self._move_end_ms:
            self.finish_trajectory()
        self.arm_wake()

    def kernel_snapshot(self):
        """A consistent copy of the latest state the kernel served."""
        kernel, buf = self.kernel, self.buf
        model = self.robot.model
        while True:  # the kernel writes the arrays without the GIL: copy between its writes
            seq = kernel.seq()
            if not seq & 1:
                refreshed = buf.raw is not None and kernel.refresh_state(buf.raw)
                buf.time_ms = kernel.time_ms
                buf.success_rate = kernel.success_rate
                snapshot = buf.snapshot(model if refreshed else None)
                if kernel.seq() == seq:
                    return snapshot
            time.sleep(0)

    def kernel_cycles(self) -> int:
        return self.kernel.serve_status()[5]
