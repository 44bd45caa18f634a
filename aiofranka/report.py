"""Plots and summaries of recordings and loop timings (``aiofranka[report]``: matplotlib).

:func:`plot_recording` draws what :meth:`Recorder.data` returns (tracking
error, commanded torque, period and compute histograms, with the cycles the
guardian or the rescue thread served marked on the time axis);
:func:`plot_timing` draws period and compute histograms of several runs (the
benchmarks' jitter plots). Figures are drawn with matplotlib's Agg canvas,
without pyplot, so no global backend is switched. See docs/recorder.md.
"""

from __future__ import annotations

import os

import numpy as np

from .exceptions import MissingDependencyError

__all__ = ["plot_recording", "plot_timing", "summary_table"]

_SERVERS = ("loop", "guardian", "rescue", "kernel")
_MARK = {1: ("tab:orange", "served by the guardian"), 2: ("tab:red", "served by the rescue thread")}
INSTALL = "plots need matplotlib: pip install matplotlib==3.11.2 (from a checkout: pip install -e '.[report]')"


def _figure(size):
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingDependencyError(INSTALL) from exc
    return Figure(figsize=size, layout="constrained")


def _save(fig, path) -> str:
    path = os.fspath(path)
    if not path.lower().endswith(".png"):
        path += ".png"
    fig.savefig(path, dpi=110, format="png")
    return path


def _percentiles(values: np.ndarray) -> str:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return "no samples"
    p50, p99 = np.percentile(values, [50, 99])
    return f"p50 {p50:.3g}, p99 {p99:.3g}, max {values.max():.3g}"


def _histogram(ax, values: np.ndarray, label: str | None = None, bins: int = 80) -> None:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return
    top = values.max()
    edges = np.linspace(min(0.0, values.min()), top * 1.02 if top > 0 else 1.0, bins + 1)
    ax.hist(values, bins=edges, histtype="step", linewidth=1.3,
            label=f"{label}: {_percentiles(values)}" if label else _percentiles(values))
    ax.set_yscale("log")
    ax.set_ylabel("cycles")
    ax.legend(fontsize=7, loc="upper right")


def _not_recorded(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"not recorded ({what})", ha="center", va="center", transform=ax.transAxes, color="gray")
    ax.set_xticks([])
    ax.set_yticks([])


def _legend(ax, **options) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, **options)


def _time_axis(data: dict) -> tuple[np.ndarray, str]:
    if "time_ms" in data:
        return (data["time_ms"] - data["time_ms"][0]) / 1000.0, "robot time (s)"
    if "t" in data:
        return data["t"] - data["t"][0], "wall time (s)"
    n = len(next(iter(data.values()))) if data else 0
    return np.arange(n, dtype=float), "cycle"


def _runs(mask: np.ndarray):
    """(start, end) index pairs of the runs of True in mask (end exclusive)."""
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    return zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1))


def _mark_servers(axes, x: np.ndarray, server: np.ndarray | None) -> None:
    if server is None or x.size == 0:
        return
    step = float(np.median(np.diff(x))) if x.size > 1 else 1.0
    for code, (color, label) in _MARK.items():
        first = True
        for start, end in _runs(server == code):
            for ax in axes:
                ax.axvspan(x[start], x[end - 1] + step, color=color, alpha=0.25, linewidth=0,
                           label=label if first and ax is axes[-1] else None)
            first = False


