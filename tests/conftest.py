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
    """A started Controller on the shared simulator; stopped after the test (its error raised)."""
    from aiofranka import Controller

    controller = Controller(robot)
    await controller.start()
    yield controller
    # Raises an error that ended the session (a reflex) and was not consumed by
    # the test: no test passes on a reflex it was not written to cause.
    await controller.stop()
