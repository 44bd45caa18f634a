"""The kernel's recorder without the simulator: rows, fields, the ring's two modes, saving and loading.

Kernel.cycle runs here against a stand-in for pylibfranka's control object
(pure logic; the recorder on the simulator is tests/test_recorder_sim.py).
"""

import json

import numpy as np
import pytest

from aiofranka import ControllerStateError, limits
from aiofranka.loop.recorder import FIELDS, SERVERS, Recorder, load

from _fake_control import IMPEDANCE, OSC, TORQUE, Control, frozen, kernel, serve, torques  # noqa: F401 - kernel: a fixture

def test_one_row_per_cycle_with_every_field(kernel):
    ctl = Control()
    serve(kernel, ctl, 3)  # before the recording: not recorded
    rec = Recorder(kernel, seconds=1.0)
    serve(kernel, ctl, 40)
    serve(kernel, ctl, 10, guardian=True)
    rec.stop()
    serve(kernel, ctl, 5)  # after stop: not recorded
    data = rec.data()
    assert set(data) == set(FIELDS)
    assert rec.count == 50 and rec.dropped == 0
    assert data["time_ms"].dtype == np.int64
    assert np.array_equal(data["time_ms"], np.arange(1004, 1054))
    assert np.allclose(data["q"], limits.Q_HOME + 1e-6 * data["time_ms"][:, None])
    assert np.allclose(data["dq"], 0.001 * data["time_ms"][:, None])
    assert np.array_equal(data["tau_measured"], np.repeat(data["time_ms"][:, None], 7, axis=1).astype(float))
    assert np.array_equal(data["tau_command"], np.array(ctl.written[3:53]))  # what was written, cycle by cycle
    assert np.array_equal(data["server"], [0] * 40 + [1] * 10)
    assert SERVERS[data["server"][-1]] == "guardian"
    assert np.array_equal(data["mode"], [TORQUE] * 50)
    assert np.all(np.isnan(data["q_desired"])) and np.all(np.isnan(data["ee_desired"]))  # torque mode: no target
    assert np.array_equal(data["ee"], np.broadcast_to(np.eye(4), (50, 4, 4)))
    assert np.all(data["success_rate"] == 0.5)
    assert np.all(data["compute_us"] >= 0) and np.all(data["compute_us"] < 1e6)
    assert np.all(np.diff(data["t"]) > 0)


def test_the_law_target_is_recorded_in_impedance_and_osc(kernel):
    ctl = Control()
    rec = Recorder(kernel, ["q_desired", "ee_desired", "mode"], seconds=1.0)
    q_desired = frozen(limits.Q_HOME + 0.01)
    zero, kp, kd = frozen([0.0] * 7), frozen([10.0] * 7), frozen([1.0] * 7)
    kernel.cycle(ctl, torques, IMPEDANCE, 1.0, 0, q_desired, zero, kp, kd)
    pose = np.eye(4)
    pose[:3, 3] = [0.4, 0.1, 0.5]
    q_null = frozen(limits.Q_HOME - 0.02)
    kernel.cycle(ctl, torques, OSC, 1.0, 0, frozen(pose), frozen([100.0] * 6), frozen([10.0] * 6), q_null, kp, kd)
    data = rec.stop().data()
    assert set(data) == {"q_desired", "ee_desired", "mode"}
    assert np.array_equal(data["mode"], [IMPEDANCE, OSC])
    assert np.array_equal(data["q_desired"], [q_desired, q_null])  # osc: the null-space target is q_desired
    assert np.all(np.isnan(data["ee_desired"][0]))
    assert np.array_equal(data["ee_desired"][1], pose)  # row-major, as handed in


def test_a_full_ring_keeps_the_first_rows_and_counts_the_rest(kernel):
    ctl = Control()
    rec = Recorder(kernel, ["time_ms"], seconds=0.01)  # 10 rows
    assert rec.capacity == 10
    serve(kernel, ctl, 25)
    assert rec.count == 10 and rec.dropped == 15  # live, while running
    rec.stop()
    assert np.array_equal(rec.data()["time_ms"], np.arange(1001, 1011))
    assert rec.dropped == 15


