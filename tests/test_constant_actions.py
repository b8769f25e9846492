"""bench/constant_actions.py: constant actions held in each run's dream and on the road, two halves each."""

from __future__ import annotations

import pytest
from conftest import tiny_stage4_config
from test_controller_training import write_tiny_checkpoints

from bench import constant_actions
from car_racing.common.cli import UsageError
from car_racing.training.controller import train_controller

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_held_actions_pay_in_the_dream_and_on_the_road(tmp_path, tiny_data_dir, capsys):
    write_tiny_checkpoints(tmp_path / "checkpoints")
    train_controller(tiny_stage4_config(tmp_path / "checkpoints", tiny_data_dir, cmaes__init="zero",
                                        cmaes__generations=1))
    args = constant_actions.Args(runs=(str(tmp_path / "checkpoints"),), steps=40, trials=3, episodes=1,
                                 switch_steps=(60,), start_drivers=("synthetic",))
    result = constant_actions.main(args)
    assert list(result["real"]) == list(constant_actions.ACTIONS)
    (memory, dream), = result["dream"].items()  # one M, however many CMA-ES runs used it
    assert memory.endswith(".pth") and list(dream) == list(constant_actions.ACTIONS)
    # on the road, 60 steps into a track: full gas straight on collects tiles; a locked brake collects none after
    # the car stops (−0.1 a step)
    real = result["real"]
    assert real["gas 1 straight"][0] > real["brake 1"][0]
    assert real["brake 1"][1] == pytest.approx(-2.0, abs=0.05)
    assert constant_actions.main(args)["dream"] == result["dream"]  # seeded: the same dreams again
    out = capsys.readouterr().out
    assert "gas 1 straight" in out and "real (autopilot 60 steps" in out
    stage3 = constant_actions.main(constant_actions.Args(
        checkpoint_dir=str(tmp_path / "checkpoints"), data_dir=str(tiny_data_dir), steps=40, trials=3, episodes=1,
        switch_steps=(60,), start_drivers=("synthetic",)))  # a stage-3 M, before any stage 4
    assert list(stage3["dream"]) == [memory] and stage3["real"] == result["real"]
    with pytest.raises(UsageError, match="--steps 1"):
        constant_actions.main(constant_actions.Args(steps=1))
