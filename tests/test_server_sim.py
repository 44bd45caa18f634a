"""Server mode on the simulator: the synchronous API, the state frame, faults, and a GIL-hogging script."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import aiofranka
from aiofranka import FrankaRemoteController, _kernel, limits

from _policies import gone_within

pytestmark = pytest.mark.sim


@pytest.fixture(scope="module")
def remote():
    ctl = FrankaRemoteController()
    ctl.start()
    yield ctl
    ctl.close()


def test_options_are_checked_before_anything_is_spawned():
    with pytest.raises(TypeError, match="'kpp'"):
        FrankaRemoteController(kpp=1.0)
    with pytest.raises(ValueError, match="priority"):
        FrankaRemoteController(priority=0)
    with pytest.raises(ValueError, match="timeout"):
        FrankaRemoteController(timeout=-1.0)
    with pytest.raises(ValueError, match="ip"):
        FrankaRemoteController("")
    with pytest.raises(TypeError, match="robot"):
        FrankaRemoteController(robot="fast")


async def test_inside_a_running_event_loop_it_refuses_before_spawning():
    children = {child.pid for child in multiprocessing.active_children()}
    with pytest.raises(RuntimeError, match="FrankaRemoteController blocks"):
        FrankaRemoteController()
    assert {child.pid for child in multiprocessing.active_children()} == children


def test_a_bad_controller_option_raises_in_the_parent_as_itself():
    with pytest.raises(ValueError, match="torque_rate_limit") as info:
        FrankaRemoteController(torque_rate_limit=5.0)
    assert isinstance(info.value.__cause__, aiofranka.RemoteTraceback)  # the child's traceback


@pytest.mark.skipif(os.geteuid() != 0, reason="SCHED_FIFO needs root or CAP_SYS_NICE")
def test_priority_puts_every_thread_of_the_server_ahead_of_the_script():
    mine = os.sched_getscheduler(0), os.sched_getparam(0).sched_priority
    with FrankaRemoteController(priority=40) as ctl:
        ctl.wait(0.1)
        tids = [int(t) for t in os.listdir(f"/proc/{ctl.pid}/task")]
        policies = {tid: os.sched_getscheduler(tid) & ~os.SCHED_RESET_ON_FORK for tid in tids}
        fifo = [tid for tid, policy in policies.items() if policy == os.SCHED_FIFO]
        # The main (command) thread, the watchdog, the loop thread and the
        # guardian at least; threads libraries start later stay normal.
        assert len(fifo) >= 4, policies
        assert ctl.stats.cycles > 50
    assert (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority) == mine  # this process: unchanged


def test_the_state_frame_is_private_to_the_user(remote):
    info = os.stat(f"/dev/shm/{remote._frame_name}")
    assert info.st_mode & 0o777 == 0o600
    assert info.st_uid == os.getuid()


def test_the_sync_api_mirrors_the_controller(remote):
    assert remote.running and remote.mode == "impedance"
    assert "running" in repr(remote)
    first = remote.state
    remote.wait(0.05)
    state = remote.state
    assert state.time_ms >= first.time_ms + 40
    assert state.q.shape == (7,) and state.ee.shape == (4, 4) and state.jacobian.shape == (6, 7)
    assert state.success_rate > 0.9

    remote.kp = np.full(7, 250.0)
    np.testing.assert_array_equal(remote.kp, np.full(7, 250.0))
    with pytest.raises(ValueError, match="kp"):
        remote.kp = [1.0, 2.0]
    with pytest.raises(ValueError, match="q_desired"):
        remote.q_desired = np.full(7, 10.0)  # outside the joint limits
    remote.stop_ramp = 0.05
    assert remote.stop_ramp == pytest.approx(0.05)
    assert remote.torque_rate_limit == pytest.approx(0.95)

    remote.switch("osc")
    assert remote.mode == "osc"
    np.testing.assert_allclose(remote.ee_desired, remote.state.ee, atol=2e-3)
    with pytest.raises(ValueError, match="mode"):
        remote.switch("teleport")

    target = limits.Q_HOME.copy()
    target[0] += 0.15
    remote.move(target, speed=0.5)
    assert remote.mode == "impedance"
    assert np.max(np.abs(remote.state.q - target)) < 0.01

    remote.set_freq(50)
    t0 = time.monotonic()
    for _ in range(10):
        remote.set("q_desired", target)
    assert time.monotonic() - t0 > 0.15  # paced at 50 Hz on the robot clock
    remote.set_freq(None)

    stats = remote.stats
    assert isinstance(stats, aiofranka.LoopStats) and stats.cycles > 100
    remote.move(speed=0.5)  # no target: home
    assert np.max(np.abs(remote.state.q - limits.Q_HOME)) < 0.01


def test_stopped_state_comes_from_the_robot_and_start_again_works():
    with FrankaRemoteController() as ctl:
        ctl.stop()
        assert not ctl.running
        a = ctl.state
        time.sleep(0.05)
        b = ctl.state
        assert b.time_ms > a.time_ms  # a fresh read, not the last frame
        ctl.start()
        assert ctl.running
    assert "closed" in repr(ctl)
    with pytest.raises(aiofranka.ControllerStateError):
        ctl.start()
    ctl.close()  # idempotent


def test_snapshots_are_whole_while_the_loop_runs(remote):
    last = -1
    for _ in range(3000):
        state = remote.state
        assert state.time_ms >= last
        last = state.time_ms
        # The Jacobian was computed in the child from this very q and pose.
        jacobian = np.array(_kernel._test_jacobian_at(state.q, state.ee[:3, 3])).reshape(7, 6).T
        np.testing.assert_allclose(state.jacobian, jacobian, rtol=0, atol=1e-12)
        np.testing.assert_allclose(state.mass, state.mass.T, atol=1e-9)


def test_a_command_with_no_reply_in_time_raises_and_the_next_one_works(remote):
    with pytest.raises(aiofranka.CallTimeoutError, match="wait"):
        remote._proxy.call_sync_timeout(0.1, "wait", 0.6)
    assert remote.mode == "impedance"  # answered once the slow call is done


def test_a_reflex_in_the_child_raises_as_itself_on_the_next_call_and_start_recovers():
    with FrankaRemoteController(guardian=False) as ctl:
        # Block the child's event loop for 200 ms: without the guardian the
        # robot misses its commands and stops with the communication reflex.
        ctl._proxy.call_sync("_on_loop", time.sleep, 0.2)
        deadline = time.monotonic() + 5.0
        while ctl.running and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not ctl.running
        with pytest.raises(aiofranka.ReflexError) as info:
            ctl.switch("impedance")
        assert "communication_constraints_violation" in info.value.errors
        with pytest.raises(aiofranka.ReflexError):
            ctl.q_desired = limits.Q_HOME
        ctl.start()  # recovers
        assert ctl.running
        ctl.wait(0.1)


def test_a_dead_child_fails_the_next_call_and_takes_the_simulator_with_it():
    ctl = FrankaRemoteController()
    try:
        ctl.start()
        sim_pid = ctl.simulator_pid
        assert sim_pid is not None
        os.kill(ctl.pid, signal.SIGKILL)
        time.sleep(0.2)
        t0 = time.monotonic()
        with pytest.raises(aiofranka.WorkerCrashedError):
            ctl.switch("osc")
        assert time.monotonic() - t0 < 2.0
        with pytest.raises(aiofranka.WorkerCrashedError):
            ctl.state
        assert gone_within(sim_pid, 10.0), "the simulator outlived the server process"
    finally:
        ctl.close()


PARENT = textwrap.dedent("""
    import time
    from aiofranka import FrankaRemoteController

    if __name__ == "__main__":
        ctl = FrankaRemoteController()
        ctl.start()
        print(ctl.pid, ctl.simulator_pid, ctl._frame_name, flush=True)
        time.sleep(60)
