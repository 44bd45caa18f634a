"""The recorder on the simulator (contract enforced): every cycle served is a row, whoever served it."""

from __future__ import annotations

import asyncio
import platform
import threading
import time

import numpy as np
import pytest

from aiofranka import Controller, ControllerStateError, limits
from aiofranka.loop.recorder import SERVERS

from _policies import hold_gil

pytestmark = pytest.mark.sim

LOOP, GUARDIAN, RESCUE = (SERVERS.index(name) for name in ("loop", "guardian", "rescue"))


@pytest.fixture
async def settled(robot):
    async with Controller(robot, serve="loop") as controller:
        await controller.move(limits.Q_HOME, speed=0.6)
        yield controller


def story(controller: Controller, data: dict, extra: str = "") -> str:
    stats = controller.stats
    servers = np.bincount(data["server"], minlength=3) if "server" in data else "-"
    return (f"rows {len(data.get('time_ms', []))}, by server {servers}; cycles {stats.cycles}, lost "
            f"{stats.lost_cycles}, guardian {stats.guardian_cycles}, rescued {stats.rescued_cycles} {extra}")


async def test_every_cycle_served_is_a_row_consistent_with_the_state(settled):
    rec = settled.record(seconds=5.0)
    # After record(): allocating the ring blocks the event loop for a few ms,
    # and the guardian serves meanwhile, before the recording starts.
    before = settled.stats
    q = limits.Q_HOME.copy()
    q[0] += 0.1
    await settled.move(q, speed=0.6)
    await settled.wait(0.3)
    rec.stop()
    state, after = settled.state, settled.stats  # no await since stop(): the loop served nothing more
    data = rec.data()
    why = story(settled, data)
    # A cycle the guardian is between writing and counting may be counted on one side only.
    assert abs(rec.count - (after.cycles - before.cycles)) <= 1, why
    assert rec.dropped == 0, why
    gaps = np.diff(data["time_ms"]) - 1
    assert np.all(gaps >= 0), why  # one row per state, in robot-time order
    assert gaps.sum() <= after.lost_cycles - before.lost_cycles, why  # a missing row would look like a loss
    # The last row is the cycle controller.state reports.
    assert data["time_ms"][-1] == state.time_ms, why
    assert np.array_equal(data["q"][-1], state.q) and np.array_equal(data["dq"][-1], state.dq)
    assert np.array_equal(data["ee"][-1], state.ee)
    assert np.array_equal(data["tau_command"][-1], state.tau_command)
    if data["server"][-1] == LOOP:
        assert np.array_equal(data["tau_measured"][-1], state.tau_measured)
    assert data["success_rate"][-1] == state.success_rate
    # The target followed the move and ended where it was asked to.
    assert np.allclose(data["q_desired"][-1], q) and not np.allclose(data["q_desired"][0], q)
    assert np.max(np.abs(data["q_desired"][-1] - data["q"][-1])) < 0.01
    assert np.all(data["mode"] == 0)
    assert np.median(data["compute_us"]) < 500, why
    assert np.all(data["success_rate"] > 0.9), why
    # No lost cycles added: a recorder that stalled the cycle (milliseconds per
    # row) would lose a large share; a slow host loses a few to its own pauses.
    assert after.lost_cycles - before.lost_cycles <= 0.02 * rec.count + 5, why


async def test_cycles_served_by_the_guardian_are_marked(settled):
    with settled.record(["time_ms", "server", "q"], seconds=2.0) as rec:
        before = settled.stats
        await settled.wait(0.1)
        time.sleep(0.15)  # the event loop is blocked: the guardian serves
        await settled.wait(0.2)
    data = rec.data()
    after = settled.stats
    why = story(settled, data)
    guardian = data["server"] == GUARDIAN
    assert abs(guardian.sum() - (after.guardian_cycles - before.guardian_cycles)) <= 1, why
    # The sleep is one run of guardian rows (a loaded host adds short takeovers
    # of its own); the waits around it were served by the loop.
    edges = np.diff(np.concatenate(([0], guardian.astype(np.int8), [0])))
    longest = (np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).max()
    assert longest >= 50, why
    assert (data["server"] == LOOP).sum() >= 150, why
    assert np.max(np.abs(data["q"] - limits.Q_HOME)) < 0.01, why


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the rescue thread is built on x86-64 only")
async def test_cycles_served_by_the_rescue_thread_are_rows_too(settled, tmp_path):
    rec = settled.record(["time_ms", "t", "q", "q_desired", "tau_command", "tau_measured", "compute_us", "server"],
                         seconds=3.0)
    before = settled.stats
    assert before.rescue == "on"
    await settled.wait(0.1)
    done = threading.Event()
    threading.Thread(target=lambda: (hold_gil(0.25), done.set()), daemon=True).start()
    while not done.is_set():
        await asyncio.sleep(0.02)
    await settled.wait(0.2)
    rec.stop()
    data = rec.data()
    after = settled.stats
    why = story(settled, data)
    rescued = data["server"] == RESCUE
    assert rescued.sum() == after.rescued_cycles - before.rescued_cycles, why
    assert rescued.sum() >= 100, why  # the GIL was held for 250 ms
    # Written from C without the GIL, the rows are whole: the state, the target
    # the rescue thread held, and the torque it commanded.
    assert np.all(np.isfinite(data["tau_measured"][rescued])), why
    assert np.max(np.abs(data["q"][rescued] - data["q_desired"][rescued])) < 0.01, why
    assert np.all(np.abs(data["tau_command"][rescued]) < limits.TAU_MAX), why
    assert np.all(data["compute_us"][rescued] < 1000), why
    assert np.all(np.diff(data["time_ms"]) >= 1), why
    path = rec.plot(tmp_path / "rescue.png")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


async def test_a_small_ring_counts_what_it_drops(settled):
    rec = settled.record(["time_ms"], seconds=0.1)
    before = settled.stats
    await settled.wait(0.4)
    rec.stop()
    after = settled.stats
    assert rec.count == 100
    assert abs(rec.count + rec.dropped - (after.cycles - before.cycles)) <= 1, (rec, after.cycles, before.cycles)
    assert rec.dropped >= 250


async def test_one_recording_per_controller_and_none_once_closed(robot):
    controller = Controller(robot)
    rec = controller.record(["time_ms"], seconds=0.1)  # before start(): rows come once cycles do
    with pytest.raises(ControllerStateError, match="already running"):
        controller.record(seconds=0.1)
    async with controller:
        await controller.wait(0.05)
    await controller.close()
    rec.stop()
    assert rec.count >= 40
    with pytest.raises(ControllerStateError, match="closed"):
        controller.record()
