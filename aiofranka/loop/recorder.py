"""The 1 kHz recorder: chosen per-cycle fields, kept by the C kernel in a preallocated ring.

Every cycle written (by the event loop, the guardian or the rescue thread)
adds one row, in C, with no Python per cycle. Fields, units and the ring's
semantics: docs/recorder.md.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from .. import _kernel, validation
from .command import MODES

__all__ = ["FIELDS", "SERVERS", "Recorder", "load"]

#: Field name -> values per cycle, in the kernel's order.
FIELDS: dict[str, int] = dict(_kernel.RECORD_FIELDS)
#: The ``server`` column's codes: who served the cycle.
SERVERS = ("loop", "guardian", "rescue", "kernel")
#: Longest recording, in seconds of 1 kHz cycles (the ring is allocated up front: ~0.6 MB per second with every field).
MAX_SECONDS = 3600.0
_FORMAT = "aiofranka-recording"
_POSES = ("ee", "ee_desired")
_CODES = ("server", "mode")


def _columns(fields) -> tuple[tuple[str, ...], tuple[int, ...], int]:
    if fields is None:
        names = tuple(FIELDS)
    else:
        if isinstance(fields, str):
            fields = (fields,)
        try:
            names = tuple(fields)
        except TypeError:
            raise TypeError(f"fields must be None or a sequence of field names, got {type(fields).__name__}") from None
        unknown = [name for name in names if name not in FIELDS]
        if unknown or not names:
            raise ValueError(f"fields must name some of {', '.join(FIELDS)}; got {list(names)!r}")
        names = tuple(name for name in FIELDS if name in names)  # kernel order, no repeats
    columns, width = [], 0
    for name, n in FIELDS.items():
        if name in names:
            columns.append(width)
            width += n
        else:
            columns.append(-1)
    return names, tuple(columns), width


class Recorder:
    """A recording of per-cycle fields; made by :meth:`Controller.record`.

    Rows are written by the kernel from the next cycle on, until :meth:`stop`
    (or the end of a ``with`` / ``async with`` block). ``seconds`` sizes the
    ring (1,000 rows a second). When it is full, ``overwrite=False`` keeps the
    first rows and ``overwrite=True`` the latest; either way :attr:`dropped`
    counts the cycles served but not kept.

    Example::

        async with Controller(robot) as controller:
            with controller.record(["time_ms", "q", "q_desired", "server"], seconds=5) as rec:
                await controller.move(q)
            rec.save("move.npz")   # then: aiofranka report move.npz
            print(rec.table())
    """

    def __init__(self, kernel, fields=None, *, seconds: float = 10.0, overwrite: bool = False) -> None:
        names, columns, width = _columns(fields)
        seconds = validation.positive("seconds", seconds, upper=MAX_SECONDS)
        if not isinstance(overwrite, bool):
            raise TypeError(f"overwrite must be True or False, got {overwrite!r}")
        self._kernel = kernel
        self._fields = names
        self._columns = {name: (columns[i], n) for i, (name, n) in enumerate(FIELDS.items()) if columns[i] >= 0}
        self._capacity = max(1, math.ceil(seconds * 1000.0))
        self._overwrite = overwrite
        # Filled, not np.empty: every page is touched now, not by a page
        # fault inside a 1 kHz cycle.
        self._matrix = np.full((self._capacity, width), np.nan)
        try:
            kernel.record_start(self._matrix, columns, overwrite)
        except RuntimeError as exc:
            from ..exceptions import ControllerStateError

            raise ControllerStateError("a recording is already running on this controller; stop it first") from exc
        self._final: tuple[int, int] | None = None

    # -- figures ------------------------------------------------------------------

    @property
    def fields(self) -> tuple[str, ...]:
        return self._fields

    @property
    def capacity(self) -> int:
        """Rows the ring holds (1,000 per second asked for)."""
        return self._capacity

    @property
    def overwrite(self) -> bool:
        return self._overwrite

    @property
    def running(self) -> bool:
        return self._final is None

    def _counts(self) -> tuple[int, int]:
        if self._final is not None:
            return self._final
        written, dropped, _ = self._kernel.record_counts()
        return written, dropped

    @property
    def dropped(self) -> int:
        """Cycles served while recording that are not in the ring (when full:
        the later ones, or with ``overwrite`` the oldest, overwritten)."""
        return self._counts()[1]

    @property
    def count(self) -> int:
        """Rows kept so far."""
        return min(self._counts()[0], self._capacity)

    # -- lifecycle ------------------------------------------------------------------

    def stop(self) -> "Recorder":
        """Stop recording (idempotent): no row is written once this returns."""
        if self._final is None:
            self._final = self._kernel.record_stop()
        return self

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    async def __aenter__(self) -> "Recorder":
        return self

    async def __aexit__(self, *exc) -> None:
        self.stop()

    # -- the rows -----------------------------------------------------------------------

    def _rows(self) -> np.ndarray:
        """The kept rows, oldest first (a copy; whole rows only while running)."""
        cap = self._capacity
        written, _ = self._counts()
        if not self._overwrite:
            return self._matrix[:min(written, cap)].copy()  # rows below `written` are never rewritten
        low = max(0, written - cap)
        rows = self._matrix[np.arange(low, written) % cap]
        if self._final is None:
            # Rows the kernel overwrote (or may be overwriting) while we copied are left out.
            after, _, busy = self._kernel.record_counts()
            rows = rows[max(0, after + busy - cap - low):]
        return rows

    def data(self) -> dict[str, np.ndarray]:
        """The kept rows as arrays, one per field, oldest first: ``time_ms`` int64,
        ``server`` and ``mode`` int8 codes (:data:`SERVERS`, the Controller's
        modes), ``ee`` and ``ee_desired`` (n, 4, 4), vectors (n, 7), the rest (n,)."""
        rows = self._rows()
        out = {}
        for name, (column, width) in self._columns.items():
            block = rows[:, column:column + width]
            if name == "time_ms":
                out[name] = block[:, 0].astype(np.int64)
            elif name in _CODES:
                out[name] = block[:, 0].astype(np.int8)
            elif name in _POSES:
                out[name] = block.reshape(-1, 4, 4).copy()
            elif width == 1:
                out[name] = block[:, 0].copy()
            else:
                out[name] = block.copy()
        return out

    def meta(self) -> dict:
        written, dropped = self._counts()
        return {"format": _FORMAT, "version": 1, "fields": list(self._fields), "capacity": self._capacity,
                "overwrite": self._overwrite, "written": written, "dropped": dropped,
                "servers": list(SERVERS), "modes": list(MODES)}

    def save(self, path) -> str:
        """Write the rows and the figures to an ``.npz`` file; returns its path (``.npz`` added if missing)."""
        path = os.fspath(path)
        if not path.endswith(".npz"):
            path += ".npz"
        np.savez(path, __meta__=np.array(json.dumps(self.meta())), **self.data())
        return path

    def plot(self, path, *, title: str | None = None) -> str:
        """Write a PNG of the rows (``aiofranka[report]``): see :func:`aiofranka.report.plot_recording`."""
        from ..report import plot_recording

        return plot_recording(self.data(), path, meta=self.meta(), title=title)

    def table(self) -> str:
        """A short text summary: rows per server, dropped, period and compute percentiles."""
        from ..report import summary_table

        return summary_table(self.data(), self.meta())

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Recorder {state} {self.count}/{self._capacity} rows, {self.dropped} dropped, fields={self._fields}>"


def load(path) -> tuple[dict[str, np.ndarray], dict]:
    """Read a recording saved by :meth:`Recorder.save`: ``(data, meta)``."""
    with np.load(os.fspath(path), allow_pickle=False) as archive:
        if "__meta__" not in archive.files:
            raise ValueError(f"{os.fspath(path)!r} is not an aiofranka recording (no __meta__ entry)")
        meta = json.loads(str(archive["__meta__"]))
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{os.fspath(path)!r} is not an aiofranka recording (format {meta.get('format')!r})")
        data = {name: archive[name] for name in archive.files if name != "__meta__"}
    return data, meta
