"""The rescue thread refuses, with a reason and never a crash, wherever its ABI contract may not hold.

Each refusal path is forced: another machine, another pylibfranka version,
objects of the wrong type, a class of the right name that is not pybind11's,
an instance without pybind11's simple layout. See docs/rescue-abi.md.
"""

from __future__ import annotations

import importlib.metadata
import logging
import platform

import pylibfranka
import pytest

from aiofranka import Controller, _kernel
from aiofranka.robot import StateBuffer

X86_64 = pytest.mark.skipif(platform.machine() != "x86_64", reason="the rescue thread is built on x86-64 only")
ERRORS = (RuntimeError, RuntimeError, RuntimeError)
OFFSETS = (0,) * 9


def rescue_start(kernel, ctl, torques) -> None:
    kernel.rescue_start(ctl, torques, 0, OFFSETS, 1024, 1, 1, 0, ERRORS)


@pytest.mark.sim
async def test_a_machine_other_than_x86_64_is_refused(robot, monkeypatch):
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    async with Controller(robot) as controller:
        await controller.wait(0.05)
        assert controller.stats.rescue.startswith("off: the rescue thread needs x86-64 Linux, this is linux aarch64")
        assert controller._kernel.counters()[4] == 0  # no thread started


@pytest.mark.sim
async def test_an_unverified_pylibfranka_version_is_refused(robot, monkeypatch):
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: "0.22.0" if name == "pylibfranka" else real(name))
    async with Controller(robot) as controller:
        await controller.wait(0.05)
        assert controller.stats.rescue == ("off: pylibfranka 0.22.0 is not a version the rescue thread was "
                                           "verified with (0.21.3)")
        assert controller._kernel.counters()[4] == 0


@pytest.mark.sim
async def test_the_rescue_off_under_the_guardian_is_logged_once(robot, monkeypatch, caplog):
    monkeypatch.setattr("aiofranka.robot._abi._warned", False)  # once per process: as if none yet
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    caplog.set_level(logging.WARNING, logger="aiofranka")
    for _ in range(2):
        async with Controller(robot) as controller:
            await controller.wait(0.05)
    async with Controller(robot, guardian=False) as controller:  # no guardian: nothing to warn about
        await controller.wait(0.05)
    warnings = [r.getMessage() for r in caplog.records if "rescue thread is OFF" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "needs x86-64 Linux" in warnings[0]


@X86_64
@pytest.mark.sim
async def test_rescue_start_refuses_objects_not_exactly_pylibfrankas_classes(robot):
    class ActiveControlLookalike(pylibfranka.Torques):  # a real pybind11 instance, of another class
        pass

    class TorquesSubclass(pylibfranka.Torques):
        pass

    async with Controller(robot, rescue=False) as controller:
        kernel = controller._kernel
        with pytest.raises(TypeError, match="ActiveControlLookalike, not exactly pylibfranka.ActiveControlBase"):
            rescue_start(kernel, ActiveControlLookalike([0.0] * 7), robot.torques([0.0] * 7))
        with pytest.raises(TypeError, match="TorquesSubclass, not exactly pylibfranka.Torques"):
            rescue_start(kernel, controller._cycle.ctl, TorquesSubclass([0.0] * 7))
        assert kernel.counters()[4] == 0
        await controller.wait(0.05)  # the session went on


@X86_64
def test_rescue_start_refuses_a_class_of_the_right_name_that_is_not_pybind11(monkeypatch):
    class ActiveControlBase:  # what pylibfranka would hold if it were built another way
        __slots__ = ("value", "holder")

    monkeypatch.setattr(pylibfranka, "ActiveControlBase", ActiveControlBase)
    impostor = ActiveControlBase()
    impostor.value = impostor.holder = object()
    kernel = StateBuffer().kernel
    with pytest.raises(RuntimeError, match="pylibfranka.ActiveControlBase is not a pybind11 class"):
        rescue_start(kernel, impostor, pylibfranka.Torques([0.0] * 7))
    assert kernel.counters()[4] == 0


@X86_64
def test_an_instance_without_pybind11s_simple_layout_is_refused(monkeypatch):
    # Two pybind11 bases: pybind11 gives such instances its non-simple layout,
    # where the first word after the header is not the C++ object.
    both = type("ActiveControlBase", (pylibfranka.Torques, pylibfranka.ActiveControlBase), {})
    monkeypatch.setattr(pylibfranka, "ActiveControlBase", both)
    monkeypatch.setattr(pylibfranka, "Torques", both)
    instance = both.__new__(both)
    kernel = StateBuffer().kernel
    with pytest.raises(RuntimeError, match="does not use pybind11's simple layout"):
        rescue_start(kernel, instance, instance)
    with pytest.raises(TypeError, match="does not use pybind11's simple layout"):
        _kernel.peek_value(instance, 8)
    assert kernel.counters()[4] == 0
