"""Offload helpers on the embedded simulator: round trips, loop figures, GIL share, MLP inflation.

One run prints five tables and a summary:

1. Round trip (p50/p99, µs) of one offloaded call, event loop -> helper -> event
   loop, for ``asyncify``, ``CudaInferenceThread`` and ``mpify`` with a tiny
   payload and with an observation dict holding a 224x224x3 uint8 image, beside
   the raw floors (``run_in_executor``, a bare thread handoff, a bare
   ``multiprocessing.Pipe``). Measured by ``benchmarks/_thread_roundtrip.py``
   and ``benchmarks/_process_roundtrip.py``.
2. Loop figures while each helper serves a policy at 30 Hz on the simulator
   (20 ms blocking / 20 ms pure-Python policies, the torch MLP), and the same
   20 ms blocking policy called inline, with the guardian off and on. The
   first row is the baseline: the same loop with a policy that does nothing,
   so that cycles the machine loses by itself (late wake-ups on a VM) are not
   blamed on a helper.
3. The share of its solo throughput that a pure-Python worker thread keeps
   while the Controller holds a pose: the naive loop, then the default loop
   with twice the default switch interval and with the default, alternated.
4. The latency of the torch MLP (3 hidden layers of 512, batch 1) through
   ``CudaInferenceThread``, alone and while the Controller runs.
5. Optionally, aiofranka 0.9.0's helpers measured in a separate venv
   (``--legacy-venv PATH``) beside ours.

Usage::

    python benchmarks/offload.py [--seconds 20] [--quick] [--legacy-venv /tmp/af09]
                                 [--torch-threads 1] [--share-rounds 2]

Before section 2 and after section 3, a C thread sleeping to 1 ms deadlines
(:func:`aiofranka.probe.probe_wakeups`, at the loop's priority) measures the
machine floor: wake-ups more than a period late are cycles that no loop, of
any design, would keep against a real robot on this machine at that moment
(the simulator stalls with the machine, so it charges far fewer).

The default run takes about six minutes; ``--quick`` about two.
Progress goes to stderr, the tables to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import numpy as np

# Keep the top level light: mpify/ampify children re-import this script.
HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.join(os.path.dirname(HERE), "tests")
for _path in (TESTS, HERE):  # tests/_policies.py, benchmarks/_*_roundtrip.py, benchmarks/loop.py
    if _path not in sys.path:
        sys.path.insert(0, _path)

POLICY_HZ = 30.0
WORK_S = 0.02
_T0 = time.monotonic()


def progress(message: str) -> None:
    print(f"[{time.monotonic() - _T0:6.1f} s] {message}", file=sys.stderr, flush=True)


def fmt_pair(pair: tuple[float, float] | None, width: int = 17) -> str:
    if pair is None:
        return f"{'-':>{width}}"
    return f"{f'{pair[0]:.0f} / {pair[1]:.0f}':>{width}}"


def sim_rate(stats) -> float:
    return 1000.0 * stats.robot_time_s / stats.wall_time_s if stats.wall_time_s else float("nan")


from _common import other_simulators  # noqa: E402 - after the sys.path set-up above


# --------------------------------------------------------------------------- 1. round trips


THREAD_ROWS = (  # (label, kind, key in _thread_roundtrip.measure())
    ("run_in_executor", "floor", "run_in_executor"),
    ("bare thread handoff", "floor", "bare thread"),
    ("asyncify", "helper", "asyncify"),
    ("CudaInferenceThread.run", "helper", "CudaInferenceThread.run"),
)
PROCESS_ROWS = (  # (label, kind, key in _process_roundtrip.measure())
    ("bare multiprocessing.Pipe", "floor", "bare Pipe (sync)"),
    ("mpify (await proxy.m)", "helper", "mpify await"),
    ("mpify (call_sync)", "helper", "mpify call_sync"),
)


def measure_roundtrips(n_thread: int, n_process: int) -> tuple[dict, dict]:
    from _process_roundtrip import measure as measure_process
    from _thread_roundtrip import measure as measure_threads

    progress(f"1/5 round trips through threads ({n_thread} calls per mechanism and payload)...")
    threads = measure_threads(n_thread)
    progress(f"1/5 round trips through processes ({n_process} calls per mechanism and payload)...")
    processes = measure_process(n_process)
    return threads, processes


def print_roundtrips(threads: dict, processes: dict) -> None:
    print()
    print("1. Round trip of one offloaded call: event loop -> helper -> event loop (no robot)")
    print("   p50 / p99 in µs; 'image' = a dict holding a 224x224x3 uint8 image")
    print(f"   {'mechanism':<27} {'kind':<7} {'tiny':>17} {'image echo':>17} {'image -> 7 floats':>19}")
    for label, kind, key in THREAD_ROWS:
        print(f"   {label:<27} {kind:<7} {fmt_pair(threads.get((key, 'tiny')))} "
              f"{fmt_pair(threads.get((key, '224x224x3 image')))} {fmt_pair(None, 19)}")
    for label, kind, key in PROCESS_ROWS:
        row = processes.get(key, {})
        print(f"   {label:<27} {kind:<7} {fmt_pair(row.get('7 floats'))} {fmt_pair(row.get('obs echo'))} "
              f"{fmt_pair(row.get('obs -> action'), 19)}")
    print("   threads: tiny = an int, the image dict is passed by reference (echoed);")
    print("   processes: tiny = 7 floats each way; 'image echo' = the dict (image + 7 joint positions)")
    print("   both ways; 'image -> 7 floats' = the dict in, 7 floats back (a policy call).")
    print("   The bare Pipe is timed with blocking send/recv (default pickling), the rest through asyncio.")


# --------------------------------------------------------------------------- 2. policies at 30 Hz


@dataclasses.dataclass
class PolicyRow:
    name: str
    policy: str
    calls: int
    stats: object
    error: BaseException | None
    note: str = ""


async def run_policy(controller, act, counter: list[int], duration: float) -> None:
    """Observe, ``await act(q)``, set the joint target, at 30 Hz for ``duration`` robot seconds."""
    controller.set_freq(POLICY_HZ)
    end = controller.state.time_ms + duration * 1000.0
    while True:
        state = controller.state
        if state.time_ms >= end:
            return
        target = await act(state.q)
        await controller.set("q_desired", target)
        counter[0] += 1


async def policy_scenario(robot, name: str, policy: str, make_act, duration: float, *,
                          guardian: bool = True, rescue: bool | None = None) -> PolicyRow:
    """Start a Controller, build the policy with ``make_act(controller, stack)``, serve it, stop."""
    from aiofranka import Controller

    progress(f"2/5 {name}, {policy} ({duration:g} s robot time)...")
    controller = Controller(robot, guardian=guardian, rescue=rescue)
    counter = [0]
    error: BaseException | None = None
    note = ""
    stats = None
    async with contextlib.AsyncExitStack() as stack:  # helpers are stopped after the controller
        try:
            await controller.start()
            act, note = await make_act(controller, stack)
            await run_policy(controller, act, counter, duration)
        except Exception as exc:  # noqa: BLE001 - a reflex is a result here
            error = exc
        finally:
            stats = controller.stats
            try:
                await controller.stop()
            except Exception as exc:  # noqa: BLE001 - the loop's stored error, raised again
                error = error or exc
            await controller.close()
    return PolicyRow(name, policy, counter[0], stats, error, note)


async def rehome(robot) -> None:
    """Bring the arm back to the home pose (recovers from a reflex first)."""
    from aiofranka import Controller, limits

    async with Controller(robot) as controller:
        await controller.move(limits.Q_HOME, speed=0.6)


def describe_error(error: BaseException | None, stats) -> str:
    if error is None:
        return "ok"
    errors = getattr(error, "errors", None)
    detail = f" ({', '.join(errors)})" if errors else f": {error}"
    return f"{type(error).__name__} after {stats.cycles} cycles{detail}"


async def policy_scenarios(robot, duration: float, infer, torch_note: str) -> list[PolicyRow]:
    from aiofranka import ampify, asyncify, limits
    from _policies import GilHoggingPolicy, GilHoldingPolicy, blocking_policy

    rows: list[PolicyRow] = []

    async def asyncify_blocking(controller, stack):
        return asyncify(blocking_policy), ""

    async def asyncify_python(controller, stack):
        return asyncify(GilHoggingPolicy(WORK_S).act), ""

    async def asyncify_c_call(controller, stack):
        return asyncify(GilHoldingPolicy(WORK_S).act), ""

    async def mpify_python(controller, stack):
        before = controller.stats.lost_cycles
        t0 = time.monotonic()
        proxy = await ampify(GilHoggingPolicy, WORK_S)  # started while the loop runs
        stack.push_async_callback(proxy.astop)
        lost = controller.stats.lost_cycles - before
        return proxy.act, f"ampify after start(): ready in {time.monotonic() - t0:.2f} s, {lost} lost meanwhile"

    async def cuda_mlp(controller, stack):
        anchor = controller.state.q

        async def act(q):
            out, _ = await infer(q)
            return np.clip(anchor + 0.01 * np.clip(out, -1.0, 1.0), limits.Q_MIN, limits.Q_MAX)

        return act, torch_note

    async def no_work(controller, stack):
        async def act(q):
            return q

        return act, "baseline: the same 30 Hz loop with no work per call (what the machine itself costs)"

    async def inline_blocking(controller, stack):
        async def act(q):
            return blocking_policy(q)  # 20 ms with the event loop blocked

        return act, ""

    await rehome(robot)
    rows.append(await policy_scenario(robot, "none", "no work", no_work, duration))
    rows.append(await policy_scenario(robot, "asyncify", "20 ms blocking (time.sleep)", asyncify_blocking, duration))
    rows.append(await policy_scenario(robot, "asyncify", "20 ms pure Python", asyncify_python, duration))
    # A C call that keeps the GIL throughout: neither the event loop nor the
    # guardian can run, only the rescue thread; and the same without it.
    rows.append(await policy_scenario(robot, "asyncify", "20 ms C call holding the GIL", asyncify_c_call, duration))
    await rehome(robot)
    rows.append(await policy_scenario(robot, "asyncify, rescue off", "20 ms C call holding the GIL", asyncify_c_call,
                                      min(duration, 5.0), rescue=False))
    await rehome(robot)
    rows.append(await policy_scenario(robot, "mpify (ampify)", "20 ms pure Python", mpify_python, duration))
    rows.append(await policy_scenario(robot, "CudaInferenceThread", "torch MLP 3x512, batch 1", cuda_mlp, duration))
    rows.append(await policy_scenario(robot, "inline, guardian off", "20 ms blocking (time.sleep)", inline_blocking,
                                      min(duration, 5.0), guardian=False))
    await rehome(robot)
    rows.append(await policy_scenario(robot, "inline, guardian on", "20 ms blocking (time.sleep)", inline_blocking,
                                      duration))
    await rehome(robot)
    return rows


def print_policies(rows: list[PolicyRow], duration: float) -> None:
    print()
    print(f"2. Loop figures while a policy runs at {POLICY_HZ:.0f} Hz on the simulator "
          f"({duration:g} s of robot time each; inline guardian off and rescue off: up to {min(duration, 5.0):g} s)")
    print("   compute = readOnce return -> writeOnce call (µs); sim/s = simulator states per wall second;")
    print("   min SR = lowest control_command_success_rate; takeovers = guardian takeovers of a blocked loop;")
    print("   rescued = cycles the rescue thread served while no Python thread could (the GIL held elsewhere)")
    print(f"   {'helper':<21} {'policy':<28} {'calls':>6} {'cycles':>7} {'lost':>6} {'min SR':>7} "
          f"{'cp99 µs':>8} {'sim/s':>6} {'stalls':>7} {'takeovers':>9} {'rescued':>8}  result")
    for r in rows:
        s = r.stats
        result = describe_error(r.error, s)
        if r.name.startswith("inline, guardian off") and r.error is not None:
            result = f"reflex after {s.cycles} cycles" + (
                f" ({', '.join(r.error.errors)})" if getattr(r.error, "errors", None) else f": {r.error!r}")
        elif r.name.startswith("inline, guardian off"):
            result = "no reflex (unexpected)"
        min_sr = f"{s.min_success_rate:.3f}" if s.cycles > 100 else "-"  # tracked after 100 cycles
        print(f"   {r.name:<21} {r.policy:<28} {r.calls:>6} {s.cycles:>7} {s.lost_cycles:>6} "
              f"{min_sr:>7} {s.compute.p99_us:>8.1f} {sim_rate(s):>6.0f} {s.stalls:>7} "
              f"{s.takeovers:>9} {s.rescued_cycles:>8}  {result}")
        if r.note:
            print(f"   {'':<21} note: {r.note}")


# --------------------------------------------------------------------------- 3. worker-thread share


async def thread_share(robot, wait: str, switch_interval: float, solo: float, duration: float,
                       rescue: bool = True) -> dict:
    from aiofranka import Controller
    from aiofranka._os import demote_to_normal
    from loop import spin_rate, stop_collecting

    label = f"wait={wait}, switch interval {switch_interval * 1e3:g} ms" + ("" if rescue else ", rescue off")
    progress(f"3/5 worker thread beside the loop, {label} ({duration:g} s)...")
    controller = Controller(robot, wait=wait, switch_interval=switch_interval, rescue=rescue)
    result: list[float] = []
    stop = threading.Event()

    def spin() -> None:
        demote_to_normal()
        result.append(spin_rate(duration, stop))

    error: BaseException | None = None
    thread = threading.Thread(target=spin, name="bench-spin", daemon=True)
    try:
        await controller.start()
        thread.start()
        await controller.wait(duration)
    except Exception as exc:  # noqa: BLE001 - a reflex is a result here
        error = exc
    finally:
        if error is not None:
            stop.set()  # the loop died: no point in spinning on
        if thread.is_alive():
            await asyncio.to_thread(thread.join, duration + 5.0)  # the loop keeps serving meanwhile
        stop.set()
        stats, error = await stop_collecting(controller, error)
        await controller.close()
    rate = result[0] if result else float("nan")
    return {"label": label, "wait": stats.wait, "si": switch_interval, "rate": rate, "share": 100.0 * rate / solo,
            "stats": stats, "error": error, "rescue": rescue}


def default_switch_interval() -> float:
    import inspect

    from aiofranka import Controller

    return inspect.signature(Controller).parameters["switch_interval"].default


def share_kind(row: dict) -> str:
    if row["wait"] == "yield":
        return "naive"
    return "default" if row["si"] == default_switch_interval() and row.get("rescue", True) else "for comparison"


def print_shares(solo: float, rows: list[dict]) -> None:
    print()
    print("3. Worker-thread throughput share: a pure-Python counting thread beside the Controller holding a pose")
    print(f"   solo rate (simulator running idle, no controller): {solo / 1e6:.2f} M iterations/s")
    print(f"   {'loop':<56} {'thread M it/s':>13} {'% of solo':>10} {'cycles':>7} {'lost':>6} {'rescued':>8} "
          f"{'readOnce wait p50 µs':>21} {'sim/s':>6}  result")
    for r in rows:
        s = r["stats"]
        name = r["label"] + f" ({share_kind(r)})"
        print(f"   {name:<56} {r['rate'] / 1e6:>13.2f} {r['share']:>9.1f}% {s.cycles:>7} {s.lost_cycles:>6} "
              f"{s.rescued_cycles:>8} {s.read_wait.p50_us:>21.0f} {sim_rate(s):>6.0f}  {describe_error(r['error'], s)}")


# --------------------------------------------------------------------------- 4. MLP inflation


async def time_mlp(infer, q: np.ndarray, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """Back-to-back calls for ``seconds``: (round trip ns, compute-in-thread ns)."""
    clock = time.perf_counter_ns
    trips: list[int] = []
    computes: list[int] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = clock()
        _, compute = await infer(q)
        trips.append(clock() - t0)
        computes.append(compute)
    return np.asarray(trips, dtype=np.float64), np.asarray(computes, dtype=np.float64)


async def mlp_inflation(robot, infer, alone_s: float, duration: float) -> dict:
    from aiofranka import Controller, limits
    from loop import stop_collecting

    q = np.asarray(limits.Q_HOME, dtype=np.float64)
    await time_mlp(infer, q, 0.5)  # warm
    progress(f"4/5 MLP latency alone ({alone_s:g} s)...")
    alone = await time_mlp(infer, q, alone_s)
    progress(f"4/5 MLP latency while the Controller runs ({duration:g} s)...")
    controller = Controller(robot)
    error: BaseException | None = None
    busy = (np.empty(0), np.empty(0))
    try:
        await controller.start()
        busy = await time_mlp(infer, q, duration)
    except Exception as exc:  # noqa: BLE001
        error = exc
    finally:
        stats, error = await stop_collecting(controller, error)
        await controller.close()

    def pct(values: np.ndarray) -> tuple[float, float]:
        if values.size == 0:
            return (float("nan"), float("nan"))
        p50, p99 = np.percentile(values, [50, 99]) / 1000.0
        return float(p50), float(p99)

    return {"alone_trip": pct(alone[0]), "alone_compute": pct(alone[1]), "n_alone": alone[0].size,
            "busy_trip": pct(busy[0]), "busy_compute": pct(busy[1]), "n_busy": busy[0].size,
            "stats": stats, "error": error}


def print_mlp(m: dict, torch_note: str) -> None:
    print()
    print(f"4. torch MLP latency through CudaInferenceThread (64 -> 3x512 -> 7, batch 1, CPU; {torch_note})")
    print("   back-to-back calls; round trip = await from the event loop; compute = the forward pass in the thread")
    print(f"   {'':<26} {'calls':>7} {'round trip p50/p99 µs':>22} {'compute p50/p99 µs':>20}")
    print(f"   {'alone (no controller)':<26} {m['n_alone']:>7} {fmt_pair(m['alone_trip'], 22)} "
          f"{fmt_pair(m['alone_compute'], 20)}")
    print(f"   {'while the Controller runs':<26} {m['n_busy']:>7} {fmt_pair(m['busy_trip'], 22)} "
          f"{fmt_pair(m['busy_compute'], 20)}")
    rt = [m["busy_trip"][i] / m["alone_trip"][i] for i in (0, 1)]
    cp = [m["busy_compute"][i] / m["alone_compute"][i] for i in (0, 1)]
    print(f"   {'ratio (running / alone)':<26} {'':>7} {f'{rt[0]:.2f}x / {rt[1]:.2f}x':>22} "
          f"{f'{cp[0]:.2f}x / {cp[1]:.2f}x':>20}   (target <= 1.5x)")
    s = m["stats"]
    print(f"   loop meanwhile: {s.cycles} cycles, {s.lost_cycles} lost, compute p99 {s.compute.p99_us:.1f} µs, "
          f"sim {sim_rate(s):.0f} states/s, {describe_error(m['error'], s)}")


# --------------------------------------------------------------------------- 5. aiofranka 0.9.0


LEGACY_SCRIPT = textwrap.dedent('''
    """aiofranka 0.9.0 round trips (run by benchmarks/offload.py under the legacy venv)."""
    import asyncio
    import json
    import sys
    import time

    import numpy as np

    ACTION = [0.0, -0.1, 0.2, -1.5, 0.0, 1.6, 0.8]


    class BenchTarget:
        def step(self, q):
            return q

        def act(self, obs):
            return ACTION

        def echo(self, obs):
            return obs


    def echo(payload):
        return payload


    async def timed(call, payload, count, out):
        clock = time.perf_counter_ns
        for _ in range(count):
            t0 = clock()
            await call(payload)
            out.append(clock() - t0)


    async def measure(n, proxy):
        from aiofranka import CudaInferenceThread, asyncify

        loop = asyncio.get_running_loop()
        rng = np.random.default_rng(0)
        image = {"image": np.zeros((224, 224, 3), dtype=np.uint8), "t": 0.0}
        obs = {"image": rng.integers(0, 255, size=(224, 224, 3), dtype=np.uint8),
               "q": [0.1, -0.2, 0.3, -1.8, 0.0, 1.7, 0.7]}
        runner = CudaInferenceThread()
        runner.start()
        wrapped = asyncify(echo)
        cases = [
            ("run_in_executor", "tiny", lambda p: loop.run_in_executor(None, echo, p), 7),
            ("run_in_executor", "image", lambda p: loop.run_in_executor(None, echo, p), image),
            ("asyncify", "tiny", wrapped, 7),
            ("asyncify", "image", wrapped, image),
            ("CudaInferenceThread.run", "tiny", lambda p: runner.run(echo, p), 7),
            ("CudaInferenceThread.run", "image", lambda p: runner.run(echo, p), image),
            ("mpify await", "7 floats", proxy.step, list(ACTION)),
            ("mpify await", "obs echo", proxy.echo, obs),
            ("mpify await", "obs -> action", proxy.act, obs),
        ]
        samples = {(m, p): [] for m, p, _, _ in cases}
        try:
            for m, p, call, payload in cases:
                await timed(call, payload, 100, [])
            rounds = 10
            for _ in range(rounds):
                for m, p, call, payload in cases:
                    await timed(call, payload, max(1, n // rounds), samples[(m, p)])
        finally:
            runner.stop()
        out = []
        for (m, p), values in samples.items():
            p50, p99 = np.percentile(np.asarray(values, dtype=np.float64) / 1000.0, [50, 99])
            out.append([m, p, float(p50), float(p99)])
        return out


    def main():
        from importlib.metadata import version

        import aiofranka
        from aiofranka import mpify

        n = int(sys.argv[1])
        proxy = mpify(BenchTarget)
        try:
            results = asyncio.run(measure(n, proxy))
        finally:
            proxy.stop()
        print(json.dumps({"version": aiofranka.__version__, "torch": version("torch"),
                          "python": sys.version.split()[0], "file": aiofranka.__file__,
                          "results": results}))


    if __name__ == "__main__":
        main()
''')


def measure_legacy(venv: str, n: int) -> dict:
    """Run LEGACY_SCRIPT under the legacy venv's interpreter; {'results': ...} or {'error': ...}."""
    python = os.path.join(venv, "bin", "python")
    if not os.path.exists(python):
        return {"error": f"{python} does not exist"}
    progress(f"5/5 aiofranka 0.9.0 round trips under {python} ({n} calls per case)...")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    with tempfile.TemporaryDirectory(prefix="aiofranka-legacy-") as tmp:
        script = os.path.join(tmp, "legacy_roundtrip.py")
        with open(script, "w") as handle:
            handle.write(LEGACY_SCRIPT)
        try:
            done = subprocess.run([python, script, str(n)], cwd=tmp, env=env, capture_output=True, text=True,
                                  timeout=300)
        except subprocess.TimeoutExpired:
            return {"error": "the legacy measurement did not finish within 300 s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"error": f"exit code {done.returncode}: {' | '.join(tail)}"}
    return json.loads(lines[-1])


def print_legacy(legacy: dict | None, threads: dict, processes: dict) -> None:
    print()
    if legacy is None:
        print("5. aiofranka 0.9.0 comparison: skipped. Enable it with --legacy-venv PATH, a venv where "
              "aiofranka==0.9.0 is importable, e.g.:")
        print("   python3 -m venv /tmp/af09 && /tmp/af09/bin/pip install torch==2.13.0 && "
              "/tmp/af09/bin/pip install --no-deps aiofranka==0.9.0 && /tmp/af09/bin/pip install pylibfranka "
              "ruckig numpy scipy 'mujoco>=3.10' tqdm requests pyzmq msgpack pyyaml")
        return
    if "error" in legacy:
        print(f"5. aiofranka 0.9.0 comparison: failed: {legacy['error']}")
        return
    print(f"5. aiofranka {legacy['version']} (python {legacy['python']}, torch {legacy['torch']}) beside this "
          f"version: round trip p50 / p99 in µs")
    print("   0.9.0: asyncify = loop.run_in_executor(None, ...); CudaInferenceThread = queue.Queue + thread;")
    print("   mpify = one Pipe, replies read by conn.recv in the default executor, everything pickled.")
    theirs = {(m, p): (p50, p99) for m, p, p50, p99 in legacy["results"]}
    ours = {
        ("run_in_executor", "tiny"): threads.get(("run_in_executor", "tiny")),
        ("run_in_executor", "image"): threads.get(("run_in_executor", "224x224x3 image")),
        ("asyncify", "tiny"): threads.get(("asyncify", "tiny")),
        ("asyncify", "image"): threads.get(("asyncify", "224x224x3 image")),
        ("CudaInferenceThread.run", "tiny"): threads.get(("CudaInferenceThread.run", "tiny")),
        ("CudaInferenceThread.run", "image"): threads.get(("CudaInferenceThread.run", "224x224x3 image")),
        ("mpify await", "7 floats"): processes.get("mpify await", {}).get("7 floats"),
        ("mpify await", "obs echo"): processes.get("mpify await", {}).get("obs echo"),
        ("mpify await", "obs -> action"): processes.get("mpify await", {}).get("obs -> action"),
    }
    names = {"tiny": "tiny", "image": "image dict", "7 floats": "7 floats", "obs echo": "image echo",
             "obs -> action": "image -> 7 floats"}
    print(f"   {'mechanism':<28} {'payload':<18} {'this version':>17} {'0.9.0':>17} {'0.9.0 / this (p50)':>19}")
    for (mech, payload), mine in ours.items():
        old = theirs.get((mech, payload))
        ratio = f"{old[0] / mine[0]:.1f}x" if old and mine and mine[0] > 0 else "-"
        label = mech + (" (floor)" if mech == "run_in_executor" else "")
        print(f"   {label:<28} {names[payload]:<18} {fmt_pair(mine)} {fmt_pair(old)} {ratio:>19}")
    print("   (measured one after the other in separate interpreters, before the simulator started)")


# --------------------------------------------------------------------------- summary


def print_summary(threads, processes, policies, shares, mlp, legacy, floors) -> None:
    print()
    print("Summary")
    print("-------")
    for f in floors:
        r = f["report"]
        print(f"* machine floor {f['when']}: {r.late_period} of {r.count} wake-ups of a bare C sleeper more "
              f"than 1 ms late (max {r.lateness.max_us / 1000:.1f} ms): {r.verdict.split(':')[0]}")
    image = processes.get("mpify await", {}).get("obs echo")
    action = processes.get("mpify await", {}).get("obs -> action")
    if image:
        verdict = "met" if image[0] <= 300.0 else "NOT met"
        print(f"* mpify image round trip p50: {image[0]:.0f} µs echo, {action[0]:.0f} µs image -> 7 floats "
              f"(target <= 300 µs: {verdict})")
    for key in ("asyncify", "CudaInferenceThread.run"):
        mine, floor = threads.get((key, "224x224x3 image")), threads.get(("bare thread", "224x224x3 image"))
        if mine and floor:
            print(f"* {key} image round trip p50: {mine[0]:.0f} µs (bare thread floor {floor[0]:.0f} µs)")
    served = [r for r in policies if not r.name.startswith("inline") and not r.name.endswith("rescue off")]
    base = next((r.stats.lost_cycles for r in served if r.name == "none"), None)
    for r in served:
        if r.name == "none":
            print(f"* baseline, no helper and no work: {r.calls} calls, {r.stats.lost_cycles} lost cycles, "
                  f"{describe_error(r.error, r.stats)}")
            continue
        ok = r.error is None and r.stats.lost_cycles == 0
        print(f"* {r.name}, {r.policy}: {r.calls} calls, {r.stats.lost_cycles} lost cycles, "
              f"{r.stats.takeovers} takeovers, {r.stats.rescued_cycles} rescued, {describe_error(r.error, r.stats)}"
              f"{'' if ok else f'  <- target: 0 lost, no error (baseline row: {base} lost)'}")
    for r in policies:
        if r.name.endswith("rescue off"):
            print(f"* {r.name} (for comparison), {r.policy}: {r.calls} calls, {r.stats.lost_cycles} lost cycles, "
                  f"{describe_error(r.error, r.stats)}")
        elif r.name == "inline, guardian off":
            outcome = (f"reflex after {r.stats.cycles} cycles" if r.error is not None else "no reflex")
            print(f"* inline 20 ms blocking, guardian off: {outcome}")
        elif r.name == "inline, guardian on":
            print(f"* inline 20 ms blocking, guardian on: {describe_error(r.error, r.stats)}, "
                  f"{r.stats.takeovers} takeovers, {r.stats.guardian_cycles} guardian cycles, "
                  f"{r.stats.lost_cycles} lost over {r.stats.cycles} cycles")
    for r in shares:
        kind = share_kind(r)
        target = "" if kind != "default" else (
            "  (target >= 50 % with 0 lost: " + ("met)" if r["share"] >= 50.0 and r["stats"].lost_cycles == 0
                                                 else "NOT met)"))
        print(f"* worker thread beside the loop, {r['label']} ({kind}): {r['share']:.1f} % of solo, "
              f"{r['stats'].lost_cycles} lost, {r['stats'].rescued_cycles} rescued{target}")
    if mlp:
        ratio = mlp["busy_trip"][0] / mlp["alone_trip"][0]
        ratio99 = mlp["busy_trip"][1] / mlp["alone_trip"][1]
        print(f"* MLP latency while the loop runs: {ratio:.2f}x p50, {ratio99:.2f}x p99 of alone "
              f"({mlp['alone_trip'][0]:.0f} -> {mlp['busy_trip'][0]:.0f} µs p50; target <= 1.5x: "
              f"{'met' if ratio <= 1.5 else 'NOT met'} at p50)")
    if legacy and "results" in legacy:
        theirs = {(m, p): p50 for m, p, p50, _ in legacy["results"]}
        mine = processes.get("mpify await", {}).get("obs echo")
        old = theirs.get(("mpify await", "obs echo"))
        if mine and old:
            print(f"* vs aiofranka 0.9.0: mpify image echo p50 {old:.0f} -> {mine[0]:.0f} µs; "
                  f"asyncify image p50 {theirs.get(('asyncify', 'image'), float('nan')):.0f} -> "
                  f"{threads.get(('asyncify', '224x224x3 image'), (float('nan'),))[0]:.0f} µs")
    elif legacy is None:
        print("* aiofranka 0.9.0 not measured (no --legacy-venv)")


# --------------------------------------------------------------------------- main


async def machine_floor(seconds: float, when: str) -> dict:
    """What the machine does to a bare periodic sleeper (C, no Python, the
    loop thread's priority): the lost cycles no loop design can avoid here."""
    from aiofranka.probe import probe_wakeups

    priority = 80 if hasattr(os, "geteuid") and os.geteuid() == 0 else None
    progress(f"machine floor {when}: a C thread sleeping to 1 ms deadlines ({seconds:g} s)...")
    report = await asyncio.to_thread(probe_wakeups, seconds, priority=priority)
    return {"when": when, "report": report}


def print_floors(floors: list[dict]) -> None:
    print()
    print("Machine floor: a thread sleeping to 1 ms deadlines in C (clock_nanosleep, no Python), with the simulator")
    print("   open and idle; a wake-up more than 1 ms late is a cycle any loop here would have lost against a real")
    print("   robot (the simulator shares these CPUs and stalls with them, so it charges far fewer)")
    for f in floors:
        print(f"   {f['when']:<28} {f['report']}")


async def robot_sections(args, seconds: float, torch, model, torch_note: str) -> tuple[list, float, list, dict]:
    from aiofranka import CudaInferenceThread, Robot
    from loop import spin_rate

    runner = CudaInferenceThread(name="bench-mlp")
    await runner.astart()
    x = torch.zeros(1, 64)

    def forward(q):
        t0 = time.perf_counter_ns()
        with torch.inference_mode():
            x[0, :7] = torch.from_numpy(np.asarray(q, dtype=np.float32))
            out = model(x)[0].numpy().astype(np.float64)
        return out, time.perf_counter_ns() - t0

    infer = runner.wrap(forward)
    policies: list[PolicyRow] = []
    shares: list[dict] = []
    mlp: dict = {}
    floors: list[dict] = []
    solo = float("nan")
    try:
        for _ in range(20):  # warm the model on its thread before any controller starts
            await infer(np.zeros(7))
        progress("opening the embedded simulator...")
        with Robot() as robot:
            floors.append(await machine_floor(seconds, "before section 2"))
            policies = await policy_scenarios(robot, seconds, infer, torch_note)
            print_policies(policies, seconds)
            solo_s = 2.0 if args.quick else 5.0
            progress(f"3/5 solo rate of the worker thread ({solo_s:g} s)...")
            solo = await asyncio.to_thread(spin_rate, solo_s)
            shares.append(await thread_share(robot, "yield", 5e-3, solo, seconds))
            wait = "socket"
            if robot.state_fd is None:
                progress("3/5 the state socket was not identified: wait='socket' unavailable, using 'auto'")
                wait = "auto"
            # The default beside twice the switch interval and beside the
            # rescue thread off, alternated so that a change in the host's
            # load does not land on one of them only.
            si = default_switch_interval()
            for _ in range(args.share_rounds if args.share_rounds else (1 if args.quick else 2)):
                for interval, rescue in ((2 * si, True), (si, False), (si, True)):
                    shares.append(await thread_share(robot, wait, interval, solo, seconds, rescue))
            print_shares(solo, shares)
            floors.append(await machine_floor(seconds, "after section 3"))
            print_floors(floors)
            mlp = await mlp_inflation(robot, infer, 3.0 if args.quick else 10.0, seconds)
            print_mlp(mlp, torch_note)
    finally:
        await runner.astop()
        from aiofranka.offload import stop_asyncify_pool

        await asyncio.to_thread(stop_asyncify_pool)
    return policies, solo, shares, mlp, floors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=None,
                        help="robot seconds per loop scenario (default 20, 5 with --quick)")
    parser.add_argument("--quick", action="store_true", help="5 s scenarios and fewer round trips")
    parser.add_argument("--legacy-venv", metavar="PATH", default=None,
                        help="a venv where aiofranka==0.9.0 is importable: measure its helpers beside ours")
    parser.add_argument("--share-rounds", type=int, default=0,
                        help="alternated pairs (twice the default switch interval, the default) in section 3 "
                             "(default 2, 1 with --quick)")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch.set_num_threads for the MLP (default 1; 0 leaves torch's default)")
    args = parser.parse_args()
    seconds = args.seconds if args.seconds is not None else (5.0 if args.quick else 20.0)
    n_thread, n_process, n_legacy = (600, 400, 400) if args.quick else (3000, 2000, 2000)

    import aiofranka

    others = other_simulators()
    print(f"aiofranka {aiofranka.__version__} offload benchmark: python {platform.python_version()}, "
          f"numpy {np.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, "
          f"{seconds:g} s scenarios{' (quick)' if args.quick else ''}", flush=True)
    if others:
        print(f"note: {others} other simulator process(es) were running when this run started; "
              f"figures may be skewed", flush=True)

    threads, processes = measure_roundtrips(n_thread, n_process)
    print_roundtrips(threads, processes)
    sys.stdout.flush()

    legacy = None
    if args.legacy_venv:
        legacy = measure_legacy(args.legacy_venv, n_legacy)  # before the simulator starts, like ours

    progress("importing torch and building the MLP (before any controller starts)...")
    import torch
    from _policies import make_mlp

    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    model = make_mlp()
    torch_note = f"torch {torch.__version__}, {torch.get_num_threads()} intra-op thread(s)"
    with torch.inference_mode():
        for _ in range(50):
            model(torch.zeros(1, 64))

    policies, solo, shares, mlp, floors = asyncio.run(robot_sections(args, seconds, torch, model, torch_note))
    print_legacy(legacy, threads, processes)
    print_summary(threads, processes, policies, shares, mlp, legacy, floors)
    progress("done")


if __name__ == "__main__":
    main()
