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

* ``record off|on|on, no tau_measured``: the Controller holding with the
  recorder off, on with every field, and on without ``tau_measured``, in
  blocks whose order rotates; the row is written after
  ``writeOnce``, so the figure is the time from ``writeOnce`` to the return of
  ``Kernel.cycle`` (``wr->ret``), and the recorder's cost per cycle is the
  difference of the medians (docs/recorder.md).

Every row carries the simulator's own rate (robot states per wall second):
when the machine is loaded the simulated clock slows instead of the client
losing states, so read lost cycles beside it.

Usage: ``python benchmarks/loop.py [--duration 10] [--osc-duration 60] [--only record,bare]
[--plot jitter.png]``; ``--plot`` records each Controller scenario's period and
compute time and draws their histograms (``aiofranka[report]``).
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

try:
    from tqdm import tqdm
except ImportError:  # progress is a nicety: plain lines without it
    tqdm = None

#: Scenario name -> {"period_us", "compute_us"} for --plot (filled only when plotting).
TIMINGS: dict = {}
PLOTTING = False


class recorded:
    """With --plot: record a Controller scenario's period and compute time (the recorder's t and compute_us)."""

    def __init__(self, controller: Controller, name: str, seconds: float) -> None:
        self.rec = controller.record(["t", "compute_us"], seconds=seconds + 5.0) if PLOTTING else None
        self.name = name

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.rec is not None:
            data = self.rec.stop().data()
            TIMINGS[self.name] = {"period_us": 1e6 * np.diff(data["t"]), "compute_us": data["compute_us"]}


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
    with recorded(controller, f"{mode} {wait}", duration):
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


class TimedKernel:
    """Stands in for the Controller's kernel and times each ``Kernel.cycle``:
    the wall time from its ``writeOnce`` call (the ``t_write`` it returns) to
    its return (writeOnce, the cycle's bookkeeping and the recorder's row), and
    the thread's CPU time over the whole call (blind to preemption by other
    processes, which dominates the wall figure's noise on a shared host)."""

    def __init__(self, kernel) -> None:
        self._kernel = kernel
        self.samples = None
        self.cpu = None

    def __getattr__(self, name):
        return getattr(self._kernel, name)

    def cycle(self, *args):
        cpu = time.thread_time_ns()
        served = self._kernel.cycle(*args)
        end = time.monotonic_ns()  # CLOCK_MONOTONIC, as the kernel's own times
        if served is not None and self.samples is not None:
            self.samples.push(end - served[5])
            self.cpu.push(time.thread_time_ns() - cpu)
        return served


RECORD_SIDES = {
    "off": False,
    "on": None,  # every field
    "on, no tau_measured": [name for name in ("time_ms", "t", "q", "dq", "q_desired", "ee", "ee_desired",
                                              "tau_command", "compute_us", "server", "success_rate", "mode")],
}


