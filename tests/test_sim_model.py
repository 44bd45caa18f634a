"""The FR3 model aiofranka ships for offline simulation."""

import mujoco
import numpy as np

from aiofranka.sim import MODEL_PATH
from aiofranka.sim.build_model import build_xml
from aiofranka import limits


def test_committed_model_matches_the_generator():
    assert MODEL_PATH.read_text() == build_xml()


def test_model_loads_with_the_names_franka_sim_expects():
    model = mujoco.MjModel.from_xml_path(str(MODEL_PATH))
    assert model.nq == 7
    for i in range(1, 8):
        joint = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, f"fr3_joint{i}")
        assert joint >= 0
        assert np.allclose(model.jnt_range[joint], [limits.Q_MIN[i - 1], limits.Q_MAX[i - 1]])
    for i in range(8):
        assert mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, f"fr3_link{i}") >= 0
    # 17.8 kg of arm links in franka-sim's URDF (link1..7).
    assert 15.0 < model.body_mass[2:9].sum() < 20.0
