"""The profile of the example torch policy beside a running Controller on the simulator, and the
``aiofranka profile`` command (few iterations: the figures themselves are the user's to read)."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

from aiofranka.policy.profiling import load_factory, profile

pytestmark = pytest.mark.sim

torch = pytest.importorskip("torch")

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "16_profile.py"


async def test_profile_times_each_stage_per_helper_beside_the_loop(controller):
    saved = torch.get_num_threads()
    try:
        policy = load_factory(f"{EXAMPLE}:make_policy")(hidden=64)
        result = await profile(policy, helpers=("inline", "mpify"), iterations=5, warmup=1, controller=controller)
    finally:
        torch.set_num_threads(saved)
    assert set(result.helpers) == {"inline", "mpify"}
    assert result.stages == ("preprocess", "transfer", "forward", "postprocess")
    for name, helper in result.helpers.items():
        assert helper.error is None, helper.error
        assert set(helper.stages) == set(result.stages) | {"round_trip"}
        assert all(s.count == 5 and 0 < s.p50_ms <= s.p95_ms <= s.p99_ms <= s.max_ms for s in helper.stages.values())
        # The await covers each call: no stage measured inside a call outlasts the longest round trip.
        assert all(helper.stages["round_trip"].max_ms >= helper.stages[s].max_ms for s in result.stages), name
    assert result.fingerprints_agree is True
    assert result.recommended in ("inline", "mpify")
    table = result.table()
    assert "recommended helper" in table and "fingerprint [mpify]" in table
    assert controller.running


def test_the_profile_command_prints_stage_times_per_helper_and_a_fingerprint(tmp_path):
    trace = tmp_path / "trace.json"
    result = subprocess.run(
        [sys.executable, "-m", "aiofranka.cli", "profile", f"{EXAMPLE}:make_policy", "64", "--iterations", "3",
         "--warmup", "1", "--no-progress", "--trace", str(trace)],
        capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    print(out)
    for helper in ("inline", "asyncify", "cuda_thread", "mpify"):
        row = re.search(rf"^{helper}\s+((?:[0-9.]+/\s*[0-9.]+/\s*[0-9.]+\s+){{5}})\d+\s+\d+$", out, re.M)
        assert row, f"no stage times for {helper}:\n{out}"
    assert re.search(r"fingerprint \[inline\]: outputs [0-9a-f]{16}  ops [0-9a-f]{16}", out)
    assert "fingerprints agree across helpers" in out
    assert re.search(r"recommended helper: (inline|asyncify|cuda_thread|mpify) \(", out)
    assert trace.stat().st_size > 0 and "aiofranka.forward" in trace.read_text()
