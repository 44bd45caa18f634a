"""Profile a policy stage by stage through each offload helper while the loop runs; fingerprint its forward pass.

:func:`profile` times ``preprocess``, ``transfer``, ``forward`` and ``postprocess`` (with
``torch.cuda.synchronize`` between them on a GPU) where each helper runs the call (inline,
asyncify, CudaInferenceThread, mpify), beside a running Controller, and recommends a helper.
:func:`fingerprint` hashes a forward pass's outputs and operator counts (fixed input, fixed
seeds, no grad) so a refactor can be shown not to change the model. Guide: docs/profiling.md.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import random
import sys
import time
from typing import Iterable, Sequence

import numpy as np

from .._factory import load_factory  # noqa: F401 - re-exported: profile and serve name their targets alike
from .contract import ChunkRequest, Frame

__all__ = ["HELPERS", "STAGES", "Fingerprint", "HelperProfile", "PolicyProfile", "StageRunner", "StageTimes",
           "fingerprint", "fingerprints", "profile"]

#: The stages, in call order. A policy offers any of them as methods; ``forward`` is required
#: (an ``nn.Module`` is called, so its hooks run) unless the policy is a plain ``act_src_fn``.
STAGES = ("preprocess", "transfer", "forward", "postprocess")
HELPERS = ("inline", "asyncify", "cuda_thread", "mpify")
#: A call shorter than this (s, p99 of the round trip) may run inline on the event loop.
INLINE_LIMIT_S = 3e-4


def _torch():
    return sys.modules.get("torch")


def _on_cuda(policy) -> bool:
    torch = _torch()
    if torch is None or not torch.cuda.is_available():
        return False
    device = getattr(policy, "device", None)
    if device is not None:
        return str(device).startswith("cuda")
    parameters = getattr(policy, "parameters", None)
    if callable(parameters):
        return any(p.is_cuda for p in parameters())
    return False


class StageRunner:
    """Runs a policy's stages and times each; it lives where the calls run (in the child with mpify).

    Stages: ``preprocess(frame)``, ``transfer(x)`` (host to device), ``forward(x)`` and
    ``postprocess(y)``, each optional but ``forward``; a missing one passes its input on and
    is not reported. A policy without ``forward`` that is callable is taken as an
    ``act_src_fn(frame, request)``: the whole call is its forward stage.
    """

    def __init__(self, policy) -> None:
        self.policy = policy
        self.cuda = _on_cuda(policy)
        torch = _torch()
        is_module = torch is not None and isinstance(policy, torch.nn.Module)
        if is_module:
            forward = policy
        elif callable(getattr(policy, "forward", None)):
            forward = policy.forward
        elif callable(policy):
            request = ChunkRequest(request_step=0, request_time_s=0.0, remaining_steps=0, latency_steps=0)
            forward = lambda frame: policy(frame, request)  # noqa: E731 - a plain act_src_fn
        else:
            raise TypeError(f"policy must offer forward(x) (or be an nn.Module, or an act_src_fn), "
                            f"got {type(policy).__name__}")
        self._calls = [(name, getattr(policy, name) if name != "forward" else forward) for name in STAGES
                       if name == "forward" or callable(getattr(policy, name, None))]

    @property
    def stages(self) -> list[str]:
        return [name for name, _ in self._calls]

    def _grad_off(self):
        torch = _torch()
        return torch.no_grad() if torch is not None else contextlib.nullcontext()

    def timed(self, frame) -> dict[str, int]:
        """One call through every stage; the nanoseconds each took (synchronised on a GPU)."""
        sync = _torch().cuda.synchronize if self.cuda else None
        out: dict[str, int] = {}
        value = frame
        with self._grad_off():
            if sync:
                sync()
            for name, call in self._calls:
                start = time.perf_counter_ns()
                value = call(value)
                if sync:
                    sync()
                out[name] = time.perf_counter_ns() - start
        return out

    def fingerprint(self, frame, seed: int = 0, decimals: int = 6) -> "Fingerprint":
        """See :func:`fingerprint`."""
        torch = _torch()
        random.seed(seed)
        np.random.seed(seed)
        saved_threads = None
        if torch is not None:
            torch.manual_seed(seed)
            saved_threads = torch.get_num_threads()
            torch.set_num_threads(1)  # one reduction order, whatever process or thread runs it
        counts: collections.Counter = collections.Counter()
        try:
            with self._grad_off():
                value = frame
                for name, call in self._calls:
                    if name == "forward":
                        with _OpCounter(counts):
                            value = call(value)
                        break
                    value = call(value)
        finally:
            if saved_threads is not None:
                torch.set_num_threads(saved_threads)
        outputs = hashlib.sha256()
        _hash_value(outputs, value, decimals)
        ops = hashlib.sha256("\n".join(f"{name} {count}" for name, count in sorted(counts.items())).encode())
        return Fingerprint(outputs_sha256=outputs.hexdigest(), ops_sha256=ops.hexdigest(), op_counts=dict(counts),
                           seed=seed, decimals=decimals)

    def trace(self, frame, path: str, calls: int = 5) -> str:
        """Export a torch profiler (chrome) trace of ``calls`` calls, each stage a labelled range."""
        torch = _torch()
        from torch.profiler import ProfilerActivity, profile as torch_profile, record_function

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        with torch_profile(activities=activities) as prof, self._grad_off():
            for _ in range(calls):
                value = frame
                for name, call in self._calls:
                    with record_function(f"aiofranka.{name}"):
                        value = call(value)
                if self.cuda:
                    torch.cuda.synchronize()
        prof.export_chrome_trace(str(path))
        return str(path)


class _OpCounter:
    """Counts the torch functions called (``__torch_function__`` mode), by their public name."""

    def __init__(self, counts: collections.Counter) -> None:
        self.counts = counts
        self.mode = None

    def __enter__(self):
        torch = _torch()
        if torch is None:
            return self
        from torch.overrides import TorchFunctionMode, resolve_name

        counts = self.counts

        class Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                counts[resolve_name(func) or getattr(func, "__qualname__", repr(func))] += 1
                return func(*args, **(kwargs or {}))

        self.mode = Mode()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.mode is not None:
            self.mode.__exit__(*exc)


def _hash_value(digest, value, decimals: int) -> None:
    """Feed ``value`` (tensors, arrays, numbers, Actions, nested lists/tuples/dicts) into ``digest``:
    each array as float64 rounded to ``decimals``, little-endian bytes, with its shape."""
    torch = _torch()
    if torch is not None and isinstance(value, torch.Tensor):
        value = value.detach().to("cpu", torch.float64).numpy()
    if hasattr(value, "commands") and isinstance(getattr(value, "commands"), dict):  # an Action
        value = {target: (c.kind, c.value) for target, c in value.commands.items()}
    if isinstance(value, dict):
        for key in sorted(value, key=str):
            digest.update(f"<{key}>".encode())
            _hash_value(digest, value[key], decimals)
    elif isinstance(value, (list, tuple)):
        digest.update(f"[{len(value)}".encode())
        for item in value:
            _hash_value(digest, item, decimals)
    elif isinstance(value, str):
        digest.update(value.encode())
    else:
        array = np.asarray(value, dtype=np.float64)
        rounded = np.round(array, decimals) + 0.0  # + 0.0: -0.0 and 0.0 hash alike
        digest.update(f"{array.shape}".encode())
        digest.update(rounded.astype("<f8").tobytes())


@dataclasses.dataclass(frozen=True)
class Fingerprint:
    """A forward pass's identity: sha256 of its outputs (float64 rounded to ``decimals``, little-endian
    bytes, shapes included) and of its operator counts (``op_counts``: torch function name -> calls)."""

    outputs_sha256: str
    ops_sha256: str
    op_counts: dict
    seed: int
    decimals: int

    def same_as(self, other: "Fingerprint") -> bool:
        return self.outputs_sha256 == other.outputs_sha256 and self.ops_sha256 == other.ops_sha256

    def __str__(self) -> str:
        return (f"outputs {self.outputs_sha256[:16]}  ops {self.ops_sha256[:16]} "
                f"({sum(self.op_counts.values())} calls of {len(self.op_counts)} functions; "
                f"rounded to {self.decimals} decimals, seed {self.seed})")


def fingerprint(policy, frame, *, seed: int = 0, decimals: int = 6) -> Fingerprint:
    """Hash ``policy``'s forward pass on ``frame``: fixed seeds (python, numpy, torch), no grad, one
    torch thread; the stages before ``forward`` run first, ``postprocess`` does not. Equal fingerprints:
    same outputs to ``decimals`` decimals and the same torch functions called as often."""
    return StageRunner(policy).fingerprint(frame, seed, decimals)


# -- the helpers ----------------------------------------------------------------------------------------


class _Helper:
    """One way of running the calls: ``run(method, *args)`` awaits ``runner.method(*args)`` where the helper runs it."""

    def __init__(self, name: str, policy) -> None:
        self.name = name
        self.policy = policy
        self._thread = self._proxy = None
        self._runner = None

    async def start(self) -> None:
        if self.name == "mpify":
            from ..offload import ampify

            self._proxy = await ampify(StageRunner, self.policy)
            return
        self._runner = StageRunner(self.policy)
        if self.name == "cuda_thread":
            from ..offload import CudaInferenceThread

            self._thread = await CudaInferenceThread(device="cuda" if self._runner.cuda else "cpu").astart()

    async def run(self, method: str, *args):
        if self.name == "mpify":
            return await self._proxy.call(method, *args)
        call = getattr(self._runner, method)
        if self.name == "inline":
            return call(*args)
        if self.name == "asyncify":
            from ..offload import asyncify

            return await asyncify(call)(*args)
        return await self._thread.run(call, *args)

    async def stop(self) -> None:
        if self._proxy is not None:
            await self._proxy.astop()
        if self._thread is not None:
            await self._thread.astop()


def _check_helpers(helpers) -> tuple[str, ...]:
    helpers = tuple(helpers)
    unknown = [h for h in helpers if h not in HELPERS]
    if unknown or not helpers:
        raise ValueError(f"helpers must be a non-empty selection of {HELPERS}, got {helpers!r}")
    return helpers


async def fingerprints(policy, frame, *, helpers: Iterable[str] = ("inline", "mpify"), seed: int = 0,
                       decimals: int = 6) -> dict[str, Fingerprint]:
    """:func:`fingerprint` computed where each helper runs the policy (a copy of it in a child with mpify)."""
    out = {}
    for name in _check_helpers(helpers):
        helper = _Helper(name, policy)
        await helper.start()
        try:
            out[name] = await helper.run("fingerprint", frame, seed, decimals)
        finally:
            await helper.stop()
    return out


# -- the profile -------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StageTimes:
    """One stage's durations over ``count`` calls (ms)."""

    count: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, ns: Sequence[int]) -> "StageTimes":
        values = np.asarray(ns, dtype=np.float64) / 1e6
        p50, p95, p99 = np.percentile(values, [50, 95, 99])
        return cls(len(values), float(p50), float(p95), float(p99), float(values.max()))


