"""Episodes at the policy rate, in the LeRobot dataset layout (v3.0): record, read back, replay.

:class:`EpisodeWriter` takes each policy step (a :class:`~aiofranka.policy.StepResult`, or a
frame and the action executed) and writes it from its own thread through a bounded queue;
:func:`load_episode` reads one back; :class:`ReplayPolicy` and :func:`replay` feed the recorded
actions through the policy runtime again and compare the trajectories. Needs the ``record``
extra (pyarrow, pillow). Guide: docs/episodes.md.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import dataclasses
import io
import json
import os
import shutil
import threading
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from ..exceptions import MissingDependencyError
from .contract import Action, Command, Frame
from .replay import ReplayPolicy, ReplayReport, actions_by_step, replay

__all__ = ["CODEBASE_VERSION", "Episode", "EpisodeStats", "EpisodeWriter", "ReplayPolicy", "ReplayReport",
           "actions_by_step", "load_episode", "read_info", "replay"]

#: The LeRobot dataset version whose layout is written (docs/episodes.md says what was checked).
CODEBASE_VERSION = "v3.0"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
TASKS_PATH = "meta/tasks.parquet"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
#: aiofranka's own side file: how to turn the flat ``action``/``observation.state`` back into commands.
LAYOUT_PATH = "meta/aiofranka.json"
CHUNKS_SIZE = 1000  # files per chunk folder, as LeRobot's default
INSTALL_RECORD = "pip install pyarrow==25.0.1 pillow==13.0.0 (from a checkout: pip install -e '.[record]')"


def _require():
    try:
        import pyarrow
        import pyarrow.parquet
        from PIL import Image
    except ImportError as exc:
        raise MissingDependencyError(f"episode recording needs pyarrow and pillow: {INSTALL_RECORD}") from exc
    return pyarrow, pyarrow.parquet, Image


@dataclasses.dataclass(frozen=True)
class EpisodeStats:
    """What an :class:`EpisodeWriter` did: ``episodes`` finished, ``frames`` written, ``dropped``
    steps (the queue was full), ``queued`` now, ``max_queued`` the queue's high-water mark."""

    episodes: int
    frames: int
    dropped: int
    queued: int
    max_queued: int
    queue_size: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def table(self) -> str:
        return (f"episodes written  {self.episodes}\nframes written    {self.frames}\n"
                f"steps dropped     {self.dropped} (queue full)\nqueue high-water  {self.max_queued} of "
                f"{self.queue_size}")


@dataclasses.dataclass(frozen=True)
class _Layout:
    state: tuple       # ((key, shape), ...)
    images: tuple      # ((key, shape), ...) shapes (h, w, c)
    action: tuple      # ((target, kind, shape), ...)

    @classmethod
    def of(cls, frame: Frame, action: Action, state_keys) -> "_Layout":
        keys = sorted(frame.state) if state_keys is None else list(state_keys)
        for key in keys:
            if key not in frame.state:
                raise ValueError(f"state_keys names {key!r}, which the frame does not have ({sorted(frame.state)})")
        images = []
        for name in sorted(frame.images):
            image = frame.images[name]
            if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3)):
                raise ValueError(f"Frame.images[{name!r}] must be uint8 (h, w), (h, w, 1) or (h, w, 3), "
                                 f"got {image.dtype} {image.shape}")
            images.append((name, image.shape if image.ndim == 3 else image.shape + (1,)))
        return cls(state=tuple((k, frame.state[k].shape) for k in keys), images=tuple(images),
                   action=action.layout())

    def names(self) -> tuple[list, list]:
        state = [f"{k}.{i}" for k, shape in self.state for i in range(int(np.prod(shape)))]
        action = [f"{t}.{kind}.{i}" for t, kind, shape in self.action for i in range(int(np.prod(shape)))]
        return state, action

    def to_json(self) -> dict:
        return {"state": [[k, list(s)] for k, s in self.state], "images": [[k, list(s)] for k, s in self.images],
                "action": [[t, kind, list(s)] for t, kind, s in self.action]}

    @classmethod
    def from_json(cls, data: dict) -> "_Layout":
        return cls(state=tuple((k, tuple(s)) for k, s in data["state"]),
                   images=tuple((k, tuple(s)) for k, s in data["images"]),
                   action=tuple((t, kind, tuple(s)) for t, kind, s in data["action"]))


