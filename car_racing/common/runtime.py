"""What every stage needs around its models: device choice, seeding, atomic files, checkpoints, plots.

A checkpoint is one dict (nanoGPT style)::

    {"kind": "vision" | "memory" | "controller",
     "model_args": {...},          # rebuild with Model(**model_args); later stages never re-declare sizes
     "model_state": state_dict,
     "optimizer_state": ...,       # when the stage has an optimizer
     "epoch": int, "best_val_loss": float, "config": asdict(args), "history": {...}, ...}

Files are written to a temporary name in the same folder and renamed, so an interrupted write
never replaces the last good file. A checkpoint holds plain data only and is read with
``torch.load(weights_only=True)``: loading a file never runs code (:mod:`car_racing.common.plain_data`).

torch is imported inside the functions that need it, so scripts that never touch a model (the recorder,
``--help`` of every script) start without loading it (~1 s).
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from car_racing.common.cli import UsageError

if TYPE_CHECKING:  # annotations only: torch is imported where it is used
    import torch

# Which script writes each kind of checkpoint: named in errors so a user knows what to run.
STAGE_SCRIPTS = {
    "vision": "car_racing/train_vision.py",
    "memory": "car_racing/train_memory.py",
    "controller": "car_racing/train_controller_cmaes.py",
}
MEMORY_LATEST_FILE = "memory_model_latest.pth"  # train_memory.py's resumable latest epoch (beside the best)
# The file each stage writes in a checkpoint folder (the best model; resumable states sit beside it).
CHECKPOINT_FILES = {
    "vision": "vision_model.pth",
    "memory": "memory_model.pth",
    "controller": "control_model_cmaes.pth",
}


def checkpoint_paths(checkpoint_dir: str | os.PathLike) -> dict[str, Path]:
    """kind ("vision", "memory", "controller") → its checkpoint file in ``checkpoint_dir``."""
    return {kind: Path(checkpoint_dir) / name for kind, name in CHECKPOINT_FILES.items()}


# Training stages write to checkpoints/ by default (the seed's folder); the shipped agents live apart, where no
# stage writes by default and none may write at all (refuse_shipped).
USER_CHECKPOINT_DIR = "checkpoints"
SHIPPED_DIR = Path(__file__).resolve().parents[2] / "checkpoints" / "pretrained"
SHIPPED_AGENTS = ("default", "dream", "reward-only")


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it (how the user would type it)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def agent_dir(checkpoint_dir: str | os.PathLike | None, kinds: Sequence[str] = ("vision", "memory", "controller")
              ) -> str:
    """The folder a script that only reads models loads them from, said aloud when it was not given.

    ``--checkpoint-dir`` when given; else ``checkpoints/`` once the stage scripts have written every kind needed
    there (the user's own models); else the shipped default agent, ``checkpoints/pretrained/default``."""
    if checkpoint_dir is not None:
        return str(checkpoint_dir)
    own = checkpoint_paths(USER_CHECKPOINT_DIR)
    if all(own[kind].is_file() for kind in kinds):
        print(f"loading your own models from {USER_CHECKPOINT_DIR}/ (--checkpoint-dir to choose another folder)")
        return USER_CHECKPOINT_DIR
    shipped = _shown(SHIPPED_DIR / "default")
    print(f"loading the shipped agent from {shipped}/ (checkpoints/ holds no {' / '.join(kinds)} of your own yet; "
          f"--checkpoint-dir to choose another folder)")
    return shipped


def refuse_shipped(path: str | os.PathLike, flag: str = "--checkpoint-dir") -> None:
    """One-line UsageError when a stage would write into a shipped agent's folder (``checkpoints/pretrained/``)."""
    resolved = Path(path).resolve()
    if resolved == SHIPPED_DIR or SHIPPED_DIR in resolved.parents:
        raise UsageError(f"{flag} {path}: that folder holds a shipped agent, which training never overwrites; "
                         f"write to checkpoints/ or a folder of your own (copy the shipped files there to start "
                         f"from them)")


def resolve_device(name: str | torch.device) -> torch.device:
    """``"auto"`` → CUDA when present, else CPU; otherwise any name torch accepts (``cpu``, ``cuda:1``).
    A ``torch.device`` is returned as it is."""
    import torch

    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r}: expected auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine (use --device auto or cpu)")
    return device


def seed_everything(seed: int, torch: bool = True) -> None:
    """One seed for Python's ``random``, numpy's global RNG and (unless ``torch=False``, for scripts that
    never load torch) torch's CPU and CUDA generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    if torch:
        import torch as torch_module

        torch_module.manual_seed(seed)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the mode a plain open() would
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_checkpoint(checkpoint: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write one checkpoint dict atomically, as plain data (:func:`car_racing.common.plain_data.plain`: numpy
    arrays become tensors; anything that would need code to load is a TypeError here, not a risk for the reader)."""
    import torch

    from car_racing.common.plain_data import plain

    data = plain(dict(checkpoint), Path(path).name)
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        # through a file object: torch names the zip's root folder "archive" instead of after the (random)
        # temporary file's name, so the same checkpoint gives the same bytes every time
        torch.save(data, file)


