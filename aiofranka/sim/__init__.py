"""The embedded simulator: franka-sim as a child process on a loopback address.

franka-sim speaks the real libfranka protocol, so the same pylibfranka code
path drives it and the real arm. :class:`Simulator` starts it with the
communication constraints enforced (20 consecutive lost commands abort the
motion, as on the robot), waits until it accepts connections, and stops it on
:meth:`Simulator.stop`, at interpreter exit, and when this process dies (the
child watches its standard input).

Example::

    from aiofranka.sim import Simulator

    with Simulator() as sim:
        print("robot address:", sim.host)
"""

from __future__ import annotations

import atexit
import collections
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path

from .. import validation
from ..exceptions import MissingDependencyError, SimulatorError

__all__ = ["MODEL_PATH", "Simulator", "check_host"]

MODEL_PATH = Path(__file__).with_name("fr3.xml")
FCI_PORT = 1337
#: What to run when franka-sim is missing ("aiofranka[sim]" from the index
#: would install another project of that name).
INSTALL_SIM = ("the embedded simulator needs franka-sim: pip install 'franka-sim>=1.1.7' "
               "(or, in aiofranka's checkout: pip install -e '.[sim]')")


def check_host(host) -> str:
    """``host`` if it is a loopback IPv4 address; ``ValueError`` naming ``host`` otherwise.

    The simulator obeys any client that reaches it, so it must not be
    reachable from another machine (docs/simulator.md#network-exposure).
    """
    try:
        if not isinstance(host, str):
            raise ValueError
        loopback = ipaddress.IPv4Address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"host must be a loopback IPv4 address (127.x.x.x), got {host!r}: the simulator "
                         "obeys any client that reaches it, so it must not listen on a network interface")
    return host
GRIPPER_PORT = 1338
#: The Franka Hand's stroke (m): the widest opening between the fingers.
GRIPPER_MAX_WIDTH = 0.08

_live: "weakref.WeakSet[Simulator]" = weakref.WeakSet()
_pick_lock = threading.Lock()


def _stop_all() -> None:
    for sim in list(_live):
        sim.stop()


atexit.register(_stop_all)


def _port_free(host: str, gripper: bool = False) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, FCI_PORT))
        except OSError:
            return False
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((host, FCI_PORT))
        except OSError:
            return False
    if gripper:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, GRIPPER_PORT))
            except OSError:
                return False
    return True


def _pick_host(gripper: bool = False) -> str:
    """A loopback address whose port 1337 (and 1338 for a gripper) is free (127.0.0.2 ... 127.0.0.254)."""
    start = 2 + (os.getpid() * 7) % 200
    for offset in range(253):
        host = f"127.0.0.{2 + (start - 2 + offset) % 253}"
        if _port_free(host, gripper):
            return host
    raise SimulatorError("no free loopback address with port 1337 for the simulator")


