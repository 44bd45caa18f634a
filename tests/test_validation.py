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
