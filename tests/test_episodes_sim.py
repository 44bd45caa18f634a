"""An episode recorded on the simulator at the policy rate, read back with pyarrow against its
info.json, and replayed through the policy runtime (the difference to the recording reported).

A chunking policy follows a smooth reference about the start pose (joint 1 on a sine, joint 4
on a bump), with a synthetic camera; 2 s at 30 Hz, async scheduling, the built-in Controller
observer and executor, the contract enforced.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from aiofranka.policy import Action, Command, ControllerExecutor, ControllerObserver, InferenceMode, InferenceRuntime
from aiofranka.policy import run_step
from aiofranka.policy.episodes import EpisodeWriter, load_episode, read_info, replay

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("PIL")

pytestmark = pytest.mark.sim

HZ = 30.0
CHUNK = 10
STEPS = 60  # 2 s
#: Replay against recording, per joint. The arm moves 0.3 rad on joint 1 over the episode; the two runs
#: index the same targets by robot time, so they differ by tracking noise and the start-up phase
#: (measured here: max 5 mrad on joint 1). Replaying the actions five steps late: 79 mrad.
REPLAY_MAX_RAD = 0.015


class ReferencePolicy:
    """Chunks of the reference at the steps they are for (request_step), like a policy that knows time."""

    def __init__(self, q0):
        self.q0 = np.asarray(q0, dtype=float)

    def target(self, step: int) -> np.ndarray:
        t = step / HZ
        q = self.q0.copy()
        q[0] += 0.15 * np.sin(2 * np.pi * 0.5 * t)
        q[3] += 0.08 * (1 - np.cos(2 * np.pi * 0.5 * t))
        return q

    def __call__(self, frame, request):
        return [Action({"arm": Command("joint_position", self.target(request.request_step + j))})
                for j in range(CHUNK)]


def camera():
    camera.count += 1
    image = np.zeros((24, 32, 3), np.uint8)
    image[..., 0] = camera.count % 256
    image[4:8, 4:8, 1] = 255
    return image


camera.count = 0


def runtime():
    return InferenceRuntime(mode=InferenceMode.ASYNC, control_hz=HZ, steps_before_request=2, warmup_requests=0,
                            profile_delay_requests=1)


async def test_an_episode_is_recorded_read_back_and_replayed(controller, tmp_path):
    root = tmp_path / "episodes"
    q0 = controller.state.q
    policy = ReferencePolicy(q0)
    observer = ControllerObserver(controller, cameras={"wrist": camera}, task={"instruction": "wave"})
    executor = ControllerExecutor(controller)
    rt = runtime()
    async with EpisodeWriter(root, fps=HZ, task="wave", queue_size=STEPS) as episodes:
        for _ in range(STEPS):
            episodes.add(await run_step(observe_fn=observer, act_fn=executor, act_src_fn=policy, runtime=rt))
        episodes.end_episode()
    rt.close()
    controller.stop_playing()
    stats = episodes.stats
    assert stats.dropped == 0 and stats.frames == STEPS and stats.episodes == 1

    # The files, checked against the layout's own description (info.json), with pyarrow alone.
    info = read_info(root)
    assert info["codebase_version"] == "v3.0" and info["fps"] == HZ and info["total_frames"] == STEPS
    data = pq.read_table(root / info["data_path"].format(chunk_index=0, file_index=0))
    assert data.num_rows == STEPS
    features = info["features"]
    assert set(data.column_names) == set(features)
    for name, feature in features.items():
        column = data.schema.field(name).type
        if feature["dtype"] == "image":
            assert pa.types.is_struct(column) and {f.name for f in column} == {"bytes", "path"}
        elif feature["shape"] == [1]:
            assert column == pa.from_numpy_dtype(np.dtype(feature["dtype"])), name
        else:
            assert pa.types.is_fixed_size_list(column) and column.list_size == feature["shape"][0], name
            assert column.value_type == pa.from_numpy_dtype(np.dtype(feature["dtype"])), name
            assert len(feature["names"]) == feature["shape"][0]
    assert features["observation.images.wrist"]["shape"] == [24, 32, 3]
    assert data.column("frame_index").to_pylist() == list(range(STEPS))
    assert np.allclose(np.asarray(data.column("timestamp")), np.arange(STEPS) / HZ)
    assert data.column("episode_index").to_pylist() == [0] * STEPS
    meta = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [(m["episode_index"], m["length"], m["dataset_from_index"], m["dataset_to_index"]) for m in meta] == [
        (0, STEPS, 0, STEPS)]
    tasks = pq.read_table(root / "meta/tasks.parquet")
    assert tasks.column("task").to_pylist() == ["wave"] and tasks.column("task_index").to_pylist() == [0]
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]

    # The content: what the runtime observed and executed, step by step.
    episode = load_episode(root, 0, images=True)
    assert episode.complete and episode.dropped_steps == 0 and len(episode) == STEPS
    assert np.allclose(episode.state["q"][0], q0, atol=1e-6)
    robot_ms = episode.robot_time_ms
    assert np.all(np.diff(robot_ms) > 0)
    # Steps paced at 30 Hz on the robot clock (a late step may stretch one period; the mean holds).
    assert abs(np.mean(np.diff(robot_ms[5:])) - 1000 / HZ) < 5
    # Each row's action is the policy's action for the runtime step it names, one step per row.
    steps = episode.step_index
    assert np.all(np.diff(steps) >= 0) and steps[-1] >= STEPS - 3
    for k in range(STEPS):
        assert np.allclose(episode.actions[k]["arm"].value, policy.target(int(steps[k])), atol=1e-6), k
    assert episode.images["wrist"].shape == (STEPS, 24, 32, 3)
    assert np.all(episode.images["wrist"][:, 4:8, 4:8, 1] == 255)
    assert len(set(episode.images["wrist"][:, 0, 0, 0].tolist())) == STEPS  # one camera read per step

    # Replay on the same arm: the recorded actions through the runtime again.
    report = await replay(episode, controller, chunk=CHUNK)
    print(report.table())
    assert report.steps == STEPS
    assert np.ptp(episode.state["q"][:, 0]) > 0.2  # the recording moved
    assert report.max_abs < REPLAY_MAX_RAD, report.table()
