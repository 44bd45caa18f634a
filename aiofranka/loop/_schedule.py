"""When the next robot state is due: the learned period, the wake margin, the claim counter.

Written only by whoever serves a cycle (under the cycle lock); read by the
guardian to tell a late loop from a late state (see docs/guardian.md).
"""

from __future__ import annotations

import time

__all__ = ["Schedule"]


class Schedule:
    """The state schedule learned from read times, and the deadline published after each cycle.

    ``due`` is ``(epoch, due_ns)``: the monotonic time the next state is due,
    tagged with a counter bumped every cycle; ``claimed_epoch`` is set to the
    epoch a server resumed for, so ``claimed_epoch >= due[0]`` means the due
    cycle is being (or was) served.
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
    #: Bounds of the learned state period (ns).
    PERIOD_MIN_NS = 900_000
    PERIOD_MAX_NS = 5_000_000

    __slots__ = ("learn_margin", "period_est_ns", "margin_ns", "next_due_ns", "epoch", "claimed_epoch", "due",
                 "late_wakeups", "_anchor_t", "_anchor_ms", "_base_t", "_base_ms")

    def __init__(self, *, learn_margin: bool) -> None:
        self.learn_margin = learn_margin  # timerfd mode wakes a margin early, and learns it
        self.reset()

    def reset(self) -> None:
        self.period_est_ns = 1_000_000
        self.margin_ns = self.MARGIN_START_NS
        self.next_due_ns = 0
        self.epoch = self.claimed_epoch = 0
        self.due = (0, 0)
        self.late_wakeups = 0
        self._anchor_t = self._anchor_ms = self._base_t = self._base_ms = 0

    def claim(self) -> None:
        """A server resumed for the published cycle."""
        self.claimed_epoch = self.epoch

    def begin(self, t_read: int, now_ms: int) -> None:
        """The session's first state was read at ``t_read`` (ns), robot time ``now_ms``."""
        self._anchor_t, self._anchor_ms = t_read, now_ms
        self._base_t, self._base_ms = t_read, now_ms

    def observe(self, t_read: int, now_ms: int, waited_ns: int) -> None:
        """Learn from one read: when states arrive, their period, and the wake margin."""
        # ``t_read`` is never earlier than the arrival, and is later by whatever
        # delayed us, so the schedule follows the lower envelope of the reads:
        # an earlier read than predicted moves it at once, a later one only by
        # a sixteenth. The period is that schedule's slope over about a second
        # (a loaded simulator runs slower than 1 kHz; the robot does not).
        predicted = self._anchor_t + (now_ms - self._anchor_ms) * self.period_est_ns
        if t_read <= predicted:
            self._anchor_t = t_read
        else:
            self._anchor_t = predicted + ((t_read - predicted) >> 4)
        self._anchor_ms = now_ms
        span = now_ms - self._base_ms
        if span >= 1024:
            period = (self._anchor_t - self._base_t) // span
            self.period_est_ns = min(max(period, self.PERIOD_MIN_NS), self.PERIOD_MAX_NS)
            self._base_t, self._base_ms = self._anchor_t, now_ms
        if not self.learn_margin:
            return
        if waited_ns > self.EARLY_NS:
            if self.margin_ns > self.MARGIN_MIN_NS:
                self.margin_ns -= self.MARGIN_DECAY_NS
        else:
            self.late_wakeups += 1
            if self.margin_ns < self.MARGIN_MAX_NS:
                self.margin_ns += self.MARGIN_GROW_NS

    def publish(self, now_ms: int) -> None:
        """Publish when the state after ``now_ms`` is due, for the pause and the guardian."""
        due = self._anchor_t + (now_ms + 1 - self._anchor_ms) * self.period_est_ns
        self.next_due_ns = due
        self.epoch += 1
        self.due = (self.epoch, due)

    def restart_after_rescue(self) -> None:
        """The rescue thread served meanwhile: count the next state from now."""
        self.next_due_ns = time.monotonic_ns() + self.period_est_ns
