"""bench/bench_all.py --quick: every measurement is there and positive, and the JSON holds the same numbers
(the backends section starts and stops a local Ray)."""

from __future__ import annotations

import json
import math

import pytest

from bench import bench_all


def test_quick_run_reports_every_measurement(tmp_path, capsys):
    pytest.importorskip("ray")  # an optional extra (requirements-ray.txt; make test installs it)
    out = tmp_path / "out" / "bench.json"
    report = bench_all.main(bench_all.Args(quick=True, workers=2, threads=1, checkpoint_dir=str(tmp_path / "none"),
                                           data_dir=str(tmp_path / "no_data"), json=str(out)))
    rows = {row["name"]: row for row in report["rows"]}
    vision_step = report["details"]["vision"]["train_variant"]
    expected = {"env, 1 process, stock renderer": "steps/s", "env, 1 process, fast_render": "steps/s",
                "V train, naive fp32": "images/s", f"V train, {vision_step}": "images/s",
                "M train, loop of step()": "seq steps/s", "M train, sequence forward": "seq steps/s",
                "dream, per-candidate loop": "dream steps/s", "dream, batched float32": "dream steps/s",
                "dream, batched bfloat16": "dream steps/s",
                "agent eval, 1 worker": "episodes/min", "agent eval, 2 workers": "episodes/min",
                "simulator, 2 workers, processes backend": "episodes/s",
                "simulator, 2 workers, ray backend": "episodes/s"}
    assert set(rows) == set(expected)
    for name, unit in expected.items():
        assert rows[name]["unit"] == unit
        assert math.isfinite(rows[name]["value"]) and rows[name]["value"] > 0, name
        if rows[name]["baseline"] is not None:
            assert rows[name]["ratio"] > 0, name
    assert rows["env, 1 process, fast_render"]["ratio"] is not None
    assert rows["agent eval, 2 workers"]["ratio"] is not None
    assert report["details"]["env"]["identical"]
    assert report["settings"]["evaluation"]["agent"].startswith("random")
    assert report["details"]["evaluation"]["2"]["episodes"] == 2
    assert report["details"]["backends"]["identical"]  # the same episodes on both backends
    assert rows["simulator, 2 workers, ray backend"]["ratio"] is not None
    assert report["machine"]["cores"] >= 1 and report["machine"]["torch"]

    assert json.loads(out.read_text())["rows"] == report["rows"]
    assert [p.name for p in out.parent.iterdir()] == ["bench.json"]  # no temporary file left behind
    printed = capsys.readouterr().out
    assert "== summary" in printed and "machine: " in printed and "agent eval, 2 workers" in printed
