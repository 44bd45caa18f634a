"""Recorders and summaries: SampleRing and LatencyHistogram percentiles against numpy's."""

import numpy as np
import pytest

from aiofranka.stats import LatencyHistogram, SampleRing


def test_summary_matches_numpy_percentiles():
    rng = np.random.default_rng(7)
    samples = rng.integers(1_000, 900_000, size=5_000)
    ring = SampleRing(10_000)
    for value in samples:
        ring.push(int(value))
    summary = ring.summary()
    us = samples / 1000.0
    assert summary.count == 5_000
    assert summary.p50_us == pytest.approx(np.percentile(us, 50))
    assert summary.p99_us == pytest.approx(np.percentile(us, 99))
    assert summary.max_us == pytest.approx(us.max())


def test_window_keeps_the_newest_samples_in_order():
    ring = SampleRing(4)
    for value in range(10):
        ring.push(value)
    assert ring.values().tolist() == [6, 7, 8, 9]
    assert ring.count == 10
    ring.clear()
    assert ring.values().size == 0
    assert np.isnan(ring.summary().p50_us)


def test_size_must_be_positive():
    with pytest.raises(ValueError, match="size must be positive"):
        SampleRing(0)


def test_latency_histogram_percentiles_are_exact_to_a_microsecond():
    rng = np.random.default_rng(11)
    samples = rng.integers(5_000, 900_000, size=20_000)
    hist = LatencyHistogram()
    for value in samples:
        hist.push(int(value))
    summary = hist.summary()
    us = samples / 1000.0
    assert abs(summary.p50_us - np.percentile(us, 50)) <= 1.0
    assert abs(summary.p99_us - np.percentile(us, 99)) <= 1.0
    assert summary.max_us == pytest.approx(us.max())
    assert summary.mean_us == pytest.approx(us.mean())
    assert summary.count == 20_000


def test_latency_histogram_keeps_outliers_in_the_last_bin_and_the_true_max():
    hist = LatencyHistogram(limit_us=100)
    for value in (10_000, 20_000, 5_000_000):
        hist.push(value)
    summary = hist.summary()
    assert summary.max_us == 5000.0
    assert summary.p99_us <= 5000.0
    hist.clear()
    assert hist.count == 0 and np.isnan(hist.summary().p50_us)


def test_the_loop_table_says_who_served_and_drops_timings_the_kernel_does_not_keep():
    from aiofranka.stats import LoopStats, Summary

    common = dict(cycles=1000, lost_cycles=0, min_success_rate=1.0, compute=Summary.empty(), period=Summary.empty(),
                  robot_time_s=1.0, wall_time_s=1.0, mode="impedance", switch_interval_s=0.005)
    kernel = LoopStats(**common, serve="kernel", kernel_cycles=999).table()
    assert "kernel (999 cycles; per-cycle timings: controller.record)" in kernel
    assert "compute (read->write)" not in kernel and "period" not in kernel
    loop = LoopStats(**common).table()
    assert "compute (read->write)" in loop and "served by" in loop and "kernel (" not in loop
    following = LoopStats(**common, serve="kernel", serve_cpu=1, serve_moves=3, serve_follows=True).table()
    assert "1 (3 moves, following the states)" in following
    assert "following" not in LoopStats(**common, serve="kernel", serve_cpu=1).table()
