"""Plots and summaries of recordings: aiofranka.report and the ``aiofranka report`` command (no simulator)."""

import subprocess
import sys

import numpy as np
import pytest

from aiofranka.loop.recorder import Recorder

from _fake_control import OSC, Control, frozen, kernel, serve, torques  # noqa: F401 - kernel: a fixture

pytest.importorskip("matplotlib")

PNG = b"\x89PNG\r\n\x1a\n"


def _png(path) -> bytes:
    with open(path, "rb") as f:
        content = f.read()
    assert content[:8] == PNG
    return content


def _recording(kernel, **options) -> Recorder:
    ctl = Control()
    rec = Recorder(kernel, seconds=1.0, **options)
    serve(kernel, ctl, 200)
    serve(kernel, ctl, 30, guardian=True)
    ctl.step = 3  # two states lost before each read
    serve(kernel, ctl, 2)
    ctl.step = 1
    serve(kernel, ctl, 100)
    return rec.stop()


def test_plot_writes_a_png_with_every_panel(kernel, tmp_path):
    rec = _recording(kernel)
    path = rec.plot(tmp_path / "run")
    assert path.endswith("run.png")
    assert len(_png(path)) > 20_000  # four drawn panels, not an empty canvas


def test_a_recording_without_some_fields_still_plots(kernel, tmp_path):
    ctl = Control()
    rec = Recorder(kernel, ["time_ms", "server"], seconds=1.0)
    serve(kernel, ctl, 50, guardian=True)
    _png(rec.stop().plot(tmp_path / "few.png"))


def test_osc_rows_plot_the_end_effector_error(kernel, tmp_path):
    ctl = Control()
    rec = Recorder(kernel, seconds=1.0)
    pose = np.eye(4)
    pose[:3, 3] = [0.4, 0.0, 0.5]
    gains6, gains7 = frozen([10.0] * 6), frozen([1.0] * 7)
    for _ in range(50):
        kernel.cycle(ctl, torques, OSC, 1.0, 0, frozen(pose), gains6, gains6, frozen(np.zeros(7)), gains7, gains7)
    data = rec.stop().data()
    assert np.all(np.isfinite(data["ee_desired"]))
    _png(rec.plot(tmp_path / "osc.png"))


def test_the_table_counts_servers_and_lost_states(kernel):
    table = _recording(kernel).table()
    assert "loop 302, guardian 30, rescue 0" in table
    assert "4 states lost" in table
    assert "0 dropped" in table


def test_the_report_command_plots_a_saved_recording(kernel, tmp_path):
    saved = _recording(kernel).save(tmp_path / "run.npz")
    out = tmp_path / "plot.png"
    done = subprocess.run([sys.executable, "-m", "aiofranka.cli", "report", saved, "-o", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"wrote {out}" in done.stdout and "guardian 30" in done.stdout
    _png(out)
    # The default output goes beside the recording.
    done = subprocess.run([sys.executable, "-m", "aiofranka.cli", "report", saved], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    _png(tmp_path / "run.png")


def test_the_report_command_refuses_what_is_not_a_recording(tmp_path):
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    done = subprocess.run([sys.executable, "-m", "aiofranka.cli", "report", str(tmp_path / "other.npz")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "not an aiofranka recording" in done.stderr


def test_plot_timing_overlays_runs(tmp_path):
    from aiofranka.report import plot_timing

    rng = np.random.default_rng(0)
    runs = {name: {"period_us": 1000 + rng.normal(0, s, 2000), "compute_us": 20 + rng.exponential(s / 10, 2000)}
            for name, s in (("a", 20.0), ("b", 80.0))}
    _png(plot_timing(runs, tmp_path / "timing.png"))
