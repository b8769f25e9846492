"""bench/dream_inputs.py: each checked C driven in its run's own dream, beside its real checks."""

from __future__ import annotations

import pytest
from conftest import tiny_stage4_config
from test_controller_training import write_tiny_checkpoints

from bench import dream_inputs
from car_racing.common.cli import UsageError
from car_racing.training.controller import train_controller

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_agreement_counts_pairs_the_dream_orders_like_the_real_checks():
    # real 0, 100, 300, 310: pairs (0,1) (0,2) (0,3) (1,2) (1,3) counted, (2,3) within the margin; only (0,1) is
    # ordered the other way (dream 5 > 1)
    assert dream_inputs.agreement([0, 100, 300, 310], [5, 1, 9, 8], margin=50) == (4, 5)
    assert dream_inputs.agreement([0, 10], [1, 2], margin=50) == (0, 0)


def test_each_checked_c_drives_its_runs_dream_beside_its_real_checks(tmp_path, tiny_data_dir, capsys):
    write_tiny_checkpoints(tmp_path / "checkpoints")
    run = train_controller(tiny_stage4_config(tmp_path / "checkpoints", tiny_data_dir, cmaes__init="zero",
                                              cmaes__generations=2))
    result = dream_inputs.main(dream_inputs.Args(runs=(str(tmp_path / "checkpoints"),), trials=3))
    rows = result["rows"]
    assert [row[1:3] for row in rows] == [[c["source"].split(" of generation")[0], str(c["generation"])]
                                          for c in run["checked"]]
    for row, check in zip(rows, run["checked"]):
        assert float(row[4]) == pytest.approx(check["score"], abs=0.05)
        assert float(row[5]) > 0  # the dream's z moves (M samples it)
        assert 0 <= float(row[6]) <= 1 and 0 <= float(row[8]) <= 2
    assert rows[0][6] == "0.00"  # the zero start does not steer, in the dream as on the road
    assert list(result["recording_dz"].values())[0]["synthetic"] > 0
    out = capsys.readouterr().out
    assert "real |Δz| per step" in out and "pairs of checked vectors" in out
    still = dream_inputs.main(dream_inputs.Args(runs=(str(tmp_path / "checkpoints"),), trials=3, temperature=0.0))
    assert all(float(a[5]) < float(b[5]) for a, b in zip(still["rows"], rows))  # no sampling: z moves less
    quiet = dream_inputs.main(dream_inputs.Args(runs=(str(tmp_path / "checkpoints"),), trials=3, quiet_above=1e-6))
    assert all(float(a[5]) < float(b[5]) for a, b in zip(quiet["rows"], rows))  # every dimension quiet: z moves less
    loud = dream_inputs.main(dream_inputs.Args(runs=(str(tmp_path / "checkpoints"),), trials=3, quiet_above=1e6))
    assert loud["rows"] == rows  # no dimension quiet: the run's own dream
    with pytest.raises(UsageError, match="--quiet-above"):
        dream_inputs.main(dream_inputs.Args(runs=(str(tmp_path / "checkpoints"),), quiet_above=-1.0))
    with pytest.raises(UsageError, match="--trials 0"):
        dream_inputs.main(dream_inputs.Args(runs=(str(tmp_path / "checkpoints"),), trials=0))
