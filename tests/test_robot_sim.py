"""Robot connection details on the simulator."""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import aiofranka

pytestmark = pytest.mark.sim


def test_read_gives_a_consistent_state(robot):
    state = robot.read()
    assert state.q.shape == (7,) and state.jacobian.shape == (6, 7) and state.mass.shape == (7, 7)
    assert np.allclose(state.ee[3], [0, 0, 0, 1])
    assert np.allclose(state.ee[:3, :3] @ state.ee[:3, :3].T, np.eye(3), atol=1e-5)
    assert np.allclose(state.mass, state.mass.T, atol=1e-9)
    # Pose and Jacobian describe the same point: the z axis of joint 1 moves the
    # end effector tangentially, (-y, x, 0) for a base-frame position (x, y, z).
    x, y = state.ee[0, 3], state.ee[1, 3]
    assert np.allclose(state.jacobian[:3, 0], [-y, x, 0.0], atol=2e-4)  # float32 values from the simulator


def test_threads_created_after_connecting_do_not_inherit_realtime_priority(robot):
    if os.sched_getscheduler(0) & ~getattr(os, "SCHED_RESET_ON_FORK", 0) != os.SCHED_FIFO:
        pytest.skip("this process may not use real-time scheduling (not root?)")
    seen = []
    thread = threading.Thread(target=lambda: seen.append(os.sched_getscheduler(0)))
    thread.start()
    thread.join()
    assert seen == [os.SCHED_OTHER]
    assert os.sched_getparam(0).sched_priority == 80


def test_close_puts_the_connecting_thread_back_on_its_own_scheduling():
    if os.geteuid() != 0:
        pytest.skip("libfranka promotes the connecting thread only where it may (root)")
    from aiofranka import Robot

    seen = {}

    def connect_and_close():
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))  # like a user's script thread
        robot = Robot()
        try:
            seen["open"] = os.sched_getscheduler(0) & ~os.SCHED_RESET_ON_FORK, os.sched_getparam(0).sched_priority
        finally:
            robot.close()
        seen["closed"] = os.sched_getscheduler(0) & ~os.SCHED_RESET_ON_FORK, os.sched_getparam(0).sched_priority

    thread = threading.Thread(target=connect_and_close)
    thread.start()
    thread.join(60)
    assert seen["open"] == (os.SCHED_FIFO, 80)
    assert seen["closed"] == (os.SCHED_OTHER, 0)


def test_collision_thresholds_are_validated(robot):
    ok7, ok6 = [20.0] * 7, [20.0] * 6
    robot.set_collision_behavior(ok7, ok7, ok6, ok6)
    with pytest.raises(ValueError, match=r"upper_force must have shape \(6,\)"):
        robot.set_collision_behavior(ok7, ok7, ok6, ok7)
    with pytest.raises(ValueError, match="lower thresholds must not exceed"):
        robot.set_collision_behavior([30.0] * 7, ok7, ok6, ok6)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="ip must be"):
        aiofranka.Robot("")
    with pytest.raises(ValueError, match="rt_priority"):
        aiofranka.Robot(None, rt_priority=120)


def test_unreachable_robot_is_a_connection_error():
    # Nothing listens on port 1337 of this loopback address: the connection is refused.
    with pytest.raises(aiofranka.RobotConnectionError):
        aiofranka.Robot("127.0.0.254")


def test_import_is_light():
    code = "import sys, aiofranka; print(any(m in sys.modules for m in ('pylibfranka', 'ruckig', 'torch', 'franka_sim')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_cli_help():
    out = subprocess.run([sys.executable, "-m", "aiofranka.cli", "--help"], capture_output=True, text=True, check=True)
    assert "sim" in out.stdout and "demo" in out.stdout


async def test_kernel_kinematics_agree_with_libfrankas_model(robot):
    """The loop's own FR3 Jacobian equals the model's at several poses of the simulated arm."""
    from aiofranka import Controller, _kernel, limits

    async with Controller(robot) as controller:
        for offset in (0.0, 0.3, -0.4):
            target = limits.Q_HOME.copy()
            target[0] += offset
            target[3] += offset / 2
            await controller.move(target, speed=0.6)
            await controller.wait(0.3)  # at rest: the simulator's pose and q may be a step apart
            state = controller.state
            ours = np.array(_kernel._test_jacobian_at(state.q.tolist(), state.ee[:3, 3].tolist())).reshape(7, 6).T
            # The simulator sends float32 values, and its pose may lag q by a step.
            assert np.abs(ours - state.jacobian).max() < 2e-4, np.abs(ours - state.jacobian).max()
            flange = np.array(_kernel._test_flange_pose(state.q.tolist())).reshape(4, 4).T
            assert np.abs(flange - state.ee).max() < 2e-4, np.abs(flange - state.ee).max()
