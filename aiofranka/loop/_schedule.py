"""When the next robot state is due: the kernel's schedule, and the wake margin.

The schedule itself lives in the C kernel (csrc/watch.c): each cycle Python
serves claims the published deadline as it starts and, once written, learns
from its read and publishes the next, so that the watch thread can read them
without the GIL (see docs/guardian.md). This is its Python face; it also
learns the wake margin of ``wait="timerfd"``.
"""

from __future__ import annotations

__all__ = ["Schedule"]


class Schedule:
    """The state schedule learned by the kernel, and the deadline it published last.

    ``due`` is ``(epoch, due_ns)``: the monotonic time the next state is due,
    tagged with a counter bumped every cycle Python serves; ``claimed_epoch``
    is the epoch the last cycle started for, so ``claimed_epoch >= due[0]``
    means the due cycle is being (or was) served.
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

    __slots__ = ("learn_margin", "margin_ns", "late_wakeups", "_kernel")

    def __init__(self, kernel, *, learn_margin: bool) -> None:
        self._kernel = kernel
        self.learn_margin = learn_margin  # timerfd mode wakes a margin early, and learns it
        self.reset()

    def reset(self) -> None:
        """A new session (the kernel's part is reset by ``Kernel.new_session``)."""
        self.margin_ns = self.MARGIN_START_NS
        self.late_wakeups = 0

    @property
    def next_due_ns(self) -> int:
        """When the loop expects the next state (CLOCK_MONOTONIC ns)."""
        return self._kernel.next_due_ns

    @property
    def period_est_ns(self) -> int:
        """The learned state period (ns): a loaded simulator runs slower than 1 kHz."""
        return self._kernel.period_ns

    @property
    def due(self) -> tuple[int, int]:
        return self._kernel.due()

    @property
    def claimed_epoch(self) -> int:
        return self._kernel.claimed_epoch

    @property
    def stalled_epoch(self) -> int:
        """The last epoch the watch thread found unclaimed past the threshold."""
        return self._kernel.stalled_epoch

    def observe(self, waited_ns: int) -> None:
        """Learn the wake margin from how long one read waited for its state."""
        if not self.learn_margin:
            return
        if waited_ns > self.EARLY_NS:
            if self.margin_ns > self.MARGIN_MIN_NS:
                self.margin_ns -= self.MARGIN_DECAY_NS
        else:
            self.late_wakeups += 1
            if self.margin_ns < self.MARGIN_MAX_NS:
                self.margin_ns += self.MARGIN_GROW_NS

    def restart_after_rescue(self) -> None:
        """The rescue thread served meanwhile: count the next state from now."""
        self._kernel.restart_schedule()
