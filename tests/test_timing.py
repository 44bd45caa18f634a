import numpy as np
import pytest

from aiofranka.timing import SampleRing


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
