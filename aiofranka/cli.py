"""The ``aiofranka`` command: ``aiofranka sim``, ``aiofranka demo``, ``aiofranka check`` and ``aiofranka report``."""

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
