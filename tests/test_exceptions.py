import pylibfranka
import pytest

import aiofranka
from aiofranka.robot.errors import reflex_names, translate, translate_libfranka


def test_every_error_derives_from_the_base():
    for name in ("ReflexError", "RobotConnectionError", "ControlLawError", "ControllerStateError",
                 "ControllerStoppedError", "MotionTimeoutError", "SimulatorError", "CommandError",
                 "RealtimeError", "InvalidOperationError", "MissingDependencyError"):
        assert issubclass(getattr(aiofranka, name), aiofranka.AiofrankaError)
    assert issubclass(aiofranka.RobotConnectionError, ConnectionError)
    assert issubclass(aiofranka.MotionTimeoutError, TimeoutError)


def test_reflex_is_translated_with_its_error_names_and_cause():
    original = pylibfranka.ControlException(
        'libfranka: Move command aborted: motion aborted by reflex! ["communication_constraints_violation"]')
    with pytest.raises(aiofranka.ReflexError) as info:
        with translate_libfranka():
            raise original
    assert info.value.errors == ("communication_constraints_violation",)
    assert info.value.__cause__ is original


@pytest.mark.parametrize("source, target", [
    (pylibfranka.NetworkException, aiofranka.RobotConnectionError),
    (pylibfranka.CommandException, aiofranka.CommandError),
    (pylibfranka.RealtimeException, aiofranka.RealtimeError),
    (pylibfranka.InvalidOperationException, aiofranka.InvalidOperationError),
    (pylibfranka.FrankaException, aiofranka.RobotError),
])
def test_other_libfranka_errors_map_onto_the_tree(source, target):
    mapped = translate(source("boom"))
    assert type(mapped) is target
    assert str(mapped) == "boom"


def test_unrelated_errors_pass_through():
    error = KeyError("x")
    assert translate(error) is error
    with pytest.raises(ValueError, match="plain"):
        with translate_libfranka():
            raise ValueError("plain")


def test_bare_runtime_errors_from_pylibfranka_are_translated():
    with pytest.raises(aiofranka.RobotConnectionError, match="Net Exception"):
        with translate_libfranka():
            raise RuntimeError("Net Exception")
    with pytest.raises(aiofranka.RobotError, match="odd"):
        with translate_libfranka():
            raise RuntimeError("odd")


def test_reflex_names_parses_several():
    assert reflex_names('aborted ["a", "b_c"]') == ["a", "b_c"]
    assert reflex_names("no list") == []


@pytest.mark.parametrize("error", [
    aiofranka.ReflexError("reflex", ["communication_constraints_violation"]),
    aiofranka.EventLoopStallError("stalled", "task 'x'", 12.5),
    aiofranka.RemoteError("boom", "pkg.Boom", "Traceback ..."),
    aiofranka.CallTimeoutError("no reply"),
], ids=lambda e: type(e).__name__)
def test_errors_keep_their_fields_across_processes(error):
    import pickle

    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error) and str(copy) == str(error)
    assert {k: v for k, v in vars(copy).items()} == {k: v for k, v in vars(error).items()}


def test_every_exported_error_is_drawn_in_the_tree_and_listed():
    from aiofranka import exceptions

    drawn = exceptions.__doc__
    for name in exceptions.__all__:
        value = getattr(exceptions, name)
        if isinstance(value, type) and issubclass(value, aiofranka.AiofrankaError):
            assert f"── {name} " in drawn or f"    {name}\n" in drawn, name
            assert getattr(aiofranka, name) is value and name in aiofranka.__all__, name
    for name, value in vars(exceptions).items():
        if isinstance(value, type) and issubclass(value, aiofranka.AiofrankaError):
            assert name in exceptions.__all__, name
    assert exceptions.__all__ == sorted(exceptions.__all__)


def test_session_errors_are_runtime_errors_too():
    assert issubclass(aiofranka.CallTimeoutError, aiofranka.OffloadError)
    assert issubclass(aiofranka.CallTimeoutError, TimeoutError)
    for name in ("SessionStateError", "SessionLoopError"):
        error = getattr(aiofranka, name)
        assert issubclass(error, aiofranka.SessionError)
    assert issubclass(aiofranka.SessionError, aiofranka.AiofrankaError)
    assert issubclass(aiofranka.SessionError, RuntimeError)  # `except RuntimeError` keeps working