def plot_recording(data: dict, path, *, meta: dict | None = None, title: str | None = None) -> str:
    """Write a PNG of a recording (:meth:`Recorder.data`, or :func:`~aiofranka.loop.recorder.load`).

    Panels: tracking error (``q_desired - q`` per joint, mrad; in OSC also the
    end-effector position error, mm), commanded torque (N m), the period
    between cycles (ms, from ``t``) and the compute time (µs, read to write)
    as histograms. Cycles served by the guardian (orange) or the rescue thread
    (red) are shaded on the time axis; lost states (gaps in ``time_ms``) are
    ticked along its bottom. Fields not recorded leave their panel empty.
    Returns the path written (``.png`` added if missing).
    """
    fig = _figure((11, 9))
    grid = fig.add_gridspec(3, 2)
    ax_err = fig.add_subplot(grid[0, :])
    ax_tau = fig.add_subplot(grid[1, :], sharex=ax_err)
    ax_period = fig.add_subplot(grid[2, 0])
    ax_compute = fig.add_subplot(grid[2, 1])
    x, xlabel = _time_axis(data)
    rows = x.size

    if "q" in data and "q_desired" in data and rows:
        error = 1000.0 * (data["q_desired"] - data["q"])
        for j in range(error.shape[1]):
            ax_err.plot(x, error[:, j], linewidth=0.8, label=f"joint {j + 1}")
        ax_err.set_ylabel("q_desired - q (mrad)")
        if np.isfinite(error).any():
            ax_err.legend(fontsize=7, ncol=7, loc="upper left")
        else:
            ax_err.text(0.5, 0.5, "no joint target in these cycles (torque mode)", ha="center", va="center",
                        transform=ax_err.transAxes, color="gray")
    else:
        _not_recorded(ax_err, "needs q and q_desired")
    if "ee" in data and "ee_desired" in data and rows and np.isfinite(data["ee_desired"][:, 0, 3]).any():
        twin = ax_err.twinx()
        twin.plot(x, 1000.0 * np.linalg.norm(data["ee_desired"][:, :3, 3] - data["ee"][:, :3, 3], axis=1),
                  color="black", linestyle="--", linewidth=0.8, label="end-effector position error")
        twin.set_ylabel("position error (mm)")
        twin.legend(fontsize=7, loc="upper right")
    ax_err.set_title("tracking error")

    if "tau_command" in data and rows:
        for j in range(7):
            ax_tau.plot(x, data["tau_command"][:, j], linewidth=0.8, label=f"joint {j + 1}")
        ax_tau.set_ylabel("N m")
    else:
        _not_recorded(ax_tau, "needs tau_command")
    ax_tau.set_title("commanded torque")
    ax_tau.set_xlabel(xlabel)

    server = data.get("server")
    _mark_servers([ax_err, ax_tau], x, server)
    if "time_ms" in data and rows > 1:
        gaps = np.flatnonzero(np.diff(data["time_ms"]) > 1)
        if gaps.size:
            lost = int((np.diff(data["time_ms"])[gaps] - 1).sum())
            ax_tau.plot(x[gaps + 1], np.full(gaps.size, 0.0), "|", color="black", markersize=12,
                        transform=ax_tau.get_xaxis_transform(), label=f"{lost} lost states")
    _legend(ax_tau, ncol=5, loc="upper left")

    if "t" in data and rows > 1:
        _histogram(ax_period, 1000.0 * np.diff(data["t"]))
        ax_period.set_xlabel("period between cycles written (ms)")
    else:
        _not_recorded(ax_period, "needs t")
    ax_period.set_title("period")
    if "compute_us" in data and rows:
        _histogram(ax_compute, data["compute_us"])
        ax_compute.set_xlabel("read to write (µs)")
    else:
        _not_recorded(ax_compute, "needs compute_us")
    ax_compute.set_title("compute")

    heading = title or "aiofranka recording"
    heading += f": {rows} cycles"
    if server is not None and rows:
        counts = np.bincount(server.astype(np.int64), minlength=3)
        heading += " (" + ", ".join(f"{name} {n}" for name, n in zip(_SERVERS, counts)) + ")"
    if meta and meta.get("dropped"):
        heading += f", {meta['dropped']} dropped"
    fig.suptitle(heading)
    return _save(fig, path)


def plot_timing(runs: dict, path, *, title: str = "loop timing") -> str:
    """Write a PNG of period and compute histograms of several runs.

    ``runs`` maps a run's name to a dict with ``period_us`` and/or
    ``compute_us`` arrays (µs per cycle). Returns the path written.
    """
    fig = _figure((12, 4.5))
    ax_period, ax_compute = fig.subplots(1, 2)
    for name, run in runs.items():
        if run.get("period_us") is not None:
            _histogram(ax_period, run["period_us"], name)
        if run.get("compute_us") is not None:
            _histogram(ax_compute, run["compute_us"], name)
    ax_period.set_title("period between cycles")
    ax_period.set_xlabel("µs")
    ax_compute.set_title("compute (read to write)")
    ax_compute.set_xlabel("µs")
    fig.suptitle(title)
    return _save(fig, path)


def summary_table(data: dict, meta: dict | None = None) -> str:
    """A few lines about a recording: rows per server, lost and dropped, period and compute percentiles."""
    x, _ = _time_axis(data)
    rows = x.size
    lines = [f"{'rows':<14} {rows}"]
    if meta:
        lines.append(f"{'ring':<14} {meta.get('capacity')} rows, {'overwrite' if meta.get('overwrite') else 'keep first'}"
                     f", {meta.get('dropped', 0)} dropped")
    if "server" in data and rows:
        counts = np.bincount(data["server"].astype(np.int64), minlength=3)
        lines.append(f"{'served by':<14} " + ", ".join(f"{name} {n}" for name, n in zip(_SERVERS, counts)))
    if "time_ms" in data and rows:
        span = int(data["time_ms"][-1] - data["time_ms"][0]) + 1
        lines.append(f"{'robot time':<14} {span / 1000.0:.3f} s, {span - rows} states lost")
    if "t" in data and rows > 1:
        lines.append(f"{'period ms':<14} {_percentiles(1000.0 * np.diff(data['t']))}")
    if "compute_us" in data and rows:
        lines.append(f"{'compute us':<14} {_percentiles(data['compute_us'])}")
    if "q" in data and "q_desired" in data and rows:
        error = np.abs(data["q_desired"] - data["q"])
        if np.isfinite(error).any():
            lines.append(f"{'max |error|':<14} {1000.0 * np.nanmax(error):.2f} mrad")
    return "\n".join(lines)


def report(npz_path, out_path=None, *, title: str | None = None) -> tuple[str, str]:
    """Plot a saved recording: ``(png path, summary table)``; the PNG goes beside the ``.npz`` by default."""
    from .loop.recorder import load

    data, meta = load(npz_path)
    if out_path is None:
        out_path = os.path.splitext(os.fspath(npz_path))[0] + ".png"
    title = title or os.path.basename(os.fspath(npz_path))
    return plot_recording(data, out_path, meta=meta, title=title), summary_table(data, meta)
