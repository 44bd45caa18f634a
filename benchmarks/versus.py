"""Side by side: our Controller against native peers, under the same loads, on the same simulator.

Each run is a fresh embedded simulator (franka-sim, communication constraints
enforced) and a fresh child process that holds the start pose for
``--seconds`` under one load, with one contender:

* ``ours``: aiofranka's Controller under the standard asyncio loop, as a
  user gets it (kernel serving: the C thread serves every cycle);
* ``ours-loop``: the same with ``serve="loop"`` (the event loop serves every
  cycle, backed by the guardian and the rescue thread);
* ``ours-uvloop``: ``ours`` under uvloop;
* ``ours-no-qos``: ``ours`` without its PM QoS request (``cpu_wake_latency=None``:
  idle CPUs may halt between states), not in the default set;
* ``ours-least-busy``: ``ours`` with ``serve_cpu="least-busy"``: the serving
  thread keeps off busy CPUs but does not follow the states' CPU, not in the
  default set;
* ``legacy``: aiofranka 0.9.0's native C++ loop (``NativeFrankaController``),
  run with the interpreter of ``--legacy-venv``;
* ``bare``: a bare pylibfranka loop as an asyncio task (read, joint
  impedance on Python floats, write, ``await asyncio.sleep(0)``);
* ``franka-rs``: franka-rs's Rust loop (``joint_targets``), with the
  interpreter of ``--franka-rs-venv``; its loss is estimated from the
  robot's ``control_command_success_rate``, sampled every 100 robot ms.

Loads: L0 idle; L1 a pure-Python thread spinning (its iterations are
reported); L2 the event loop blocked by ``time.sleep(0.03)`` once a second;
L3 a torch MLP (64 -> 3x512 -> 7) at 30 Hz through ``CudaInferenceThread``
(round trip p50); L4 a 224x224x3 observation sent to an ``mpify`` policy at
30 Hz (round trip p50). Lost states are gaps in the robot's clock as seen by
the client. For ours, each gap is attributed (aiofranka/loop/attribution.py).

Rounds alternate the contenders (the order is reversed every other round);
medians over rounds and the worst run go to stdout and ``--json``. A C thread
sleeping to 1 ms deadlines (``aiofranka check``) measures the machine floor
before and after. See docs/versus.md.

Usage::

    python benchmarks/versus.py [--rounds 3] [--seconds 15] [--loads L0,L2]
        [--contenders ours,legacy] [--legacy-venv PATH] [--franka-rs-venv PATH] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from _common import blocker, make_mlp, paced, spin_count  # noqa: E402

LOADS = ("L0", "L1", "L2", "L3", "L4")
LOAD_NAMES = {"L0": "idle", "L1": "pure-Python thread spinning", "L2": "event loop blocked 30 ms once a second",
              "L3": "torch MLP at 30 Hz via CudaInferenceThread", "L4": "224x224x3 obs to an mpify policy at 30 Hz"}
CONTENDERS = ("ours", "ours-loop", "ours-uvloop", "ours-no-qos", "ours-least-busy", "legacy", "bare", "franka-rs")
DEFAULT_CONTENDERS = tuple(c for c in CONTENDERS if c not in ("ours-no-qos", "ours-least-busy"))
POLICY_HZ = 30.0
SETTLE_S = 1.0
#: Seconds a run takes beyond --seconds (simulator and child start, connection, settle, stop),
#: measured here: by contender, plus more for a load that imports torch or starts a child.
OVERHEAD_S = {"ours": 2.0, "ours-loop": 2.0, "ours-uvloop": 2.0, "ours-no-qos": 2.0, "ours-least-busy": 2.0,
              "bare": 2.0, "franka-rs": 2.0,
              "legacy": 5.5}
LOAD_OVERHEAD_S = {"L0": 0.0, "L1": 0.0, "L2": 0.0, "L3": 1.5, "L4": 0.5}
#: franka-rs has no offload helpers of its own (CudaInferenceThread, mpify): L3 and L4 are not run with it.
UNSUPPORTED = {("franka-rs", "L3"), ("franka-rs", "L4")}


# --------------------------------------------------------------------------- loads (in the child)


class Load:
    """One load: ``prepare`` before the loop starts, ``start``/``stop`` around the window."""

    def __init__(self, name: str, torch_threads: int = 0) -> None:
        self.name = name
        self.torch_threads = torch_threads
        self.stop_event: asyncio.Event | None = None
        self.figures: dict = {}
        self._tasks: list = []
        self._thread = None
        self._thread_stop = threading.Event()
        self._runner = None
        self._proxy = None

    async def prepare(self) -> None:
        if self.name == "L1":
            # Made before the robot connects: a thread made after pylibfranka's Robot() inherits
            # SCHED_FIFO 99 in aiofranka 0.9 (above its own loop), which measures that bug, not
            # the loop. It waits for start().
            result, go = self.figures, threading.Event()
            self._go = go

            def spin() -> None:
                go.wait()
                # 0 if the window ended before the thread ever got the GIL (beside the bare loop)
                t0, c0 = time.perf_counter(), time.thread_time()
                result["worker_iterations"] = 0 if self._thread_stop.is_set() else spin_count(1e9, self._thread_stop)
                wall = time.perf_counter() - t0
                # the share of a core the thread got over the window (its CPU time / wall time)
                result["worker_cpu_share"] = (time.thread_time() - c0) / wall if wall > 0 else 0.0

            self._thread = threading.Thread(target=spin, name="versus-L1", daemon=True)
            self._thread.start()
        elif self.name == "L3":
            import torch

            from aiofranka import CudaInferenceThread

            if self.torch_threads:
                torch.set_num_threads(self.torch_threads)
            model = make_mlp(torch)
            x = torch.zeros(1, 64)

            def forward():
                with torch.no_grad():
                    return model(x)

            self._forward = forward
            self._runner = CudaInferenceThread()
            self._runner.start()
            for _ in range(20):
                await self._runner.run(forward)  # warm
        elif self.name == "L4":
            import numpy as np

            from _process_roundtrip import BenchTarget
            from aiofranka import mpify

            rng = np.random.default_rng(0)
            self._obs = {"image": rng.integers(0, 255, size=(224, 224, 3), dtype=np.uint8),
                         "q": [0.1, -0.2, 0.3, -1.8, 0.0, 1.7, 0.7]}
            self._proxy = mpify(BenchTarget)
            for _ in range(5):
                await self._proxy.act(self._obs)  # the child is up and warm

    def start(self) -> None:
        self.stop_event = asyncio.Event()
        if self.name == "L1":
            self._go.set()
        elif self.name == "L2":
            self._tasks.append(asyncio.ensure_future(blocker("sleep")))
        elif self.name in ("L3", "L4"):
            trips: list[int] = []
            self._trips = trips
            if self.name == "L3":
                runner, forward = self._runner, self._forward

                async def call() -> None:
                    t0 = time.perf_counter_ns()
                    await runner.run(forward)
                    trips.append(time.perf_counter_ns() - t0)
            else:
                proxy, obs = self._proxy, self._obs

                async def call() -> None:
                    t0 = time.perf_counter_ns()
                    await proxy.act(obs)
                    trips.append(time.perf_counter_ns() - t0)

            self._tasks.append(asyncio.ensure_future(paced(POLICY_HZ, self.stop_event, call)))

    async def stop(self) -> None:
        if self.stop_event is not None:
            self.stop_event.set()
        self._thread_stop.set()
        if self.name == "L1":
            self._go.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.name in ("L3", "L4"):
            trips = sorted(self._trips)
            self.figures["policy_calls"] = len(trips)
            if trips:
                self.figures["policy_p50_ms"] = trips[len(trips) // 2] / 1e6
            stats = getattr(self._runner, "stats", None)  # ours: where the round trip goes
            if stats is not None and stats.calls:
                self.figures["mlp_queue_wait_p50_ms"] = stats.queue_wait.p50_us / 1000.0
                self.figures["mlp_run_p50_ms"] = stats.run.p50_us / 1000.0

    def close(self) -> None:
        if self._runner is not None:
            self._runner.stop()
        if self._proxy is not None:
            self._proxy.stop()


# --------------------------------------------------------------------------- contenders (in the child)


class Ours:
    """aiofranka's Controller holding its start pose; gaps attributed by the kernel.

    ``serve``: the Controller's option (None: its default, kernel serving where
    the rescue thread runs; ``"loop"``: the event loop serves each cycle)."""

    serve: str | None = None
    options: dict = {}

    def __init__(self, host: str) -> None:
        from aiofranka import Controller, Robot
        from aiofranka.loop.attribution import GapReader

        self.loop_tid = threading.get_native_id()  # the event loop's thread serves the cycles
        self.robot = Robot(host, franka_sim=True)
        self.controller = Controller(self.robot, **({"serve": self.serve} if self.serve else {}), **self.options)
        self.reader = GapReader(self.controller._kernel)
        self.gaps: list = []
        self.recording = False

    async def start(self) -> None:
        await self.controller.start()

    def mark(self) -> dict:
        c = self.controller
        s = c.stats
        if self.recording:
            self.gaps += self.reader.read()
        else:
            self.reader.start()  # gaps are recorded over the window only
            self.recording = True
        return {"wall": time.monotonic(), "time_ms": c.state.time_ms, "lost": s.lost_cycles,
                "guardian": s.guardian_cycles, "rescued": s.rescued_cycles, "stalls": s.stalls}

    def figures(self, m0: dict, m1: dict) -> dict:
        from aiofranka.loop.attribution import breakdown, classify

        guardian = self.controller._guardian or self.controller._last_guardian
        roles = {self.loop_tid: "loop"}
        if guardian is not None and guardian.native_id:
            roles[guardian.native_id] = "guardian"
        stats = self.controller.stats
        return {"lost": m1["lost"] - m0["lost"], "guardian_cycles": m1["guardian"] - m0["guardian"],
                "rescued_cycles": m1["rescued"] - m0["rescued"], "stalls": m1["stalls"] - m0["stalls"],
                "longest_gap_ms": max((g.lost + 1 for g in self.gaps), default=1),
                "attribution": breakdown(self.gaps, roles), "attribution_missed": self.reader.missed,
                "gaps": [{"lost": g.lost, "cause": " / ".join(classify(g, roles)),
                          "late_us": (g.call_ns - g.due_ns) / 1e3 if g.due_ns else None,
                          "after_last_write_us": (g.call_ns - g.prev_write_ns) / 1e3}
                         for g in self.gaps[:100]],
                "culprits": [str(c) for c in stats.culprits][:5], "compute_p99_us": stats.compute.p99_us,
                "serve_cpu_moves": stats.serve_moves}

    async def stop(self) -> None:
        try:
            await self.controller.stop()
        finally:
            await self.controller.close()
            self.robot.close()


class Bare:
    """A bare pylibfranka loop as an asyncio task: joint impedance on Python floats."""

    KP = (600.0, 600.0, 600.0, 600.0, 250.0, 150.0, 50.0)
    KD = (50.0, 50.0, 50.0, 50.0, 30.0, 25.0, 15.0)

    def __init__(self, host: str) -> None:
        from aiofranka import Robot

        self.robot = Robot(host, franka_sim=True)
        self.lost = 0
        self.longest = 1
        self.time_ms = 0
        self.finish = False
        self.task = None

    async def start(self) -> None:
        self.task = asyncio.ensure_future(self._run())
        while self.time_ms == 0 and not self.task.done():
            await asyncio.sleep(0.01)

    async def _run(self) -> None:
        ctl = self.robot.start_torque_control()
        torques = self.robot.torques
        state, _ = ctl.readOnce()
        q0 = list(state.q)
        last = round(state.time.to_sec() * 1000)
        ctl.writeOnce(torques([0.0] * 7))
        tau_last = [0.0] * 7
        kp, kd = self.KP, self.KD
        while True:
            state, _ = ctl.readOnce()
            now = round(state.time.to_sec() * 1000)
            if now - last > 1:
                self.lost += now - last - 1
                self.longest = max(self.longest, now - last)
            last = self.time_ms = now
            q, dq = state.q, state.dq
            tau = [0.0] * 7
            for i in range(7):
                d = kp[i] * (q0[i] - q[i]) - kd[i] * dq[i] - tau_last[i]
                tau[i] = tau_last[i] + (0.95 if d > 0.95 else -0.95 if d < -0.95 else d)
            done = False
            if self.finish:  # ramp to zero at the rate limit, then finish
                tau = [v - max(-0.95, min(0.95, v)) for v in tau_last]
                done = all(v == 0.0 for v in tau)
            command = torques(tau)
            command.motion_finished = done
            ctl.writeOnce(command)
            tau_last = tau
            if done:
                return
            await asyncio.sleep(0)

    def mark(self) -> dict:
        if self.task.done() and self.task.exception() is not None:
            raise self.task.exception()
        return {"wall": time.monotonic(), "time_ms": self.time_ms, "lost": self.lost, "longest": self.longest}

    def figures(self, m0: dict, m1: dict) -> dict:
        return {"lost": m1["lost"] - m0["lost"], "longest_gap_ms": self.longest}

    async def stop(self) -> None:
        self.finish = True
        try:
            await self.task
        finally:
            self.robot.close()


class Legacy:
    """aiofranka 0.9.0's NativeFrankaController (its C++ loop thread), recording the robot time per cycle."""

    def __init__(self, host: str) -> None:
        from aiofranka import NativeFrankaController, RobotInterface

        self.robot = RobotInterface(host, read_tool=False)
        self.controller = NativeFrankaController(self.robot)
        self.recording = None
        self.error = None
        controller = self.controller

        async def run_without_exit() -> None:
            # Its own _run() calls sys.exit(1) on a loop error; keep the error as a result instead.
            error = await controller._watch()
            if error:
                self.error = error

        controller.__dict__["_run"] = run_without_exit

    async def start(self) -> None:
        self.recording = self.controller.record(["time", "wall_time"], seconds=600.0)
        await self.controller.start()

    def mark(self) -> dict:
        if self.controller.task is not None and self.controller.task.done():
            raise RuntimeError(f"the native loop ended: {self.error}")
        return {"wall": time.monotonic(), "epoch": time.time()}

    def figures(self, m0: dict, m1: dict) -> dict:
        import numpy as np

        data = self.recording.data()
        wall, robot = np.asarray(data["wall_time"]), np.round(np.asarray(data["time"]) * 1000.0)
        window = robot[(wall >= m0["epoch"]) & (wall <= m1["epoch"])]
        steps = np.diff(window)
        self._window = window
        return {"lost": int(np.sum(np.maximum(steps - 1, 0))), "longest_gap_ms": int(steps.max()) if steps.size else 0,
                "time_ms_span": float(window[-1] - window[0]) if window.size else 0.0}

    async def stop(self) -> None:
        if self.recording is not None:
            self.recording.stop()
        await self.controller.stop()


