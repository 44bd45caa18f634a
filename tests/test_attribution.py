"""The attribution of lost states: classification of synthetic gap records (pure logic)."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest

from aiofranka.loop.attribution import EPOLL, FUTEX, RUNNING, UNPROBED, Gap, GapReader, breakdown, classify
from aiofranka.robot.state import StateBuffer

from _fake_control import Control, torques

MS = 1_000_000
LOOP, GUARDIAN = 100, 101
ROLES = {LOOP: "loop", GUARDIAN: "guardian"}


def gap(**changes) -> Gap:
    """A loop cycle that read 2 states late (3 ms gap) after a loop cycle; nothing else known."""
    base = Gap(time_ms=1003, prev_ms=1000, prev_write_ns=10 * MS, due_ns=11 * MS, call_ns=13 * MS,
               read_ns=13 * MS + 20_000, write_ns=13 * MS + 60_000, tid=LOOP, kind=0, prev_tid=LOOP, prev_kind=0,
               cpu_ns=50_000, delay_ns=10_000, window_ns=3 * MS, probe=UNPROBED, probe_ns=0, period_ns=MS)
    return dataclasses.replace(base, **changes)


def test_lost_counts_the_states_between():
    assert gap().lost == 2


def test_on_time_read_is_the_simulators_gap():
    # The loop called readOnce before the state was due and still got a later one.
    category, _ = classify(gap(call_ns=11 * MS - 100_000), ROLES)
    assert category == "simulator"
    # ... and a read less than half a period late is still on time.
    assert classify(gap(call_ns=11 * MS + 400_000), ROLES)[0] == "simulator"


def test_change_of_server_is_a_handover_named_by_role():
    category, detail = classify(gap(tid=GUARDIAN), ROLES)
    assert (category, detail) == ("handover", "loop -> guardian")
    category, detail = classify(gap(kind=1, tid=7), ROLES)
    assert (category, detail) == ("handover", "loop -> rescue")
    assert classify(gap(prev_kind=1, prev_tid=7), ROLES) == ("handover", "rescue -> loop")


def test_run_queue_wait_is_the_host():
    category, detail = classify(gap(delay_ns=1_500_000), ROLES)
    assert category == "host" and "1500 us" in detail


def test_late_rescue_thread_is_the_host():
    assert classify(gap(kind=1, tid=7, prev_kind=1, prev_tid=7), ROLES)[0] == "host"


def test_kernel_serving_tells_a_late_thread_from_a_late_state():
    kernel = dict(kind=2, tid=7, prev_kind=2, prev_tid=7)
    assert classify(gap(kind=2, tid=7), ROLES) == ("handover", "loop -> kernel")
    # runnable, not running, for most of the lateness: the host
    category, detail = classify(gap(**kernel, delay_ns=1_500_000, window_ns=2_600_000, cpu_ns=20_000), ROLES)
    assert category == "host" and "runnable but not running" in detail
    # asleep in poll for most of its window: the state itself came late
    category, detail = classify(gap(**kernel, delay_ns=10_000, window_ns=2_600_000, cpu_ns=20_000), ROLES)
    assert category == "simulator" and "the kernel thread was waiting" in detail
    # nothing recorded
    assert classify(gap(**kernel, delay_ns=-1, window_ns=-1, cpu_ns=-1), ROLES)[0] == "unknown"


def test_send_stamps_tell_a_late_wake_up_from_bunched_states():
    """Asleep in poll, the kernel thread looked like it waited for a late state;
    the socket's stamps showed the states had been sent a period apart and sat
    unread while the CPU took milliseconds to wake it (seen in ftrace: the
    wake-up IPI to an idle vCPU came 8 ms late)."""
    kernel = dict(kind=2, tid=7, prev_kind=2, prev_tid=7, delay_ns=10_000, window_ns=2_600_000, cpu_ns=20_000)
    # 3 states (2 lost) sent over 3.3 ms, the newest read 0.9 ms after it was sent
    late_wake = gap(**kernel, prev_sent_ns=9 * MS, sent_ns=12 * MS + 300_000, call_ns=13 * MS + 200_000)
    category, detail = classify(late_wake, ROLES)
    assert category == "host" and "asleep while a state waited" in detail and "3 states sent over 3300 us" in detail
    # 3 states sent within 0.3 ms: the simulator bunched them
    bunched = gap(**kernel, prev_sent_ns=12 * MS, sent_ns=12 * MS + 300_000, call_ns=12 * MS + 310_000)
    assert classify(bunched, ROLES) == ("simulator", "it sent 3 states within 300 us")
    # one stamp missing: the older rule
    assert classify(dataclasses.replace(late_wake, prev_sent_ns=-1), ROLES)[0] == "simulator"


@pytest.mark.parametrize("probe, expected", [
    (FUTEX, "GIL wait"),
    (next(iter(EPOLL)), "host"),
    (RUNNING, "event loop late"),
    (230, "event loop late"),  # clock_nanosleep: time.sleep in a callback
])
def test_probe_taken_while_overdue_decides(probe, expected):
    assert classify(gap(probe=probe, probe_ns=12 * MS), ROLES)[0] == expected


def test_probe_from_another_stall_is_ignored():
    # Probed before the previous cycle was written: it speaks of an earlier stall.
    assert classify(gap(probe=FUTEX, probe_ns=9 * MS), ROLES)[0] == "unknown"


def test_cpu_time_means_python_ran_on_the_loop():
    category, detail = classify(gap(cpu_ns=1_800_000), ROLES)
    assert category == "event loop late" and "1800 us" in detail


def test_nothing_known_is_unknown():
    assert classify(gap(cpu_ns=-1, delay_ns=-1), ROLES)[0] == "unknown"


def test_breakdown_sums_lost_states_per_category():
    gaps = [gap(), gap(tid=GUARDIAN), gap(time_ms=1010, tid=GUARDIAN), gap(probe=FUTEX, probe_ns=12 * MS)]
    out = breakdown(gaps, ROLES)
    assert out["handover"]["gaps"] == 2 and out["handover"]["lost"] == 2 + 9
    assert out["handover"]["details"] == {"loop -> guardian": 11}
    assert out["GIL wait"]["lost"] == 2
    assert out["unknown"]["lost"] == 2
    assert sum(entry["lost"] for entry in out.values()) == sum(g.lost for g in gaps)


# -- the kernel's ring, driven by a stand-in control object (no robot) ------------


def _serve(kernel, control, n: int) -> None:
    zero = np.zeros(7)
    for _ in range(n):
        kernel.cycle(control, torques, 2, 0.0, False, zero)  # torque mode, zero torque


def test_the_kernel_records_each_gap_and_only_gaps():
    buf = StateBuffer()
    kernel = buf.kernel
    kernel.new_session()
    control = Control([1, 3, 4, 8, 9, 10, 13, 14])
    _serve(kernel, control, 3)  # a gap before recording starts: not recorded
    reader = GapReader(kernel)
    reader.start()
    _serve(kernel, control, 5)
    gaps = reader.read()
    assert [(g.prev_ms, g.time_ms, g.lost) for g in gaps] == [(4, 8, 3), (10, 13, 2)]
    assert kernel.counters()[0] == 1 + 3 + 2
    assert reader.cycles == 5
    first, second = gaps
    assert first.prev_tid == 0  # written before recording started: its thread is not known
    assert second.tid == second.prev_tid == threading.get_native_id() and second.kind == second.prev_kind == 0
    assert second.prev_write_ns < second.call_ns < second.read_ns <= second.write_ns
    assert second.cpu_ns >= 0 and second.delay_ns >= 0 and second.window_ns >= 0  # schedstat was read
    # The first gap's cycle is this thread's first since start(): what it did before is not known.
    assert first.cpu_ns == -1
    assert classify(first)[0] != "handover"  # an unknown writer is not a change of writer
    assert reader.read() == []  # read once


def test_records_beyond_the_ring_are_counted_as_missed():
    buf = StateBuffer()
    kernel = buf.kernel
    kernel.new_session()
    reader = GapReader(kernel)
    reader.start()
    _serve(kernel, Control(range(0, 3 * 700, 3)), 700)  # 699 gaps of 2 states
    gaps = reader.read()
    assert len(gaps) + reader.missed == 699 and 0 < len(gaps) < 699
    assert gaps[-1].time_ms == 3 * 699
