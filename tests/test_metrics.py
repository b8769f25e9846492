"""Per-run metrics: the JSON-lines file every training stage writes, and the optional TensorBoard events."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from car_racing.common import metrics as metrics_module
from car_racing.common.cli import UsageError
from car_racing.common.metrics import MetricsLog, metrics_path, read_metrics, tensorboard_dir

REPO = Path(__file__).resolve().parent.parent


def test_metrics_log_starts_anew_or_keeps_the_resumed_steps(tmp_path):
    with MetricsLog(tmp_path, "stage") as log:
        for step in (1, 2, 3):
            log.log(step, {"loss": 1.0 / step, "nan": math.nan, "skipped_list": [1, 2]}, best=step == 1)
    path = metrics_path(tmp_path, "stage")
    records = read_metrics(path)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[1]["loss"] == 0.5 and records[0]["best"] is True
    assert records[0]["nan"] is None and "skipped_list" not in records[0]  # strict JSON: no NaN, scalars only
    for line in path.read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))
    with open(path, "a") as f:
        f.write('{"step": 4, "lo')  # a torn append
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]

    with MetricsLog(tmp_path, "stage", resume_after=2) as log:  # resumed after step 2: step 3 was not saved
        log.log(3, loss=0.25)
    assert [(r["step"], r["loss"]) for r in read_metrics(path)] == [(1, 1.0), (2, 0.5), (3, 0.25)]
    with MetricsLog(tmp_path, "stage", keep=lambda r: r["step"] == 1) as log:
        pass
    assert [r["step"] for r in read_metrics(path)] == [1]
    MetricsLog(tmp_path, "stage").close()  # a fresh run
    assert read_metrics(path) == []


def test_missing_tensorboard_is_a_one_line_error(tmp_path, monkeypatch):
    real_find_spec = metrics_module.importlib.util.find_spec
    monkeypatch.setattr(metrics_module.importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else real_find_spec(name, *a))
    with pytest.raises(UsageError, match="--tensorboard: .*pip install -r requirements-tensorboard.txt") as err:
        MetricsLog(tmp_path, "stage", tensorboard=True)
    assert "\n" not in str(err.value)


def test_vision_stage_writes_metrics_and_tensorboard_events(tiny_data_dir, tmp_path, one_torch_thread):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from car_racing.common.config import preset
    from car_racing.training.vision import train_vision

    checkpoint_dir = tmp_path / "run"
    final = train_vision(preset("default", run__data_dir=str(tiny_data_dir), run__checkpoint_dir=str(checkpoint_dir),
                                run__device="cpu", run__tensorboard=True, vision__epochs=2, vision__batch_size=32,
                                vision__val_fraction=0.34))
    records = read_metrics(metrics_path(checkpoint_dir, "vision"))
    assert [r["step"] for r in records] == [1, 2]
    assert [r["val_loss"] for r in records] == pytest.approx(final["history"]["val_loss"])
    events = list(tensorboard_dir(checkpoint_dir, "vision").glob("events.out.tfevents.*"))
    assert events
    accumulator = EventAccumulator(str(tensorboard_dir(checkpoint_dir, "vision"))).Reload()
    assert "vision/val_loss" in accumulator.Tags()["scalars"]
    scalars = accumulator.Scalars("vision/train_recon")
    assert [s.step for s in scalars] == [1, 2]
    assert [s.value for s in scalars] == pytest.approx(final["history"]["train_recon"], rel=1e-6)


def test_a_stage_without_tensorboard_imports_none(tiny_data_dir, tmp_path):
    code = (
        "import sys, torch; torch.set_num_threads(1)\n"
        "from car_racing.common.config import preset\n"
        "from car_racing.training.vision import train_vision\n"
        f"train_vision(preset('default', run__data_dir={str(tiny_data_dir)!r}, "
        f"run__checkpoint_dir={str(tmp_path / 'run')!r}, run__device='cpu', vision__epochs=1, vision__batch_size=32))\n"
        "assert not [m for m in sys.modules if m.startswith('tensorboard') or m == 'torch.utils.tensorboard'], 'imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(read_metrics(metrics_path(tmp_path / "run", "vision"))) == 1
    assert not (tmp_path / "run" / "tensorboard").exists()


def test_compare_runs_overlays_the_runs_metrics(tmp_path):
    import cv2

    from car_racing import compare_runs

    for run, scale in (("a", 1.0), ("b", 2.0)):
        with MetricsLog(tmp_path / run, "memory") as log:
            for step in (1, 2, 3):
                log.log(step, val_total=scale / step, train_total=scale)
    summary = compare_runs.main(compare_runs.Args(runs=(str(tmp_path / "a"), str(tmp_path / "b")), stage="memory",
                                                  out=str(tmp_path / "out" / "compare.png")))
    assert summary["curves"] == {"a: val_total": [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))],
                                 "b: val_total": [(1, 2.0), (2, 1.0), (3, pytest.approx(2 / 3))]}
    assert cv2.imread(summary["out"]) is not None
    with pytest.raises(UsageError, match="--keys nope: .*train_total, val_total"):
        compare_runs.main(compare_runs.Args(runs=(str(tmp_path / "a"),), stage="memory", keys=("nope",),
                                            out=str(tmp_path / "x.png")))
    with pytest.raises(UsageError, match="no vision_metrics.jsonl"):
        compare_runs.main(compare_runs.Args(runs=(str(tmp_path / "a"),), stage="vision", out=str(tmp_path / "x.png")))