class FrankaRs:
    """franka-rs's Rust loop (``joint_targets``) holding the start pose. Loss is estimated from
    the success rate (commands received of the last 100), sampled every 100 robot ms."""

    def __init__(self, host: str) -> None:
        import franka

        os.environ.setdefault("FRANKA_REALTIME", "ignore")
        self.robot = franka.Robot(host)
        self.arm = None
        self.samples: list[tuple[float, float]] = []
        self.task = None

    async def start(self) -> None:
        self.arm = self.robot.joint_targets(fraction=0.2).__enter__()
        self.task = asyncio.ensure_future(self._sample())
        await asyncio.sleep(0.2)

    async def _sample(self) -> None:
        last = -1.0
        while True:
            s = self.arm.state()
            t = round(s.time * 1000) if isinstance(s.time, float) else s.time
            if t - last >= 100:
                self.samples.append((float(t), float(s.control_command_success_rate)))
                last = t
            await asyncio.sleep(0.02)

    def mark(self) -> dict:
        return {"wall": time.monotonic(), "n": len(self.samples)}

    def figures(self, m0: dict, m1: dict) -> dict:
        window = self.samples[m0["n"]:m1["n"]]
        lost = sum(round((1.0 - sr) * 100) * min(1.0, (t - window[i - 1][0]) / 100.0)
                   for i, (t, sr) in enumerate(window) if i)
        span = window[-1][0] - window[0][0] if len(window) > 1 else 0.0
        return {"lost": int(round(lost)), "longest_gap_ms": None, "time_ms_span": span,
                "note": "lost estimated from the success rate"}

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.arm is not None:
            self.arm.__exit__(None, None, None)


