"""The on-disk format of recorded driving data: the contract between the stages.

Files in a data folder (N recorded steps over all episodes):

- ``car_racing_recorded_frames.npy``  uint8 (N, 64, 64, 3): the 96×96 observation the driver saw
  before choosing the action (dashboard included), resized with ``cv2.INTER_AREA``.
- ``car_racing_recorded_actions.npy`` float32 (N, 3): [steer, gas, brake] applied after that frame.
- ``car_racing_recorded_rewards.npy`` float32 (N,): the reward that step returned.
- ``car_racing_recorded_dones.npy``   bool (N,): True on the last step of each episode.
- ``car_racing_recorded_meta.json``: env id, gymnasium version, frame size and, per episode, the
  seed passed to ``env.reset(seed=...)``, driver, noise levels, start index, length, total reward,
  whether the lap was finished and whether the env terminated the episode (lap finished or car left the
  playfield; False for step-limit and driver cuts). Every episode re-simulates exactly from its seed and actions.
- Memory sequences (rebuilt after every recording), S windows of T steps that never cross an episode
  boundary: ``car_racing_memory_dataset_indices.npy`` int64 (S, T) into the arrays above, and
  ``car_racing_memory_dataset_{actions,rewards,dones}.npy`` (S, T, 3), (S, T), (S, T).

Writes are atomic per file (temporary name + rename) and the meta file is renamed last: after a
crash between renames the arrays may be longer than the meta says, and :func:`load_recorded` trusts
the meta and ignores the excess. Recorders save each finished episode to its own file under
``.pending_episodes/`` first (:class:`EpisodeStore`), so an interruption loses at most the episode in
progress; :func:`commit_pending` merges them into the arrays.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from car_racing.common.cli import UsageError
from car_racing.common.runtime import atomic_path
from car_racing.world.envs import ENV_ID, FRAME_SIZE, preprocess_frame  # noqa: F401 (part of the format)

FRAME_SHAPE = (FRAME_SIZE, FRAME_SIZE, 3)
FORMAT_VERSION = 1
DEFAULT_SEQ_LEN = 100

FRAMES_FILE = "car_racing_recorded_frames.npy"
ACTIONS_FILE = "car_racing_recorded_actions.npy"
REWARDS_FILE = "car_racing_recorded_rewards.npy"
DONES_FILE = "car_racing_recorded_dones.npy"
META_FILE = "car_racing_recorded_meta.json"
SEQ_INDICES_FILE = "car_racing_memory_dataset_indices.npy"
SEQ_ACTIONS_FILE = "car_racing_memory_dataset_actions.npy"
SEQ_REWARDS_FILE = "car_racing_memory_dataset_rewards.npy"
SEQ_DONES_FILE = "car_racing_memory_dataset_dones.npy"
PENDING_DIR = ".pending_episodes"

ARRAY_FILES = {  # name → (file, dtype, shape after N)
    "frames": (FRAMES_FILE, np.uint8, FRAME_SHAPE),
    "actions": (ACTIONS_FILE, np.float32, (3,)),
    "rewards": (REWARDS_FILE, np.float32, ()),
    "dones": (DONES_FILE, np.bool_, ()),
}


@dataclass
class RecordedEpisode:
    """One finished episode, as a recorder hands it to :class:`EpisodeStore`."""

    seed: int
    driver: str
    frames: np.ndarray  # uint8 (T, 64, 64, 3)
    actions: np.ndarray  # float32 (T, 3)
    rewards: np.ndarray  # float32 (T,)
    lap_finished: bool
    noise: dict[str, float] = field(default_factory=dict)
    terminated: bool | None = None  # the env ended the episode (lap or playfield), not a step limit or the driver

    @property
    def length(self) -> int:
        return int(len(self.actions))

    def meta(self, start: int) -> dict[str, Any]:
        return {"seed": int(self.seed), "driver": self.driver, "noise": dict(self.noise), "start": int(start),
                "length": self.length, "total_reward": float(np.sum(self.rewards, dtype=np.float64)),
                "lap_finished": bool(self.lap_finished),
                "terminated": bool(self.lap_finished) if self.terminated is None else bool(self.terminated)}


@dataclass
class RecordedData:
    """All recorded steps of a data folder, and its meta (see the module docstring)."""

    frames: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    meta: dict[str, Any]

    @property
    def episodes(self) -> list[dict[str, Any]]:
        return self.meta["episodes"]

    def __len__(self) -> int:
        return int(len(self.actions))

    def episode_slice(self, index: int) -> slice:
        episode = self.episodes[index]
        return slice(episode["start"], episode["start"] + episode["length"])


def new_meta() -> dict[str, Any]:
    return {"format_version": FORMAT_VERSION, "env_id": ENV_ID, "gymnasium_version": _gymnasium_version(),
            "frame_shape": list(FRAME_SHAPE), "frame_resize": "cv2.INTER_AREA", "episodes": []}


def has_recorded_data(data_dir: str | os.PathLike) -> bool:
    return (Path(data_dir) / META_FILE).exists()


def _read_meta(data_dir: Path) -> dict[str, Any]:
    path = data_dir / META_FILE
    if not path.is_file():
        raise UsageError(f"{path}: no recorded data here; record some with car_racing/recorded_frames.py "
                         f"(or pass --data-dir)")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"{path}: corrupt meta file ({err})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("episodes"), list):
        raise UsageError(f"{path}: not a recording meta file (no 'episodes' list)")
    if tuple(meta.get("frame_shape", ())) != FRAME_SHAPE:
        raise UsageError(f"{path}: frames are {meta.get('frame_shape')}, expected {list(FRAME_SHAPE)}")
    expected_start = 0
    for i, episode in enumerate(meta["episodes"]):
        if episode.get("start") != expected_start or int(episode.get("length", 0)) < 1:
            raise UsageError(f"{path}: episode {i} has start {episode.get('start')} / length "
                             f"{episode.get('length')}, expected contiguous episodes from index {expected_start}")
        expected_start += int(episode["length"])
    return meta


def _open_array(path: Path, dtype: Any, item_shape: tuple, min_len: int, mmap: bool) -> np.ndarray:
    if not path.is_file():
        raise UsageError(f"{path}: missing; the recording is incomplete (record again)")
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise UsageError(f"{path}: corrupt .npy file ({str(err).splitlines()[0]})") from None
    if array.dtype != dtype or array.shape[1:] != item_shape:
        raise UsageError(f"{path}: found {array.dtype} {array.shape}, expected {np.dtype(dtype)} "
                         f"(N, {', '.join(map(str, item_shape))})".replace(", )", ")"))
    if len(array) < min_len:
        raise UsageError(f"{path}: holds {len(array)} steps but the meta file lists {min_len}")
    return array[:min_len]


def load_recorded(data_dir: str | os.PathLike, mmap: bool = False) -> RecordedData:
    """Read and validate a data folder; any mismatch is a one-line :class:`UsageError` naming the file."""
    data_dir = Path(data_dir)
    meta = _read_meta(data_dir)
    total = sum(int(e["length"]) for e in meta["episodes"])
    arrays = {name: _open_array(data_dir / file, dtype, shape, total, mmap)
              for name, (file, dtype, shape) in ARRAY_FILES.items()}
    ends = np.zeros(total, dtype=bool)
    if total:
        ends[np.cumsum([e["length"] for e in meta["episodes"]]) - 1] = True
    if not np.array_equal(np.asarray(arrays["dones"]), ends):
        raise UsageError(f"{data_dir / DONES_FILE}: done flags do not match the episode ends in {META_FILE}")
    return RecordedData(meta=meta, **arrays)


def _write_npy(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` to a temporary file beside ``path`` and return the temporary path (not renamed)."""
    tmp = path.with_name(f".{path.name}.tmp.npy")
    np.save(tmp, array)
    return tmp