@dataclasses.dataclass(frozen=True)
class HelperProfile:
    """A helper's figures: ``stages`` (each stage where it ran, and ``round_trip``: the await on the
    event loop, offload included), and what the loop saw meanwhile (``lost_cycles``, ``guardian_cycles``:
    cycles served by the guardian or the rescue thread while the event loop was busy)."""

    helper: str
    stages: dict
    lost_cycles: int
    guardian_cycles: int
    fingerprint: Fingerprint | None
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class PolicyProfile:
    """What :func:`profile` measured, per helper, with the recommendation and its reason."""

    helpers: dict
    stages: tuple
    cuda: bool
    recommended: str | None
    reason: str
    fingerprints_agree: bool | None
    trace_path: str | None

    def table(self) -> str:
        columns = list(self.stages) + ["round_trip"]
        lines = [f"policy stages on {'cuda' if self.cuda else 'cpu'} (ms: p50 / p95 / p99)",
                 f"{'helper':<12}" + "".join(f"{c:>24}" for c in columns) + f"{'lost':>7}{'guardian':>10}"]
        for name, h in self.helpers.items():
            if h.error:
                lines.append(f"{name:<12}  failed: {h.error}")
                continue
            cells = "".join(f"{f'{s.p50_ms:.3f}/{s.p95_ms:.3f}/{s.p99_ms:.3f}':>24}" if (s := h.stages.get(c)) else
                            f"{'-':>24}" for c in columns)
            lines.append(f"{name:<12}{cells}{h.lost_cycles:>7d}{h.guardian_cycles:>10d}")
        for name, h in self.helpers.items():
            if h.fingerprint is not None:
                lines.append(f"fingerprint [{name}]: {h.fingerprint}")
        if self.fingerprints_agree is not None:
            lines.append("fingerprints agree across helpers" if self.fingerprints_agree else
                         "FINGERPRINTS DIFFER across helpers")
        if self.trace_path:
            lines.append(f"torch profiler trace: {self.trace_path}")
        lines.append(f"recommended helper: {self.recommended} ({self.reason})")
        return "\n".join(lines)