class _Running:
    """Per-feature count, sum, sum of squares, min and max (float64, per element or per channel)."""

    def __init__(self) -> None:
        self.count = 0
        self.sum = self.sumsq = self.min = self.max = None

    def add(self, values: np.ndarray) -> None:  # values: (n, d)
        values = values.astype(np.float64)
        s, sq, lo, hi = values.sum(0), (values * values).sum(0), values.min(0), values.max(0)
        if self.sum is None:
            self.sum, self.sumsq, self.min, self.max = s, sq, lo, hi
        else:
            self.sum, self.sumsq = self.sum + s, self.sumsq + sq
            self.min, self.max = np.minimum(self.min, lo), np.maximum(self.max, hi)
        self.count += len(values)

    def merge(self, other: "_Running") -> None:
        if other.sum is None:
            return
        if self.sum is None:
            self.sum, self.sumsq, self.min, self.max = other.sum, other.sumsq, other.min, other.max
        else:
            self.sum, self.sumsq = self.sum + other.sum, self.sumsq + other.sumsq
            self.min, self.max = np.minimum(self.min, other.min), np.maximum(self.max, other.max)
        self.count += other.count

    def result(self, image: bool = False) -> dict:
        mean = self.sum / self.count
        std = np.sqrt(np.maximum(self.sumsq / self.count - mean * mean, 0.0))
        shape = (-1, 1, 1) if image else (-1,)  # LeRobot keeps image stats per channel as (c, 1, 1)
        return {"min": self.min.reshape(shape).tolist(), "max": self.max.reshape(shape).tolist(),
                "mean": mean.reshape(shape).tolist(), "std": std.reshape(shape).tolist(), "count": [self.count]}


