"""Server mode: the 1 kHz loop in its own process, driven from a plain script that hogs the GIL.

FrankaRemoteController spawns a child process that owns the robot (here the
embedded simulator) and runs the controller there. This script is ordinary
synchronous Python: it burns 30 ms of pure-Python CPU per step (a stand-in for
a planner or an image pipeline), reads the state from shared memory, and sets
a new joint target, at about 20 Hz for 3 s. The loop does not share this
process's GIL, so it loses nothing. Run it with
python examples/04_server_mode.py
"""

import time

import numpy as np

from aiofranka import FrankaRemoteController

DURATION = 3.0  # s
WORK = 0.03  # s of pure-Python CPU per step


def busy_python(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def main() -> None:
    with FrankaRemoteController() as ctl:  # spawns the server and starts the loop
        q0 = ctl.state.q
        t0 = time.monotonic()
        steps = 0
        target = q0
        while (t := time.monotonic() - t0) < DURATION:
            busy_python(WORK)
            state = ctl.state  # a seqlocked copy from shared memory, no round trip
            error = abs(state.q[0] - target[0])  # how far the arm is from the last target
            target = q0.copy()
            target[0] += 0.2 * np.sin(np.pi * t)
            ctl.q_desired = target  # validated here, applied by the child's loop
            steps += 1
        stats = ctl.stats
        print(f"{steps} steps; joint 0 at {state.q[0]:+.3f} rad, {error:.3f} rad from the previous target")
        print(f"server loop: {stats.cycles} cycles, {stats.lost_cycles} lost")
        ctl.move(q0)
    print("server closed")


if __name__ == "__main__":
    main()