def _recommend(helpers: dict) -> tuple[str | None, str]:
    ok = {n: h for n, h in helpers.items() if h.error is None}
    if not ok:
        return None, "every helper failed"
    clean = {n: h for n, h in ok.items() if h.lost_cycles == 0} or ok
    inline = clean.get("inline")
    if inline is not None and inline.stages["round_trip"].p99_ms / 1e3 < INLINE_LIMIT_S:
        return "inline", f"a call takes {inline.stages['round_trip'].p99_ms:.3f} ms at p99, under the loop's " \
                         f"{INLINE_LIMIT_S * 1e3:.1f} ms stall threshold"
    offloaded = {n: h for n, h in clean.items() if n != "inline"}
    if not offloaded:
        return "inline", "no other helper was profiled"
    name = min(offloaded, key=lambda n: offloaded[n].stages["round_trip"].p99_ms)
    h = offloaded[name]
    lost = "" if h.lost_cycles == 0 else f", though it lost {h.lost_cycles} cycles"
    return name, f"the lowest p99 round trip of the offloaded helpers ({h.stages['round_trip'].p99_ms:.3f} ms){lost}"


async def profile(policy, sample_frame: Frame | None = None, *, helpers: Iterable[str] = HELPERS,
                  iterations: int = 30, warmup: int = 3, rate_hz: float | None = 30.0, controller=None,
                  trace_path: str | None = None, fingerprint_seed: int = 0, decimals: int = 6,
                  progress: bool = False) -> PolicyProfile:
    """Time ``policy``'s stages through each helper while a Controller loop runs.

    ``controller``: a running Controller (default: start one on the embedded simulator, holding
    its pose). ``sample_frame``: the input of every call (default: the Controller's observation).
    Each helper makes ``warmup`` untimed calls, then ``iterations`` timed ones, one per tick of
    ``rate_hz`` (``None``: back to back). Stage times are measured where the call runs (with
    ``torch.cuda.synchronize`` after each stage on a GPU); ``round_trip`` is the await on the
    event loop. Each helper also computes the :func:`fingerprint` where it runs. ``trace_path``
    exports a torch profiler chrome trace of a few calls (run in a worker thread). ``progress``
    shows a tqdm bar on stderr. Returns a :class:`PolicyProfile` (``.table()`` prints it).
    """
    helpers = _check_helpers(helpers)
    for name, value in (("iterations", iterations), ("warmup", warmup)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "iterations" else 0):
            raise ValueError(f"{name} must be an int >= {1 if name == 'iterations' else 0}, got {value!r}")
    if rate_hz is not None and not rate_hz > 0:
        raise ValueError(f"rate_hz must be positive or None, got {rate_hz!r}")
    if controller is None:
        from ..loop.controller import Controller
        from ..robot import Robot

        with Robot() as robot:
            async with Controller(robot) as running:
                return await profile(policy, sample_frame, helpers=helpers, iterations=iterations, warmup=warmup,
                                     rate_hz=rate_hz, controller=running, trace_path=trace_path,
                                     fingerprint_seed=fingerprint_seed, decimals=decimals, progress=progress)
    if sample_frame is None:
        from .execution import ControllerObserver

        sample_frame = await ControllerObserver(controller)()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(helpers) * (warmup + iterations), unit="call", file=sys.stderr)
    runner = StageRunner(policy)
    results = {}
    try:
        for name in helpers:
            if bar is not None:
                bar.set_description(name)
            results[name] = await _profile_helper(name, policy, sample_frame, controller, iterations, warmup,
                                                  rate_hz, fingerprint_seed, decimals, bar)
        if trace_path is not None:
            from ..offload import asyncify

            trace_path = await asyncify(runner.trace)(sample_frame, trace_path)
    finally:
        if bar is not None:
            bar.close()
    prints = [h.fingerprint for h in results.values() if h.fingerprint is not None]
    agree = all(p.same_as(prints[0]) for p in prints) if len(prints) > 1 else None
    recommended, reason = _recommend(results)
    return PolicyProfile(helpers=results, stages=tuple(runner.stages), cuda=runner.cuda, recommended=recommended,
                         reason=reason, fingerprints_agree=agree, trace_path=trace_path)