class OursLoop(Ours):
    """Ours with the event loop serving every cycle (``serve="loop"``, the design before kernel serving)."""

    serve = "loop"


class OursNoQos(Ours):
    """Ours without the PM QoS request: idle CPUs may halt between states (docs/controller.md#cpu-wake-up-latency)."""

    options = {"cpu_wake_latency": None}


class OursLeastBusy(Ours):
    """Ours with the earlier default placement: off a busy CPU, not after the states (docs/kernel-serving.md#placement)."""

    options = {"serve_cpu": "least-busy"}


DRIVERS = {"ours": Ours, "ours-uvloop": Ours, "ours-loop": OursLoop, "ours-no-qos": OursNoQos,
           "ours-least-busy": OursLeastBusy, "bare": Bare,
           "legacy": Legacy, "franka-rs": FrankaRs}


async def child_main(contender: str, load_name: str, seconds: float, host: str, torch_threads: int = 0) -> dict:
    load = Load(load_name, torch_threads)
    out: dict = {"contender": contender, "load": load_name, "seconds": seconds, "error": None}
    driver = None
    try:
        await load.prepare()
        driver = DRIVERS[contender](host)
        await driver.start()
        await asyncio.sleep(SETTLE_S)
        m0 = driver.mark()
        load.start()
        await asyncio.sleep(seconds)
        await load.stop()
        m1 = driver.mark()
        out.update(driver.figures(m0, m1))
        wall = m1["wall"] - m0["wall"]
        span = out.pop("time_ms_span", None)
        if span is None:
            span = m1["time_ms"] - m0["time_ms"]
        out["robot_cycles"] = span
        out["sim_states_per_s"] = span / wall if wall else 0.0
        out["lost_per_1000"] = 1000.0 * out["lost"] / max(1.0, span)
    except BaseException as exc:  # noqa: BLE001 - a reflex is a result here
        out["error"] = f"{type(exc).__name__}: {exc}"[:300]
    finally:
        if load.stop_event is not None and not load.stop_event.is_set():
            await load.stop()
        if driver is not None:
            try:
                await driver.stop()
            except BaseException as exc:  # noqa: BLE001
                out["error"] = out["error"] or f"at stop: {type(exc).__name__}: {exc}"[:300]
        load.close()
    out.update(load.figures)
    return out


