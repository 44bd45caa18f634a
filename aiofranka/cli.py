"""The ``aiofranka`` command: ``sim``, ``demo``, ``check``, ``report``, ``profile`` and ``serve``."""

from __future__ import annotations

import argparse
import asyncio
import sys

__all__ = ["main"]


def _sim(args: argparse.Namespace) -> int:
    from .sim import _server

    argv = ["--host", args.host]
    if args.enforce_motion_limits:
        argv.append("--enforce-motion-limits")
    if args.no_enforce_comm_constraints:
        argv.append("--no-enforce-comm-constraints")
    if args.vis:
        argv.append("--vis")
    if args.gripper or args.gripper_object_width is not None:
        argv.append("--gripper")
    if args.gripper_object_width is not None:
        argv += ["--gripper-object-width", repr(args.gripper_object_width)]
    return _server.main(argv)


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    try:
        asyncio.run(run_demo(ip=args.ip, duration=args.duration))
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0


def _check(args: argparse.Namespace) -> int:
    import os

    from .probe import probe_wakeups

    priority = None if args.priority == 0 else args.priority
    if priority is not None and hasattr(os, "geteuid") and os.geteuid() != 0:
        print(f"note: not root; SCHED_FIFO {priority} may be refused (use --priority 0 for normal scheduling)",
              file=sys.stderr)

    def progress(elapsed: float, late: int) -> None:
        print(f"\r{elapsed:5.0f} / {args.duration:g} s, {late} wake-ups more than a period late",
              end="", file=sys.stderr, flush=True)

    print(f"sleeping to {1e3 * args.period:g} ms deadlines for {args.duration:g} s "
          f"({'normal scheduling' if priority is None else f'SCHED_FIFO {priority}'})...", file=sys.stderr)
    try:
        report = probe_wakeups(args.duration, period=args.period, priority=priority, progress=progress)
    except (PermissionError, ValueError) as exc:
        print(f"\n{exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    print(file=sys.stderr)
    print(report)
    print(report.verdict)
    return 1 if args.strict and report.late_period else 0


def _profile(args: argparse.Namespace) -> int:
    from ._factory import factory_arguments, load_factory
    from .policy.profiling import HELPERS, profile

    helpers = tuple(h.strip() for h in args.helpers.split(",") if h.strip())
    if not helpers or any(h not in HELPERS for h in helpers):
        print(f"--helpers must be a comma-separated selection of {','.join(HELPERS)}, got {args.helpers!r}",
              file=sys.stderr)
        return 2
    try:
        factory = load_factory(args.factory)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    positional, keywords = factory_arguments(args.args)
    policy = factory(*positional, **keywords)
    sample = getattr(policy, "sample_frame", None)
    try:
        result = asyncio.run(profile(policy, sample() if callable(sample) else None, helpers=helpers,
                                     iterations=args.iterations, warmup=args.warmup,
                                     rate_hz=None if args.rate == 0 else args.rate, trace_path=args.trace,
                                     decimals=args.decimals, progress=not args.no_progress))
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    print(result.table())
    return 0 if result.recommended is not None else 1


def _serve(args: argparse.Namespace) -> int:
    import os
    import signal
    import threading

    from .remote._protocol import check_listen_security
    from ._factory import factory_arguments, load_factory
    from .remote.server import serve_policy

    token = args.token
    if args.token_file is not None:
        with open(args.token_file, encoding="utf-8") as handle:
            token = handle.read().strip()
    if token is None:
        token = os.environ.get("AIOFRANKA_TOKEN") or None
    try:
        check_listen_security(args.host, token=token, tls_cert=args.tls_cert, tls_key=args.tls_key,
                              insecure=args.insecure)  # before the (maybe slow) model loads
        factory = load_factory(args.factory)
        positional, keywords = factory_arguments(args.args)
        server = serve_policy(factory, *positional, host=args.host, port=args.port, token=token,
                              tls_cert=args.tls_cert, tls_key=args.tls_key, insecure=args.insecure,
                              max_workers=args.workers, **keywords)
    except (ValueError, ImportError) as exc:
        print(f"aiofranka serve: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: stop.set())
    print(f"aiofranka serve: {args.factory} on {server.address} "
          f"({'TLS' if server.secure else 'plaintext'}, {'token' if token else 'no token'})", flush=True)
    stop.wait()
    server.stop(grace=1.0)
    return 0


def _report(args: argparse.Namespace) -> int:
    from .exceptions import MissingDependencyError
    from .report import report

    try:
        png, table = report(args.recording, args.output, title=args.title)
    except (OSError, ValueError, MissingDependencyError) as exc:
        print(f"aiofranka report: {exc}", file=sys.stderr)
        return 2
    print(table)
    print(f"wrote {png}")
    return 0


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite positive number, got {text!r}")
    return value


def _priority(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value <= 99:
        raise argparse.ArgumentTypeError(f"must be from 0 to 99, got {value}")
    return value


def _loopback(text: str) -> str:
    from .sim._server import host_argument

    return host_argument(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aiofranka", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("sim", help="run the FR3 simulator in the foreground (FCI on HOST:1337)")
    sim.add_argument("--host", default="127.0.0.1", type=_loopback,
                     help="loopback address to bind (127.x.x.x; default 127.0.0.1)")
    sim.add_argument("--enforce-motion-limits", action="store_true",
                     help="abort motions that break the FR3 motion limits, like the robot")
    sim.add_argument("--no-enforce-comm-constraints", action="store_true",
                     help="do not abort after 20 consecutive lost commands (the robot does)")
    sim.add_argument("--vis", action="store_true", help="open the MuJoCo viewer")
    sim.add_argument("--gripper", action="store_true", help="also serve a Franka Hand on HOST:1338")
    sim.add_argument("--gripper-object-width", type=float, default=None, metavar="M",
                     help="width (m) of a virtual object between the fingers (implies --gripper)")
    sim.set_defaults(func=_sim)

    demo = sub.add_parser("demo", help="hold, move through joint and Cartesian targets, print the loop figures")
    demo.add_argument("--ip", default=None, help="robot address (default: start the embedded simulator)")
    demo.add_argument("--duration", type=float, default=10.0, help="approximate length in seconds")
    demo.set_defaults(func=_demo)

    check = sub.add_parser("check", help="measure how late this machine wakes a 1 kHz sleeper (before blaming the loop)")
    check.add_argument("--duration", type=_positive_float, default=10.0, help="seconds to measure (default 10)")
    check.add_argument("--period", type=_positive_float, default=1e-3, help="period in seconds (default 0.001)")
    check.add_argument("--priority", type=_priority, default=80, metavar="0-99",
                       help="SCHED_FIFO priority of the probe thread, as the control loop gets (default 80; "
                            "0: normal scheduling)")
    check.add_argument("--strict", action="store_true",
                       help="exit 1 if any wake-up was more than a period late")
    check.set_defaults(func=_check)

    prof = sub.add_parser("profile", help="time a policy's stages through each offload helper beside the loop "
                                          "(embedded simulator), fingerprint it and recommend a helper")
    prof.add_argument("factory", help="module:factory or path/to/file.py:factory returning the policy")
    prof.add_argument("args", nargs="*", help="arguments for the factory (Python literals, else strings)")
    prof.add_argument("--iterations", type=int, default=30, help="timed calls per helper (default 30)")
    prof.add_argument("--warmup", type=int, default=3, help="untimed calls per helper first (default 3)")
    prof.add_argument("--rate", type=float, default=30.0, help="calls per second, 0: back to back (default 30)")
    prof.add_argument("--helpers", default="inline,asyncify,cuda_thread,mpify",
                      help="comma-separated helpers (default: inline,asyncify,cuda_thread,mpify)")
    prof.add_argument("--trace", default=None, metavar="PATH", help="also write a torch profiler chrome trace")
    prof.add_argument("--decimals", type=int, default=6, help="rounding of the outputs in the fingerprint")
    prof.add_argument("--no-progress", action="store_true", help="no progress bar")
    prof.set_defaults(func=_profile)


    serve = sub.add_parser("serve", help="host a policy for connect_policy() over gRPC (docs/remote.md)")
    serve.add_argument("factory", help="module:name or file.py:name of a callable that builds the policy")
    serve.add_argument("args", nargs="*", metavar="ARG",
                       help="arguments for the factory: VALUE or NAME=VALUE (Python literals, else strings)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1; beyond loopback TLS and a token are required)")
    serve.add_argument("--port", type=int, default=50051, help="port to listen on (default 50051; 0: a free one)")
    serve.add_argument("--token-file", default=None, metavar="FILE",
                       help="file holding the shared token (else $AIOFRANKA_TOKEN)")
    serve.add_argument("--token", default=None, help="the shared token (visible to other users in ps: prefer a file)")
    serve.add_argument("--tls-cert", default=None, metavar="PEM", help="server certificate (chain) for TLS")
    serve.add_argument("--tls-key", default=None, metavar="PEM", help="private key of --tls-cert")
    serve.add_argument("--insecure", action="store_true",
                       help="allow a non-loopback host without TLS and token (a network you trust)")
    serve.add_argument("--workers", type=int, default=8, help="threads receiving calls (default 8)")
    serve.set_defaults(func=_serve)
    report = sub.add_parser("report", help="plot a recording saved by Recorder.save (tracking error, torque, timing)")
    report.add_argument("recording", help="the .npz file")
    report.add_argument("-o", "--output", default=None, metavar="PNG",
                        help="where to write the plot (default: beside the recording, .png)")
    report.add_argument("--title", default=None, help="the plot's title (default: the file's name)")
    report.set_defaults(func=_report)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
