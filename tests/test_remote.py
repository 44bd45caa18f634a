"""The remote policy (aiofranka.remote): a real `aiofranka serve` in a child process on loopback.

No simulator: calls, the typed encoding, deadlines, cancellation, a killed and a restarted
server, the token, TLS, the security refusals; and the policy runtime carrying on through
missed replies (on a fake clock).
"""

from __future__ import annotations

import asyncio
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("grpc")

from aiofranka import (PolicyCallbackError, RemoteDeadlineExceeded, RemotePolicyAuthError,  # noqa: E402
                       RemotePolicyError, RemotePolicyUnavailable, RemoteTraceback)
from aiofranka.pacing import FakeClock  # noqa: E402
from aiofranka.policy import Action, ChunkRequest, Command, Frame  # noqa: E402
from aiofranka.policy.runtime import InferenceMode, InferenceRuntime, run_step  # noqa: E402
from aiofranka.remote import connect_policy, serve_policy  # noqa: E402
from aiofranka.remote._codec import CodecError, decode, encode  # noqa: E402

TESTS = os.path.dirname(os.path.abspath(__file__))
TOKEN = "test-token-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """``aiofranka serve FACTORY ARGS`` in a child process; started when it prints its line."""

    def __init__(self, port: int, *extra: str, factory: str = "_remote_policies:Echo", args: tuple = (),
                 token: str | None = TOKEN) -> None:
        self.port = port
        self.extra = extra
        self.factory = factory
        self.args = args
        self.token = token
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> "ServerProcess":
        env = dict(os.environ, PYTHONPATH=TESTS + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env.pop("AIOFRANKA_TOKEN", None)
        if self.token is not None:
            env["AIOFRANKA_TOKEN"] = self.token
        self.process = subprocess.Popen(
            [sys.executable, "-m", "aiofranka.cli", "serve", self.factory, *self.args, "--port", str(self.port),
             *self.extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=TESTS)
        deadline = time.monotonic() + timeout
        line = ""
        while time.monotonic() < deadline and self.process.poll() is None:
            line = self.process.stdout.readline()
            if line.startswith("aiofranka serve:"):
                return self
        error = self.process.stderr.read() if self.process.poll() is not None else ""
        raise AssertionError(f"the server did not start: {line!r} {error}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        if self.process is not None:
            self.process.wait(10)
            self.process.stdout.close()
            self.process.stderr.close()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
def server():
    child = ServerProcess(free_port()).start()
    yield child
    child.kill()


async def test_calls_attributes_and_errors(server):
    async with await connect_policy(server.target, token=TOKEN, deadline=5.0) as policy:
        assert await policy.echo({"a": [1, 2.5, "x", None, True, b"raw", (3, 4)]}) == \
            {"a": [1, 2.5, "x", None, True, b"raw", (3, 4)]}
        assert await policy.calls == 1 and await policy.tag == "echo"
        with pytest.raises(ValueError, match="bad input") as caught:
            await policy.fail("bad input")
        assert isinstance(caught.value.__cause__, RemoteTraceback) and "fail" in caught.value.__cause__.text
        with pytest.raises(AttributeError, match="private"):
            await policy.call("__class__")
        with pytest.raises(AttributeError, match="no_such"):
            await policy.no_such()
        with pytest.raises(TypeError, match=r"echo\(\): args\[0\]\['x'\]: set cannot be sent"):
            await policy.echo({"x": {1, 2}})
        stats = policy.stats
        assert stats.calls == 6 and stats.round_trip.count == 6
        assert stats.round_trip.p50_us >= stats.inference.p50_us


ARRAYS = {
    "image": np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8),
    "float32": np.random.default_rng(1).standard_normal((3, 5)).astype(np.float32),
    "big-endian int16": np.arange(-6, 6, dtype=">i2").reshape(3, 4),
    "bool": np.array([[True, False], [False, True]]),
    "complex64": np.array([1 + 2j, -3.5j], dtype=np.complex64),
    "0-d": np.array(7.25),
    "empty": np.zeros((0, 3), dtype=np.int64),
    "strided": np.arange(40, dtype=np.float64).reshape(5, 8)[:, ::3],
}


@pytest.mark.parametrize("name", sorted(ARRAYS))
async def test_arrays_round_trip_exactly(server, name):
    array = ARRAYS[name]
    async with await connect_policy(server.target, token=TOKEN, deadline=5.0) as policy:
        back = await policy.echo(array)
        assert back.dtype.str == array.dtype.str and back.shape == array.shape and np.array_equal(back, array)
        assert back.flags.writeable
        scalar = await policy.echo(np.float32(1.5))
        assert type(scalar) is np.float32 and scalar == 1.5
        described = await policy.describe(array)  # the server saw the same dtype and shape
        assert described["dtype"] == array.dtype.str and described["shape"] == list(array.shape)


async def test_the_policy_contract_round_trips(server):
    frame = Frame(images={"wrist": ARRAYS["image"]}, state={"q": np.linspace(0, 1, 7)}, task={"text": "pick"},
                  meta={"robot_time_ms": 1234}, timestamp_ns=99, sequence_id=3)
    action = Action({"arm": Command("joint_position", np.ones(7)), "gripper": ("gripper_open_close", 1.0)})
    request = ChunkRequest(request_step=4, request_time_s=0.5, remaining_steps=2, latency_steps=1,
                           prev_action_chunk=(action, action), inference_delay=1, execute_horizon=2, due_s=1.5)
    async with await connect_policy(server.target, token=TOKEN, deadline=5.0) as policy:
        got_frame, got_action, got_request = await policy.echo((frame, action, request))
    assert np.array_equal(got_frame.images["wrist"], frame.images["wrist"]) and got_frame.task == frame.task
    assert got_frame.meta == frame.meta and (got_frame.timestamp_ns, got_frame.sequence_id) == (99, 3)
    assert got_action == action and got_request == request


def test_the_codec_refuses_what_it_cannot_type():
    with pytest.raises(TypeError, match=r"value\[1\]: arrays of dtype object"):
        encode([1, np.array([object()])])
    with pytest.raises(TypeError, match="set cannot be sent"):
        encode({"x": {1, 2}})
    good = encode({"a": np.arange(3)})
    for bad in (good[:-1], b"Z", good + b"N", b"a\x03|O8\x00", b"l\xff\xff\xff\xff",
                pickle.dumps({"a": 1}), b"d\x01\x00\x00\x00l\x00\x00\x00\x00N"):
        with pytest.raises(CodecError):
            decode(bad)


async def test_the_server_refuses_a_pickle_and_keeps_serving(server):
    import grpc

    async with grpc.aio.insecure_channel(server.target) as channel:
        raw = channel.unary_unary("/aiofranka.remote.Policy/Call")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await raw(b"c" + pickle.dumps(("echo", (1,), {})), timeout=5,
                      metadata=(("authorization", "Bearer " + TOKEN),))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    async with await connect_policy(server.target, token=TOKEN, deadline=5.0) as policy:
        assert await policy.echo(5) == 5


async def test_the_standard_health_check_answers(server):
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5,
                                 metadata=(("authorization", "Bearer " + TOKEN),))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as caught:  # the token guards the health check too
            await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def gaps_while(awaitable) -> tuple[float, object]:
    """The longest the event loop went without running a 1 ms ticker while ``awaitable`` ran."""
    worst = 0.0
    done = False

    async def ticker():
        nonlocal worst
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            worst = max(worst, now - last)
            last = now

    task = asyncio.ensure_future(ticker())
    try:
        try:
            result = await awaitable
        except Exception as exc:  # noqa: BLE001 - handed back to the test
            result = exc
    finally:
        done = True
        await task
    return worst, result


async def test_a_slow_method_raises_the_deadline_error_in_time_without_blocking_the_loop(server):
    async with await connect_policy(server.target, token=TOKEN, deadline=5.0) as policy:
        start = time.monotonic()
        gap, error = await gaps_while(policy.call_with_deadline(0.3, "sleep", 3.0))
        elapsed = time.monotonic() - start
        assert isinstance(error, RemoteDeadlineExceeded) and isinstance(error, TimeoutError), error
        # The deadline is 0.3 s; 1.5 s leaves a slow host room, the method itself takes 3 s.
        assert 0.3 <= elapsed < 1.5, elapsed
        assert gap < 0.25, f"the event loop went {gap * 1000:.0f} ms without running"
        assert policy.stats.deadline_exceeded == 1


async def test_a_cancelled_await_cancels_the_call(server):
    async with await connect_policy(server.target, token=TOKEN, deadline=5.0) as policy:
        busy = asyncio.ensure_future(policy.sleep(0.6))  # holds the server's one-at-a-time lock
        await asyncio.sleep(0.15)
        queued = asyncio.ensure_future(policy.echo("never"))
        await asyncio.sleep(0.15)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        assert await busy == 0.6
        assert await policy.calls == 0, "the server ran a call its client had cancelled"
        assert policy.stats.cancelled == 1


async def test_a_killed_server_raises_unavailable_within_the_deadline_and_a_restarted_one_serves_again():
    port = free_port()
    child = ServerProcess(port).start()
    try:
        policy = await connect_policy(child.target, token=TOKEN, deadline=3.0)
        assert await policy.echo(1) == 1
        call = asyncio.ensure_future(policy.sleep(2.0))
        await asyncio.sleep(0.3)
        start = time.monotonic()
        child.process.send_signal(signal.SIGKILL)
        with pytest.raises(RemotePolicyUnavailable) as caught:
            await call
        assert isinstance(caught.value, ConnectionError)
        assert time.monotonic() - start < 2.0  # inside the 3 s deadline (the sleep alone would end at 1.7 s)
        child.kill()
        start = time.monotonic()
        with pytest.raises(RemotePolicyUnavailable):  # nobody listens: fails at once, not at the deadline
            await policy.echo(2)
        assert time.monotonic() - start < 2.5

        child = ServerProcess(port).start()
        deadline = time.monotonic() + 15.0
        while True:  # the channel reconnects by itself (backoff at most 1 s)
            try:
                assert await policy.echo(3) == 3
                break
            except RemotePolicyUnavailable:
                assert time.monotonic() < deadline, "the proxy did not reach the restarted server"
                await asyncio.sleep(0.1)
        assert await policy.calls == 1  # a fresh object on the new server
        assert policy.stats.unavailable >= 2
        await policy.aclose()
        with pytest.raises(RemotePolicyError, match="closed"):
            await policy.echo(4)
    finally:
        child.kill()


async def test_a_wrong_or_missing_token_is_refused(server):
    for token in ("wrong-token", None):
        with pytest.raises(RemotePolicyAuthError) as caught:
            await connect_policy(server.target, token=token, connect_timeout=5.0)
        assert isinstance(caught.value, PermissionError)
    async with await connect_policy(server.target, token=TOKEN) as policy:
        assert await policy.echo("ok") == "ok"


def test_no_server_means_unavailable_after_the_connect_timeout():
    async def attempt():
        await connect_policy(f"127.0.0.1:{free_port()}", connect_timeout=0.5)

    start = time.monotonic()
    with pytest.raises(RemotePolicyUnavailable):
        asyncio.run(attempt())
    assert time.monotonic() - start < 3.0


def test_a_non_loopback_host_is_refused_without_tls_and_token():
    with pytest.raises(ValueError, match=r"missing: tls_cert, tls_key, token.*insecure=True"):
        serve_policy(dict, host="0.0.0.0")
    with pytest.raises(ValueError, match=r"missing: token"):
        serve_policy(dict, host="0.0.0.0", tls_cert=__file__, tls_key=__file__)
    with pytest.raises(ValueError, match="tls_cert and tls_key go together"):
        serve_policy(dict, tls_cert=__file__)
    server = serve_policy(dict, host="0.0.0.0", port=0, insecure=True)  # said explicitly
    server.stop()
    out = subprocess.run([sys.executable, "-m", "aiofranka.cli", "serve", "builtins:dict", "--host", "192.0.2.1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--insecure" in out.stderr
    with pytest.raises(ValueError, match="needs TLS"):
        asyncio.run(connect_policy("192.0.2.1:50051"))


def make_certificate(directory) -> tuple[str, str]:
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", key, "-out", cert],
                   check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
async def test_tls_with_a_token(tmp_path):
    cert, key = make_certificate(tmp_path)
    server = serve_policy(dict, port=0, token=TOKEN, tls_cert=cert, tls_key=key, a=1)
    try:
        async with await connect_policy(server.address, token=TOKEN, tls_ca=cert) as policy:
            assert await policy.call("get", "a") == 1  # dict.get, over TLS
        with pytest.raises(RemotePolicyUnavailable):  # plaintext against TLS: no connection
            await connect_policy(server.address, token=TOKEN, connect_timeout=1.0)
    finally:
        server.stop()


async def test_the_runtime_counts_missed_replies_and_carries_on():
    """A policy whose server goes away for three calls: the runtime holds, counts, and resumes."""
    clock = FakeClock()
    state = {"calls": 0, "away": range(3, 6)}

    async def policy(frame, request):
        index = state["calls"]
        state["calls"] += 1
        if index in state["away"]:
            raise RemotePolicyUnavailable("the server is away")
        return [Action({"arm": Command("joint_position", np.full(7, request.request_step + i))}) for i in range(2)]

    executed = []
    runtime = InferenceRuntime(mode=InferenceMode.ASYNC, control_hz=10.0, warmup_requests=0,
                               profile_delay_requests=1, clock=clock)
    for _ in range(12):
        result = await run_step(frame={"state": {"q": np.zeros(7)}}, act_fn=executed.append, act_src_fn=policy,
                                runtime=runtime, pace_control=False)
        await asyncio.sleep(0)  # the request launched this step completes before the next
        clock.advance(0.1)
    stats = runtime.stats
    assert stats.missed_replies == 3 and stats.starved_ticks >= 1
    assert stats.integrated >= 6 and not result.starved
    # Any other error still ends the step.
    runtime = InferenceRuntime(mode=InferenceMode.SYNC, control_hz=10.0, clock=clock)

    async def broken(frame, request):
        raise RuntimeError("a bug")

    with pytest.raises(PolicyCallbackError):
        await run_step(frame={"state": {"q": np.zeros(7)}}, act_fn=executed.append, act_src_fn=broken,
                       runtime=runtime, pace_control=False)


async def test_the_sync_runtime_holds_through_a_missed_reply():
    clock = FakeClock()
    calls = []

    async def policy(frame, request):
        calls.append(request)
        if len(calls) == 2:
            raise RemoteDeadlineExceeded("late")
        return [Action({"arm": Command("joint_position", np.full(7, float(len(calls))))})]

    executed = []
    runtime = InferenceRuntime(mode=InferenceMode.SYNC, control_hz=10.0, clock=clock)
    starved = []
    for _ in range(4):
        result = await run_step(frame={"state": {"q": np.zeros(7)}}, act_fn=executed.append, act_src_fn=policy,
                                runtime=runtime, pace_control=False)
        starved.append(result.starved)
    assert starved == [False, True, False, False] and runtime.stats.missed_replies == 1


def test_the_serve_command_reads_its_factory_and_arguments(tmp_path):
    from aiofranka._factory import factory_arguments as _factory_arguments
    from aiofranka.remote.server import load_factory

    assert _factory_arguments(["1", "gain=2.5", "pick", "[0.1, 0.2]", "a=b=c"]) == \
        ([1, "pick", [0.1, 0.2]], {"gain": 2.5, "a": "b=c"})
    script = tmp_path / "my_policy.py"
    script.write_text("def make_policy(gain=1.0):\n    return {'gain': gain}\n")
    assert load_factory(f"{script}:make_policy")(gain=3.0) == {"gain": 3.0}
    assert load_factory("_remote_policies:Echo")().tag == "echo"
    for spec, message in (("no_colon", "module:name"), (f"{script}:missing", "has no"),
                          (str(tmp_path / "absent.py") + ":f", "no such file")):
        with pytest.raises(ValueError, match=message):
            load_factory(spec)
