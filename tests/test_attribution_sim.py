"""The kernel's gap records on the simulator: a loop stalled by a callback is named for it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from aiofranka import Controller
from aiofranka.loop.attribution import GapReader, classify

from _policies import burn_python

pytestmark = pytest.mark.sim


async def stall_until_states_are_lost(controller, stall, *, tries: int) -> tuple[list, int, int]:
    """Run ``stall()`` in a session until a gap of 2 states or more is recorded:
    the gap records, the states lost meanwhile by the controller's count, and
    the records overwritten before they were read."""
    await controller.start()
    reader = GapReader(controller._kernel)
    gaps = []
    try:
        await controller.wait(0.3)
        reader.start()
        lost_before = controller.stats.lost_cycles
        for _ in range(tries):
            await controller.wait(0.1)
            stall()
            await controller.wait(0.05)
            gaps += reader.read()
            if any(g.lost >= 2 for g in gaps):
                break
        lost = controller.stats.lost_cycles - lost_before
    finally:
        await controller.stop()
    return gaps, lost, reader.missed


async def test_a_callback_that_holds_the_loop_is_named_event_loop_late(robot):
    # No guardian takeover and no rescue thread: the loop itself serves the late cycle.
    controller = Controller(robot, guardian=False)
    # franka-sim does not always run on through a short stall of its client:
    # stall until one cost states (15 ms each: 20 lost in a row would be a reflex).
    gaps, lost, missed = await stall_until_states_are_lost(controller, lambda: burn_python(0.015), tries=10)
    # Every lost state is in a record, and the records are whole.
    assert sum(g.lost for g in gaps) == lost and missed == 0
    assert any(g.lost >= 2 for g in gaps), f"no stall of the ten cost states: {gaps}"
    stall = max(gaps, key=lambda g: g.lost)
    loop = threading.get_native_id()
    assert stall.kind == stall.prev_kind == 0 and stall.tid == stall.prev_tid == loop
    assert stall.call_ns - stall.due_ns >= stall.period_ns  # the loop called late
    category, detail = classify(stall, {loop: "loop"})
    assert category == "event loop late", (category, detail, stall)


@pytest.mark.skipif(sys.platform != "linux" or os.uname().machine != "x86_64",
                    reason="kernel serving needs the rescue thread: x86-64 Linux")
async def test_a_frozen_process_is_a_late_reader_not_a_late_simulator(robot):
    """The whole process stopped for 4 ms while the simulator kept sending: the
    kernel thread, asleep in poll throughout, reads the newest of several
    states. The send stamps show them sent a period apart, so the gap is the
    reader's (host), not the simulator's, which the older rule said."""
    controller = Controller(robot, serve="kernel")

    def freeze() -> None:
        subprocess.run([sys.executable, "-c", FREEZE, str(os.getpid())], check=True, timeout=30)

    gaps, _, _ = await stall_until_states_are_lost(controller, freeze, tries=5)
    assert any(g.lost >= 2 for g in gaps), f"no freeze cost 2 states: {gaps}"
    frozen = max(gaps, key=lambda g: g.lost)
    assert frozen.kind == 2 and 0 < frozen.prev_sent_ns < frozen.sent_ns <= frozen.read_ns
    # the states were sent about a period apart while nothing read them
    assert frozen.sent_ns - frozen.prev_sent_ns >= frozen.lost * frozen.period_ns * 0.7
    category, detail = classify(frozen)
    assert category == "host" and "asleep while a state waited in the socket" in detail, (category, detail)


# Real-time where allowed, so that a busy host cannot stretch the freeze into a reflex.
FREEZE = """
import os, signal, sys, time
pid = int(sys.argv[1])
try:
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(90))
except OSError:
    pass
os.kill(pid, signal.SIGSTOP)
time.sleep(0.004)
os.kill(pid, signal.SIGCONT)
"""