def child(args: argparse.Namespace) -> None:
    if args.contender == "ours-uvloop":
        import uvloop

        result = uvloop.run(child_main(args.contender, args.load, args.seconds, args.host, args.torch_threads))
    else:
        result = asyncio.run(child_main(args.contender, args.load, args.seconds, args.host, args.torch_threads))
    print("VERSUS " + json.dumps(result), flush=True)


# --------------------------------------------------------------------------- the parent


def interpreter(contender: str, args: argparse.Namespace) -> str | None:
    if contender == "legacy":
        return os.path.join(args.legacy_venv, "bin", "python") if args.legacy_venv else None
    if contender == "franka-rs":
        return os.path.join(args.franka_rs_venv, "bin", "python") if args.franka_rs_venv else None
    return sys.executable


def availability(contender: str, args: argparse.Namespace) -> str | None:
    """None when the contender can run, else why not."""
    python = interpreter(contender, args)
    if python is None:
        flag = "--legacy-venv" if contender == "legacy" else "--franka-rs-venv"
        return f"not measured (no {flag})"
    probe = {"legacy": "from aiofranka import NativeFrankaController",
             "franka-rs": "import franka; franka.Robot",
             "ours-uvloop": "import uvloop"}.get(contender, "import aiofranka, pylibfranka")
    env = clean_env() if contender in ("legacy", "franka-rs") else None
    try:
        done = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=120, env=env, cwd=HERE)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"not measured ({python}: {exc})"
    if done.returncode:
        return f"not measured ({python} cannot {probe!r}: {done.stderr.strip().splitlines()[-1:]})"
    return None


def clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


def run_one(contender: str, load: str, args: argparse.Namespace) -> dict:
    from aiofranka.sim import Simulator

    python = interpreter(contender, args)
    env = clean_env() if contender in ("legacy", "franka-rs") else dict(os.environ)
    with Simulator() as sim:
        cmd = [python, os.path.abspath(__file__), "--child", "--contender", contender, "--load", load,
               "--seconds", str(args.seconds), "--host", sim.host, "--torch-threads", str(args.torch_threads)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=HERE,
                                  timeout=args.seconds + 180)
        except subprocess.TimeoutExpired:
            return {"contender": contender, "load": load, "error": "the run did not finish in time"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("VERSUS ")]
    if not lines:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        return {"contender": contender, "load": load, "error": f"exit {done.returncode}: {tail}"[:400]}
    return json.loads(lines[-1][len("VERSUS "):])


def floor(seconds: float, when: str) -> dict:
    from aiofranka.probe import probe_wakeups

    priority = 80 if os.geteuid() == 0 else None
    report = probe_wakeups(seconds, priority=priority)
    return {"when": when, "late_period": report.late_period, "count": report.count,
            "max_ms": report.lateness.max_us / 1000.0, "p99_us": report.lateness.p99_us, "text": str(report)}


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarise(runs: list[dict]) -> list[dict]:
    rows = []
    keys = sorted({(r["load"], r["contender"]) for r in runs}, key=lambda k: (LOADS.index(k[0]),
                                                                              CONTENDERS.index(k[1])))
    for load, contender in keys:
        rs = [r for r in runs if r["load"] == load and r["contender"] == contender]
        ok = [r for r in rs if r.get("lost_per_1000") is not None]
        row = {"load": load, "contender": contender, "runs": len(rs),
               "errors": [r["error"] for r in rs if r.get("error")]}
        for key in ("lost_per_1000", "longest_gap_ms", "guardian_cycles", "rescued_cycles", "worker_iterations",
                    "worker_cpu_share", "policy_p50_ms", "sim_states_per_s"):
            vals = [r.get(key) for r in ok]
            row[key] = median(vals)
            present = [v for v in vals if v is not None]
            if present:
                lower_is_worse = ("worker_iterations", "worker_cpu_share", "sim_states_per_s")
                row[key + "_worst"] = min(present) if key in lower_is_worse else max(present)
        attribution: dict[str, int] = {}
        for r in ok:
            for category, entry in (r.get("attribution") or {}).items():
                attribution[category] = attribution.get(category, 0) + entry["lost"]
        row["attribution_lost"] = attribution
        rows.append(row)
    return rows


