"""EpisodeWriter's queue, fault handling and layout checks (pure logic: no simulator).

The simulator test (test_episodes_sim.py) records, reads back and replays a real episode.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from aiofranka.policy import Action, Command, Frame
from aiofranka.policy import episodes as episodes_module
from aiofranka.policy.episodes import EpisodeWriter, actions_by_step, load_episode, read_info

pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("PIL")


def step(k: int, *, image_shape=(8, 8, 3)):
    frame = Frame(images={"cam": np.full(image_shape, k % 256, np.uint8)}, state={"q": np.full(7, 0.01 * k)},
                  meta={"robot_time_ms": 1000 + 33 * k})
    return frame, Action({"arm": Command("joint_position", np.full(7, 0.1 * k))})


def wait_for(predicate, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_a_full_queue_drops_and_counts_without_blocking(tmp_path, monkeypatch):
    """The writer thread is held inside its first row; the queue of 2 fills; later steps are dropped and
    counted (never waited for), reported at close, and the gap shows in frame_index."""
    entered, release = threading.Event(), threading.Event()
    original = episodes_module._EpisodeFile.add

    def held_add(self, item):
        entered.set()
        assert release.wait(30)
        return original(self, item)

    monkeypatch.setattr(episodes_module._EpisodeFile, "add", held_add)
    writer = EpisodeWriter(tmp_path / "ds", fps=30, queue_size=2)
    assert writer.add(*step(0))
    assert entered.wait(10)  # the writer thread holds step 0; the queue is empty
    started = time.perf_counter()
    accepted = [writer.add(*step(k)) for k in range(1, 10)]
    assert time.perf_counter() - started < 1.0  # nothing waited for the writer
    assert accepted == [True, True] + [False] * 7
    assert writer.stats.dropped == 7 and writer.stats.max_queued == 2
    release.set()
    wait_for(lambda: writer.stats.queued == 0)
    assert writer.add(*step(10)) and writer.add(*step(11))
    with pytest.warns(RuntimeWarning, match="7 steps were dropped"):
        stats = writer.close(complete=True)
    assert stats.dropped == 7 and stats.frames == 5
    episode = load_episode(tmp_path / "ds", 0)
    assert episode.frame_index.tolist() == [0, 1, 2, 10, 11]
    assert episode.dropped_steps == 7
    assert [float(a["arm"].value[0]) for a in episode.actions] == pytest.approx([0.0, 0.1, 0.2, 1.0, 1.1])


def test_an_exception_in_the_block_flushes_the_episode_marked_incomplete(tmp_path):
    root = tmp_path / "ds"
    with pytest.raises(KeyboardInterrupt):
        with EpisodeWriter(root, fps=10, task="t", rows_per_write=4) as writer:
            for k in range(3):
                writer.add(*step(k))
            writer.end_episode()
            for k in range(7):
                writer.add(*step(k))
            raise KeyboardInterrupt  # Ctrl-C in the middle of the second episode
    info = read_info(root)
    assert info["total_episodes"] == 2 and info["total_frames"] == 10
    first, second = load_episode(root, 0), load_episode(root, 1)
    assert first.complete and len(first) == 3
    assert not second.complete and len(second) == 7
    meta = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [(m["dataset_from_index"], m["dataset_to_index"]) for m in meta] == [(0, 3), (3, 10)]
    assert pq.read_table(root / "data/chunk-000/file-001.parquet").column("index").to_pylist() == list(range(3, 10))


def test_an_open_episode_is_written_under_a_partial_name_until_it_ends(tmp_path):
    root = tmp_path / "ds"
    writer = EpisodeWriter(root, fps=10, rows_per_write=2)
    for k in range(4):
        writer.add(*step(k))
    final = root / "data/chunk-000/file-000.parquet"
    partial = root / "data/chunk-000/file-000.parquet.partial"
    wait_for(partial.exists)
    assert not final.exists() and not (root / "meta/info.json").exists()
    writer.end_episode()
    writer.close()
    assert final.exists() and not partial.exists()
    assert pq.read_table(final).num_rows == 4


def test_the_layout_is_fixed_by_the_first_step(tmp_path):
    with EpisodeWriter(tmp_path / "ds", fps=10) as writer:
        writer.add(*step(0))
        frame, action = step(1, image_shape=(8, 9, 3))
        with pytest.raises(ValueError, match=r"Frame.images\['cam'\]"):
            writer.add(frame, action)
        frame, _ = step(2)
        with pytest.raises(ValueError, match="action layout"):
            writer.add(frame, Action({"arm": Command("joint_position", np.zeros(6))}))
        writer.add(*step(3))
    assert len(load_episode(tmp_path / "ds", 0)) == 2


def test_bad_arguments_name_the_parameter(tmp_path):
    with pytest.raises(ValueError, match="fps"):
        EpisodeWriter(tmp_path / "a", fps=0)
    with pytest.raises(ValueError, match="queue_size"):
        EpisodeWriter(tmp_path / "b", fps=10, queue_size=0)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x").write_text("x")
    with pytest.raises(FileExistsError, match="overwrite"):
        EpisodeWriter(tmp_path / "c", fps=10)


def test_actions_by_step_follows_the_step_each_row_names(tmp_path):
    with EpisodeWriter(tmp_path / "ds", fps=10) as writer:
        for k, index in enumerate([0, 0, 1, 3, 3, 4]):  # a step repeated, step 2 never named
            frame, action = step(k)
            writer.add(type("R", (), {"frame": frame, "step_action": action, "step_index": index})())
        writer.end_episode()
    episode = load_episode(tmp_path / "ds", 0)
    values = [float(a["arm"].value[0]) for a in actions_by_step(episode)]
    assert values == pytest.approx([0.1, 0.2, 0.2, 0.4, 0.5])


def test_a_writer_never_closed_writes_its_episode_at_exit(tmp_path):
    """The interpreter exits with the writer open (no close, no with): the episode is on disk, marked incomplete."""
    import subprocess
    import sys

    root = tmp_path / "ds"
    code = ("import numpy as np\n"
            "from aiofranka.policy import Action, Command, Frame\n"
            "from aiofranka.policy.episodes import EpisodeWriter\n"
            f"writer = EpisodeWriter({str(root)!r}, fps=30)\n"
            "for k in range(5):\n"
            "    writer.add(Frame(state={'q': np.full(7, k)}), Action({'arm': Command('joint_position', np.zeros(7))}))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    episode = load_episode(root, 0)
    assert len(episode) == 5 and not episode.complete
    assert read_info(root)["fps"] == 30 and isinstance(read_info(root)["fps"], int)
