"""Chunked policies on the arm: what the runtime buys over a hand-written loop.

A policy that knows the reference trajectory replies, after a fixed latency
(20, 80, 150 ms), with a chunk of 20 actions at 30 Hz: the reference at the
steps the actions are due (``request.due_s``, else from the frame's robot
time), plus a per-chunk bias (±5 mrad, seeded) standing in for a learned
policy's disagreement between chunks. With RTC hints it keeps the previous
chunk over the inference delay and blends into its own chunk over the
execution horizon (a simplified real-time chunking).

Rows, for each latency:

* naive: the loop a user writes by hand: observe, await the policy (the arm
  holds), then set ``q_desired`` to each action for one period;
* sync: ``InferenceRuntime(mode=SYNC)``, the Controller executor (1 kHz rows);
* async, async + blend, async + RTC: ``mode=ASYNC``, ``steps_before_request=4``.

Columns: the arm's tracking error against the reference (measured joints,
sampled every control step; p50 and max, mrad; the impedance lags a moving
target by about kd v / kp, some 20 mrad here, since no velocity is fed
forward), the commanded target's error against the reference (every
millisecond), one interpolation step (the largest difference between two
consecutive raw actions executed, chunk switches included, spread over the
step's milliseconds), the largest change of the commanded target in one
millisecond, the largest jerk of the target within 3 ms of a chunk switch,
starved control ticks, lost cycles, and the simulator's states per
wall-clock second.

    python benchmarks/policy.py [--duration 10] [--latencies 20,80,150] [--interpolation cubic]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import numpy as np

from aiofranka import AiofrankaError, Controller, Robot
from aiofranka.policy import (Action, ChunkRequest, Command, ControllerExecutor, ControllerObserver, InferenceMode,
                              InferenceRuntime, run_step)
from aiofranka.policy.execution import commanded_path

HZ = 30.0
PERIOD = 1.0 / HZ
CHUNK = 20


class ReferencePolicy:
    """Replies after ``latency_s`` with the reference at the chunk's steps, plus a per-chunk bias."""

    def __init__(self, q_center: np.ndarray, t0_s: float, latency_s: float, *, seed: int = 0) -> None:
        self.q_center = q_center
        self.t0_s = t0_s
        self.latency_s = latency_s
        self.rng = np.random.default_rng(seed)

    def reference(self, t_s) -> np.ndarray:
        t = np.asarray(t_s, dtype=float) - self.t0_s
        fade_in = np.clip(t / 1.0, 0.0, 1.0)
        q = np.broadcast_to(self.q_center, t.shape + (7,)).copy()
        q[..., 0] += fade_in * 0.15 * np.sin(2 * np.pi * 0.4 * t)
        q[..., 3] += fade_in * 0.10 * (1.0 - np.cos(2 * np.pi * 0.3 * t))
        q[..., 5] += fade_in * 0.10 * np.sin(2 * np.pi * 0.25 * t)
        return q

    async def __call__(self, frame, request):
        await asyncio.sleep(self.latency_s)  # the inference, off the event loop (GIL-free wait)
        first = request.due_s if request.due_s is not None else frame.meta["robot_time_ms"] / 1000.0 + PERIOD
        targets = self.reference(first + PERIOD * np.arange(CHUNK))
        targets = targets + self.rng.normal(0.0, 0.005, size=7)  # this chunk's disagreement
        if request.rtc:
            previous = np.array([a["arm"].value for a in request.prev_action_chunk])
            delay, horizon = request.inference_delay, request.execute_horizon
            for j in range(min(CHUNK, horizon)):
                # Keep what will run while we infer; then blend into our own chunk by the horizon.
                w = 0.0 if j < delay else (j - delay + 1) / (horizon - delay + 1)
                targets[j] = (1.0 - w) * previous[j] + w * targets[j]
        return [Action({"arm": Command("joint_position", t)}) for t in targets]


