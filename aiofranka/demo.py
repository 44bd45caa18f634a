"""The demo behind ``aiofranka demo``: hold, joint moves, Cartesian targets, figures."""

from __future__ import annotations

import time

import numpy as np

from . import limits
from .loop.controller import Controller
from .robot import Robot


def _progress(t0: float, step: str, controller: Controller) -> None:
    stats = controller.stats
    print(f"[{time.monotonic() - t0:5.1f} s] {step:<34} cycles {stats.cycles:6d}  lost {stats.lost_cycles:3d}",
          flush=True)


async def run_demo(ip: str | None = None, duration: float = 10.0) -> None:
    """Run the demo against ``ip`` (``None``: the embedded simulator)."""
    scale = max(duration, 4.0) / 10.0
    t0 = time.monotonic()
    print("starting the simulator and connecting..." if ip is None else f"connecting to {ip}...", flush=True)
    with Robot(ip) as robot:
        async with Controller(robot) as controller:
            _progress(t0, "holding the start pose", controller)
            await controller.wait(1.0 * scale)
            _progress(t0, "moving to the home pose", controller)
            await controller.move(limits.Q_HOME, speed=0.4)
            for dq0 in (0.4, -0.4, 0.0):
                q = limits.Q_HOME.copy()
                q[0] += dq0
                _progress(t0, f"joint move: joint 1 {q[0]:+.2f} rad", controller)
                await controller.move(q, speed=0.4)
            controller.switch("osc")
            home = controller.state.ee
            for offset in ((0.0, 0.0, 0.08), (0.0, 0.1, 0.0), (0.08, 0.0, -0.05), (0.0, 0.0, 0.0)):
                target = home.copy()
                target[:3, 3] += offset
                controller.ee_desired = target
                _progress(t0, f"Cartesian target {np.round(offset, 2).tolist()}", controller)
                await controller.wait(1.2 * scale)
                error = np.linalg.norm(controller.state.ee[:3, 3] - target[:3, 3])
                print(f"          reached within {1000 * error:.1f} mm", flush=True)
            _progress(t0, "stopping (torque ramps to zero)", controller)
        print()
        print(controller.stats.table("aiofranka demo: loop figures"))
