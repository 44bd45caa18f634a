"""DeadlineGrid, FakeClock and Pacer: pacing logic in virtual time (zero wall time)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from aiofranka.pacing import DeadlineGrid, FakeClock, Pacer
from aiofranka.stats import SessionStats

T = 0.02  # s, the period at 50 Hz


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def paced(work: np.ndarray, *, window: int = 10_000, rate_hz: float = 50) -> tuple[Pacer, np.ndarray]:
    """Run ``work`` (seconds per iteration) through a Pacer on a FakeClock; return it and the start times."""
    clock = FakeClock()
    pacer = Pacer(rate_hz, spin_s=0.0, window=window, clock=clock, sleep=clock.sleep)
    starts = [clock()]
    for w in work:
        clock.advance(float(w))
        pacer.wait()
        starts.append(clock())
    return pacer, np.array(starts)


def expected_stats(periods: np.ndarray, target: float) -> dict:
    jitter_us = 1e6 * np.abs(periods - target)
    return {
        "avg_period_s": periods.mean(),
        "jitter.p50_us": np.percentile(jitter_us, 50),
        "jitter.p99_us": np.percentile(jitter_us, 99),
        "jitter.max_us": jitter_us.max(),
        "jitter.mean_us": jitter_us.mean(),
    }


def assert_matches(stats: SessionStats, expected: dict) -> None:
    for name, value in expected.items():  # periods are kept as integer ns: equal to the nanosecond
        if name.startswith("jitter."):
            assert getattr(stats.jitter, name[7:]) == pytest.approx(value, abs=2e-3), name
        else:
            assert getattr(stats, name) == pytest.approx(value, abs=2e-9), name


# --------------------------------------------------------------------------
# Pacer, in virtual time
# --------------------------------------------------------------------------

def test_plain_sleep_pacing_sleeps_to_the_absolute_deadline():
    clock = FakeClock()
    pacer = Pacer(50, spin_s=0.0, clock=clock, sleep=clock.sleep)
    t0 = clock()
    for k in range(1, 6):
        clock.advance(0.003 * k)  # work of varying length
        assert pacer.wait() == 0.0
        assert clock() == pytest.approx(t0 + k * T, abs=1e-12)  # no drift: absolute deadlines
    assert clock.sleeps == pytest.approx([T - 0.003 * k for k in range(1, 6)])
    assert pacer.overruns == 0
    assert pacer.iterations == 5


def test_hybrid_pacing_sleeps_coarsely_then_spins_to_the_deadline():
    clock = FakeClock(read_step_s=1e-6)  # each reading takes 1 us, so the spin ends
    pacer = Pacer(50, spin_s=0.0012, clock=clock, sleep=clock.sleep)
    start = pacer.deadline - T
    clock.advance(0.005)
    lateness = pacer.wait()
    assert clock.sleeps[-1] == pytest.approx(T - 0.0012 - 0.005, abs=1e-5)
    assert 0.0 <= lateness <= 1e-6
    assert clock.now - start == pytest.approx(T, abs=2e-6)
    # Beyond 1/spin_s it never sleeps: it spins the whole period.
    fast = Pacer(1000, spin_s=0.0012, clock=clock, sleep=clock.sleep)
    sleeps = len(clock.sleeps)
    assert 0.0 <= fast.wait() <= 1e-6
    assert len(clock.sleeps) == sleeps


def test_no_catch_up_burst_after_a_stall():
    clock = FakeClock()
    pacer = Pacer(50, spin_s=0.0, clock=clock, sleep=clock.sleep)
    for _ in range(3):
        clock.advance(0.001)
        pacer.wait()
    deadline = pacer.deadline
    clock.advance(5 * T)  # the work stalls for 5 periods
    stall_end = clock.now
    lateness = pacer.wait()
    assert lateness == pytest.approx(stall_end - deadline)
    assert clock.now == stall_end  # the late iteration starts at once...
    assert pacer.deadline == pytest.approx(stall_end + T)  # ...and the schedule moves on from now
    starts = [stall_end]
    for _ in range(5):
        clock.advance(0.001)
        pacer.wait()
        starts.append(clock.now)
    assert np.diff(starts) == pytest.approx([T] * 5, abs=1e-12)  # full periods, not back to back
    assert pacer.overruns == 1


def test_a_very_late_wakeup_moves_the_schedule_on_without_an_overrun():
    clock = FakeClock()
    extra = iter([0.0, 3.5 * T] + [0.0] * 10)
    pacer = Pacer(50, spin_s=0.0, clock=clock, sleep=lambda s: clock.sleep(s + next(extra)))
    clock.advance(0.001)
    pacer.wait()
    clock.advance(0.001)
    assert pacer.wait() == pytest.approx(3.5 * T)  # woke 3.5 periods late
    woke = clock.now
    starts = [woke]
    for _ in range(4):
        clock.advance(0.001)
        pacer.wait()
        starts.append(clock.now)
    assert np.diff(starts) == pytest.approx([T] * 4, abs=1e-12)
    assert pacer.overruns == 0  # late wake-ups show as jitter, not as overruns
    assert pacer.stats.jitter.max_us == pytest.approx(3.5 * T * 1e6, abs=2e-3)


def test_overrun_means_the_work_ended_after_the_deadline():
    clock = FakeClock()
    pacer = Pacer(50, spin_s=0.0, clock=clock, sleep=clock.sleep)
    clock.advance(T - 1e-6)  # ends just before the deadline
    pacer.wait()
    assert pacer.overruns == 0
    clock.advance(T)  # ends exactly on the deadline: the next iteration starts on time
    assert pacer.wait() == 0.0
    assert pacer.overruns == 0
    clock.advance(T + 1e-6)  # ends after it
    assert pacer.wait() == pytest.approx(1e-6)
    assert pacer.overruns == 1
    stats = pacer.stats
    assert stats.iterations == 3 and stats.overruns == 1


def test_an_abandoned_sleep_records_nothing():
    clock = FakeClock()
    pacer = Pacer(50, spin_s=0.0, clock=clock, sleep=lambda s: True)  # like Event.wait once set
    deadline = pacer.deadline
    assert pacer.wait() is None
    assert pacer.deadline == deadline
    assert pacer.iterations == 0


# --------------------------------------------------------------------------
# SessionStats
# --------------------------------------------------------------------------

def test_stats_percentiles_equal_numpys_on_a_known_sequence():
    rng = np.random.default_rng(3)
    work = rng.uniform(0.2 * T, 3 * T, size=500)
    pacer, starts = paced(work)
    periods = np.maximum(work, T)  # the known sequence: a full period, or the overrunning work
    assert np.diff(starts) == pytest.approx(periods, abs=1e-12)
    stats = pacer.stats
    assert stats.iterations == 500
    assert stats.overruns == int(np.sum(work > T))
    assert stats.target_period_s == T
    assert_matches(stats, expected_stats(periods, T))


def test_stats_percentiles_with_late_wakeups_on_both_sides():
    rng = np.random.default_rng(5)
    extra = rng.uniform(0.0, 0.4 * T, size=300)
    clock = FakeClock()
    late = iter(extra)
    pacer = Pacer(50, spin_s=0.0, clock=clock, sleep=lambda s: clock.sleep(s + next(late)))
    t0 = clock()
    for _ in extra:
        clock.advance(0.1 * T)
        pacer.wait()
    starts = t0 + T * np.arange(301) + np.concatenate(([0.0], extra))  # deadline k + its late wake-up
    periods = np.diff(starts)  # shorter and longer than T
    assert (periods < T).any() and (periods > T).any()
    assert clock.now == pytest.approx(starts[-1], abs=1e-9)
    assert_matches(pacer.stats, expected_stats(periods, T))


def test_stats_cover_only_the_newest_10000_periods():
    rng = np.random.default_rng(11)
    old = np.full(2_000, 5 * T)  # 2,000 big overruns first (jitter 4 T)...
    new = rng.uniform(0.1 * T, 2 * T, size=10_000)  # ...then 10,000 ordinary iterations
    pacer, _ = paced(np.concatenate((old, new)))
    stats = pacer.stats
    assert stats.iterations == 12_000
    assert stats.overruns == 2_000 + int(np.sum(new > T))  # counts are since the start
    assert stats.jitter.max_us < 1e6 * (4 * T - 1e-6)  # the old periods are out of the window
    assert_matches(stats, expected_stats(np.maximum(new, T), T))


def test_window_is_configurable():
    pacer, _ = paced(np.concatenate((np.full(5, 3 * T), np.full(100, 0.5 * T))), window=100)
    stats = pacer.stats
    assert stats.jitter.max_us == 0.0 and stats.avg_period_s == pytest.approx(T)


def test_empty_stats_and_to_dict():
    stats = Pacer(50).stats
    assert stats.iterations == 0 and stats.overruns == 0
    assert math.isnan(stats.jitter.p99_us) and math.isnan(stats.avg_period_s) and stats.jitter.count == 0
    pacer, _ = paced([0.001, 0.001])
    as_dict = pacer.stats.to_dict()
    assert list(as_dict) == ["iterations", "overruns", "target_period_s", "avg_period_s", "jitter"]
    assert list(as_dict["jitter"]) == ["count", "p50_us", "p99_us", "max_us", "mean_us"]
    assert as_dict["iterations"] == 2
    with pytest.raises(AttributeError):
        pacer.stats.iterations = 3  # frozen
    assert "iterations" in str(pacer.stats)


def test_the_default_spin_runs_without_the_gil_and_an_injected_clock_keeps_python():
    assert Pacer(50)._spin_until is not None
    clock = FakeClock()
    assert Pacer(50, clock=clock, sleep=clock.sleep)._spin_until is None


# --------------------------------------------------------------------------
# DeadlineGrid and FakeClock
# --------------------------------------------------------------------------

@pytest.mark.parametrize("rule", ["restart", "skip"])
def test_grid_is_drift_free_and_a_late_start_within_a_period_is_jitter(rule):
    grid = DeadlineGrid(10.0, on_overrun=rule, due=100.0)
    assert grid.next_due(100.0) == 110.0
    assert grid.next_due(117.5) == 120.0  # started 7.5 late: the grid does not move
    assert grid.next_due(120.0) == 130.0
    assert grid.due == 130.0 and grid.period == 10.0 and grid.on_overrun == rule


def test_restart_restarts_the_grid_from_now_after_a_missed_deadline():
    grid = DeadlineGrid(10.0, on_overrun="restart", due=100.0)
    assert grid.next_due(103.0, overran=True) == 113.0  # the work ended after 100
    assert grid.next_due(131.0) == 141.0  # started after the following deadline (123) too
    assert grid.next_due(141.0, overran=True) == 151.0  # ended exactly on it, but the caller says overran


def test_skip_drops_missed_ticks_and_keeps_the_grids_phase():
    grid = DeadlineGrid(10.0, on_overrun="skip", due=100.0)
    assert grid.next_due(103.0, overran=True) == 110.0
    assert grid.next_due(131.0) == 140.0  # 120 and 130 are dropped, no burst
    assert grid.next_due(150.0, overran=True) == 160.0  # a tick equal to now has passed
    assert grid.next_due(161.0) == 170.0
    grid.reset(5.0)
    assert grid.due == 5.0 and grid.next_due(5.0) == 15.0


def set_freq_reference(period: float, next_tick, clock: FakeClock, wait_until) -> float:
    """Controller._set_validated's pacing at commit 41dccc1, verbatim but for the names: the next tick."""
    now = clock.now
    tick = next_tick if next_tick is not None else float(now)
    if tick > now:
        wait_until(tick)
    now = clock.now
    tick += period
    if tick <= now:  # overran: skip the ticks already missed
        tick += period * math.ceil((now - tick) / period + 1e-9)
    return tick