def write_recorded(data_dir: str | os.PathLike, arrays: dict[str, np.ndarray], meta: dict[str, Any],
                   seq_len: int = DEFAULT_SEQ_LEN) -> None:
    """Replace the data folder's arrays and meta (meta renamed last), then rebuild the memory sequences."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    staged = [( _write_npy(data_dir / file, arrays[name]), data_dir / file)
              for name, (file, _, _) in ARRAY_FILES.items()]
    meta = dict(meta, seq_len=seq_len)
    with atomic_path(data_dir / META_FILE) as tmp_meta:
        tmp_meta.write_text(json.dumps(meta, indent=1))
        for tmp, final in staged:
            os.replace(tmp, final)
    write_memory_sequences(data_dir, RecordedData(meta=meta, **arrays), seq_len)


def episode_windows(starts: Iterable[int], lengths: Iterable[int], seq_len: int) -> np.ndarray:
    """Start indices of length-``seq_len`` windows inside each episode, never crossing its end.

    Windows tile each episode without overlap; when the length is not a multiple of ``seq_len``, one
    more window ends exactly on the episode's last step, so M also sees every episode end (its done
    head needs them). Episodes shorter than ``seq_len`` give no window.
    """
    window_starts: list[int] = []
    for start, length in zip(starts, lengths):
        count = length // seq_len
        window_starts.extend(start + k * seq_len for k in range(count))
        if count and length % seq_len:
            window_starts.append(start + length - seq_len)
    return np.asarray(window_starts, dtype=np.int64)


def write_memory_sequences(data_dir: str | os.PathLike, data: RecordedData, seq_len: int = DEFAULT_SEQ_LEN
                           ) -> int:
    """Rebuild the ``car_racing_memory_dataset_*.npy`` windows; returns how many sequences there are."""
    data_dir = Path(data_dir)
    starts = episode_windows([e["start"] for e in data.episodes], [e["length"] for e in data.episodes], seq_len)
    indices = (starts[:, None] + np.arange(seq_len, dtype=np.int64)[None, :]).reshape(-1, seq_len)
    outputs = {SEQ_INDICES_FILE: indices, SEQ_ACTIONS_FILE: np.asarray(data.actions)[indices],
               SEQ_REWARDS_FILE: np.asarray(data.rewards)[indices], SEQ_DONES_FILE: np.asarray(data.dones)[indices]}
    for file, array in outputs.items():
        with atomic_path(data_dir / file) as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, array)
    return len(indices)


@dataclass
class MemorySequences:
    indices: np.ndarray  # int64 (S, T)
    actions: np.ndarray  # float32 (S, T, 3)
    rewards: np.ndarray  # float32 (S, T)
    dones: np.ndarray  # bool (S, T)


def load_memory_sequences(data_dir: str | os.PathLike) -> MemorySequences:
    """Read the memory windows, checked against the recording they index."""
    data_dir = Path(data_dir)
    total = sum(int(e["length"]) for e in _read_meta(data_dir)["episodes"])
    arrays = {}
    for name, file in (("indices", SEQ_INDICES_FILE), ("actions", SEQ_ACTIONS_FILE),
                       ("rewards", SEQ_REWARDS_FILE), ("dones", SEQ_DONES_FILE)):
        path = data_dir / file
        if not path.is_file():
            raise UsageError(f"{path}: missing; rerun car_racing/recorded_frames.py --record.append --record.episodes 1 "
                             f"or record again")
        try:
            arrays[name] = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise UsageError(f"{path}: corrupt .npy file ({str(err).splitlines()[0]})") from None
    sequences = MemorySequences(**arrays)
    shape = sequences.indices.shape
    if sequences.indices.ndim != 2 or sequences.actions.shape != shape + (3,) or \
            sequences.rewards.shape != shape or sequences.dones.shape != shape:
        raise UsageError(f"{data_dir / SEQ_INDICES_FILE}: memory sequence files disagree in shape")
    if sequences.indices.size and (sequences.indices.min() < 0 or sequences.indices.max() >= total):
        raise UsageError(f"{data_dir / SEQ_INDICES_FILE}: indices outside the {total} recorded steps")
    return sequences


def pending_files(data_dir: str | os.PathLike) -> list[Path]:
    """Episodes a recorder saved under ``data_dir/.pending_episodes`` and has not merged into the arrays yet."""
    return sorted((Path(data_dir) / PENDING_DIR).glob("episode_*.npz"))


class EpisodeStore:
    """Saves finished episodes one file each under ``data_dir/.pending_episodes`` (atomic), and
    :meth:`commit` merges them into the data folder's arrays.

    With ``append=False`` the committed data replaces what was there; until the commit the old data
    stays untouched. Pending files left by a crash are merged by the next ``append`` run.
    """

    def __init__(self, data_dir: str | os.PathLike, append: bool, seq_len: int = DEFAULT_SEQ_LEN):
        self.data_dir = Path(data_dir)
        self.append = append
        self.seq_len = seq_len
        self.pending_dir = self.data_dir / PENDING_DIR
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            probe = self.data_dir / ".write_probe"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise UsageError(f"--data-dir {self.data_dir}: not writable ({err.strerror})") from None
        self.base = load_recorded(self.data_dir) if append and has_recorded_data(self.data_dir) else None
        if not append and self.pending_dir.exists():
            shutil.rmtree(self.pending_dir)  # leftovers of an interrupted replace-recording
        self.pending_dir.mkdir(exist_ok=True)
        self._counter = len(list(self.pending_dir.glob("*.npz")))

    def add(self, episode: RecordedEpisode) -> None:
        """Save one finished episode (atomic); it is merged into the arrays at :meth:`commit`."""
        path = self.pending_dir / f"episode_{self._counter:06d}.npz"
        self._counter += 1
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, frames=episode.frames, actions=episode.actions, rewards=episode.rewards,
                         meta=np.array(json.dumps(episode.meta(0))))

    def pending_files(self) -> list[Path]:
        return pending_files(self.data_dir)

    def commit(self) -> RecordedData:
        """Merge base data (when appending) and all pending episodes into the data folder."""
        meta = self.base.meta if self.base is not None else new_meta()
        meta = dict(meta, episodes=list(meta["episodes"]), gymnasium_version=_gymnasium_version())
        parts: dict[str, list[np.ndarray]] = {name: [] for name in ARRAY_FILES}
        if self.base is not None:
            for name in ARRAY_FILES:
                parts[name].append(np.asarray(getattr(self.base, name)))
        start = sum(int(e["length"]) for e in meta["episodes"])
        files = self.pending_files()
        for path in files:
            with np.load(path, allow_pickle=False) as npz:
                episode_meta = json.loads(str(npz["meta"]))
                length = int(episode_meta["length"])
                parts["frames"].append(npz["frames"].astype(np.uint8, copy=False))
                parts["actions"].append(npz["actions"].astype(np.float32, copy=False))
                parts["rewards"].append(npz["rewards"].astype(np.float32, copy=False))
            dones = np.zeros(length, dtype=bool)
            dones[-1] = True
            parts["dones"].append(dones)
            meta["episodes"].append(dict(episode_meta, start=start))
            start += length
        arrays = {name: (np.concatenate(chunks) if chunks else
                         np.zeros((0,) + ARRAY_FILES[name][2], dtype=ARRAY_FILES[name][1]))
                  for name, chunks in parts.items()}
        write_recorded(self.data_dir, arrays, meta, self.seq_len)
        for path in files:
            path.unlink()
        self.base = load_recorded(self.data_dir)
        return self.base


def episode_frame_indices(episodes: list[dict[str, Any]], chosen: list[int]) -> np.ndarray:
    """int64 indices of all recorded steps of the chosen episodes (meta ``start``/``length``)."""
    parts = [np.arange(episodes[i]["start"], episodes[i]["start"] + episodes[i]["length"]) for i in chosen]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


def pending_seeds(paths: list[Path]) -> list[int]:
    """Seeds of episodes left in ``.pending_episodes`` by an interrupted run (merged by this --record.append run).

    Also checks that each file is readable, so a bad leftover stops the run before any driving.
    """
    seeds = []
    for path in paths:
        try:
            with np.load(path, allow_pickle=False) as npz:
                meta = json.loads(str(npz["meta"]))
                frames_shape = npz["frames"].shape
                ok = frames_shape[1:] == FRAME_SHAPE and frames_shape[0] == int(meta["length"]) >= 1
            seeds.append(int(meta["seed"]))
        except Exception as err:  # zip, json and key errors alike: one message
            raise UsageError(f"{path}: unreadable pending episode ({type(err).__name__}); delete it or record "
                             f"without --record.append") from None
        if not ok:
            raise UsageError(f"{path}: pending episode holds frames {frames_shape}, expected (length, "
                             f"{', '.join(map(str, FRAME_SHAPE))}); delete it or record without --record.append")
    return seeds


def recording_seq_len(data_dir: str | os.PathLike) -> int:
    """The window length of the recording's memory sequences (episodes appended later keep it), or the default
    for a folder with no recording yet."""
    if not has_recorded_data(data_dir):
        return DEFAULT_SEQ_LEN
    indices = load_memory_sequences(data_dir).indices
    return int(indices.shape[1]) if indices.ndim == 2 and indices.shape[1] else DEFAULT_SEQ_LEN


def merge_pending(data_dir: str | os.PathLike) -> None:
    """Merge the episodes an interrupted recorder saved but did not merge (nothing when there are none)."""
    if pending_files(data_dir):
        EpisodeStore(data_dir, append=True, seq_len=recording_seq_len(data_dir)).commit()


@contextmanager
def appending_to(data_dir: str | os.PathLike) -> Iterator[EpisodeStore]:
    """An :class:`EpisodeStore` appending to ``data_dir`` (its window length kept); on exit, also after an
    interruption, every episode saved so far is merged (a rerun finds them in the data)."""
    store = EpisodeStore(data_dir, append=True, seq_len=recording_seq_len(data_dir))
    try:
        yield store
    finally:
        if store.pending_files():
            store.commit()


def recorded_run(data_dir: str | os.PathLike, driver: str, run_key: str, run: int) -> list[dict[str, Any]]:
    """The meta of one run's (e.g. one loop iteration's) episodes of ``driver``: those whose meta (``noise``) has
    ``run_key`` = ``run``, in recording order. Pending episodes of an interruption are merged first."""
    merge_pending(data_dir)
    if not has_recorded_data(data_dir):
        return []
    return [e for e in load_recorded(data_dir, mmap=True).episodes
            if e["driver"] == driver and int(e["noise"].get(run_key, -1)) == run]


def recorded_trials(data_dir: str | os.PathLike, driver: str, run_key: str, trial_key: str, run: int) -> set[int]:
    """The trials (meta ``trial_key``) of one run of ``driver``'s episodes already in the data
    (:func:`recorded_run`): a rerun after an interruption records only the others, never one twice."""
    return {int(e["noise"][trial_key]) for e in recorded_run(data_dir, driver, run_key, run)}


def recorded_seeds(data_dir: str) -> set[int]:
    """Seeds in the recording, including episodes an interrupted recorder saved but did not merge yet."""
    seeds = {int(e["seed"]) for e in load_recorded(data_dir, mmap=True).episodes} if has_recorded_data(data_dir) else set()
    return seeds | set(pending_seeds(pending_files(data_dir)))  # (it also checks each file)


def _gymnasium_version() -> str:
    from importlib.metadata import version

    return version("gymnasium")
