"""The aiofranka exception tree.

Every error aiofranka raises on purpose derives from :class:`AiofrankaError`::

    AiofrankaError
    ├── RobotError                 the robot (or libfranka) refused or failed
    │   ├── ReflexError            the robot stopped with a reflex; ``.errors`` names it
    │   ├── CommandError           a non-realtime command was rejected
    │   ├── RealtimeError          the real-time setup is not possible here
    │   ├── InvalidOperationError  the call is not allowed in the robot's current state
    │   └── GripperError           the Franka Hand failed a command, or its process died
    │       └── GripperStoppedError  ``stop()``, ``close()`` or a cancellation ended the call
    ├── RobotConnectionError       the connection is gone (also a builtin ``ConnectionError``)
    ├── ControlLawError            a control law raised inside the 1 kHz loop
    ├── ControllerStateError       the call does not fit the controller's lifecycle
    │   └── ControllerStoppedError the controller stopped while the call waited
    ├── MotionTimeoutError         ``move()`` did not arrive in time (also ``TimeoutError``)
    ├── EventLoopStallError        the event loop stalled past the limit (``on_stall="stop"``)
    ├── SimulatorError             the embedded simulator could not start or died
    ├── OffloadError               an offload helper (thread or child process) failed
    │   ├── WorkerStoppedError     the helper was stopped (pending or later calls)
    │   ├── WorkerCrashedError     the helper's thread or child process died
    │   ├── CallTimeoutError       a child process gave no reply in time (also ``TimeoutError``)
    │   ├── RemoteError            a child (or a policy server) raised an exception that could not be sent back as itself
    │   └── RemotePolicyError      a policy server (``aiofranka serve``) failed or refused a call
    │       ├── RemotePolicyUnavailable  the server cannot be reached or went away mid-call (also ``ConnectionError``)
    │       ├── RemoteDeadlineExceeded   no reply within the call's deadline (also ``CallTimeoutError``)
    │       └── RemotePolicyAuthError    the server refused the token (also ``PermissionError``)
    ├── SessionError               a thread-based ``Session`` failed or was misused (also ``RuntimeError``)
    │   ├── SessionStateError      the call does not fit the Session's lifecycle or thread
    │   └── SessionLoopError       ``observe``, the policy or ``act`` raised; the original is ``__cause__``
    ├── PolicyError                a policy runtime failed or was misused
    │   └── PolicyCallbackError    ``observe_fn``, ``act_fn`` or ``act_src_fn`` raised; ``.callback`` names it
    └── MissingDependencyError     a dependency is not installed; says how to install it (also ``ImportError``)

An exception raised by the function a helper runs is re-raised at the ``await``
as itself; for a child process its ``__cause__`` is a :class:`RemoteTraceback`
holding the child's formatted traceback.

Bad values handed in by the user raise the builtin ``ValueError`` (or
``TypeError``) with the parameter's name in the message.

pylibfranka's exceptions share no common base;
:func:`aiofranka.robot.errors.translate_libfranka` maps each of them onto this
tree in one place, keeping the original as ``__cause__``.
"""

from __future__ import annotations

__all__ = [
    "AiofrankaError",
    "CallTimeoutError",
    "CommandError",
    "ControlLawError",
    "ControllerStateError",
    "ControllerStoppedError",
    "EventLoopStallError",
    "GripperError",
    "GripperStoppedError",
    "InvalidOperationError",
    "MissingDependencyError",
    "MotionTimeoutError",
    "OffloadError",
    "PolicyCallbackError",
    "PolicyError",
    "RealtimeError",
    "ReflexError",
    "RemoteDeadlineExceeded",
    "RemoteError",
    "RemotePolicyAuthError",
    "RemotePolicyError",
    "RemotePolicyUnavailable",
    "RemoteTraceback",
    "RobotConnectionError",
    "RobotError",
    "SessionError",
    "SessionLoopError",
    "SessionStateError",
    "SimulatorError",
    "WorkerCrashedError",
    "WorkerStoppedError",
]


class AiofrankaError(Exception):
    """Base class of every error aiofranka raises on purpose."""


class RobotError(AiofrankaError):
    """The robot or libfranka reported a failure."""


