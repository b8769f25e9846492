"""bench/check_actions.py: what each real-checked C did on its check tracks, read from the CMA-ES runs' checkpoints."""

from __future__ import annotations

import numpy as np
import pytest

from bench import check_actions
from car_racing.common.cli import UsageError
from car_racing.common.runtime import save_checkpoint

CONTROLLER = "control_model_cmaes.pth"


def checked(generation: int, source: str, score: float, steer: list[float], gas: float) -> dict:
    """A checked vector as Run.keep_if_best records it: two check tracks of the given steering, constant gas."""
    actions = [np.array([[s, gas, 0.0] for s in steer], np.float32), np.array([[steer[0], gas, 0.0]], np.float32)]
    return {"generation": generation, "source": f"{source} of generation {generation} (real score {score:.1f})",
            "score": score, "std": 0.0, "params": np.zeros(3, np.float32), "seeds": [1, 2], "returns": [score, score],
            "actions": actions}


def write_run(folder, checks: list[dict], kept: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint({"kind": "controller", "model_args": {}, "model_state": {}, "checked": checks,
                     "model_source": checks[kept]["source"],
                     "history": {"fitness_cma_mean": [10.0, 20.0, 30.0], "fitness_best": [15.0, 25.0, 35.0]}},
                    folder / CONTROLLER)


def test_each_checked_c_shows_its_dream_pay_real_score_and_actions(tmp_path, capsys):
    loop = tmp_path / "lineage" / "checkpoints" / "dream_loop"
    write_run(loop / "iter_00", [checked(0, "initial mean (zero)", -29.0, [0.0, 0.0], 0.5),
                                 checked(2, "best_candidate", 100.0, [0.5, -0.5, 0.5], 0.9),
                                 checked(2, "cma_mean", 600.0, [0.1, 0.1, 0.1], 0.3)], kept=2)
    write_run(loop / "iter_00" / "dream_choice", [checked(3, "cma_mean", 50.0, [0.0], 0.1)], kept=0)  # not a run
    write_run(loop / "iter_01" / "warm", [checked(0, "initial mean (checkpoint)", 610.0, [0.2, -0.2], 0.4),
                                          checked(3, "cma_mean", 300.0, [0.5, -0.5, 0.5], 0.9)], kept=0)
    write_run(loop / "iter_01" / "from_zero", [checked(3, "cma_mean", 100.0, [0.0], 0.2)], kept=0)
    write_run(loop / "iter_01", [checked(0, "initial mean (checkpoint)", 610.0, [0.2, -0.2], 0.4)], kept=0)  # copy

    text = check_actions.main(check_actions.Args(runs=(str(tmp_path / "lineage"),)))
    rows = [line.split(" | ") for line in text.splitlines()[2:]]
    assert [(row[0].strip("| "), row[1], row[2]) for row in rows] == [
        ("iter_00", "initial mean (zero)", "0"), ("iter_00", "cma_mean (kept)", "2"),
        ("iter_01/from_zero", "cma_mean (kept)", "3"),
        ("iter_01/warm", "initial mean (checkpoint) (kept)", "0"), ("iter_01/warm", "cma_mean", "3")]
    weaver = rows[-1]
    # dream pay of generation 3's mean; real 300; gas 0.9; |steer| 0.5 on all 4 steps; |Δsteer| 1.0 on the 2 steps
    # of the first track (the second track has one step: no change)
    assert weaver[3:9] == ["30", "300.0", "0.90", "0.00", "0.50", "1.000"]
    assert rows[0][3] == "—" and rows[1][3] == "20"  # generation 0 was never dreamt
    assert capsys.readouterr().out.strip() == text

    with_best = check_actions.main(check_actions.Args(runs=(str(loop / "iter_00"),), best_candidates=True))
    assert "| best_candidate | 2 | 25 | 100.0 |" in with_best  # the best candidate's own dream pay


def test_a_missing_run_is_one_line(tmp_path):
    with pytest.raises(UsageError, match="--runs .*nowhere: no such file or folder"):
        check_actions.main(check_actions.Args(runs=(str(tmp_path / "nowhere"),)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="holds no controller checkpoint"):
        check_actions.main(check_actions.Args(runs=(str(tmp_path / "empty"),)))
