"""The ``aiofranka`` command: ``aiofranka sim`` and ``aiofranka demo``."""

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
    return _server.main(argv)


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    try:
        asyncio.run(run_demo(ip=args.ip, duration=args.duration))
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aiofranka", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("sim", help="run the FR3 simulator in the foreground (FCI on HOST:1337)")
    sim.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    sim.add_argument("--enforce-motion-limits", action="store_true",
                     help="abort motions that break the FR3 motion limits, like the robot")
    sim.add_argument("--no-enforce-comm-constraints", action="store_true",
                     help="do not abort after 20 consecutive lost commands (the robot does)")
    sim.add_argument("--vis", action="store_true", help="open the MuJoCo viewer")
    sim.set_defaults(func=_sim)

    demo = sub.add_parser("demo", help="hold, move through joint and Cartesian targets, print the loop figures")
    demo.add_argument("--ip", default=None, help="robot address (default: start the embedded simulator)")
    demo.add_argument("--duration", type=float, default=10.0, help="approximate length in seconds")
    demo.set_defaults(func=_demo)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
