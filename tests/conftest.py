"""Shared fixtures: one embedded simulator per test module."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def robot():
    """A Robot connected to a franka-sim shared by the module's simulator tests.

    Per module, not per session: franka-sim steps its physics even when idle
    (about 40 % of a core here), and on a 2-core machine an idle simulator left
    running would take that CPU from the timing tests of every later module.
    """
    from aiofranka import Robot

    robot = Robot()
    yield robot
    robot.close()


@pytest.fixture
async def controller(robot):
    """A started Controller on the shared simulator; stopped after the test."""
    from aiofranka import Controller

    controller = Controller(robot)
    await controller.start()
    yield controller
    if controller.running:
        try:
            await controller.stop()
        except Exception:  # noqa: BLE001 - the test itself checks the errors it expects
            pass
