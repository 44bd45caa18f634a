"""The embedded simulator listens on loopback only (docs/simulator.md#network-exposure)."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys

import pytest

from aiofranka.sim import Simulator

pytestmark = pytest.mark.sim


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "localhost", "::1", "", 2130706433])
def test_a_host_that_is_not_loopback_is_refused_naming_host(host):
    with pytest.raises(ValueError, match=r"^host must be a loopback IPv4 address \(127\.x\.x\.x\), got "):
        Simulator(host=host)


def test_the_robot_passes_the_refusal_on_before_anything_starts():
    from aiofranka import Robot

    with pytest.raises(ValueError, match="host must be a loopback"):
        Robot(sim={"host": "0.0.0.0"})


def test_the_sim_command_refuses_a_network_host():
    result = subprocess.run([sys.executable, "-m", "aiofranka.cli", "sim", "--host", "0.0.0.0"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "host must be a loopback IPv4 address" in result.stderr


def _inet_sockets(pid: int, table: str) -> list[tuple[str, int]]:
    """(address, port) of every ``table`` (udp, tcp) IPv4 socket process ``pid`` has open."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    found = []
    with open(f"/proc/{pid}/net/{table}") as handle:
        next(handle)
        for line in handle:
            fields = line.split()
            if fields[9] in inodes:
                address, port = fields[1].split(":")
                found.append((socket.inet_ntoa(struct.pack("<I", int(address, 16))), int(port, 16)))
    return found


def test_every_socket_of_the_simulator_is_bound_to_its_loopback_host(robot):
    # Connected, so franka-sim has opened the session's UDP socket (states out, commands in).
    robot.read()
    pid, host = robot.simulator.pid, robot.simulator.host
    udp = _inet_sockets(pid, "udp")
    assert udp, "the simulator has no UDP socket while a client is connected"
    assert all(address == host for address, _port in udp), udp
    tcp = _inet_sockets(pid, "tcp")
    assert tcp and all(address == host for address, _port in tcp), tcp