class Simulator:
    """franka-sim running in a child process, serving FCI on ``host``:1337.

    Keyword-only options:

    * ``host``: loopback address to bind (127.x.x.x; anything else raises
      ``ValueError``); ``None`` picks a free one in 127.0.0.2-254 so several
      simulators can coexist.
    * ``enforce_comm_constraints``: abort a motion after 20 consecutive lost
      commands, like the robot (default True).
    * ``enforce_motion_limits``: abort on position/velocity/acceleration/jerk
      or torque-rate limit violations, like the robot (default False).
    * ``startup_timeout``: seconds to wait for the server to accept a connection.
    * ``visualize``: open the MuJoCo viewer (needs a display).
    * ``gripper``: also serve a Franka Hand on ``host``:1338 (its fingers move at the
      commanded speed, so a grasp takes as long as on the real hand).
    * ``gripper_object_width``: width (m, 0..0.08) of a virtual object between the
      fingers: a grasp of that width succeeds; ``None`` (default) is an empty hand, where
      every grasp closes on nothing and returns ``False``.

    The child's output goes to ``log_path``; :meth:`log_tail` returns its end,
    and startup failures include it in the error. The log is deleted when the
    simulator stops cleanly and kept otherwise.
    """

    def __init__(self, *, host: str | None = None, enforce_comm_constraints: bool = True,
                 enforce_motion_limits: bool = False, startup_timeout: float = 60.0,
                 visualize: bool = False, gripper: bool = False,
                 gripper_object_width: float | None = None) -> None:
        if startup_timeout <= 0:
            raise ValueError(f"startup_timeout must be positive, got {startup_timeout}")
        if host is not None:
            check_host(host)
        if gripper_object_width is not None:
            if not gripper:
                raise ValueError("gripper_object_width needs gripper=True")
            validation.real("gripper_object_width", gripper_object_width, minimum=0.0)
            if gripper_object_width > GRIPPER_MAX_WIDTH:
                raise ValueError(f"gripper_object_width must be at most the hand's stroke, "
                                 f"{GRIPPER_MAX_WIDTH} m, got {gripper_object_width!r}")
        self._requested_host = host
        self.host: str | None = host
        self.enforce_comm_constraints = enforce_comm_constraints
        self.enforce_motion_limits = enforce_motion_limits
        self.startup_timeout = startup_timeout
        self.visualize = visualize
        self.gripper = bool(gripper)
        self.gripper_object_width = None if gripper_object_width is None else float(gripper_object_width)
        self._process: subprocess.Popen | None = None
        self._log = None
        self.log_path: Path | None = None

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> "Simulator":
        """Start the child and block until it accepts connections (idempotent)."""
        if self.running:
            return self
        try:
            import franka_sim  # noqa: F401
        except ImportError as exc:
            raise MissingDependencyError(INSTALL_SIM) from exc
        with _pick_lock:
            self.host = self._requested_host or _pick_host(self.gripper)
            if self._requested_host and not _port_free(self.host, self.gripper):
                ports = f"{FCI_PORT} or {GRIPPER_PORT}" if self.gripper else f"{FCI_PORT}"
                raise SimulatorError(f"port {ports} on {self.host} is already in use")
            fd, path = tempfile.mkstemp(prefix="aiofranka-sim-", suffix=".log")
            self.log_path = Path(path)
            self._log = os.fdopen(fd, "wb")
            cmd = [sys.executable, "-m", "aiofranka.sim._server", "--host", self.host, "--watch-stdin"]
            if self.enforce_motion_limits:
                cmd.append("--enforce-motion-limits")
            if not self.enforce_comm_constraints:
                cmd.append("--no-enforce-comm-constraints")
            if self.visualize:
                cmd.append("--vis")
            if self.gripper:
                cmd.append("--gripper")
                if self.gripper_object_width is not None:
                    cmd += ["--gripper-object-width", repr(self.gripper_object_width)]
            env = dict(os.environ)
            env.setdefault("FR3_MJCF", str(MODEL_PATH))
            env["PYTHONUNBUFFERED"] = "1"
            self._process = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,  # Ctrl+C reaches us; we stop the child in order
            )
            _live.add(self)
            self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        for port in (FCI_PORT, GRIPPER_PORT) if self.gripper else (FCI_PORT,):
            self._wait_port(port, deadline)

    def _wait_port(self, port: int, deadline: float) -> None:
        while True:
            if self._process.poll() is not None:
                tail = self.log_tail()
                self.stop()
                raise SimulatorError(f"the simulator exited during startup (code {self._process.returncode}):\n{tail}")
            try:
                with socket.create_connection((self.host, port), timeout=0.2):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise SimulatorError(
                    f"the simulator did not accept connections within {self.startup_timeout} s:\n{tail}")
            time.sleep(0.05)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the child: SIGTERM, wait ``timeout`` s, then SIGKILL. Idempotent."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait(5.0)
        if process.stdin:
            try:
                process.stdin.close()
            except OSError:
                pass
        if self._log is not None:
            self._log.close()
            self._log = None
        _live.discard(self)
        # Keep the log only when the simulator did not exit cleanly.
        if self.log_path is not None and process.returncode in (0, -signal.SIGTERM):
            try:
                self.log_path.unlink()
            except OSError:
                pass

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the simulator's output."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as handle:
            tail = collections.deque(handle, maxlen=lines)
        return b"".join(tail).decode(errors="replace")

    def __enter__(self) -> "Simulator":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Simulator {self.host}:{FCI_PORT} {state}>"