def fmt(value, spec: str, worst=None) -> str:
    if value is None:
        return "-"
    text = format(value, spec)
    return text if worst is None else f"{text} ({format(worst, spec)})"


def run_lines(run: dict) -> list[str]:
    err = f"  ERROR {run['error']}" if run.get("error") else ""
    lost = fmt(run.get("lost_per_1000"), ".2f")
    extra = ""
    if "guardian_cycles" in run:
        extra += f" guardian/rescue {run['guardian_cycles']}/{run['rescued_cycles']}"
    if "worker_iterations" in run:
        extra += f" worker {run['worker_iterations'] / 1e6:.1f}M"
        if run.get("worker_cpu_share") is not None:
            extra += f" ({100 * run['worker_cpu_share']:.1f} % of a core)"
    if "policy_p50_ms" in run:
        extra += f" policy p50 {run['policy_p50_ms']:.2f} ms"
    if "mlp_run_p50_ms" in run:
        extra += f" (queue {run['mlp_queue_wait_p50_ms']:.2f}, forward {run['mlp_run_p50_ms']:.2f})"
    if run.get("policy_calls") == 0:
        extra += " policy: no call completed"
    lines = [f"round {run.get('round', '?')} {run['load']} {run['contender']:<12} lost/1k {lost} "
             f"(lost {run.get('lost', '-')}, longest gap {run.get('longest_gap_ms', '-')} ms) "
             f"sim {fmt(run.get('sim_states_per_s'), '.0f')}/s{extra}{err}"]
    for category, entry in sorted((run.get("attribution") or {}).items(), key=lambda kv: -kv[1]["lost"]):
        details = "; ".join(f"{d}: {n}" for d, n in sorted(entry["details"].items(), key=lambda kv: -kv[1])[:3])
        lines.append(f"      {category:<16} {entry['lost']:>4} lost in {entry['gaps']:>3} gaps  ({details})")
    return lines