class EpisodeWriter:
    """Writes policy steps to a LeRobot v3.0 dataset folder from a writer thread.

    ``add(result)`` (a :class:`~aiofranka.policy.StepResult`) or ``add(frame, action)``
    only queues the step: it never blocks and never writes. The writer thread (at
    normal scheduling) encodes images as PNG and appends rows to the episode's parquet
    file. When the queue holds ``queue_size`` steps, a new step is dropped and counted
    (``stats.dropped``, the episode's ``aiofranka/dropped_steps``, a warning at close);
    its ``frame_index`` is skipped, so the gap shows. ``end_episode()`` closes the
    episode's file and rewrites the metadata; ``close()`` (also on an exception or
    Ctrl-C leaving a ``with`` block) drains the queue and ends an open episode, marked
    ``aiofranka/complete = False``. An episode's file is written as ``*.parquet.partial``
    and renamed when it ends, so a killed process leaves no half file where readers look.

    Each row: ``observation.state`` (the frame's state arrays, flattened and concatenated,
    float32), ``observation.images.<name>`` (PNG), ``action`` (the executed action's
    commands, flattened, float32: ``StepResult.step_action``, the policy's action for
    the step), ``aiofranka.robot_time_ms``, and LeRobot's ``timestamp`` (step / fps),
    ``frame_index``, ``episode_index``, ``index``, ``task_index``. The layout is fixed by
    the first step; a later step with other keys or shapes raises ``ValueError``.
    ``progress`` shows a tqdm counter of the frames written (and dropped) on stderr.

    Example::

        with EpisodeWriter("runs/pick", fps=30, task="pick the cube") as episodes:
            for _ in range(300):
                episodes.add(await run_step(observe_fn=observer, act_fn=executor, act_src_fn=policy,
                                            runtime=runtime))
            episodes.end_episode()
    """

    def __init__(self, root, *, fps: float, task: str = "", robot_type: str = "franka_fr3",
                 queue_size: int = 256, state_keys: Sequence[str] | None = None, overwrite: bool = False,
                 png_compression: int = 1, rows_per_write: int = 64, progress: bool = False) -> None:
        self._pa, self._pq, self._image = _require()
        if not (isinstance(fps, (int, float)) and fps > 0):
            raise ValueError(f"fps must be a positive number, got {fps!r}")
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
            raise ValueError(f"queue_size must be an int >= 1, got {queue_size!r}")
        if not isinstance(task, str):
            raise TypeError(f"task must be a string, got {type(task).__name__}")
        self.root = Path(root)
        if self.root.exists() and any(self.root.iterdir()):
            if not overwrite:
                raise FileExistsError(f"root {str(self.root)!r} exists and is not empty (pass overwrite=True)")
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.fps = int(fps) if float(fps).is_integer() else float(fps)  # LeRobot's fps is an int
        self.task = task
        self.robot_type = robot_type
        self.queue_size = queue_size
        self.state_keys = None if state_keys is None else tuple(state_keys)
        self.png_compression = int(png_compression)
        self.rows_per_write = int(rows_per_write)
        self._layout: _Layout | None = None
        self._last_action: Action | None = None
        # The queue: data items are bounded, control markers (end, close) never wait.
        self._items: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._queued = 0
        self._max_queued = 0
        self._dropped = 0
        self._episode_dropped = 0
        self._step = 0                # the episode's step counter, on the caller's side
        self._episode_index = 0       # the caller's episode number
        self._closed = False
        self._reported = False
        self._error: BaseException | None = None
        # Writer-thread state.
        self._episodes: list[dict] = []
        self._tasks: list[str] = []
        self._frames = 0
        self._totals: dict[str, _Running] = {}
        self._bar = None
        if progress:  # updated by the writer thread, as rows reach the file
            from tqdm import tqdm

            self._bar = tqdm(desc=f"recording {self.root.name}", unit="frame")
        self._thread = threading.Thread(target=self._run, name="aiofranka-episodes", daemon=True)
        self._thread.start()
        # A writer never closed still writes its open episode (marked incomplete) when the interpreter exits.
        atexit.register(self._close_at_exit)

    # -- the caller's side (the event loop): never blocks -----------------------------------

    def add(self, result_or_frame, action: Action | None = None) -> bool:
        """Queue one step: a ``StepResult``, or a ``Frame`` and the ``Action`` executed.

        Returns False when the queue was full and the step was dropped (counted).
        Arrays are kept by reference until written: do not change them afterwards.
        """
        self._check_open()
        step_index = -1
        if action is None and hasattr(result_or_frame, "step_action"):
            frame, action = result_or_frame.frame, result_or_frame.step_action
            step_index = int(result_or_frame.step_index)
        else:
            frame = result_or_frame
        if not isinstance(frame, Frame):
            raise TypeError(f"add() takes a StepResult or a Frame and an Action, got {type(frame).__name__}")
        if action is None:
            action = self._last_action  # a starved step: the arm held the last action
            if action is None:
                raise ValueError("the first step added has no action (the policy had not answered yet)")
        elif not isinstance(action, Action):
            raise TypeError(f"action must be an Action, got {type(action).__name__}")
        self._last_action = action
        if self._layout is None:
            self._layout = _Layout.of(frame, action, self.state_keys)
        else:
            self._check_layout(frame, action)
        step = self._step
        self._step += 1
        if step_index < 0:
            step_index = step
        robot_ms = frame.meta.get("robot_time_ms", -1)
        state = {k: np.array(frame.state[k], dtype=np.float32) for k, _ in self._layout.state}  # small: copied
        item = ("step", self._episode_index, step, state, {k: frame.images[k] for k, _ in self._layout.images},
                action, int(robot_ms), step_index)
        with self._cond:
            if self._queued >= self.queue_size:
                self._dropped += 1
                self._episode_dropped += 1
                return False
            self._items.append(item)
            self._queued += 1
            self._max_queued = max(self._max_queued, self._queued)
            self._cond.notify()
        return True

    def end_episode(self, *, complete: bool = True) -> None:
        """End the episode being recorded (if any step was added); the next step starts a new one."""
        self._check_open()
        self._end(complete)

    def _end(self, complete: bool) -> None:
        if self._step == 0:
            return
        with self._cond:
            self._items.append(("end", self._episode_index, complete, self._episode_dropped))
            self._cond.notify()
        self._episode_index += 1
        self._step = 0
        self._episode_dropped = 0

    def _check_layout(self, frame: Frame, action: Action) -> None:
        layout = self._layout
        for key, shape in layout.state:
            value = frame.state.get(key)
            if value is None or value.shape != shape:
                raise ValueError(f"Frame.state[{key!r}] must have shape {shape} as in the first step, got "
                                 f"{None if value is None else value.shape}")
        for key, shape in layout.images:
            value = frame.images.get(key)
            if value is None or (value.shape if value.ndim == 3 else value.shape + (1,)) != shape:
                raise ValueError(f"Frame.images[{key!r}] must have shape {shape} as in the first step, got "
                                 f"{None if value is None else value.shape}")
        if action.layout() != layout.action:
            raise ValueError(f"action layout {action.layout()} differs from the first step's {layout.action}")

    def _check_open(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError(f"the episode writer failed: {type(error).__name__}: {error}") from error
        if self._closed:
            raise RuntimeError("this EpisodeWriter is closed")

    @property
    def stats(self) -> EpisodeStats:
        with self._cond:
            return EpisodeStats(episodes=len(self._episodes), frames=self._frames, dropped=self._dropped,
                                queued=self._queued, max_queued=self._max_queued, queue_size=self.queue_size)

    def close(self, *, complete: bool | None = None) -> EpisodeStats:
        """Drain the queue, end an open episode and write the metadata; returns the figures. Idempotent.

        An episode still open is marked complete only when ``complete=True``. Dropped steps are
        reported with a ``RuntimeWarning``. Blocks until written: from a coroutine use :meth:`aclose`.
        """
        if self._signal_close(complete):
            self._thread.join()
        return self._report()

    async def aclose(self, *, complete: bool | None = None) -> EpisodeStats:
        """:meth:`close` without blocking the event loop."""
        if self._signal_close(complete):
            await asyncio.to_thread(self._thread.join)
        return self._report()

    def _close_at_exit(self) -> None:
        with contextlib.suppress(Exception):
            self.close(complete=False)

    def _signal_close(self, complete: bool | None) -> bool:
        if self._closed:
            return False
        atexit.unregister(self._close_at_exit)
        self._end(bool(complete))
        self._closed = True
        with self._cond:
            self._items.append(("close",))
            self._cond.notify()
        return True

    def _report(self) -> EpisodeStats:
        if self._bar is not None:
            self._bar.close()
        if self._dropped and not self._reported:
            self._reported = True
            warnings.warn(f"EpisodeWriter: {self._dropped} steps were dropped because the queue "
                          f"(queue_size={self.queue_size}) was full; the disk or the encoder did not keep up",
                          RuntimeWarning, stacklevel=3)
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError(f"the episode writer failed: {type(error).__name__}: {error}") from error
        return self.stats

    def __enter__(self) -> "EpisodeWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.close(complete=False if exc_type is not None else None)
        except Exception:
            if exc_type is None:
                raise  # never mask the body's exception

    async def __aenter__(self) -> "EpisodeWriter":
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        try:
            await self.aclose(complete=False if exc_type is not None else None)
        except Exception:
            if exc_type is None:
                raise

    # -- the writer thread ---------------------------------------------------------------------

    def _run(self) -> None:
        from .._os import demote_to_normal

        demote_to_normal()  # created after Robot() promoted its creator: never outrank the loop
        episode: _EpisodeFile | None = None
        try:
            while True:
                with self._cond:
                    while not self._items:
                        self._cond.wait()
                    item = self._items.popleft()
                    if item[0] == "step":
                        self._queued -= 1
                if item[0] == "step":
                    if episode is None or episode.index != item[1]:
                        episode = self._open_episode(item[1])
                    episode.add(item)
                elif item[0] == "end":
                    if episode is not None and episode.index == item[1]:
                        self._finish(episode, complete=item[2], dropped=item[3])
                    episode = None
                else:
                    break
        except BaseException as exc:  # noqa: BLE001 - stored, raised on the caller's next call
            self._error = exc
            if episode is not None:
                try:
                    self._finish(episode, complete=False, dropped=self._episode_dropped)
                except BaseException:  # noqa: BLE001 - the first error is the one to report
                    pass

    def _open_episode(self, index: int) -> "_EpisodeFile":
        if self._layout is not None and not (self.root / LAYOUT_PATH).exists():
            self._write_json(LAYOUT_PATH, {"layout": self._layout.to_json(), "writer": "aiofranka",
                                           "codebase_version": CODEBASE_VERSION})
        if self.task not in self._tasks:
            self._tasks.append(self.task)
        return _EpisodeFile(self, index, self._tasks.index(self.task), first_index=self._frames)

    def _finish(self, episode: "_EpisodeFile", *, complete: bool, dropped: int) -> None:
        rows = episode.close()
        if rows == 0:
            return
        chunk, file = divmod(episode.index, CHUNKS_SIZE)
        row = {"episode_index": episode.index, "tasks": [self.task], "length": rows,
               "data/chunk_index": chunk, "data/file_index": file,
               "dataset_from_index": self._frames, "dataset_to_index": self._frames + rows,
               "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0,
               "aiofranka/complete": bool(complete), "aiofranka/dropped_steps": int(dropped)}
        for feature, running in episode.stats.items():
            for stat, value in running.result(image=feature.startswith("observation.images.")).items():
                row[f"stats/{feature}/{stat}"] = value
            self._totals.setdefault(feature, _Running()).merge(running)
        self._episodes.append(row)
        with self._cond:
            self._frames += rows
        self._write_metadata()

    def _features(self) -> dict:
        layout = self._layout
        state_names, action_names = layout.names()
        features = {"observation.state": {"dtype": "float32", "shape": [len(state_names)], "names": state_names}}
        for name, shape in layout.images:
            features[f"observation.images.{name}"] = {"dtype": "image", "shape": list(shape),
                                                      "names": ["height", "width", "channels"]}
        features["action"] = {"dtype": "float32", "shape": [len(action_names)], "names": action_names}
        features["aiofranka.robot_time_ms"] = {"dtype": "int64", "shape": [1], "names": None}
        features["aiofranka.step_index"] = {"dtype": "int64", "shape": [1], "names": None}
        for name in ("timestamp",):
            features[name] = {"dtype": "float32", "shape": [1], "names": None}
        for name in ("frame_index", "episode_index", "index", "task_index"):
            features[name] = {"dtype": "int64", "shape": [1], "names": None}
        return features

    def _write_metadata(self) -> None:
        pa, pq = self._pa, self._pq
        info = {
            "codebase_version": CODEBASE_VERSION, "robot_type": self.robot_type,
            "total_episodes": len(self._episodes), "total_frames": self._frames, "total_tasks": len(self._tasks),
            "chunks_size": CHUNKS_SIZE, "data_files_size_in_mb": 100, "video_files_size_in_mb": 500,
            "fps": self.fps, "splits": {"train": f"0:{len(self._episodes)}"},
            "data_path": DATA_PATH, "video_path": None, "features": self._features(),
        }
        episodes = pa.Table.from_pylist(self._episodes)
        self._atomic(EPISODES_PATH.format(chunk_index=0, file_index=0), lambda p: pq.write_table(episodes, p))
        # LeRobot reads tasks.parquet with pandas: the task strings are the (pandas) index.
        pandas_meta = {"index_columns": ["task"], "column_indexes": [], "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64",
             "metadata": None},
            {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object", "metadata": None},
        ], "creator": {"library": "aiofranka"}, "pandas_version": "2.0.0"}
        tasks = pa.table({"task_index": pa.array(range(len(self._tasks)), pa.int64()),
                          "task": pa.array(self._tasks, pa.string())})
        tasks = tasks.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})
        self._atomic(TASKS_PATH, lambda p: pq.write_table(tasks, p))
        stats = {feature: running.result(image=feature.startswith("observation.images."))
                 for feature, running in self._totals.items()}
        self._write_json(STATS_PATH, stats)
        self._write_json(INFO_PATH, info)  # last: a reader that sees the new count finds everything it names

    def _write_json(self, relative: str, data: dict) -> None:
        self._atomic(relative, lambda p: Path(p).write_text(json.dumps(data, indent=4)))

    def _atomic(self, relative: str, write) -> None:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        write(str(temporary))
        os.replace(temporary, path)


