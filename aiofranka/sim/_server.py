"""Child-process entry point of the embedded simulator.

Run as ``python -m aiofranka.sim._server --host 127.0.0.N [...]`` by
:class:`aiofranka.sim.Simulator`. It differs from franka-sim's own CLI in four
ways: it binds one loopback address (so several simulators can run side by
side, each on port 1337 of its own address), and binds its UDP socket there
too (franka-sim leaves it to the kernel, which binds every interface); it
points franka-sim at the FR3 model aiofranka ships; and it exits when its
parent goes away (standard input closes) so no simulator outlives the process
that started it.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

MODEL = Path(__file__).with_name("fr3.xml")


def _exit_when_parent_dies(stop) -> None:
    def watch() -> None:
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except OSError:
            pass
        stop()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def host_argument(text: str) -> str:
    """``--host``: a loopback address (``aiofranka sim`` uses it too)."""
    from . import check_host

    try:
        return check_host(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _loopback_server_class():
    from franka_sim import FrankaSimServer

    class LoopbackServer(FrankaSimServer):
        """franka-sim whose UDP socket (states out, commands in) is bound to ``host``.

        franka-sim 1.1.7 creates that socket per session without binding it, so
        the kernel binds it to 0.0.0.0 at the first ``sendto``: anyone on the
        network who guesses the port could send commands. The socket is bound
        here, just before the command receiver starts on it and before any
        state goes out (``start_robot_state_transmission``).
        """

        def start_command_receiver(self):
            sock = self.udp_socket
            if sock is not None and sock.getsockname() == ("0.0.0.0", 0):
                sock.bind((self.host, 0))
            super().start_command_receiver()

    return LoopbackServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aiofranka-sim-server")
    parser.add_argument("--host", default="127.0.0.1", type=host_argument)
    parser.add_argument("--enforce-motion-limits", action="store_true")
    parser.add_argument("--no-enforce-comm-constraints", action="store_true")
    parser.add_argument("--vis", action="store_true")
    parser.add_argument("--gripper", action="store_true", help="serve a Franka Hand on port 1338")
    parser.add_argument("--gripper-object-width", type=float, default=None,
                        help="width (m) of a virtual object between the fingers (default: none)")
    parser.add_argument("--watch-stdin", action="store_true",
                        help="exit when standard input closes (the parent died)")
    args = parser.parse_args(argv)
    width = args.gripper_object_width
    if width is not None and not 0.0 <= width <= 0.08:
        parser.error(f"--gripper-object-width must be within the hand's 0..0.08 m stroke, got {width}")

    os.environ.setdefault("FR3_MJCF", str(MODEL))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("numba").setLevel(logging.WARNING)

    hand = None
    if args.gripper:
        from ._hand import TimedHand

        hand = TimedHand(object_width=args.gripper_object_width)
    server = _loopback_server_class()(
        host=args.host,
        enable_vis=args.vis,
        enable_gripper=hand is not None,
        gripper_backend=hand,
        enforce_comm_constraints=not args.no_enforce_comm_constraints,
        enforce_motion_limits=args.enforce_motion_limits,
    )
    done = threading.Event()

    def stop(*_args) -> None:
        if done.is_set():
            return
        done.set()
        # Stopping can take a second; a watchdog makes sure we leave regardless.
        threading.Timer(10.0, lambda: os._exit(1)).start()
        try:
            server.stop()
        finally:
            os._exit(0)

    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=stop, daemon=True).start())
    signal.signal(signal.SIGINT, lambda *_: threading.Thread(target=stop, daemon=True).start())
    if args.watch_stdin:
        _exit_when_parent_dies(stop)
    print(f"aiofranka simulator serving FCI on {args.host}:1337 (model {os.environ['FR3_MJCF']})", flush=True)
    server.start()
    stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