def print_table(rows: list[dict]) -> None:
    print()
    print("Medians over rounds, the worst run in brackets. lost/1k = lost states per 1,000 robot cycles;")
    print("gap = longest gap in robot time (ms); g/r = cycles served by the guardian / the rescue thread;")
    print("worker = L1 thread iterations (M) and its CPU share (% of a core, median); policy = L3 MLP / L4 mpify")
    print("round trip p50 (ms); sim = states/s.")
    head = (f"{'load':<4} {'contender':<12} {'lost/1k':>15} {'gap':>9} {'g/r':>11} {'worker':>19} "
            f"{'policy':>13} {'sim':>11}  attribution (lost, all runs)")
    print(head)
    print("-" * len(head))
    for r in rows:
        gr = "-" if r.get("guardian_cycles") is None else f"{r['guardian_cycles']:.0f}/{r['rescued_cycles']:.0f}"
        worker = None if r.get("worker_iterations") is None else r["worker_iterations"] / 1e6
        worst_worker = None if r.get("worker_iterations_worst") is None else r["worker_iterations_worst"] / 1e6
        share = r.get("worker_cpu_share")
        worker_text = fmt(worker, ".0f", worst_worker) + ("" if share is None else f" {100 * share:.1f}%")
        attribution = ", ".join(f"{k} {v}" for k, v in sorted(r["attribution_lost"].items(), key=lambda kv: -kv[1]))
        errors = f"  [{len(r['errors'])} failed: {r['errors'][0][:60]}]" if r["errors"] else ""
        print(f"{r['load']:<4} {r['contender']:<12} {fmt(r['lost_per_1000'], '.2f', r.get('lost_per_1000_worst')):>15} "
              f"{fmt(r['longest_gap_ms'], '.0f', r.get('longest_gap_ms_worst')):>9} {gr:>11} "
              f"{worker_text:>19} "
              f"{fmt(r['policy_p50_ms'], '.2f', r.get('policy_p50_ms_worst')):>13} "
              f"{fmt(r['sim_states_per_s'], '.0f', r.get('sim_states_per_s_worst')):>11}  {attribution}{errors}")