def test_overwrite_keeps_the_latest_rows_oldest_first(kernel):
    ctl = Control()
    rec = Recorder(kernel, ["time_ms", "server"], seconds=0.01, overwrite=True)
    serve(kernel, ctl, 25)
    assert np.array_equal(rec.data()["time_ms"], np.arange(1016, 1026))  # read while running
    serve(kernel, ctl, 3)
    rec.stop()
    assert np.array_equal(rec.data()["time_ms"], np.arange(1019, 1029))
    assert rec.dropped == 18


def test_lost_states_show_as_gaps_in_robot_time(kernel):
    ctl = Control()
    rec = Recorder(kernel, ["time_ms"], seconds=1.0)
    serve(kernel, ctl, 5)
    ctl.step = 4  # three states lost before each of the next reads
    serve(kernel, ctl, 2)
    rec.stop()
    assert np.array_equal(np.diff(rec.data()["time_ms"]), [1, 1, 1, 1, 4, 4])
    assert kernel.counters()[0] == 6


def test_one_recording_at_a_time_and_the_next_starts_clean(kernel):
    ctl = Control()
    first = Recorder(kernel, ["time_ms"], seconds=1.0)
    with pytest.raises(ControllerStateError, match="already running"):
        Recorder(kernel, ["time_ms"], seconds=1.0)
    serve(kernel, ctl, 4)
    with first:
        pass  # leaving the block stops it
    assert not first.running
    with Recorder(kernel, ["time_ms"], seconds=1.0) as second:
        serve(kernel, ctl, 2)
    assert np.array_equal(second.data()["time_ms"], [1005, 1006])
    assert np.array_equal(first.data()["time_ms"], [1001, 1002, 1003, 1004])  # its own matrix, untouched


async def test_async_with_stops_it(kernel):
    async with Recorder(kernel, ["time_ms"], seconds=1.0) as rec:
        serve(kernel, Control(), 3)
    assert not rec.running and rec.count == 3


def test_bad_arguments_name_the_parameter(kernel):
    with pytest.raises(ValueError, match="fields must name some of time_ms"):
        Recorder(kernel, ["q", "qq"])
    with pytest.raises(ValueError, match="fields"):
        Recorder(kernel, [])
    with pytest.raises(ValueError, match="seconds"):
        Recorder(kernel, seconds=0)
    with pytest.raises(ValueError, match="seconds"):
        Recorder(kernel, seconds=1e6)
    with pytest.raises(TypeError, match="overwrite"):
        Recorder(kernel, overwrite="yes")
    with pytest.raises(ValueError, match="column 5 of t does not fit"):
        kernel.record_start(np.zeros((4, 5)), (0, 5) + (-1,) * (len(FIELDS) - 2), False)
    with pytest.raises(TypeError, match="float64"):
        kernel.record_start(np.zeros((4, 5), dtype=np.float32), (0,) + (-1,) * (len(FIELDS) - 1), False)


def test_save_and_load(kernel, tmp_path):
    ctl = Control()
    rec = Recorder(kernel, ["time_ms", "q", "ee", "server"], seconds=0.005)
    serve(kernel, ctl, 8)
    path = rec.stop().save(tmp_path / "run")
    assert path.endswith("run.npz")
    data, meta = load(path)
    assert meta["dropped"] == 3 and meta["capacity"] == 5 and meta["servers"] == list(SERVERS)
    assert meta["fields"] == ["time_ms", "q", "ee", "server"]
    for name, values in rec.data().items():
        assert np.array_equal(data[name], values) and data[name].dtype == values.dtype
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not an aiofranka recording"):
        load(tmp_path / "other.npz")
    json.dumps(meta)


@pytest.mark.timing
def test_a_row_costs_well_under_a_microsecond(kernel):
    # About 0.1 us with every field on a 2-core VM; a row that allocated, took
    # a lock that sleeps or touched Python would cost microseconds.
    rec = Recorder(kernel, seconds=100.0, overwrite=True)
    n = 100_000
    per_row_ns = min(kernel._test_record_rows(n) for _ in range(3)) / n
    rec.stop()
    assert rec.count == 100_000
    assert per_row_ns < 1000, f"{per_row_ns:.0f} ns per row"