""")


def test_the_server_and_its_simulator_end_when_the_parent_is_killed(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    with subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as parent:
        try:
            line = parent.stdout.readline().split()
            assert len(line) == 3, parent.stderr.read()
            child, sim, frame = int(line[0]), int(line[1]), line[2]
            os.kill(parent.pid, signal.SIGKILL)
            parent.wait(10)
            assert gone_within(child, 10.0), "the server process outlived its parent"
            assert gone_within(sim, 10.0), "the simulator outlived the killed parent"
            deadline = time.monotonic() + 10.0
            while os.path.exists(f"/dev/shm/{frame}") and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not os.path.exists(f"/dev/shm/{frame}"), "the state frame was left behind"
        finally:
            if parent.poll() is None:
                parent.kill()
                parent.wait()


EXIT_WITHOUT_CLOSE = textwrap.dedent("""
    if __name__ == "__main__":
        import atexit

        def report():  # registered before aiofranka's exit hook, so it runs after it
            print("server exit code", link_of(ctl._proxy)._exitcode, flush=True)

        atexit.register(report)
        from aiofranka import FrankaRemoteController
        from aiofranka.offload._proxy import link_of

        ctl = FrankaRemoteController(stop_ramp=2.0)
        ctl.start()
        print("running", flush=True)
        # No close(): the interpreter's exit stops the server.
""")


def test_at_exit_the_server_gets_its_whole_ramp_before_any_kill(tmp_path):
    script = tmp_path / "exit_without_close.py"
    script.write_text(EXIT_WITHOUT_CLOSE)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "running" in result.stdout, result.stderr
    # 0: the child ramped down (2 s), closed and exited by itself; -9 would be SIGKILL mid-ramp.
    assert "server exit code 0" in result.stdout, result.stdout + result.stderr
