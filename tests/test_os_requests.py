"""Process-wide requests shared by every running controller (aiofranka._os): pure logic."""

from __future__ import annotations

import sys

from aiofranka._os import _CpuWakeLatency


def _requested(path) -> list[int]:
    data = path.read_bytes()
    return [int.from_bytes(data[i:i + 4], sys.byteorder, signed=True) for i in range(0, len(data), 4)]


def test_the_smallest_latency_is_requested_while_any_session_runs(tmp_path, monkeypatch):
    # /dev/cpu_dma_latency takes each 4-byte write as the new request and drops it
    # on close; a plain file records the writes.
    path = tmp_path / "cpu_dma_latency"
    path.write_bytes(b"")
    monkeypatch.setattr(_CpuWakeLatency, "PATH", str(path))
    latency = _CpuWakeLatency()
    assert latency.enter(50) == 50
    assert latency.enter(0) == 0      # a second controller asks for less
    latency.leave(0)                  # ... and stops first: back to 50
    assert _requested(path) == [50, 0, 50]
    assert latency._fd is not None
    latency.leave(50)
    assert latency._fd is None        # the last one closes the request
    latency.leave(50)                 # a stray leave changes nothing
    assert _requested(path) == [50, 0, 50]


def test_no_request_where_the_file_cannot_be_opened(tmp_path, monkeypatch):
    monkeypatch.setattr(_CpuWakeLatency, "PATH", str(tmp_path / "absent" / "cpu_dma_latency"))
    latency = _CpuWakeLatency()
    assert latency.enter(0) is None
    latency.leave(0)
    assert latency._fd is None
