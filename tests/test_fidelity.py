"""The fidelity panel as a library (car_racing/training/fidelity.py): which dream it measures, and its typed entry
point giving what the script gives."""

from __future__ import annotations

import json

import pytest
from test_controller_training import write_tiny_checkpoints

from car_racing import evaluate_world_model
from car_racing.common.cli import UsageError
from car_racing.common.config import Config, ConfigError, Dream, as_dict, with_values
from car_racing.episodes.rollout import Backend
from car_racing.training.fidelity import dream_of, measure_fidelity, saved_dream

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# a dream-mode C's config as the shipped checkpoints hold it (train_controller_cmaes.py's old flat Args)
FLAT = {"mode": "dream", "rollout_steps": 7, "dream_trials": 5, "temperature": 1.3, "dream_dropout": 0.2,
        "start_states": 24, "dream_start": "episode-start", "dream_value": False, "dream_fitness": "quantile",
        "population": 8}
SAME_DREAM = Dream(steps=7, trials=32, temperature=1.3, dropout=0.2, start_states=24, start="episode-start",
                   value=False)


def nested(mode: str = "dream", **dream: object) -> dict:
    """A C's config as stage 4 writes it now (car_racing.common.config.as_dict)."""
    values = {"cmaes.mode": mode, **{f"dream.{k}": v for k, v in dream.items()}}
    return as_dict(with_values(Config(), values))


def test_dream_of_reads_either_saved_form_and_explicit_values_win():
    assert dream_of({"config": FLAT}, {}) == SAME_DREAM  # trials at least 32 unless given
    as_now = nested(steps=7, trials=5, temperature=1.3, dropout=0.2, start_states=24, start="episode-start",
                    value=False, fitness="quantile")
    assert dream_of({"config": as_now}, {}) == SAME_DREAM  # the same C saved either way: the same dream
    assert dream_of({"config": {**FLAT, "dream_trials": 64}}, {}).trials == 64
    explicit = {"steps": 6, "trials": 3, "temperature": None, "value": True}  # None: not given
    assert dream_of({"config": FLAT}, explicit) == Dream(steps=6, trials=3, temperature=1.3, dropout=0.2,
                                                          start_states=24, start="episode-start", value=True)
    # only the settings the panel has always taken: fitness, dtype, start drivers stay the defaults
    assert saved_dream(FLAT).keys() == {"steps", "trials", "temperature", "dropout", "start_states", "start", "value"}


def test_dream_of_a_c_not_trained_in_a_dream_is_the_default_dream():
    defaults = Dream()
    for checkpoint in (None, {}, {"config": {**FLAT, "mode": "real", "rollout_steps": 1000}},
                       {"config": nested("real", steps=1000)}, {"config": {"rollout_steps": 50}}):
        assert dream_of(checkpoint, {}) == defaults, checkpoint  # trials 40 ≥ 32; a real C's 1000 steps unused
    assert dream_of(None, {"steps": 9}) == Dream(steps=9)
    with pytest.raises(ConfigError, match="saved config: dream.steps = 'x': expected an integer"):
        dream_of({"config": {**FLAT, "rollout_steps": "x"}}, {})
    with pytest.raises(ConfigError, match=r"dream.dropout = 1.5: expected 0 <= p < 1"):
        dream_of(None, {"dropout": 1.5})


def test_measure_fidelity_gives_what_the_script_gives(tmp_path, tiny_data_dir, capsys):
    write_tiny_checkpoints(tmp_path)
    tool = dict(panel=4, episodes=1, max_steps=10, horizon=4, workers=1, device="cpu", progress=False)
    script = evaluate_world_model.main(evaluate_world_model.Args(
        checkpoint_dir=str(tmp_path), data_dir=str(tiny_data_dir), rollout_steps=6, dream_trials=3, start_states=32,
        out=str(tmp_path / "a.png"), **tool))
    library = measure_fidelity(tmp_path, tiny_data_dir, Dream(steps=6, trials=3, start_states=32),
                               out=tmp_path / "b.png", backend=Backend(), **tool)
    assert json.dumps(library) == json.dumps(script)  # (ρ may be nan on so short a panel: compared as text)
    assert library["settings"] == {"rollout_steps": 6, "dream_trials": 3, "temperature": 1.0, "dream_dropout": 0.1,
                                   "start_states": 32, "dream_start": "recorded", "dream_value": False}  # no value head
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        f"dream-real rank correlation: {library['rank_correlation']:.2f} over 4 controllers")
    # the rest of a Dream is honoured too, and named in the settings when not the default
    other = measure_fidelity(tmp_path, tiny_data_dir, Dream(steps=6, trials=3, start_states=32, fitness="quantile",
                                                            fitness_q=0.0, start_drivers=("synthetic",)),
                             out=tmp_path / "c.png", **tool)
    assert other["settings"]["dream_fitness"] == "quantile" and other["settings"]["dream_start_drivers"] == ["synthetic"]
    assert [r["real_return"] for r in other["rows"]] == [r["real_return"] for r in script["rows"]]
    with pytest.raises(UsageError, match="dream.value: .* has no value head"):
        measure_fidelity(tmp_path, tiny_data_dir, Dream(steps=6, trials=3, start_states=32), out=tmp_path / "c.png",
                         require_value=True, **tool)
    with pytest.raises(UsageError, match="panel 2: expected at least 3"):
        measure_fidelity(tmp_path, tiny_data_dir, Dream(), out=tmp_path / "c.png", **{**tool, "panel": 2})
