"""Where libfranka keeps the fields the rescue thread reads, measured on the live objects.

The rescue thread (``csrc/rescue.c``) reads a state and writes a command in
libfranka's own C++ objects; their field offsets are found here by writing
marker values through pylibfranka and searching the object's bytes. See
docs/rescue-abi.md.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["measure_layout", "udp_sockets"]


def udp_sockets() -> set[int]:
    """File descriptors of this process's UDP (IPv4/IPv6 datagram) sockets."""
    import socket

    found = set()
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return found
    for name in names:
        fd = int(name)
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            probe = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        try:
            if probe.type == socket.SOCK_DGRAM and probe.family in (socket.AF_INET, socket.AF_INET6):
                found.add(fd)
        finally:
            probe.close()
    return found


# Values written into a state's fields to find them in its C++ bytes: nothing
# a robot reports looks like them.
_MARKERS = {name: 1000.0 + 17.0 * k + 0.001953125 * np.arange(1, n + 1)
            for k, (name, n) in enumerate((("q", 7), ("dq", 7), ("O_T_EE", 16), ("tau_J", 7),
                                           ("tau_ext_hat_filtered", 7)))}
_SUCCESS_MARKER = 0.6180339887498949
_STATE_BYTES = 16384


def _find(memory: bytes, values: np.ndarray, what: str) -> int:
    """Offset of the first copy of ``values`` (the object's own field comes
    before anything the search may reach past the object's end)."""
    at = memory.find(np.ascontiguousarray(values, dtype=np.float64).tobytes())
    if at < 0 or at % 8:
        raise ValueError(f"{what} not found")
    return at


def measure_layout(pf, robot) -> tuple:
    """Byte offsets for ``Kernel.rescue_start``; see :meth:`Robot.direct_layout`."""
    from .. import _kernel

    first = robot.read_once()
    second = robot.read_once()
    for _ in range(20):  # two states a robot millisecond apart or more
        if second.time.to_sec() != first.time.to_sec():
            break
        second = robot.read_once()
    ms = [round(s.time.to_sec() * 1000) for s in (first, second)]
    if ms[0] == ms[1]:
        raise ValueError("the robot's time did not advance")
    for name, values in _MARKERS.items():
        setattr(first, name, values.tolist())
    first.control_command_success_rate = _SUCCESS_MARKER
    memory = _kernel.peek_value(first, _STATE_BYTES)
    other = _kernel.peek_value(second, _STATE_BYTES)
    offsets = [_find(memory, values, name) for name, values in _MARKERS.items()]
    success = _find(memory, np.array([_SUCCESS_MARKER]), "control_command_success_rate")
    words = [np.frombuffer(m[:min(len(memory), len(other)) // 8 * 8], dtype=np.uint64) for m in (memory, other)]
    hits = np.nonzero((words[0] == ms[0]) & (words[1] == ms[1]))[0] * 8
    hits = hits[hits > success]
    if not len(hits):
        raise ValueError("time not found after control_command_success_rate")
    time_at = int(hits[0])
    widths = [8 * len(values) for values in _MARKERS.values()]
    if any(at + width > time_at for at, width in zip(offsets, widths)):
        raise ValueError("fields found past the state's last field (time)")
    torque_values = _MARKERS["tau_J"]
    command = pf.Torques(torque_values.tolist())
    before = _kernel.peek_value(command, 256)
    tau_at = _find(before, torque_values, "Torques.tau_J")
    command.motion_finished = True
    after = _kernel.peek_value(command, 256)
    changed = [i for i in range(min(len(before), len(after))) if before[i] != after[i]]
    if len(changed) != 1 or after[changed[0]] != 1:
        raise ValueError("Torques.motion_finished not found")
    return (*offsets, success, time_at, tau_at, changed[0]), time_at + 8