class ReflexError(RobotError):
    """The robot aborted the motion with a reflex.

    ``errors`` lists the libfranka error names, e.g.
    ``["communication_constraints_violation"]``.
    """

    def __init__(self, message: str, errors: list[str] | tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.errors: tuple[str, ...] = tuple(errors)

    def __reduce__(self):  # keep ``errors`` across processes (server mode)
        return type(self), (str(self), self.errors)


class CommandError(RobotError):
    """A non-realtime command (connect, recovery, settings) was rejected."""


class RealtimeError(RobotError):
    """Real-time scheduling was required but is not available."""


class InvalidOperationError(RobotError):
    """The operation is not allowed in the robot's current state."""


class GripperError(RobotError):
    """The Franka Hand failed a command (libfranka's ``CommandException``), or the process
    that drives it died. A grasp that closes on nothing is not an error: it returns ``False``."""


class GripperStoppedError(GripperError):
    """The gripper call was ended by ``gripper.stop()``, ``gripper.close()`` or the
    cancellation of another call, or the gripper is closed."""


class RobotConnectionError(AiofrankaError, ConnectionError):
    """The connection to the robot (or simulator) failed or was lost."""


class ControlLawError(AiofrankaError):
    """A control law raised inside the loop; the original is ``__cause__``."""


class ControllerStateError(AiofrankaError):
    """The call does not fit the controller's lifecycle (e.g. not running, closed)."""


class ControllerStoppedError(ControllerStateError):
    """The controller stopped while this call was waiting on it."""


class MotionTimeoutError(AiofrankaError, TimeoutError):
    """A motion did not reach its goal within the allowed time."""


class EventLoopStallError(AiofrankaError):
    """The event loop was blocked longer than the controller's ``stall_limit``.

    Raised with ``on_stall="stop"``: the guardian kept the arm fed, then ramped
    it down. ``culprit`` names what was blocking the loop.
    """

    def __init__(self, message: str, culprit: str = "", duration_ms: float = 0.0) -> None:
        super().__init__(message)
        self.culprit = culprit
        self.duration_ms = duration_ms

    def __reduce__(self):
        return type(self), (str(self), self.culprit, self.duration_ms)


class SimulatorError(AiofrankaError):
    """The embedded simulator could not be started or stopped working."""


class OffloadError(AiofrankaError):
    """An offload helper (``asyncify``, ``CudaInferenceThread``, ``mpify``) failed."""


class WorkerStoppedError(OffloadError):
    """The helper was stopped: raised for calls pending at ``stop()`` and calls after it."""


class WorkerCrashedError(OffloadError):
    """The helper's worker thread or child process died; pending and later calls fail with this."""


class CallTimeoutError(OffloadError, TimeoutError):
    """A call into a child process got no reply within its timeout (the child may still run it)."""


class RemoteError(OffloadError):
    """A child process raised an exception that could not be sent back as itself.

    ``remote_type`` is the exception's qualified type name and
    ``remote_traceback`` the child's formatted traceback.
    """

    def __init__(self, message: str, remote_type: str = "", remote_traceback: str = "") -> None:
        super().__init__(message)
        self.remote_type = remote_type
        self.remote_traceback = remote_traceback

    def __reduce__(self):
        return type(self), (str(self), self.remote_type, self.remote_traceback)


class RemotePolicyError(OffloadError):
    """A policy server (``aiofranka serve``, :func:`~aiofranka.remote.serve_policy`) failed or
    refused a call made through :func:`~aiofranka.remote.connect_policy`'s proxy."""


class RemotePolicyUnavailable(RemotePolicyError, ConnectionError):
    """The policy server cannot be reached, or it went away while the call was in flight.

    The policy runtime treats it as a missed reply: it counts it and holds the arm
    (docs/remote.md#faults).
    """


class RemoteDeadlineExceeded(RemotePolicyError, CallTimeoutError):
    """The policy server gave no reply within the call's deadline (the call was cancelled)."""


class RemotePolicyAuthError(RemotePolicyError, PermissionError):
    """The policy server refused the call's token."""


class RemoteTraceback(Exception):
    """Carries a child process's formatted traceback as the ``__cause__`` of a re-raised error."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return "\n\nTraceback in the child process:\n" + self.text


class SessionError(AiofrankaError, RuntimeError):
    """A thread-based :class:`~aiofranka.Session` failed or was misused.

    Also a builtin ``RuntimeError``, as the stdlib raises for the same misuse
    (a thread started twice), so ``except RuntimeError`` keeps working.
    """


class SessionStateError(SessionError):
    """The call does not fit the Session's lifecycle (started twice, started after
    ``stop()``) or its thread (a blocking call on a running event loop's thread)."""


class SessionLoopError(SessionError):
    """``observe()``, the policy or ``act()`` raised in the Session's thread; the original is ``__cause__``."""


class PolicyError(AiofrankaError):
    """A policy runtime (:class:`~aiofranka.policy.InferenceRuntime`) failed or was misused."""


class PolicyCallbackError(PolicyError):
    """A callback of ``run_step`` raised; ``callback`` names it (``"observe_fn"``, ``"act_fn"``
    or ``"act_src_fn"``), and the original exception is ``__cause__``."""

    def __init__(self, message: str, callback: str = "") -> None:
        super().__init__(message)
        self.callback = callback

    def __reduce__(self):
        return type(self), (str(self), self.callback)


class MissingDependencyError(AiofrankaError, ImportError):
    """A dependency is missing; the message gives the command that installs it."""
