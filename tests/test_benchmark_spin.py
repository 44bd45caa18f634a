"""benchmarks/_common.spin_count, the L1 load's counter."""

from __future__ import annotations

import os
import sys
import threading

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCHMARKS)

import _common  # noqa: E402


def test_spin_count_counts_and_stops_on_its_event():
    assert _common.spin_count(0.05) > 1000
    stop = threading.Event()
    stop.set()
    assert _common.spin_count(10.0, stop) == 0


def test_spin_count_recompiles_its_block_every_segment(monkeypatch):
    """One placement per run measured memory layout, not load (docs/versus.md#l1)."""
    compiled = []

    def counting_exec(source, scope):
        compiled.append(source)
        exec(source, scope)  # noqa: S102

    monkeypatch.setattr(_common, "exec", counting_exec, raising=False)
    _common.spin_count(0.3, segment=0.05)
    assert 4 <= len(compiled) <= 8