class _EpisodeFile:
    """One episode's parquet file, written by the writer thread in row groups of ``rows_per_write``."""

    def __init__(self, writer: EpisodeWriter, index: int, task_index: int, first_index: int) -> None:
        self.writer = writer
        self.index = index
        self.task_index = task_index
        self.first_index = first_index
        chunk, file = divmod(index, CHUNKS_SIZE)
        self.path = writer.root / DATA_PATH.format(chunk_index=chunk, file_index=file)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.rows: list[tuple] = []
        self.count = 0
        self.stats: dict[str, _Running] = {}
        self._parquet = None
        self._schema = self._make_schema()

    def _make_schema(self):
        pa = self.writer._pa
        layout = self.writer._layout
        state_n = sum(int(np.prod(s)) for _, s in layout.state)
        action_n = sum(int(np.prod(s)) for _, _, s in layout.action)
        fields = [pa.field("observation.state", pa.list_(pa.float32(), state_n))]
        image = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])  # datasets.Image()
        fields += [pa.field(f"observation.images.{name}", image) for name, _ in layout.images]
        fields += [pa.field("action", pa.list_(pa.float32(), action_n)),
                   pa.field("aiofranka.robot_time_ms", pa.int64()), pa.field("aiofranka.step_index", pa.int64()),
                   pa.field("timestamp", pa.float32())]
        fields += [pa.field(name, pa.int64()) for name in ("frame_index", "episode_index", "index", "task_index")]
        features = {f: ({"_type": "Image"} if f.startswith("observation.images.") else None)
                    for f in (x.name for x in fields)}
        hf = {"info": {"features": {name: value for name, value in features.items() if value is not None}}}
        return pa.schema(fields, metadata={b"huggingface": json.dumps(hf).encode()})

    def add(self, item: tuple) -> None:
        _, _, step, state, images, action, robot_ms, step_index = item
        layout = self.writer._layout
        state_vec = np.concatenate([state[k].reshape(-1) for k, _ in layout.state]) if layout.state else \
            np.zeros(0, np.float32)
        action_vec = np.concatenate([np.asarray(action[t].value, np.float32).reshape(-1)
                                     for t, _, _ in layout.action])
        encoded = {}
        for name, _ in layout.images:
            array = images[name]
            buffer = io.BytesIO()
            self.writer._image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[2] == 1 else array).save(
                buffer, format="PNG", compress_level=self.writer.png_compression)
            encoded[name] = {"bytes": buffer.getvalue(), "path": f"frame-{step:06d}.png"}
            channels = array.reshape(-1, array.shape[2] if array.ndim == 3 else 1) / 255.0
            self.stats.setdefault(f"observation.images.{name}", _Running()).add(channels)
        self.rows.append((state_vec, encoded, action_vec, robot_ms, step, step_index))
        if len(self.rows) >= self.writer.rows_per_write:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        pa, pq = self.writer._pa, self.writer._pq
        layout = self.writer._layout
        rows, self.rows = self.rows, []
        n = len(rows)
        state = np.stack([r[0] for r in rows]).astype(np.float32)
        action = np.stack([r[2] for r in rows]).astype(np.float32)
        steps = np.array([r[4] for r in rows], dtype=np.int64)
        columns = {"observation.state": pa.FixedSizeListArray.from_arrays(pa.array(state.reshape(-1)), state.shape[1])}
        for name, _ in layout.images:
            columns[f"observation.images.{name}"] = pa.array([r[1][name] for r in rows], self._schema.field(
                f"observation.images.{name}").type)
        columns["action"] = pa.FixedSizeListArray.from_arrays(pa.array(action.reshape(-1)), action.shape[1])
        columns["aiofranka.robot_time_ms"] = pa.array([r[3] for r in rows], pa.int64())
        columns["aiofranka.step_index"] = pa.array([r[5] for r in rows], pa.int64())
        columns["timestamp"] = pa.array((steps / self.writer.fps).astype(np.float32))
        columns["frame_index"] = pa.array(steps)
        columns["episode_index"] = pa.array(np.full(n, self.index, np.int64))
        columns["index"] = pa.array(np.arange(self.first_index + self.count, self.first_index + self.count + n))
        columns["task_index"] = pa.array(np.full(n, self.task_index, np.int64))
        table = pa.Table.from_pydict(columns, schema=self._schema)
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(str(self.partial), self._schema, compression="snappy")
        self._parquet.write_table(table)
        self.count += n
        if self.writer._bar is not None:
            self.writer._bar.update(n)
            self.writer._bar.set_postfix(dropped=self.writer._dropped, refresh=False)
        for feature, values in (("observation.state", state), ("action", action),
                                ("aiofranka.robot_time_ms", np.array([[r[3]] for r in rows])),
                                ("aiofranka.step_index", np.array([[r[5]] for r in rows])),
                                ("timestamp", (steps / self.writer.fps)[:, None]), ("frame_index", steps[:, None]),
                                ("episode_index", np.full((n, 1), self.index)),
                                ("index", np.asarray(columns["index"])[:, None]),
                                ("task_index", np.full((n, 1), self.task_index))):
            self.stats.setdefault(feature, _Running()).add(values)

    def close(self) -> int:
        self.flush()
        if self._parquet is None:
            return 0
        self._parquet.close()
        os.replace(self.partial, self.path)
        return self.count