async def record_overhead(robot: Robot, block: float, rounds: int) -> list[str]:
    """Hold with the recorder off, on (every field) and on without
    ``tau_measured`` (the one field read through pylibfranka), in blocks of
    ``block`` s whose order rotates each round; rows: each side's time from
    writeOnce to the cycle's return, and the recorder's cost per cycle."""
    controller = Controller(robot)
    await controller.start()
    timed = TimedKernel(controller._cycle.kernel)
    controller._cycle.kernel = timed  # benchmark instrumentation only
    names = list(RECORD_SIDES)
    size = rounds * int(block * 1000) + 1000
    sides = {name: SampleRing(size) for name in names}
    cpu = {name: SampleRing(size) for name in names}
    medians = {name: [] for name in names}
    lost = dict.fromkeys(names, 0)
    cycles = dict.fromkeys(names, 0)
    steps = [names[(r + i) % len(names)] for r in range(rounds) for i in range(len(names))]
    bar = tqdm(steps, desc="recorder on/off", unit="block", file=sys.stderr) if tqdm else steps
    for side in bar:
        block_ring = SampleRing(int(block * 2000) + 1000)
        timed.samples = block_ring
        timed.cpu = cpu[side]
        before = controller.stats
        fields = RECORD_SIDES[side]
        rec = None if fields is False else controller.record(fields, seconds=block + 1.0)
        await controller.wait(block)
        if rec is not None:
            rec.stop()
        after = controller.stats
        timed.samples = None
        values = block_ring.values()
        for v in values:
            sides[side].push(int(v))
        medians[side].append(float(np.median(values)) / 1000.0)
        lost[side] += after.lost_cycles - before.lost_cycles
        cycles[side] += after.cycles - before.cycles
    controller._cycle.kernel = timed._kernel
    stats = controller.stats
    await controller.stop()
    lines = []
    for side in names:
        summary = sides[side].summary()
        lines.append(row(f"record {side}"[:22], cycles[side], lost[side], stats.min_success_rate, summary,
                         stats.robot_time_s, stats.wall_time_s,
                         f"wr->ret p50 {summary.p50_us:.2f} us, mean {summary.mean_us:.2f} us; cycle CPU p50 "
                         f"{np.median(cpu[side].values()) / 1000:.2f} us"))
    off_p50 = float(np.median(sides["off"].values())) / 1000.0
    for side in names[1:]:
        differences = [on - off for on, off in zip(medians[side], medians["off"])]
        pooled = float(np.median(sides[side].values())) / 1000.0 - off_p50
        spread = np.percentile(differences, [25, 75])
        cpu_cost = (float(np.median(cpu[side].values())) - float(np.median(cpu["off"].values()))) / 1000.0
        lines.append(f"{'cost: ' + side:<22} {cpu_cost:+.2f} us CPU per cycle (difference of the medians of the "
                     f"cycle's CPU time); wall from writeOnce: {pooled:+.2f} us (pooled medians); "
                     f"{np.median(differences):+.2f} us (median over {rounds} rounds of the difference of "
                     f"{block:g} s block medians, quartiles {spread[0]:+.2f} .. {spread[1]:+.2f})")
    return lines


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
        with recorded(controller, label, duration):
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
        with recorded(controller, label, duration):
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
    global PLOTTING
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per holding scenario")
    parser.add_argument("--osc-duration", type=float, default=60.0, help="seconds of the OSC scenario")
    parser.add_argument("--l2-duration", type=float, default=60.0,
                        help="seconds of each L2 scenario with the guardian on")
    parser.add_argument("--record-block", type=float, default=1.0,
                        help="seconds of each block of the recorder's on/off comparison")
    parser.add_argument("--record-rounds", type=int, default=10, help="rounds of that comparison")
    parser.add_argument("--only", default=None, metavar="NAMES",
                        help="comma-separated scenario names (or prefixes) to run, e.g. 'record,impedance'")
    parser.add_argument("--plot", default=None, metavar="PNG",
                        help="write the period and compute histograms of the Controller scenarios here")
    args = parser.parse_args()
    PLOTTING = args.plot is not None
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
            ("record", lambda: record_overhead(robot, args.record_block, args.record_rounds)),
        ):
            if args.only and not any(name.startswith(p.strip()) for p in args.only.split(",")):
                continue
            print(f"running {name}...", file=sys.stderr, flush=True)
            result = await job()
            rows.extend(result if isinstance(result, list) else [result])
    print()
    print("compute = readOnce return -> writeOnce call (record rows: writeOnce call -> cycle's return); "
          "sim/s = robot states per wall second")
    print(HEADER)
    for line in rows:
        print(line)
    if args.plot and TIMINGS:
        from aiofranka.report import plot_timing

        print(f"wrote {plot_timing(TIMINGS, args.plot, title='loop timing on the simulator (benchmarks/loop.py)')}")


if __name__ == "__main__":
    asyncio.run(main())