def set_freq_with_grid(grid: DeadlineGrid, clock: FakeClock, wait_until) -> None:
    """The same pacing written with the grid (the grid made at the first call, due then)."""
    now = clock.now
    overran = not grid.due > now
    if not overran:
        wait_until(grid.due)
        now = clock.now
    grid.next_due(now, overran=overran)


@pytest.mark.parametrize("period_ms", [1.0, 2.5, 1000.0 / 30, 1000.0 / 7, 50.0])
def test_skip_models_controller_set_freq_exactly(period_ms):
    """``set()`` calls paced by ``set_freq`` on a robot clock of whole milliseconds, with random
    work between calls and random event-loop delays after a wake-up: the grid with
    ``on_overrun="skip"`` gives the same wake-ups and ticks as the controller's code."""
    rng = np.random.default_rng(int(period_ms * 1000))
    clocks = FakeClock(0.0), FakeClock(0.0)
    next_tick, grid = None, None
    for _ in range(3_000):
        work = float(rng.integers(0, int(3 * period_ms) + 2))
        late = float(rng.integers(0, int(2 * period_ms) + 2)) if rng.random() < 0.2 else 0.0
        for clock in clocks:
            clock.advance(work)

        def wait_until(tick, clock=None):
            # The waiter fires at the first robot ms >= tick; the task resumes `late` ms later.
            clock.advance(math.ceil(tick) - clock.now + late)

        next_tick = set_freq_reference(period_ms, next_tick, clocks[0],
                                       lambda tick: wait_until(tick, clocks[0]))
        if grid is None:
            grid = DeadlineGrid(period_ms, on_overrun="skip", due=clocks[1].now)
        set_freq_with_grid(grid, clocks[1], lambda tick: wait_until(tick, clocks[1]))
        assert clocks[1].now == clocks[0].now
        assert grid.due == next_tick


def test_grid_rejects_bad_values_by_name():
    with pytest.raises(ValueError, match="period"):
        DeadlineGrid(0.0, on_overrun="skip")
    with pytest.raises(ValueError, match="on_overrun"):
        DeadlineGrid(1.0, on_overrun="catch-up")
    with pytest.raises(TypeError):
        DeadlineGrid(1.0)  # the rule is never implicit


def test_fake_clock_time_never_goes_back():
    clock = FakeClock(read_step_s=0.5)
    assert clock() == 1000.0 and clock() == 1000.5 and clock.now == 1001.0  # each reading advances
    clock.sleep(2.0)
    clock.advance(0.0)
    assert clock.now == 1003.0 and clock.sleeps == [2.0]
    with pytest.raises(ValueError, match="cannot go back"):
        clock.advance(-1e-9)
    with pytest.raises(ValueError, match="cannot go back"):
        clock.sleep(-1.0)
    assert clock.now == 1003.0 and clock.sleeps == [2.0]
    with pytest.raises(ValueError, match="read_step_s"):
        FakeClock(read_step_s=-1.0)