def parse_list(text: str, allowed: tuple, what: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    bad = [item for item in items if item not in allowed]
    if bad or not items:
        raise argparse.ArgumentTypeError(
            f"{what} must be a comma-separated subset of {','.join(allowed)}, got {text!r}")
    return items


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds (default 3)")
    parser.add_argument("--seconds", type=float, default=15.0, help="seconds each run holds (default 15)")
    parser.add_argument("--loads", type=lambda t: parse_list(t, LOADS, "--loads"), default=list(LOADS),
                        help="comma-separated loads (default all: L0,L1,L2,L3,L4)")
    parser.add_argument("--contenders", type=lambda t: parse_list(t, CONTENDERS, "--contenders"),
                        default=list(DEFAULT_CONTENDERS),
                        help=f"comma-separated contenders from {','.join(CONTENDERS)} "
                             f"(default: {','.join(DEFAULT_CONTENDERS)})")
    parser.add_argument("--legacy-venv", help="a venv with aiofranka==0.9.0 (and torch) installed")
    parser.add_argument("--franka-rs-venv", help="a venv with franka-rs installed")
    parser.add_argument("--floor-seconds", type=float, default=3.0,
                        help="seconds of the machine-floor probe before and after (0: skip)")
    parser.add_argument("--torch-threads", type=int, default=0,
                        help="L3: torch.set_num_threads(N) in every contender's process (default 0: torch's own "
                             "default, one per core, as a new user gets it)")
    parser.add_argument("--json", help="write runs, floors and the summary to this file")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and the expected duration only")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--contender", help=argparse.SUPPRESS)
    parser.add_argument("--load", help=argparse.SUPPRESS)
    parser.add_argument("--host", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    if args.torch_threads < 0:
        parser.error(f"--torch-threads must be 0 (torch's default) or more, got {args.torch_threads}")
    if args.seconds <= 0:
        parser.error(f"--seconds must be positive, got {args.seconds}")
    return args


def expected_seconds(runs: list[tuple[str, str]], seconds: float, floor_seconds: float) -> float:
    """The plan's expected wall time: (contender, load) runs of ``seconds``, and the two floors."""
    return sum(seconds + OVERHEAD_S[c] + LOAD_OVERHEAD_S[load] for c, load in runs) + 2 * floor_seconds


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        child(args)
        return
    skipped = {}
    contenders = []
    for contender in args.contenders:
        why = availability(contender, args)
        if why:
            skipped[contender] = why
        else:
            contenders.append(contender)
    for contender, why in skipped.items():
        print(f"{contender}: {why}", flush=True)
    plan = [(r, load, c) for r in range(args.rounds) for load in args.loads
            for c in (contenders if r % 2 == 0 else contenders[::-1]) if (c, load) not in UNSUPPORTED]
    for c, load in sorted(UNSUPPORTED):
        if c in contenders and load in args.loads:
            print(f"{c}: {load} not run (no offload helper of its own)")
    eta = expected_seconds([(c, load) for _, load, c in plan], args.seconds, args.floor_seconds)
    print(f"{len(plan)} runs ({args.rounds} rounds x {len(args.loads)} loads x {len(contenders)} contenders) of "
          f"{args.seconds:g} s: expected about {eta / 60:.0f} min", flush=True)
    if args.dry_run or not plan:
        return
    from tqdm import tqdm

    floors = [floor(args.floor_seconds, "before")] if args.floor_seconds > 0 else []
    runs = []
    for r, load, contender in tqdm(plan, desc="versus", unit="run", file=sys.stderr):
        started = time.monotonic()
        run = run_one(contender, load, args)
        run["round"] = r + 1
        run["run_s"] = time.monotonic() - started
        runs.append(run)
        for line in run_lines(run):
            tqdm.write(line, file=sys.stdout)
        sys.stdout.flush()
    if args.floor_seconds > 0:
        floors.append(floor(args.floor_seconds, "after"))
    rows = summarise(runs)
    print_table(rows)
    print()
    for f in floors:
        print(f"machine floor {f['when']:<6}: {f['text']}")
    for contender, why in skipped.items():
        print(f"{contender}: {why}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": {k: v for k, v in vars(args).items() if k not in ("child", "contender", "load", "host")},
                       "skipped": skipped, "floors": floors, "runs": runs, "summary": rows}, handle, indent=1)
        print(f"written to {args.json}")


if __name__ == "__main__":
    main()
