"""The seqlock that carries server mode's state: no torn snapshot, even under a hammering writer."""

from __future__ import annotations

import multiprocessing
import secrets
import threading
import time

import numpy as np
import pytest

from aiofranka import _kernel
from aiofranka.offload._shm import Owned

import _process_targets as targets

SLOTS = _kernel.FRAME_LEN


def test_layout_fills_the_frame_without_overlap():
    spans = sorted(_kernel.FRAME_LAYOUT.values())
    assert spans[0] == (0, 1)  # the sequence word comes first
    for (start, length), (next_start, _) in zip(spans, spans[1:]):
        assert start + length == next_start
    assert spans[-1][0] + spans[-1][1] == SLOTS


def test_write_then_read_round_trips_and_counts_by_two():
    frame = np.zeros(SLOTS)
    out = np.zeros(SLOTS)
    for k in (1, 2, 3):
        _kernel._test_seqlock_write(frame, np.arange(SLOTS, dtype=float) * k)
        assert _kernel.seqlock_read(frame, out) == 2 * k
        np.testing.assert_array_equal(out[1:], np.arange(1, SLOTS, dtype=float) * k)


def test_a_writer_that_died_mid_write_gives_none_not_a_hang():
    frame = np.zeros(SLOTS)
    frame.view(np.uint64)[0] = 7  # odd: a write under way for ever
    t0 = time.monotonic()
    assert _kernel.seqlock_read(frame, np.zeros(SLOTS), 0.05) is None
    assert 0.04 < time.monotonic() - t0 < 1.0


def test_a_writer_preempted_mid_write_is_waited_for():
    frame = np.zeros(SLOTS)
    frame.view(np.uint64)[0] = 7  # odd: the writer lost its core mid-write

    def finish_later():
        time.sleep(0.2)  # runs because the waiting reader releases the GIL
        frame[1:] = 3.0
        frame.view(np.uint64)[0] = 8

    writer = threading.Thread(target=finish_later)
    writer.start()
    out = np.zeros(SLOTS)
    assert _kernel.seqlock_read(frame, out, 2.0) == 8
    writer.join()
    assert (out[1:] == 3.0).all()


def test_bad_buffers_are_refused():
    with pytest.raises(ValueError, match="frame"):
        _kernel.seqlock_read(np.zeros(4), np.zeros(SLOTS))
    with pytest.raises(ValueError, match="contiguous"):
        _kernel._test_seqlock_write(np.zeros(SLOTS), np.zeros(2 * SLOTS)[::2])
    with pytest.raises(TypeError):
        _kernel.seqlock_read(np.zeros(SLOTS))


def test_no_torn_snapshot_while_another_process_hammers_the_frame():
    shm = Owned(f"afkt{secrets.token_hex(4)}", 8 * SLOTS)
    frame = np.frombuffer(shm.buf, dtype=np.float64, count=SLOTS)
    ctx = multiprocessing.get_context("spawn")
    writer = ctx.Process(target=targets.hammer_seqlock, args=(shm.name, SLOTS, 3.0))
    writer.start()
    out = np.zeros(SLOTS)
    reads = torn_naive = fresh = 0
    last_seq = 0
    try:
        while frame[1] == 0.0:  # wait for the first frame
            time.sleep(0.001)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            for _ in range(200):
                seq = _kernel.seqlock_read(frame, out)
                assert seq is not None and seq % 2 == 0
                assert seq >= last_seq
                fresh += seq > last_seq
                last_seq = seq
                value = out[1]
                assert (out[1:] == value).all(), f"torn snapshot: {np.unique(out[1:])}"
                assert seq == 2 * value  # the frame number matches its sequence word
                reads += 1
                naive = frame.copy()  # the same read without the lock, for contrast
                torn_naive += not (naive[1:] == naive[1]).all()
    finally:
        writer.join(10)
        del frame
        shm.unlink()
    assert writer.exitcode == 0
    assert reads > 10_000 and fresh > 1000
    # Unlocked copies of the same frame do tear: the check above can see it.
    print(f"{reads} locked reads, {fresh} fresh; unlocked copies torn: {torn_naive}")
    assert torn_naive > 0, f"{reads} reads, no torn unlocked copy either"