async def _profile_helper(name, policy, frame, controller, iterations, warmup, rate_hz, seed, decimals,
                          bar) -> HelperProfile:
    helper = _Helper(name, policy)
    try:
        await helper.start()
        for _ in range(warmup):
            await helper.run("timed", frame)
            if bar is not None:
                bar.update()
        before = controller.stats
        stages: dict[str, list] = collections.defaultdict(list)
        period_ms = None if rate_hz is None else 1000.0 / rate_hz
        next_ms = controller.time_ms
        for _ in range(iterations):
            if period_ms is not None:
                next_ms += period_ms
                wait_s = (next_ms - controller.time_ms) / 1000.0
                if wait_s > 0:
                    await controller.wait(wait_s)
            else:
                await asyncio.sleep(0)
            start = time.perf_counter_ns()
            times = await helper.run("timed", frame)
            stages["round_trip"].append(time.perf_counter_ns() - start)
            for stage, ns in times.items():
                stages[stage].append(ns)
            if bar is not None:
                bar.update()
        after = controller.stats
        print_ = await helper.run("fingerprint", frame, seed, decimals)
        return HelperProfile(helper=name, stages={k: StageTimes.of(v) for k, v in stages.items()},
                             lost_cycles=after.lost_cycles - before.lost_cycles,
                             guardian_cycles=(after.guardian_cycles + after.rescued_cycles)
                             - (before.guardian_cycles + before.rescued_cycles), fingerprint=print_)
    except Exception as exc:  # noqa: BLE001 - one helper failing (no torch, no CUDA) is reported, the rest go on
        return HelperProfile(helper=name, stages={}, lost_cycles=0, guardian_cycles=0, fingerprint=None,
                             error=f"{type(exc).__name__}: {exc}")
    finally:
        await helper.stop()


