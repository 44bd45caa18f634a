"""The forward fingerprint and the stage runner (no simulator): stable, the same in a child process,
changed by a weight. The profile beside the loop and the CLI: test_profiling_sim.py."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from aiofranka import Frame, limits
from aiofranka.policy.profiling import StageRunner, fingerprint, fingerprints, load_factory, profile

torch = pytest.importorskip("torch")

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "16_profile.py"


@pytest.fixture(scope="module")
def make_policy():
    return load_factory(f"{EXAMPLE}:make_policy")


@pytest.fixture(autouse=True)
def keep_torch_threads():
    saved = torch.get_num_threads()
    yield
    torch.set_num_threads(saved)


def frame(t_ms: int = 1234) -> Frame:
    return Frame(state={"q": limits.Q_HOME}, meta={"robot_time_ms": t_ms})


def test_the_fingerprint_is_stable_and_changed_by_a_weight(make_policy):
    policy = make_policy(hidden=64)
    first, second = fingerprint(policy, frame()), fingerprint(policy, frame())
    assert first.same_as(second)
    assert first.op_counts == {"torch.nn.functional.linear": 3, "torch.nn.functional.relu": 2, "torch.tanh": 1,
                               "torch.Tensor.mul": 1, "torch.Tensor.reshape": 1}
    # A fresh policy from the same seed: the same; another input: other outputs, the same operators.
    assert fingerprint(make_policy(hidden=64), frame()).same_as(first)
    other = fingerprint(policy, frame(999))
    assert other.outputs_sha256 != first.outputs_sha256 and other.ops_sha256 == first.ops_sha256
    with torch.no_grad():
        policy.net[2].weight[3, 5] += 1e-3
    perturbed = fingerprint(policy, frame())
    assert perturbed.outputs_sha256 != first.outputs_sha256
    assert perturbed.ops_sha256 == first.ops_sha256  # the same maths, other numbers


def test_another_operator_changes_the_operator_hash(make_policy):
    policy = make_policy(hidden=64)
    first = fingerprint(policy, frame())
    policy.net.append(torch.nn.Hardtanh(-1e3, 1e3))  # the same numbers: a clamp far outside them
    changed = fingerprint(policy, frame())
    assert changed.outputs_sha256 == first.outputs_sha256
    assert changed.ops_sha256 != first.ops_sha256 and changed.op_counts["torch.nn.functional.hardtanh"] == 1


async def test_the_fingerprint_is_the_same_through_every_helper(make_policy):
    policy = make_policy(hidden=64)
    inline = fingerprint(policy, frame())
    prints = await fingerprints(policy, frame(), helpers=("inline", "asyncify", "cuda_thread", "mpify"))
    assert set(prints) == {"inline", "asyncify", "cuda_thread", "mpify"}
    for name, value in prints.items():
        assert value.same_as(inline), name


def test_the_stage_runner_times_the_stages_the_policy_offers(make_policy):
    runner = StageRunner(make_policy(hidden=64))
    assert runner.stages == ["preprocess", "transfer", "forward", "postprocess"]
    times = runner.timed(frame())
    assert list(times) == runner.stages and all(ns > 0 for ns in times.values())

    class ForwardOnly:
        def forward(self, frame):
            return np.asarray(frame.state["q"]) * 2

    assert StageRunner(ForwardOnly()).stages == ["forward"]
    act_src = StageRunner(lambda frame, request: [request.request_step])
    assert act_src.stages == ["forward"] and act_src.timed(frame())["forward"] > 0
    with pytest.raises(TypeError, match="forward"):
        StageRunner(object())


async def test_bad_arguments_name_the_parameter(make_policy):
    policy = make_policy(hidden=64)
    with pytest.raises(ValueError, match="helpers"):
        await profile(policy, frame(), helpers=("inline", "gpu"), controller=object())
    with pytest.raises(ValueError, match="iterations"):
        await profile(policy, frame(), iterations=0, controller=object())
    with pytest.raises(ValueError, match="factory"):
        load_factory("no_colon_here")
    with pytest.raises(ValueError, match="has no"):
        load_factory(f"{EXAMPLE}:missing")


def test_the_recommendation_prefers_inline_only_under_the_stall_threshold_and_no_lost_cycle():
    from aiofranka.policy.profiling import HelperProfile, StageTimes, _recommend

    def helper(name, round_trip_ms, lost=0, error=None):
        return HelperProfile(name, {"round_trip": StageTimes.of([round_trip_ms * 1e6] * 3)}, lost, 0, None, error)

    slow_inline = {"inline": helper("inline", 0.7), "asyncify": helper("asyncify", 1.4),
                   "cuda_thread": helper("cuda_thread", 1.0), "mpify": helper("mpify", 2.3)}
    assert _recommend(slow_inline)[0] == "cuda_thread"
    assert _recommend({"inline": helper("inline", 0.1), "mpify": helper("mpify", 2.3)})[0] == "inline"
    # A fast inline call that cost the loop cycles is not recommended; a failed helper never is.
    assert _recommend({"inline": helper("inline", 0.1, lost=3), "mpify": helper("mpify", 2.3)})[0] == "mpify"
    assert _recommend({"cuda_thread": helper("cuda_thread", 0.5, error="no CUDA"),
                       "mpify": helper("mpify", 2.3)})[0] == "mpify"
    assert _recommend({"mpify": helper("mpify", 2.3, error="x")}) == (None, "every helper failed")
