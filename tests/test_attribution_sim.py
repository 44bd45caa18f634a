"""The kernel's gap records on the simulator: a loop stalled by a callback is named for it."""

from __future__ import annotations

import threading

import pytest

from aiofranka import Controller
from aiofranka.loop.attribution import GapReader, classify

from _policies import burn_python

pytestmark = pytest.mark.sim


async def test_a_callback_that_holds_the_loop_is_named_event_loop_late(robot):
    # No guardian and no rescue thread: the loop itself serves the late cycle.
    controller = Controller(robot, guardian=False)
    await controller.start()
    reader = GapReader(controller._kernel)
    try:
        await controller.wait(0.3)
        reader.start()
        lost_before = controller.stats.lost_cycles
        burn_python(0.008)  # 8 ms of Python on the event loop: several states go by
        await controller.wait(0.3)
        gaps = reader.read()
        lost = controller.stats.lost_cycles - lost_before
    finally:
        await controller.stop()
    # Every lost state is in a record, and the records are whole.
    assert lost >= 2, "the stall should have cost states even on a slow host"
    assert sum(g.lost for g in gaps) == lost and reader.missed == 0
    stall = max(gaps, key=lambda g: g.lost)
    assert stall.kind == stall.prev_kind == 0 and stall.tid == threading.get_native_id()
    assert stall.call_ns - stall.due_ns >= 2 * stall.period_ns  # the loop called late
    category, detail = classify(stall, {threading.get_native_id(): "loop"})
    assert category == "event loop late", (category, detail, stall)