def switch_figures(targets: np.ndarray, start_ms: int, switches) -> tuple[float, float]:
    """The largest one-millisecond change (mrad) and the largest jerk (rad/s^3) within 3 ms of a switch."""
    jump = float(np.abs(np.diff(targets, axis=0)).max()) * 1000.0
    third = np.abs(np.diff(targets, 3, axis=0)).max(axis=1) * 1e9  # rad/s^3 at 1 ms steps
    jerk = 0.0
    for s in switches:
        i = s - start_ms
        window = third[max(0, i - 3):max(0, i + 1)]
        if window.size:
            jerk = max(jerk, float(window.max()))
    return jump, jerk


async def run_naive(controller, policy, duration_s: float) -> dict:
    observer = ControllerObserver(controller)
    log, errors, starved = [], [], 0
    start = controller.time_ms
    while controller.time_ms - start < duration_s * 1000:
        frame = await observer()
        before = controller.time_ms
        request = ChunkRequest(request_step=0, request_time_s=before / 1000.0, remaining_steps=0, latency_steps=0)
        chunk = await policy(frame, request)
        starved += round((controller.time_ms - before) / (PERIOD * 1000))
        for action in chunk:
            controller.q_desired = action["arm"].value
            log.append((controller.time_ms, action["arm"].value))
            await controller.wait(PERIOD)
            state = controller.state
            errors.append(np.abs(state.q - policy.reference(state.time_ms / 1000.0)).max())
    end = controller.time_ms
    # The commanded target per millisecond: each assignment holds until the next.
    times = np.array([t for t, _ in log])
    values = np.array([v for _, v in log])
    grid = np.arange(times[0], end + 1)
    targets = values[np.searchsorted(times, grid, side="right") - 1]
    chunk_starts = times[::CHUNK]
    jump, jerk = switch_figures(targets, int(times[0]), [int(t) + 1 for t in chunk_starts[1:]])
    raw_step = float(np.abs(np.diff(values, axis=0)).max())
    return dict(errors=errors, jump=jump, jerk=jerk, starved=starved, raw_step=raw_step,
                target_errors=np.abs(targets - policy.reference(grid / 1000.0)).max(axis=1))


class RecordingExecutor(ControllerExecutor):
    """The Controller executor, noting the largest step between consecutive raw actions it was given."""

    raw_step = 0.0
    _plan: tuple[int, np.ndarray] | None = None

    async def play_chunk(self, integration) -> None:
        waypoints = np.array([a["arm"].value for a in integration.actions])
        steps = [np.abs(np.diff(waypoints, axis=0)).max()] if len(waypoints) > 1 else []
        if self._plan is not None:  # at the switch: the new action after the old one it follows
            first, old = self._plan
            index = integration.first_step - 1 - first
            if 0 <= index < len(old):
                steps.append(np.abs(waypoints[0] - old[index]).max())
        self.raw_step = max([self.raw_step] + steps)
        self._plan = (integration.first_step, waypoints)
        await super().play_chunk(integration)


async def run_runtime(controller, policy, duration_s: float, **options) -> dict:
    runtime = InferenceRuntime(control_hz=HZ, warmup_requests=0, profile_delay_requests=2, **options)
    observer, executor = ControllerObserver(controller), RecordingExecutor(controller)
    executor.record = True
    errors = []
    start = controller.time_ms
    while controller.time_ms - start < duration_s * 1000:
        await run_step(observe_fn=observer, act_fn=executor, act_src_fn=policy, runtime=runtime)
        state = controller.state
        if runtime.stats.integrated:
            errors.append(np.abs(state.q - policy.reference(state.time_ms / 1000.0)).max())
    end = controller.time_ms
    controller.stop_playing()
    plays = executor.plays
    targets = commanded_path(plays, plays[0].start_ms, end)
    jump, jerk = switch_figures(targets, plays[0].start_ms, [play.start_ms for play in plays[1:]])
    stats = runtime.stats
    runtime.close()
    grid = np.arange(plays[0].start_ms, end + 1) / 1000.0
    return dict(errors=errors, jump=jump, jerk=jerk, starved=stats.starved_ticks, held=stats.held_cycles,
                rejected=stats.rejected, raw_step=executor.raw_step,
                target_errors=np.abs(targets - policy.reference(grid)).max(axis=1))


