"""Importable factories and objects for tests/test_to_process.py (they run in child processes)."""

from __future__ import annotations

import asyncio
import os
import threading
import time


class FactoryError(Exception):
    """Raised by :func:`broken_factory`."""


class UnpicklableError(Exception):
    """Cannot be pickled: it holds a lock."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


class TwoArgError(Exception):
    """Pickles, but unpickling calls ``TwoArgError(message)`` and fails."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a}/{b}")


def broken_factory(reason: str):
    raise FactoryError(f"cannot build: {reason}")


class Worker:
    """The object most tests drive through a proxy."""

    def __init__(self, tag: str = "worker", value: int = 42) -> None:
        self.tag = tag
        self.value = value
        self.log: list = []
        self._last_timing = {"infer_ms": 1.5}  # private-looking: reached with await proxy._last_timing

    def echo(self, x):
        return x

    def _scaled(self, k):
        return k * self.value

    def add(self, a, b):
        return a + b

    def record(self, i):
        self.log.append(i)
        return i

    def take_log(self):
        log, self.log = self.log, []
        return log

    def slow(self, seconds, value=None):
        time.sleep(seconds)
        return value

    def fail_in_child(self, message):
        raise ValueError(message)

    def raise_unpicklable(self):
        raise UnpicklableError("holds a lock")

    def raise_unloadable(self):
        raise TwoArgError("left", "right")

    def describe(self, array):
        return {
            "shape": array.shape,
            "dtype": str(array.dtype),
            "c": bool(array.flags.c_contiguous),
            "f": bool(array.flags.f_contiguous),
            "writeable": bool(array.flags.writeable),
        }

    def scale(self, array, factor):
        return array * factor

    def getpid(self):
        return os.getpid()

    def scheduling(self):
        policies = {"main": os.sched_getscheduler(0)}
        seen = {}

        def probe():
            seen["thread"] = os.sched_getscheduler(0)

        thread = threading.Thread(target=probe)
        thread.start()
        thread.join()
        policies.update(seen)
        return policies

    def exit_hard(self, code):
        os._exit(code)

    async def async_add(self, a, b):
        await asyncio.sleep(0)
        return a + b

    def make_callable_result(self):
        return lambda x: x + 1


def hammer_seqlock(name: str, slots: int, seconds: float) -> None:
    """Publish frames whose every slot holds the frame's number, as fast as possible."""
    import numpy as np

    from aiofranka import _kernel
    from aiofranka.offload._shm import Mapped

    mapped = Mapped(name)
    frame = np.frombuffer(mapped.buf, dtype=np.float64, count=slots)
    values = np.zeros(slots)
    end = time.monotonic() + seconds
    k = 0
    while time.monotonic() < end:
        for _ in range(100):
            k += 1
            values.fill(k)
            _kernel._test_seqlock_write(frame, values)
    del frame
    mapped.close()