# -- reading back ------------------------------------------------------------------------------------


def read_info(root) -> dict:
    """``meta/info.json`` of a dataset folder."""
    return json.loads((Path(root) / INFO_PATH).read_text())


@dataclasses.dataclass(frozen=True)
class Episode:
    """One recorded episode: per step ``state`` (by key, (n, ...) float32), ``actions`` and the runtime step
    each is for (``step_index``), ``frame_index``,
    ``timestamp`` (s), ``robot_time_ms``; ``images`` by camera ((n, h, w, c) uint8) when ``images=True``;
    ``complete`` and ``dropped_steps`` from the episode's metadata; ``fps`` the dataset's rate."""

    index: int
    state: dict
    actions: list
    step_index: np.ndarray
    frame_index: np.ndarray
    timestamp: np.ndarray
    robot_time_ms: np.ndarray
    images: dict
    complete: bool
    dropped_steps: int
    task: str
    fps: float

    def __len__(self) -> int:
        return len(self.actions)


def load_episode(root, index: int = 0, *, images: bool = False) -> Episode:
    """Read episode ``index`` of the dataset at ``root`` back (with pyarrow), actions as :class:`Action`."""
    pa, pq, image_module = _require()
    root = Path(root)
    layout = _Layout.from_json(json.loads((root / LAYOUT_PATH).read_text())["layout"])
    meta = pq.read_table(root / EPISODES_PATH.format(chunk_index=0, file_index=0)).to_pylist()
    rows = [row for row in meta if row["episode_index"] == index]
    if not rows:
        raise ValueError(f"index {index} is not an episode of {str(root)!r} (it has {len(meta)})")
    row = rows[0]
    info = read_info(root)
    path = root / info["data_path"].format(chunk_index=row["data/chunk_index"], file_index=row["data/file_index"])
    table = pq.read_table(path)
    table = table.slice(row["dataset_from_index"] - table.column("index")[0].as_py(), row["length"])
    state_flat = np.asarray(table.column("observation.state").combine_chunks().flatten()).reshape(len(table), -1)
    action_flat = np.asarray(table.column("action").combine_chunks().flatten()).reshape(len(table), -1)
    state, offset = {}, 0
    for key, shape in layout.state:
        size = int(np.prod(shape))
        state[key] = state_flat[:, offset:offset + size].reshape((len(table),) + tuple(shape))
        offset += size
    actions = []
    for values in action_flat:
        commands, offset = {}, 0
        for target, kind, shape in layout.action:
            size = int(np.prod(shape))
            commands[target] = Command(kind, values[offset:offset + size].astype(np.float64).reshape(shape))
            offset += size
        actions.append(Action(commands))
    decoded = {}
    if images:
        for name, shape in layout.images:
            column = table.column(f"observation.images.{name}").to_pylist()
            frames = [np.asarray(image_module.open(io.BytesIO(cell["bytes"]))) for cell in column]
            decoded[name] = np.stack([f.reshape(shape) for f in frames])
    return Episode(index=index, state=state, actions=actions, step_index=np.asarray(table.column("aiofranka.step_index")),
                   frame_index=np.asarray(table.column("frame_index")), timestamp=np.asarray(table.column("timestamp")),
                   robot_time_ms=np.asarray(table.column("aiofranka.robot_time_ms")), images=decoded,
                   complete=bool(row.get("aiofranka/complete", True)),
                   dropped_steps=int(row.get("aiofranka/dropped_steps", 0)), task=row["tasks"][0] if row["tasks"] else "",
                   fps=float(info["fps"]))