ROWS = {
    "naive": None,
    "sync": dict(mode=InferenceMode.SYNC),
    "async": dict(mode=InferenceMode.ASYNC, steps_before_request=4),
    "async + blend": dict(mode=InferenceMode.ASYNC, steps_before_request=4, ensemble_weight=(0.2, 0.8)),
    "async + RTC": dict(mode=InferenceMode.ASYNC, steps_before_request=4, enable_rtc=True, execution_steps=8),
}


async def settle(controller, home) -> None:
    """Back home before a row; after a reflex or a failed move, restart the controller first."""
    for _ in range(3):
        try:
            if not controller.running:
                await controller.start()
            await controller.move(home, speed=0.5, timeout=15.0)
            return
        except AiofrankaError as exc:
            print(f"  (settling: {type(exc).__name__}: {exc}; restarting the controller)", flush=True)
            try:
                await controller.stop()
            except AiofrankaError:
                pass
    raise RuntimeError("could not bring the arm home")


async def main(duration_s: float, latencies_ms: list[int], rows: list[str], interpolation: str = "cubic") -> None:
    with Robot() as robot:
        async with Controller(robot) as controller:
            home = controller.state.q
            print(f"{duration_s:.0f} s of robot time per row, chunk {CHUNK} at {HZ:.0f} Hz, {interpolation} rows\n")
            print(f"{'latency':>7}  {'row':<14} {'arm err':>15} {'target err':>15} {'1 step':>7} {'jump':>7} "
                  f"{'jerk@switch':>11} {'starved':>7} {'lost':>5} {'sim/s':>6}")
            print(f"{'ms':>7}  {'':<14} {'p50/max mrad':>15} {'p50/max mrad':>15} {'mrad/ms':>7} {'mrad/ms':>7} "
                  f"{'krad/s^3':>11} {'ticks':>7}")
            for latency in latencies_ms:
                for name in rows:
                    await settle(controller, home)
                    policy = ReferencePolicy(home, controller.time_ms / 1000.0 + 0.3, latency / 1000.0)
                    before = controller.stats
                    wall = time.monotonic()
                    try:
                        if ROWS[name] is None:
                            figures = await run_naive(controller, policy, duration_s)
                        else:
                            figures = await run_runtime(controller, policy, duration_s, interpolation=interpolation,
                                                        **ROWS[name])
                    except AiofrankaError as exc:
                        print(f"{latency:>7}  {name:<14} ended early: {type(exc).__name__}: {exc}", flush=True)
                        continue
                    wall = time.monotonic() - wall
                    after = controller.stats
                    lost = after.lost_cycles - before.lost_cycles
                    states = (after.robot_time_s - before.robot_time_s) * 1000.0 / wall
                    errors = np.array(figures["errors"]) * 1000.0
                    target = figures["target_errors"] * 1000.0
                    step = figures["raw_step"] * 1000.0 / (PERIOD * 1000.0)
                    print(f"{latency:>7}  {name:<14} {np.median(errors):7.1f}/{errors.max():<7.1f} "
                          f"{np.median(target):7.1f}/{target.max():<7.1f} {step:7.2f} {figures['jump']:7.2f} "
                          f"{figures['jerk'] / 1000:11.1f} {figures['starved']:7d} {lost:5d} {states:6.0f}",
                          flush=True)
            print()
            print(controller.stats.table("loop over the whole benchmark"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="robot seconds per row (default 10)")
    parser.add_argument("--latencies", default="20,80,150", help="policy latencies in ms (default 20,80,150)")
    parser.add_argument("--rows", default=",".join(ROWS), help="rows to run, comma-separated")
    parser.add_argument("--interpolation", choices=("cubic", "linear"), default="cubic",
                        help="the runtime's 1 kHz rows (default cubic, the runtime's default)")
    args = parser.parse_args()
    asyncio.run(main(args.duration, [int(v) for v in args.latencies.split(",")],
                     [r.strip() for r in args.rows.split(",")], args.interpolation))
