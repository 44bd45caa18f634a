"""Loop figures on the embedded simulator: aiofranka's Controller beside a bare pylibfranka loop.

Runs, in one process and against one simulator (communication constraints
enforced), one scenario after another and prints one table:

* ``bare``: a minimal pylibfranka torque loop as an asyncio task (read, joint
  impedance on Python floats, write, ``await asyncio.sleep(0)``): the baseline.
* ``impedance yield|timerfd|socket``: the Controller holding a pose with each
  way of waiting for the next state; ``torque``: holding in torque mode.
* ``osc+100Hz``: the Controller in Cartesian impedance tracking a moving
  target (a 5 cm circle at 0.25 Hz) set by a 100 Hz coroutine that also does
  light numpy work.
* ``thr WAIT si=...``: the Controller holding while a pure-Python thread spins
  beside it, for each way of waiting and with the interpreter's default
  switch interval (5 ms), 0.2 ms, or the Controller's default (0.1 ms); the
  thread's speed is given as a share of its speed alone. ``yield`` with 5 ms
  is the naive loop.
* ``bare + L2`` / ``L2 KIND guard=on|off``: the event loop blocked for 30 ms
  once a second (``time.sleep`` or pure Python), for the bare loop and for the
  Controller with its guardian switched off and on.

Every row carries the simulator's own rate (robot states per wall second):
when the machine is loaded the simulated clock slows instead of the client
losing states, so read lost cycles beside it.

Usage: ``python benchmarks/loop.py [--duration 10] [--osc-duration 60]``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import threading
import time

import numpy as np

from aiofranka import Controller, Robot, limits
from aiofranka.stats import SampleRing
from _common import blocker, spin_rate  # noqa: F401 - spin_rate is also used by offload.py


def row(name, cycles, lost, success, compute, robot_s, wall_s, extra=""):
    rate = robot_s * 1000.0 / wall_s if wall_s else float("nan")
    return (f"{name:<22} {cycles:>7} {lost:>6} {100.0 * lost / max(1, cycles + lost):>7.3f} {success:>6.3f} "
            f"{compute.p50_us:>7.1f} {compute.p99_us:>7.1f} {compute.max_us:>8.1f} {rate:>7.0f}  {extra}")


HEADER = (f"{'scenario':<22} {'cycles':>7} {'lost':>6} {'lost%':>7} {'minsr':>6} "
          f"{'cp50us':>7} {'cp99us':>7} {'cmaxus':>8} {'sim/s':>7}  notes")


async def bare_loop(robot: Robot, duration: float) -> str:
    """The baseline: pylibfranka directly, same figures as the Controller keeps."""
    ctl = robot.start_torque_control()
    torques = robot.torques
    compute = SampleRing(200_000)
    kp = [600.0, 600.0, 600.0, 600.0, 250.0, 150.0, 50.0]
    kd = [50.0, 50.0, 50.0, 50.0, 30.0, 25.0, 15.0]
    state, _ = ctl.readOnce()
    q0 = list(state.q)
    last_ms = round(state.time.to_sec() * 1000)
    start_ms = last_ms
    lost = cycles = 0
    min_sr = 1.0
    wall0 = time.monotonic()
    ctl.writeOnce(torques([0.0] * 7))
    tau_last = [0.0] * 7
    while True:
        state, _ = ctl.readOnce()
        t0 = time.perf_counter_ns()
        now = round(state.time.to_sec() * 1000)
        lost += max(0, now - last_ms - 1)
        last_ms = now
        if cycles > 100:
            min_sr = min(min_sr, state.control_command_success_rate)
        q, dq = state.q, state.dq
        tau = [0.0] * 7
        for i in range(7):
            t = kp[i] * (q0[i] - q[i]) - kd[i] * dq[i]
            d = t - tau_last[i]
            tau[i] = tau_last[i] + (0.95 if d > 0.95 else -0.95 if d < -0.95 else d)
        done = time.monotonic() - wall0 >= duration
        if done:
            # Ramp to zero at the rate limit before finishing.
            done = all(abs(v) < 1e-9 for v in tau_last)
            tau = [v - max(-0.95, min(0.95, v)) for v in tau_last]
        command = torques(tau)
        command.motion_finished = done
        compute.push(time.perf_counter_ns() - t0)
        ctl.writeOnce(command)
        tau_last = tau
        cycles += 1
        if done:
            break
        await asyncio.sleep(0)
    del ctl
    return row("bare pylibfranka", cycles, lost, min_sr, compute.summary(), (last_ms - start_ms) / 1000.0,
               time.monotonic() - wall0)


def controller_row(name, stats, extra=""):
    return row(name, stats.cycles, stats.lost_cycles, stats.min_success_rate, stats.compute, stats.robot_time_s,
               stats.wall_time_s, extra)


async def hold(robot: Robot, mode: str, duration: float, wait: str = "timerfd") -> str:
    controller = Controller(robot, wait=wait)
    await controller.start()
    controller.switch(mode)
    await controller.wait(duration)
    await controller.stop()
    stats = controller.stats
    return controller_row(f"{mode} {stats.wait}", stats, f"readOnce wait p50 {stats.read_wait.p50_us:.0f} us")


async def osc_with_policy(robot: Robot, duration: float) -> str:
    controller = Controller(robot)
    await controller.start()
    await controller.move(limits.Q_HOME, speed=0.5)
    controller.switch("osc")
    center = controller.state.ee
    controller.set_freq(100)
    rng = np.random.default_rng(0)
    work = rng.normal(size=(32, 32))
    ticks = 0
    t0 = controller.state.time_ms
    while controller.state.time_ms - t0 < duration * 1000:
        t = (controller.state.time_ms - t0) / 1000.0
        target = center.copy()
        target[1, 3] += 0.05 * math.sin(2 * math.pi * 0.25 * t)
        target[2, 3] += 0.05 * (math.cos(2 * math.pi * 0.25 * t) - 1.0)
        np.linalg.norm(work @ work)  # light work, about what a small policy post-processing costs
        await controller.set("ee_desired", target)
        ticks += 1
        if ticks % 1000 == 0:
            print(f"  osc: {t:5.1f} s, {controller.stats.lost_cycles} lost", file=sys.stderr, flush=True)
    error = np.linalg.norm(controller.state.ee[:3, 3] - target[:3, 3])
    stats = controller.stats
    await controller.stop()
    return controller_row(f"osc+100Hz {stats.wait}", stats,
                          f"{ticks / duration:.0f} set/s, last error {1000 * error:.1f} mm")


async def bare_under_l2(robot: Robot, duration: float) -> str:
    """The bare pylibfranka loop with the L2 load beside it."""
    task = asyncio.create_task(blocker("sleep"))
    try:
        return await bare_loop(robot, duration)
    except Exception as exc:  # noqa: BLE001 - a reflex is the expected result
        return f"{'bare + L2 sleep':<22} {type(exc).__name__}: {exc}"
    finally:
        task.cancel()


async def controller_under_l2(robot: Robot, duration: float, kind: str, guardian: bool) -> str:
    controller = Controller(robot, guardian=guardian)
    await controller.start()
    task = asyncio.create_task(blocker(kind))
    label = f"L2 {kind} guard={'on' if guardian else 'off'}"
    error = None
    try:
        await controller.wait(duration)
    except Exception as exc:  # noqa: BLE001 - a reflex is a result here
        error = exc
    finally:
        task.cancel()
    stats, error = await stop_collecting(controller, error)
    stalls = max(1, int(stats.robot_time_s))
    note = (f"{stats.takeovers} takeovers, {stats.guardian_cycles} guardian cycles, "
            f"{stats.lost_cycles / stalls:.2f} lost per stall")
    if error is not None:
        note = f"{type(error).__name__} {getattr(error, 'errors', '')} after {stats.robot_time_s:.1f} s; " + note
    return controller_row(label, stats, note)


async def stop_collecting(controller: Controller, error: BaseException | None):
    """Snapshot the figures, stop the controller, and keep the first error seen
    (in a benchmark a reflex is a result, not a failure)."""
    stats = controller.stats
    try:
        await controller.stop()
    except Exception as exc:  # noqa: BLE001
        error = error or exc
    return stats, error


async def with_thread(robot: Robot, duration: float, switch_interval: float, solo: float, label: str,
                      wait: str) -> str:
    controller = Controller(robot, switch_interval=switch_interval, wait=wait)
    await controller.start()
    result = []
    thread = threading.Thread(target=lambda: result.append(spin_rate(duration)))
    thread.start()
    error = None
    try:
        await controller.wait(duration)
    except Exception as exc:  # noqa: BLE001 - a reflex is a result here
        error = exc
    thread.join()
    stats, error = await stop_collecting(controller, error)
    note = f"thread at {100 * result[0] / solo:.1f} % of solo; readOnce wait p50 {stats.read_wait.p50_us:.0f} us"
    if error is not None:
        note += f"; {type(error).__name__}: {getattr(error, 'errors', '')}"
    return controller_row(label, stats, note)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per holding scenario")
    parser.add_argument("--osc-duration", type=float, default=60.0, help="seconds of the OSC scenario")
    parser.add_argument("--l2-duration", type=float, default=60.0,
                        help="seconds of each L2 scenario with the guardian on")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, default switch interval {sys.getswitchinterval()}", flush=True)
    solo = spin_rate(2.0)
    rows = []
    with Robot() as robot:
        print(f"simulator at {robot.ip}; scenarios of {args.duration:.0f} s (osc {args.osc_duration:.0f} s)",
              flush=True)
        thread = lambda si, wait: lambda: with_thread(  # noqa: E731
            robot, args.duration, si, solo, f"thr {wait} si={si * 1e3:g}ms", wait)
        for name, job in (
            ("bare", lambda: bare_loop(robot, args.duration)),
            ("impedance yield", lambda: hold(robot, "impedance", args.duration, "yield")),
            ("impedance timerfd", lambda: hold(robot, "impedance", args.duration, "timerfd")),
            ("impedance socket", lambda: hold(robot, "impedance", args.duration, "socket")),
            ("torque", lambda: hold(robot, "torque", args.duration, "auto")),
            ("osc", lambda: osc_with_policy(robot, args.osc_duration)),
            ("thread yield 5ms", thread(5e-3, "yield")),
            ("thread yield 0.2ms", thread(2e-4, "yield")),
            ("thread timerfd 0.2ms", thread(2e-4, "timerfd")),
            ("thread socket 5ms", thread(5e-3, "socket")),
            ("thread socket 0.2ms", thread(2e-4, "socket")),
            ("thread socket 0.1ms", thread(1e-4, "socket")),
            ("bare L2", lambda: bare_under_l2(robot, min(args.duration, 5.0))),
            ("L2 sleep, guardian off", lambda: controller_under_l2(robot, min(args.duration, 5.0), "sleep", False)),
            ("L2 sleep, guardian on", lambda: controller_under_l2(robot, args.l2_duration, "sleep", True)),
            ("L2 python, guardian on", lambda: controller_under_l2(robot, args.l2_duration, "python", True)),
        ):
            print(f"running {name}...", file=sys.stderr, flush=True)
            rows.append(await job())
    print()
    print("compute = readOnce return -> writeOnce call; sim/s = robot states per wall second")
    print(HEADER)
    for line in rows:
        print(line)


if __name__ == "__main__":
    asyncio.run(main())
