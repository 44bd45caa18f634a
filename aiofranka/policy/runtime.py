"""One control step of a policy: :func:`run_step`, its runtime :class:`InferenceRuntime`, and the sync twin.

``await run_step(observe_fn=..., act_fn=..., act_src_fn=..., runtime=...)``
observes, integrates a finished reply, launches the next request, executes
this step's action and waits for the next control tick. The runtime owns a
:class:`~aiofranka.policy.chunks.ChunkScheduler` (the rules) and the one
request in flight. With the built-in :class:`~aiofranka.policy.ControllerExecutor`
as ``act_fn``, chunks are played at 1 kHz on the Controller and steps are
counted on the robot clock. Guide: docs/policies.md.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import enum
import inspect
import time
import warnings
from typing import Any, Callable

import numpy as np

from .. import validation
from ..exceptions import PolicyCallbackError, PolicyError, RemoteDeadlineExceeded, RemotePolicyUnavailable
from ..pacing import DeadlineGrid
from ..stats import PolicyStats, SampleRing
from .chunks import ChunkScheduler, Integration
from .contract import Action, ChunkRequest, Frame, normalize_chunk
from .execution import ChunkExecutor

__all__ = ["MISSED_REPLY_ERRORS", "InferenceMode", "InferenceRuntime", "StepResult", "run_step", "run_step_sync"]

#: A bootstrap request carrying RTC hints slower than this (s) warns or aborts (``slow_rtc_bootstrap``).
SLOW_RTC_BOOTSTRAP_S = 0.5
_INTERPOLATIONS = ("cubic", "linear", "hold")
#: A policy call failing with these missed its reply (a remote server away or late): the runtime
#: counts it and carries on, the arm holding, instead of ending the episode (docs/remote.md#faults).
MISSED_REPLY_ERRORS = (RemotePolicyUnavailable, RemoteDeadlineExceeded)


class InferenceMode(str, enum.Enum):
    """``SYNC``: request, wait (the arm holds), execute ``execution_steps``, request again.
    ``ASYNC``: one request always in flight while the arm executes the buffer."""

    SYNC = "sync"
    ASYNC = "async"

    def __str__(self) -> str:
        return self.value


@dataclasses.dataclass(frozen=True)
class StepResult:
    """What one :func:`run_step` did.

    ``raw_action``: the buffered action of this step (the policy's own value;
    ``None`` when starved). ``action``: what ``act_fn`` reports it executed
    (its return value when it returns an :class:`Action`), else ``raw_action``.
    ``plan_refreshed``: a chunk was integrated during the step. ``step``: steps
    executed after it. ``starved``: nothing was left to execute (the last
    target was held). ``control_wait_s``: time spent waiting for the next tick.
    ``step_action``: the policy's action for the step this one executes (with the
    Controller executor, the waypoint the arm heads for during it, where
    ``raw_action`` is the last one reached; otherwise ``raw_action``); the last
    one again when starved; ``step_index``: the step it is for (-1: none yet).
    Episode recording keeps both (docs/episodes.md).
    """

    frame: Frame
    raw_action: Action | None
    action: Action | None
    plan_refreshed: bool
    step: int
    starved: bool
    control_wait_s: float
    step_action: Action | None = None
    step_index: int = -1


def _mode(mode) -> InferenceMode:
    try:
        return InferenceMode(mode)
    except ValueError:
        raise ValueError(f"mode must be InferenceMode.SYNC or InferenceMode.ASYNC ('sync' or 'async'), "
                         f"got {mode!r}") from None


def _count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _missed(exc: BaseException) -> bool:
    """True for a policy call that failed because its reply never came (see MISSED_REPLY_ERRORS)."""
    return isinstance(exc, PolicyCallbackError) and isinstance(exc.__cause__, MISSED_REPLY_ERRORS)


def _wrap(callback: str, exc: BaseException) -> PolicyCallbackError:
    error = PolicyCallbackError(f"{callback} raised {type(exc).__name__}: {exc}", callback)
    error.__cause__ = exc
    return error


class InferenceRuntime:
    """Scheduling for a chunked policy, shared by every :func:`run_step` of an episode.

    Keyword-only options (docs/policies.md has the details and how to choose them):

    * ``mode``: :class:`InferenceMode` ``SYNC`` or ``ASYNC``;
    * ``control_hz``: the policy's control rate (one raw action per step);
    * ``execution_steps``: SYNC: steps of each chunk executed before the next
      request (default: the whole chunk); ASYNC with RTC: the ``execute_horizon``;
    * ``steps_before_request``: executed steps after a chunk is integrated
      before the next request leaves (ASYNC);
    * ``warmup_requests``, ``profile_delay_requests``: ASYNC start-up: untimed
      requests, then timed ones whose mean latency seeds the estimate; the last
      reply is the first chunk, and nothing is executed before;
    * ``latency_ema_beta``: weight of each new latency measurement (control steps);
    * ``ensemble_weight``: ``None``, the new chunk's weight in the overlap, or
      ``(low, high)`` ramped over it (never for gripper kinds or other layouts);
    * ``interpolation`` (the built-in Controller executor's 1 kHz rows):
      ``"cubic"`` (a C1 joint path through the raw steps, its velocity fed
      forward), ``"linear"`` (straight between raw steps) or ``"hold"`` (each
      raw action held for its step); poses always follow the geodesic;
    * ``enable_rtc``, ``latency_steps_offset``: RTC hints on each request, and
      a shift of the announced latency;
    * ``max_action_age_s``: a reply whose frame is older than this when it
      arrives is rejected (``None``: no limit);
    * ``slow_rtc_bootstrap``: ``"warn"`` or ``"abort"`` when a bootstrap
      request carrying RTC hints takes more than 0.5 s;
    * ``clock``: seconds for latency and pacing (default: the robot clock with
      the Controller executor, else ``time.monotonic``).

    Example::

        runtime = InferenceRuntime(mode=InferenceMode.ASYNC, control_hz=30, steps_before_request=2)
        observer, executor = ControllerObserver(controller), ControllerExecutor(controller)
        for _ in range(300):
            await run_step(observe_fn=observer, act_fn=executor, act_src_fn=policy, runtime=runtime)
        print(runtime.stats)
    """

    def __init__(self, *, mode: InferenceMode | str, control_hz: float, execution_steps: int | None = None,
                 steps_before_request: int = 0, warmup_requests: int = 1, profile_delay_requests: int = 3,
                 latency_ema_beta: float = 0.5, ensemble_weight=None, interpolation: str = "cubic",
                 enable_rtc: bool = False, latency_steps_offset: int = 0, max_action_age_s: float | None = None,
                 slow_rtc_bootstrap: str = "warn", clock: Callable[[], float] | None = None) -> None:
        self.mode = _mode(mode)
        self.control_hz = validation.positive("control_hz", control_hz, upper=1000.0)
        self.warmup_requests = _count("warmup_requests", warmup_requests, 0)
        self.profile_delay_requests = _count("profile_delay_requests", profile_delay_requests, 0)
        if interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {_INTERPOLATIONS}, got {interpolation!r}")
        self.interpolation = interpolation
        self.max_action_age_s = (None if max_action_age_s is None
                                 else validation.positive("max_action_age_s", max_action_age_s))
        if slow_rtc_bootstrap not in ("warn", "abort"):
            raise ValueError(f"slow_rtc_bootstrap must be 'warn' or 'abort', got {slow_rtc_bootstrap!r}")
        self.slow_rtc_bootstrap = slow_rtc_bootstrap
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be callable (returning seconds), got {clock!r}")
        self._clock = clock
        self._scheduler = ChunkScheduler(
            control_hz=self.control_hz, steps_before_request=steps_before_request, execution_steps=execution_steps,
            ensemble_weight=ensemble_weight, latency_ema_beta=latency_ema_beta,
            latency_steps_offset=latency_steps_offset, enable_rtc=enable_rtc,
            truncate=self.mode is InferenceMode.SYNC, clock=self.now)
        self.period_s = 1.0 / self.control_hz
        self._executor: Any = None
        self._bound = False
        self._bootstrapped = False
        self._fresh = True  # no chunk yet this episode: the step waits for the first
        self._pending: asyncio.Future | concurrent.futures.Future | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._grid: DeadlineGrid | None = None
        self._steps = 0
        self._sequence = 0
        self._bootstrap_requests = 0
        self._held_base = 0
        self._held_seen = 0
        self._latency_ns = SampleRing(4096)
        self._missed_replies = 0
        self._closed = False

    # -- options readable back --------------------------------------------------------------

    @property
    def execution_steps(self) -> int | None:
        return self._scheduler.execution_steps

    @property
    def steps_before_request(self) -> int:
        return self._scheduler.steps_before_request

    @property
    def enable_rtc(self) -> bool:
        return self._scheduler.enable_rtc

    @property
    def scheduler(self) -> ChunkScheduler:
        """The scheduling state (buffer, latency estimate, counters)."""
        return self._scheduler

    def now(self) -> float:
        """The runtime's clock (s)."""
        if self._clock is not None:
            return float(self._clock())
        if self._executor is not None:
            return self._executor.now_s()
        return time.monotonic()

    # -- lifecycle -----------------------------------------------------------------------------

    def reset(self) -> None:
        """A new episode: the buffer and any request in flight are dropped; the latency estimate stays."""
        self._drop_pending()
        self._scheduler.reset()
        if self._executor is not None and hasattr(self._executor, "reset"):
            self._executor.reset()
        self._fresh = True
        self._grid = None

    def close(self) -> None:
        """Drop the request in flight and stop the sync twin's worker thread. Idempotent."""
        self._drop_pending()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._closed = True

    def _drop_pending(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()
            if pending.done() and not pending.cancelled():
                pending.exception()  # retrieved: its error no longer matters
        self._scheduler.cancel_request()

    @property
    def stats(self) -> PolicyStats:
        """A frozen snapshot of the counters (see :class:`~aiofranka.PolicyStats`)."""
        s = self._scheduler
        held = self._held_seen - self._held_base
        return PolicyStats(
            steps=self._steps, executed_steps=s.executed, requests=s.requests,
            bootstrap_requests=self._bootstrap_requests, integrated=s.integrated, rejected=s.rejected,
            stale_steps_dropped=s.stale_steps_dropped, blended_steps=s.blended_steps, starved_ticks=s.starved_ticks,
            held_cycles=held, latency_steps=float("nan") if s.latency_steps is None else s.latency_steps,
            latency=self._latency_ns.summary(), chunk_len=s.chunk_len or 0, in_flight=s.in_flight is not None,
            missed_replies=self._missed_replies)

    # -- the pieces of a step ----------------------------------------------------------------------

    def _bind(self, act_fn, execute_action: bool) -> ChunkExecutor | None:
        if self._closed:
            raise PolicyError("this runtime was closed; create a new one")
        chunked = execute_action and isinstance(act_fn, ChunkExecutor)
        if not self._bound:
            if chunked:
                act_fn.bind(self.control_hz, self.interpolation)
                self._executor = act_fn
                self._held_base = self._held_seen = act_fn.held_cycles() if hasattr(act_fn, "held_cycles") else 0
            self._bound = True
        elif chunked and act_fn is not self._executor:
            raise PolicyError("this runtime plays its chunks through another executor; use one act_fn per runtime")
        return self._executor if chunked else None

    def _stamp(self, frame: Frame) -> Frame:
        if frame.timestamp_ns is None:
            frame.timestamp_ns = time.monotonic_ns()
        if frame.sequence_id is None:
            frame.sequence_id = self._sequence
        self._sequence += 1
        return frame

    async def _observe(self, observe_fn, frame) -> Frame:
        if frame is not None:
            return self._stamp(Frame.coerce(frame, source="frame"))
        if observe_fn is None:
            raise ValueError("run_step needs observe_fn or frame")
        try:
            value = observe_fn()
            if inspect.isawaitable(value):
                value = await value
        except Exception as exc:  # noqa: BLE001 - re-raised naming the callback
            raise _wrap("observe_fn", exc) from exc
        return self._stamp(Frame.coerce(value, source="observe_fn"))

    async def _call_policy(self, act_src_fn, frame: Frame, request: ChunkRequest):
        start = time.perf_counter_ns()
        try:
            value = act_src_fn(frame, request)
            if inspect.isawaitable(value):
                value = await value
        except Exception as exc:  # noqa: BLE001 - re-raised naming the callback
            raise _wrap("act_src_fn", exc) from exc
        self._latency_ns.push(time.perf_counter_ns() - start)
        return value

    def _prepare(self, reply, frame, executor) -> list[Action]:
        chunk = normalize_chunk(reply, "act_src_fn")
        if executor is not None:
            chunk = executor.resolve_chunk(chunk, frame)
        return chunk

    def _too_old(self, frame: Frame | None) -> bool:
        if self.max_action_age_s is None or frame is None or frame.timestamp_ns is None:
            return False
        return (time.monotonic_ns() - frame.timestamp_ns) / 1e9 > self.max_action_age_s

    def _sync_executed(self, executor) -> None:
        if executor is not None:
            self._scheduler.advance_to(executor.executed_steps())

    async def _integrate(self, reply, executor, *, measure: bool = True) -> Integration | None:
        s = self._scheduler
        frame = s.in_flight_frame
        chunk = self._prepare(reply, frame, executor)
        if self._too_old(frame):
            s.reject_in_flight()
            return None
        self._sync_executed(executor)
        integration = s.integrate(chunk, measure=measure)
        if integration is not None:
            self._fresh = False
            if executor is not None:
                await executor.play_chunk(integration)
        return integration

    async def _collect(self, executor) -> bool:
        """Integrate the reply in flight if it has arrived."""
        pending = self._pending
        if pending is None or not pending.done():
            return False
        self._pending = None
        try:
            reply = pending.result()
        except BaseException as exc:
            self._scheduler.cancel_request()
            if _missed(exc):  # the next step asks again; the arm holds meanwhile
                self._missed_replies += 1
                return False
            raise
        return await self._integrate(reply, executor) is not None

    def _due(self) -> float | None:
        executor = self._executor
        if executor is None or not hasattr(executor, "time_of_step"):
            return None
        return executor.time_of_step(self._scheduler.executed)

    def _launch(self, act_src_fn, frame: Frame) -> None:
        request = self._scheduler.make_request(frame, due_s=self._due())
        self._pending = asyncio.ensure_future(self._call_policy(act_src_fn, frame, request))

    async def _bootstrap(self, observe_fn, frame: Frame, act_src_fn, executor) -> None:
        """Warm-up requests, then profiled ones; the last reply is the first chunk. Nothing is executed before."""
        s = self._scheduler
        total = max(1, self.warmup_requests + self.profile_delay_requests)
        durations = []
        seed: list[Action] | None = None
        warned = False
        for index in range(total):
            if index > 0 and observe_fn is not None:
                frame = await self._observe(observe_fn, None)
            hinted = s.enable_rtc and seed is not None  # the first request locks the length and seeds RTC
            request = s.make_request(frame, rtc=hinted, seed=seed)
            started = self.now()
            try:
                reply = await self._call_policy(act_src_fn, frame, request)
            except BaseException:
                s.cancel_request()
                raise
            warned = self._book_bootstrap(index, hinted, self.now() - started, durations, warned)
            if index < total - 1:
                seed = self._bootstrap_seed(reply, frame, executor)
            else:
                self._bootstrap_latency(durations)
                if await self._integrate(reply, executor, measure=not durations) is None:
                    raise PolicyError("the first chunk was rejected (max_action_age_s)")
        self._bootstrapped = True

    def _book_bootstrap(self, index: int, hinted: bool, elapsed: float, durations: list, warned: bool) -> bool:
        """One bootstrap reply (both modes): the slow-RTC rule, and its time for the latency estimate
        (profiled requests only). Returns whether the slow-RTC warning was given."""
        self._bootstrap_requests += 1
        if hinted and elapsed > SLOW_RTC_BOOTSTRAP_S:
            message = (f"a bootstrap request carrying RTC hints took {elapsed * 1000:.0f} ms "
                       f"(more than {SLOW_RTC_BOOTSTRAP_S * 1000:.0f} ms): the hints will be stale by then")
            if self.slow_rtc_bootstrap == "abort":
                self._scheduler.cancel_request()
                raise PolicyError(message + "; aborted (slow_rtc_bootstrap='abort')")
            if not warned:
                warnings.warn(message, RuntimeWarning, stacklevel=5)
                warned = True
        if index >= self.warmup_requests:
            durations.append(elapsed)
        return warned

    def _bootstrap_seed(self, reply, frame, executor) -> list[Action]:
        """A bootstrap reply before the last: not executed; it fixes the chunk length and seeds RTC."""
        s = self._scheduler
        chunk = self._prepare(reply, frame, executor)
        s.check_chunk_length(len(chunk))
        s.cancel_request()
        return chunk

    def _bootstrap_latency(self, durations: list) -> None:
        if durations:
            self._scheduler.latency_steps = float(np.mean(durations)) / self.period_s

    async def _pace(self, step_start: float, executor) -> float:
        """Wait for the next control tick, integrating a reply the moment it arrives."""
        grid = self._grid
        if grid is None:
            grid = self._grid = DeadlineGrid(self.period_s, on_overrun="skip", due=step_start)
        due = grid.next_due(step_start)
        waited = 0.0
        while True:
            now = self.now()
            if now >= due - 1e-6:
                return waited
            if executor is not None:
                sleeper = asyncio.ensure_future(executor.wait_until_s(due))
            else:
                sleeper = asyncio.ensure_future(asyncio.sleep(due - now))
            pending = self._pending
            begun = time.perf_counter()
            try:
                if pending is not None and not pending.done():
                    await asyncio.wait({sleeper, pending}, return_when=asyncio.FIRST_COMPLETED)
                else:
                    await sleeper
            finally:
                if not sleeper.done():
                    sleeper.cancel()
                waited += time.perf_counter() - begun
            if pending is not None and pending.done():
                await self._collect(executor)

    async def step(self, *, observe_fn=None, act_fn=None, act_src_fn=None, frame=None,
                   execute_action: bool = True, pace_control: bool = True) -> StepResult:
        """One control step; see :func:`run_step`."""
        if act_src_fn is None:
            raise ValueError("run_step with a runtime needs act_src_fn (the policy)")
        executor = self._bind(act_fn, execute_action)
        frame = await self._observe(observe_fn, frame)
        step_start = self.now()
        s = self._scheduler
        refreshed = False
        if self.mode is InferenceMode.ASYNC:
            if not self._bootstrapped:
                await self._bootstrap(observe_fn, frame, act_src_fn, executor)
                refreshed = True
            self._sync_executed(executor)
            refreshed |= await self._collect(executor)
            if s.should_request():
                self._launch(act_src_fn, frame)
            while self._fresh:  # the episode's first chunk: nothing to execute before it
                await asyncio.wait({self._pending})
                missed = self._missed_replies
                refreshed |= await self._collect(executor)
                if self._missed_replies != missed:
                    await asyncio.sleep(self.period_s)  # a server away fails at once: ask once a step, not in a spin
                if self._fresh and s.should_request():
                    self._launch(act_src_fn, frame)
        else:
            self._sync_executed(executor)
            while s.remaining_count == 0:
                request = s.make_request(frame, due_s=self._due())
                try:
                    reply = await self._call_policy(act_src_fn, frame, request)
                except BaseException as exc:
                    s.cancel_request()
                    if not _missed(exc):
                        raise
                    self._missed_replies += 1
                    break  # a starved step: the arm holds, the next step asks again
                refreshed |= await self._integrate(reply, executor) is not None
        raw, action, starved, heading, index = await self._execute(act_fn, executor, execute_action)
        self._steps += 1
        waited = await self._pace(step_start, executor) if pace_control else 0.0
        return StepResult(frame=frame, raw_action=raw, action=action, plan_refreshed=refreshed, step=s.executed,
                          starved=starved, control_wait_s=waited, step_action=heading,
                          step_index=index)

    async def _execute(self, act_fn, executor, execute_action: bool):
        s = self._scheduler
        if executor is not None:
            self._sync_executed(executor)
            raw = s.last_executed
            held = executor.held_cycles() if hasattr(executor, "held_cycles") else self._held_seen
            starved = held > self._held_seen
            if starved:
                s.count_starved()
            self._held_seen = held
            index, heading = s.executed, s.action_for(s.executed)
            if heading is None:
                index, heading = s.executed - 1, raw
        else:
            raw = s.pop()
            starved = raw is None
            index, heading = s.executed - 1, raw if raw is not None else s.last_executed
        action = raw
        target = raw if raw is not None else s.last_executed
        if execute_action and act_fn is not None and (target is not None or executor is not None):
            try:
                returned = act_fn(target)
                if inspect.isawaitable(returned):
                    returned = await returned
            except Exception as exc:  # noqa: BLE001 - re-raised naming the callback
                raise _wrap("act_fn", exc) from exc
            if isinstance(returned, Action):
                action = returned
        return raw, action, starved, heading, index

    # -- the sync twin ----------------------------------------------------------------------------------

    def step_sync(self, *, observe_fn=None, act_fn=None, act_src_fn=None, frame=None, execute_action: bool = True,
                  pace_control: bool = True) -> StepResult:
        """One control step without asyncio; see :func:`run_step_sync`."""
        if act_src_fn is None:
            raise ValueError("run_step_sync with a runtime needs act_src_fn (the policy)")
        if execute_action and isinstance(act_fn, ChunkExecutor):
            raise TypeError("run_step_sync executes one action per step; a ChunkExecutor (the Controller executor) "
                            "needs the asyncio run_step")
        self._bind(None, False)
        frame = self._observe_sync(observe_fn, frame)
        step_start = self.now()
        s = self._scheduler
        refreshed = False
        if self.mode is InferenceMode.ASYNC:
            if not self._bootstrapped:
                self._bootstrap_sync(observe_fn, frame, act_src_fn)
                refreshed = True
            refreshed |= self._collect_sync(block=False)
            if s.should_request():
                self._launch_sync(act_src_fn, frame)
            while self._fresh:
                refreshed |= self._collect_sync(block=True)
                if self._fresh and s.should_request():
                    self._launch_sync(act_src_fn, frame)
        else:
            while s.remaining_count == 0:
                request = s.make_request(frame)
                reply = self._call_policy_sync(act_src_fn, frame, request)
                refreshed |= self._integrate_sync(reply) is not None
        raw = s.pop()
        action = raw
        target = raw if raw is not None else s.last_executed
        if execute_action and act_fn is not None and target is not None:
            try:
                returned = act_fn(target)
            except Exception as exc:  # noqa: BLE001
                raise _wrap("act_fn", exc) from exc
            if isinstance(returned, Action):
                action = returned
        self._steps += 1
        waited = 0.0
        if pace_control:
            grid = self._grid
            if grid is None:
                grid = self._grid = DeadlineGrid(self.period_s, on_overrun="skip", due=step_start)
            due = grid.next_due(step_start)
            while (left := due - self.now()) > 0:
                begun = time.perf_counter()
                future = self._pending
                if future is not None and not future.done():
                    concurrent.futures.wait([future], timeout=left)
                    refreshed |= self._collect_sync(block=False)
                else:
                    time.sleep(left)
                waited += time.perf_counter() - begun
        return StepResult(frame=frame, raw_action=raw, action=action, plan_refreshed=refreshed, step=s.executed,
                          starved=raw is None, control_wait_s=waited,
                          step_action=raw if raw is not None else s.last_executed, step_index=s.executed - 1)

    def _observe_sync(self, observe_fn, frame) -> Frame:
        if frame is not None:
            return self._stamp(Frame.coerce(frame, source="frame"))
        if observe_fn is None:
            raise ValueError("run_step_sync needs observe_fn or frame")
        try:
            value = observe_fn()
        except Exception as exc:  # noqa: BLE001
            raise _wrap("observe_fn", exc) from exc
        return self._stamp(Frame.coerce(value, source="observe_fn"))

    def _call_policy_sync(self, act_src_fn, frame, request):
        start = time.perf_counter_ns()
        try:
            value = act_src_fn(frame, request)
        except Exception as exc:  # noqa: BLE001
            raise _wrap("act_src_fn", exc) from exc
        if inspect.isawaitable(value):
            raise TypeError("run_step_sync needs a synchronous act_src_fn; use the asyncio run_step for async policies")
        self._latency_ns.push(time.perf_counter_ns() - start)
        return value

    def _integrate_sync(self, reply, *, measure: bool = True) -> Integration | None:
        s = self._scheduler
        frame = s.in_flight_frame
        chunk = self._prepare(reply, frame, None)
        if self._too_old(frame):
            s.reject_in_flight()
            return None
        integration = s.integrate(chunk, measure=measure)
        if integration is not None:
            self._fresh = False
        return integration

    def _launch_sync(self, act_src_fn, frame) -> None:
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="aiofranka-policy")
        request = self._scheduler.make_request(frame)
        self._pending = self._pool.submit(self._call_policy_sync, act_src_fn, frame, request)

    def _collect_sync(self, *, block: bool) -> bool:
        pending = self._pending
        if pending is None or (not block and not pending.done()):
            return False
        self._pending = None
        try:
            reply = pending.result()
        except BaseException:
            self._scheduler.cancel_request()
            raise
        return self._integrate_sync(reply) is not None

    def _bootstrap_sync(self, observe_fn, frame, act_src_fn) -> None:
        s = self._scheduler
        total = max(1, self.warmup_requests + self.profile_delay_requests)
        durations = []
        seed = None
        warned = False
        for index in range(total):
            if index > 0 and observe_fn is not None:
                frame = self._observe_sync(observe_fn, None)
            hinted = s.enable_rtc and seed is not None
            request = s.make_request(frame, rtc=hinted, seed=seed)
            started = self.now()
            try:
                reply = self._call_policy_sync(act_src_fn, frame, request)
            except BaseException:
                s.cancel_request()
                raise
            warned = self._book_bootstrap(index, hinted, self.now() - started, durations, warned)
            if index < total - 1:
                seed = self._bootstrap_seed(reply, frame, None)
            else:
                self._bootstrap_latency(durations)
                if self._integrate_sync(reply, measure=not durations) is None:
                    raise PolicyError("the first chunk was rejected (max_action_age_s)")
        self._bootstrapped = True


def _plain_request() -> ChunkRequest:
    return ChunkRequest(request_step=0, request_time_s=time.monotonic(), remaining_steps=0, latency_steps=0)


async def run_step(*, observe_fn=None, act_fn=None, act_src_fn=None, runtime: InferenceRuntime | None = None,
                   frame=None, execute_action: bool = True, pace_control: bool = True) -> StepResult:
    """Run one control step of a policy.

    * ``observe_fn()`` returns a :class:`Frame` (or a mapping of its fields),
      or an awaitable of one; ``frame=`` gives the frame instead.
    * ``act_src_fn(frame, request)`` is the policy: any callable returning an
      :class:`Action` or a list of them (a chunk), or an awaitable of that: an
      inline function, an ``asyncify`` function, a ``CudaInferenceThread``'s
      wrapped function, an ``mpify`` proxy's method.
    * ``act_fn(action)`` executes the step's action; it may return the
      :class:`Action` it really executed. The built-in
      :class:`~aiofranka.policy.ControllerExecutor` plays whole chunks at 1 kHz.
    * ``execute_action=False`` (with ``frame=``) is pure inference: ``act_fn``
      is not called and nothing is played.
    * Without a ``runtime``, one request is made and its first action executed.
      With one, the runtime's scheduling applies and the step ends on the next
      control tick (``pace_control``), on the robot clock with the Controller
      executor.

    An exception raised by a callback is re-raised as
    :class:`~aiofranka.PolicyCallbackError` naming it (the original is ``__cause__``).
    """
    if runtime is not None:
        return await runtime.step(observe_fn=observe_fn, act_fn=act_fn, act_src_fn=act_src_fn, frame=frame,
                                  execute_action=execute_action, pace_control=pace_control)
    plain = InferenceRuntime(mode=InferenceMode.SYNC, control_hz=1000.0)
    frame = await plain._observe(observe_fn, frame)
    if act_src_fn is None:
        raise ValueError("run_step needs act_src_fn (the policy)")
    chunk = normalize_chunk(await plain._call_policy(act_src_fn, frame, _plain_request()), "act_src_fn")
    raw = action = chunk[0]
    if execute_action and act_fn is not None:
        try:
            returned = act_fn(raw)
            if inspect.isawaitable(returned):
                returned = await returned
        except Exception as exc:  # noqa: BLE001
            raise _wrap("act_fn", exc) from exc
        if isinstance(returned, Action):
            action = returned
    return StepResult(frame=frame, raw_action=raw, action=action, plan_refreshed=True, step=1, starved=False,
                      control_wait_s=0.0, step_action=raw, step_index=0)


def run_step_sync(*, observe_fn=None, act_fn=None, act_src_fn=None, runtime: InferenceRuntime | None = None,
                  frame=None, execute_action: bool = True, pace_control: bool = True) -> StepResult:
    """:func:`run_step` without asyncio, for threads and ``Session`` policies.

    Callbacks are plain functions; in ASYNC mode the request in flight runs in
    a worker thread of the runtime. Pacing (``pace_control``) is on the wall
    clock; inside a ``Session``, which paces itself, pass ``pace_control=False``.
    Refuses the Controller executor (it plays chunks on the event loop).
    """
    if runtime is not None:
        return runtime.step_sync(observe_fn=observe_fn, act_fn=act_fn, act_src_fn=act_src_fn, frame=frame,
                                 execute_action=execute_action, pace_control=pace_control)
    plain = InferenceRuntime(mode=InferenceMode.SYNC, control_hz=1000.0)
    frame = plain._observe_sync(observe_fn, frame)
    if act_src_fn is None:
        raise ValueError("run_step_sync needs act_src_fn (the policy)")
    chunk = normalize_chunk(plain._call_policy_sync(act_src_fn, frame, _plain_request()), "act_src_fn")
    raw = action = chunk[0]
    if execute_action and act_fn is not None:
        try:
            returned = act_fn(raw)
        except Exception as exc:  # noqa: BLE001
            raise _wrap("act_fn", exc) from exc
        if isinstance(returned, Action):
            action = returned
    return StepResult(frame=frame, raw_action=raw, action=action, plan_refreshed=True, step=1, starved=False,
                      control_wait_s=0.0, step_action=raw, step_index=0)
