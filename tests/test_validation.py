import numpy as np
import pytest

from aiofranka import limits, validation


def test_vector_names_the_parameter_and_shape():
    with pytest.raises(ValueError, match=r"kp must have shape \(7,\), got \(6,\)"):
        validation.gains("kp", np.ones(6), 7)


def test_gains_broadcast_scalars_and_reject_negative_and_nan():
    assert validation.gains("kd", 3.0, 7).tolist() == [3.0] * 7
    with pytest.raises(ValueError, match="kd must be non-negative"):
        validation.gains("kd", [-1.0] + [1.0] * 6, 7)
    with pytest.raises(ValueError, match="kd must be finite"):
        validation.gains("kd", [np.nan] * 7, 7)


def test_results_are_private_read_only_copies():
    source = np.ones(7)
    result = validation.gains("kp", source, 7)
    source[0] = 5.0
    assert result[0] == 1.0
    with pytest.raises(ValueError):
        result[0] = 2.0


def test_joint_positions_checks_the_fr3_limits():
    validation.joint_positions("q", limits.Q_HOME)
    bad = limits.Q_HOME.copy()
    bad[3] = 0.0  # joint 4 must stay below -0.1169
    with pytest.raises(ValueError, match=r"q is outside the FR3 joint limits at joint\(s\) \[4\]"):
        validation.joint_positions("q", bad)


def test_pose_requires_a_proper_rotation():
    validation.pose("ee_desired", np.eye(4))
    scaled = np.eye(4)
    scaled[0, 0] = 2.0
    with pytest.raises(ValueError, match="ee_desired must hold a proper rotation"):
        validation.pose("ee_desired", scaled)
    mirrored = np.diag([1.0, 1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="ee_desired must hold a proper rotation"):
        validation.pose("ee_desired", mirrored)
    with pytest.raises(ValueError, match=r"ee_desired must have shape \(4, 4\)"):
        validation.pose("ee_desired", np.eye(3))
    bottom = np.eye(4)
    bottom[3, 0] = 1.0
    with pytest.raises(ValueError, match="last row"):
        validation.pose("ee_desired", bottom)


def test_pose_reorthonormalises_small_errors():
    pose = np.eye(4)
    pose[:3, :3] += 1e-5
    result = validation.pose("ee_desired", pose)
    assert np.allclose(result[:3, :3] @ result[:3, :3].T, np.eye(3), atol=1e-12)


def test_non_numeric_is_a_type_error():
    with pytest.raises(TypeError, match="torque must be numeric"):
        validation.torques("torque", "abc")


def test_positive():
    assert validation.positive("hz", 30) == 30.0
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="hz must be a finite positive number"):
            validation.positive("hz", bad)
    with pytest.raises(ValueError, match="at most"):
        validation.positive("speed", 2.0, upper=1.0)


# -- gain bounds (docs/controller.md#gain-bounds) ------------------------------

def test_a_typo_gain_is_refused_naming_the_parameter_index_bound_and_reason():
    from aiofranka.loop import command

    with pytest.raises(ValueError, match=r"kp\[4\] = 60000 is above its bound 12000 N m/rad: at that stiffness "
                                         r"a 1 mrad error would command joint 5's whole torque limit \(12 N m\)"):
        command.validate("kp", 60000.0)
    with pytest.raises(ValueError, match=r"ee_kp\[1\] = 1e\+06 is above its bound 101754 N/m: .* 1 mm error "
                                         r"along y"):
        command.validate("ee_kp", [1000.0, 1e6, 1000.0, 60.0, 60.0, 60.0])


@pytest.mark.parametrize("name, n", [("kp", 7), ("kd", 7), ("ee_kp", 6), ("ee_kd", 6), ("null_kp", 7),
                                     ("null_kd", 7), ("joint_limit_stiffness", 1), ("joint_limit_damping", 1)])
def test_every_gain_is_bounded_per_index_and_the_bound_itself_passes(name, n):
    from aiofranka.loop import command

    upper, _unit, _why = command.GAIN_BOUNDS[name]
    assert upper.shape == (n,)
    command.gains(name, upper, n)  # at the bound: accepted
    for i in range(n):
        value = upper.copy()
        value[i] *= 1.001
        where = f"{name}\\[{i}\\]" if n > 1 else name
        with pytest.raises(ValueError, match=rf"^{where} = .* is above its bound {upper[i]:.6g} .*: .*would"):
            command.gains(name, value, n)


def test_the_bounds_follow_from_the_torque_limits():
    # A stiffness at its bound spends the whole torque limit on a 1 mrad error;
    # a damping at its bound, on 10 mrad/s.
    assert np.allclose(limits.KP_MAX * 1e-3, limits.TAU_MAX)
    assert np.allclose(limits.KD_MAX * 1e-2, limits.TAU_MAX)
    assert np.allclose(limits.EE_KP_MAX[:3] * 1e-3 * limits.REACH, limits.TAU_MAX[0])
    assert np.allclose(limits.EE_KP_MAX[3:] * 1e-3, limits.TAU_MAX[6])


def test_defaults_and_the_values_the_docs_and_examples_use_pass():
    import inspect

    from aiofranka import Controller
    from aiofranka.loop import command

    for setting in command.TABLE:
        command.validate(setting.name, setting.default)
    options = inspect.signature(Controller.__init__).parameters
    for name in ("joint_limit_stiffness", "joint_limit_damping"):
        command.gains(name, options[name].default, 1)
    command.validate("kp", 300.0)  # docs/controller.md
    command.validate("kd", [40, 40, 40, 40, 20, 15, 10])
    command.validate("kp", [600.0, 600.0, 600.0, 600.0, 250.0, 150.0, 50.0])  # benchmarks/loop.py
    command.validate("kd", [50.0, 50.0, 50.0, 50.0, 30.0, 25.0, 15.0])
