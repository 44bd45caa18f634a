"""A missing dependency's error gives the command that installs it.

Not ``pip install aiofranka``: that name on the package index belongs to another
project. The import is made to fail (``sys.modules[name] = None``); the code
that raises is the real one.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from aiofranka import MissingDependencyError, limits


def test_a_missing_pylibfranka_names_the_pinned_version(monkeypatch):
    from aiofranka.robot import _robot

    monkeypatch.setitem(sys.modules, "pylibfranka", None)
    with pytest.raises(MissingDependencyError, match=r"pip install pylibfranka==0\.21\.3\b") as info:
        _robot._pylibfranka()
    assert "pip install aiofranka" not in str(info.value)


def test_the_pylibfranka_hint_matches_the_pin_in_pyproject():
    from pathlib import Path

    from aiofranka.robot._abi import VERIFIED_PYLIBFRANKA

    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert f'"pylibfranka=={VERIFIED_PYLIBFRANKA[-1]}"' in pyproject


def test_a_missing_ruckig_says_pip_install_ruckig(monkeypatch):
    from aiofranka.loop import trajectory

    monkeypatch.setattr(trajectory, "Ruckig", None)
    with pytest.raises(MissingDependencyError, match=r"ruckig is not installed: pip install ruckig$"):
        trajectory.plan_joint_motion(limits.Q_HOME, np.zeros(7), limits.Q_HOME, speed=0.5)


def test_a_missing_franka_sim_gives_both_ways_to_install_it(monkeypatch):
    from aiofranka.sim import Simulator

    monkeypatch.setitem(sys.modules, "franka_sim", None)
    with pytest.raises(MissingDependencyError) as info:
        Simulator().start()
    message = str(info.value)
    assert "pip install 'franka-sim>=1.1.7'" in message
    assert "pip install -e '.[sim]'" in message
    assert "aiofranka[sim]" not in message.replace("-e '.[sim]'", "")


def test_no_message_in_the_package_says_pip_install_aiofranka():
    from pathlib import Path

    import aiofranka

    root = Path(aiofranka.__file__).parent
    offenders = [str(path.relative_to(root)) for path in root.rglob("*.py")
                 if "pip install aiofranka" in path.read_text() or "pip install 'aiofranka" in path.read_text()]
    assert offenders == []


def test_regenerating_the_model_without_franka_sim_names_the_package():
    code = ("import sys; sys.modules['franka_sim'] = None\n"
            "from aiofranka.sim import build_model\n"
            "build_model._urdf_path()\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "pip install 'franka-sim>=1.1.7'" in result.stderr
