"""Per-run scalar logs that compare across runs: one JSON-lines file per stage and run, TensorBoard optional.

Every training stage appends one record per epoch / generation / iteration to
``CHECKPOINT_DIR/<stage>_metrics.jsonl``::

    {"step": 3, "time": 1764633600.123, "train_recon": 41.2, "val_recon": 43.0, "beta": 0.03, ...}

(``step`` is the epoch, generation or iteration; ``time`` the Unix time; non-finite numbers are written as
``null``). These are the values the stage's PNG curves show. A fresh run starts the file anew; a resumed run
keeps the records up to the step it resumes after and drops any later ones (written after the last saved
state, before a crash), so the file always matches the checkpoint it sits beside.

With ``--tensorboard`` the same scalars also go to TensorBoard event files in
``CHECKPOINT_DIR/tensorboard/<stage>/`` (tags ``<stage>/<name>``), so ``tensorboard --logdir checkpoints``
overlays every run under ``checkpoints/``. TensorBoard is an optional extra
(``pip install -r requirements-tensorboard.txt``); it is imported only when the flag asks for it.

    python -c "import json; print([json.loads(l)['val_loss'] for l in open('checkpoints/vision_metrics.jsonl')])"
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from car_racing.common.cli import UsageError
from car_racing.common.runtime import atomic_path

METRICS_SUFFIX = "_metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
TENSORBOARD_INSTALL = "pip install -r requirements-tensorboard.txt"


def metrics_path(checkpoint_dir: str | os.PathLike, stage: str) -> Path:
    """``CHECKPOINT_DIR/<stage>_metrics.jsonl``."""
    return Path(checkpoint_dir) / f"{stage}{METRICS_SUFFIX}"


def tensorboard_dir(checkpoint_dir: str | os.PathLike, stage: str) -> Path:
    """``CHECKPOINT_DIR/tensorboard/<stage>``: where ``--tensorboard`` writes the stage's event files."""
    return Path(checkpoint_dir) / TENSORBOARD_DIR / stage


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a metrics file, in order ([] when there is none; a torn last line is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # an interrupted append
        if isinstance(record, dict):
            records.append(record)
    return records


def require_tensorboard(flag: str = "--tensorboard") -> None:
    """One-line :class:`UsageError` naming the install command when the tensorboard package is missing."""
    if importlib.util.find_spec("tensorboard") is None:
        raise UsageError(f"{flag}: needs the optional tensorboard package, which is not installed; "
                         f"run: {TENSORBOARD_INSTALL}")


def _clean(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) or hasattr(value, "item"):  # numpy / torch scalars too
        try:
            value = value.item() if hasattr(value, "item") else value
        except (ValueError, RuntimeError):
            return None
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value
    if isinstance(value, str) or value is None:
        return value
    return None  # lists, dicts: not scalars


class MetricsLog:
    """Appends one record per step to a stage's metrics file (and, optionally, TensorBoard).

    ``resume_after``: ``None`` starts the file anew (a fresh run); a step number keeps the records up to it
    and drops later ones (a resumed run). ``keep`` instead keeps the records it returns True for (and tells
    TensorBoard to purge nothing). ``tensorboard`` also writes TensorBoard events (UsageError when the
    package is missing).
    """

    def __init__(self, checkpoint_dir: str | os.PathLike, stage: str, *, resume_after: int | None = None,
                 keep: Callable[[dict], bool] | None = None, tensorboard: bool = False):
        self.stage = stage
        self.path = metrics_path(checkpoint_dir, stage)
        if keep is None and resume_after is not None:
            keep = lambda record: isinstance(record.get("step"), int) and record["step"] <= resume_after  # noqa: E731
        kept = [r for r in read_metrics(self.path) if keep(r)] if keep is not None else []
        with atomic_path(self.path) as tmp:  # the kept records, whole lines only
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self._file = open(self.path, "a")
        self._writer = None
        if tensorboard:
            require_tensorboard()
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides events of earlier sessions from that step on (a fresh run: all of them)
            purge = None if keep is not None and resume_after is None else (
                0 if resume_after is None else resume_after + 1)
            self._writer = SummaryWriter(log_dir=str(tensorboard_dir(checkpoint_dir, stage)), purge_step=purge)

    def log(self, step: int, scalars: Mapping[str, Any] | None = None, **more: Any) -> dict:
        """Append ``{"step": step, "time": …, **scalars}``; returns the record written."""
        values = {**(scalars or {}), **more}
        record: dict[str, Any] = {"step": int(step), "time": round(time.time(), 3)}
        record.update({str(k): _clean(v) for k, v in values.items()
                       if v is None or isinstance(v, (bool, int, float, str)) or hasattr(v, "item")})  # no lists
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._writer is not None:
            for key, value in record.items():
                if key not in ("step", "time") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._writer.add_scalar(f"{self.stage}/{key}", value, int(step), walltime=record["time"])
            self._writer.flush()
        return record

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
