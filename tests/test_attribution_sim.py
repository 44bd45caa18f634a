"""The kernel's gap records on the simulator: a loop stalled by a callback is named for it."""

from __future__ import annotations

import threading

import pytest

from aiofranka import Controller
from aiofranka.loop.attribution import GapReader, classify

from _policies import burn_python

pytestmark = pytest.mark.sim


async def test_a_callback_that_holds_the_loop_is_named_event_loop_late(robot):
    # No guardian takeover and no rescue thread: the loop itself serves the late cycle.
    controller = Controller(robot, guardian=False)
    await controller.start()
    reader = GapReader(controller._kernel)
    gaps = []
    try:
        await controller.wait(0.3)
        reader.start()
        lost_before = controller.stats.lost_cycles
        # franka-sim does not always run on through a short stall of its client:
        # stall until one cost states (15 ms each: 20 lost in a row would be a reflex).
        for _ in range(10):
            await controller.wait(0.1)
            burn_python(0.015)
            await controller.wait(0.05)
            gaps += reader.read()
            if any(g.lost >= 2 for g in gaps):
                break
        lost = controller.stats.lost_cycles - lost_before
    finally:
        await controller.stop()
    # Every lost state is in a record, and the records are whole.
    assert sum(g.lost for g in gaps) == lost and reader.missed == 0
    assert any(g.lost >= 2 for g in gaps), f"no stall of the ten cost states: {gaps}"
    stall = max(gaps, key=lambda g: g.lost)
    loop = threading.get_native_id()
    assert stall.kind == stall.prev_kind == 0 and stall.tid == stall.prev_tid == loop
    assert stall.call_ns - stall.due_ns >= stall.period_ns  # the loop called late
    category, detail = classify(stall, {loop: "loop"})
    assert category == "event loop late", (category, detail, stall)