def save_resume_state(state: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write a run's resume file (:func:`car_racing.common.plain_data.resume_path`) atomically: a pickle, protocol 5
    (the tens of MB of CMA-ES state are written about 5× faster than with protocol 2; this runs every generation)."""
    import pickle

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            pickle.dump(dict(state), f, protocol=5)


def load_resume_state(path: str | os.PathLike) -> dict:
    """A run's resume file, unpickled. Only ``--resume`` of the run that wrote it reads it, and ``--resume`` trusts
    the folder it continues: the file is the run's own, never part of a checkpoint anyone hands on."""
    import pickle

    try:
        with open(path, "rb") as f:
            state = pickle.load(f)
    except Exception as err:
        raise UsageError(f"{path}: not a readable resume file ({type(err).__name__}); delete it and drop --resume "
                         f"to start over") from None
    if not isinstance(state, dict):
        raise UsageError(f"{path}: not a resume file (found {type(state).__name__}); drop --resume to start over")
    return state


def load_checkpoint(path: str | os.PathLike, kind: str, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint of the given kind, or raise a one-line :class:`UsageError` naming the file
    and the stage that makes it. The file is read with ``weights_only=True``: one that would need code to load
    is refused in one line naming what it would call, and nothing in it runs."""
    from car_racing.common.plain_data import Refused, load_plain

    path = Path(path)
    maker = STAGE_SCRIPTS.get(kind, "the stage that writes it")
    if not path.is_file():
        raise UsageError(f"{path}: no {kind} checkpoint here; run {maker} first (or pass --checkpoint-dir)")
    try:
        checkpoint = load_plain(path, map_location=map_location)
    except Refused as refused:
        raise UsageError(str(refused)) from None
    except Exception as err:  # torch raises many types for truncated/corrupt files
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UsageError(f"{path}: not a readable checkpoint (truncated or corrupt: {reason}); "
                         f"rerun {maker}") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("kind") != kind:
        found = checkpoint.get("kind") if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise UsageError(f"{path}: expected a {kind} checkpoint from {maker}, found {found!r}")
    for key in ("model_args", "model_state"):
        if key not in checkpoint:
            raise UsageError(f"{path}: {kind} checkpoint lacks {key!r}; rerun {maker}")
    return checkpoint


def build_model(model_cls: type[torch.nn.Module], checkpoint: Mapping[str, Any], path: str | os.PathLike
                ) -> torch.nn.Module:
    """``model_cls(**checkpoint["model_args"])`` with its weights loaded; one-line error on mismatch."""
    try:
        model = model_cls(**checkpoint["model_args"])
        model.load_state_dict(checkpoint["model_state"])
    except (TypeError, RuntimeError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"{path}: {checkpoint.get('kind', 'model')} checkpoint does not fit "
                         f"{model_cls.__name__} ({first_line}); rerun {STAGE_SCRIPTS.get(checkpoint.get('kind'), 'its stage')}"
                         ) from None
    return model


def load_model(path: str | os.PathLike, kind: str, device: str | torch.device = "cpu"
               ) -> tuple[torch.nn.Module, dict]:
    """The model of a ``kind`` checkpoint, rebuilt from its ``model_args``, on ``device`` in eval mode, and
    the checkpoint dict; one-line :class:`UsageError` when the file is missing, corrupt or does not fit."""
    from car_racing.models.ffn import Controller
    from car_racing.models.mdn_rnn import MDNRNN
    from car_racing.models.vae import VAE

    model_cls = {"vision": VAE, "memory": MDNRNN, "controller": Controller}[kind]
    checkpoint = load_checkpoint(path, kind)
    return build_model(model_cls, checkpoint, path).to(device).eval(), checkpoint


def plot_curves(curves: Mapping[str, Sequence[float]], path: str | os.PathLike, *, title: str,
                xlabel: str = "epoch", ylabel: str = "loss", log_y: bool = False,
                x: Mapping[str, Sequence[float]] | None = None) -> None:
    """Write a PNG with one line per named curve (atomically). ``x`` optionally gives each curve's x values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for name, values in curves.items():
        if len(values) == 0:
            continue
        xs = list(x[name]) if x and name in x else list(range(1, len(values) + 1))
        ax.plot(xs, list(values), marker="o" if len(values) < 30 else None, markersize=3, label=name)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if log_y:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def link_or_copy(source: Path, target: Path) -> None:
    """``target`` becomes a hard link to ``source`` (a copy where links are impossible), atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copy2(source, tmp)


# --- the stages: each returns a dict of results for the loop state -----------------------------------------


def no_grad(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``torch.no_grad()`` around ``fn``, importing torch only when it is called (so a script's ``--help``
    never loads torch)."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import torch

        with torch.no_grad():
            return fn(*args, **kwargs)
    return wrapper
