"""Every real check as data for M: a CMA-ES run keeps its checks' actions, the loop replays the worst into the data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import stage4_config
from test_controller_training import write_tiny_checkpoints
from test_dream_loop import TINY
from test_repair_loop import loop_config

from car_racing.recording.recorded_data import load_recorded
from car_racing.train_controller_cmaes import main as train_controller
from car_racing.training import check_replays

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Interrupted(Exception):
    """Stands in for Ctrl-C."""


def test_checks_keep_each_tracks_actions_and_their_replays_recreate_the_episodes_once(tmp_path, tiny_data_dir,
                                                                                      monkeypatch):
    write_tiny_checkpoints(tmp_path)
    final = train_controller(stage4_config(tiny_data_dir, tmp_path, **{**TINY, "cmaes__generations": 2,
                                           "checks__episodes": 2, "checks__max_steps": 12, "cmaes__sigma0": 0.5}))
    checked = final["checked"]
    assert [c["generation"] for c in checked] == [0, 1, 1, 2, 2]  # the start, then best candidate and CMA mean
    for check in checked:
        assert check["seeds"] == [1_000_000, 1_000_001] and len(check["actions"]) == 2
        assert check["score"] == pytest.approx(np.mean(check["returns"]))
        assert all(a.shape == (12, 3) for a in check["actions"])  # an untrained C never ends an episode early

    plan = check_replays.plan_check_replays({"run": checked}, count=3)
    worst = sorted(min(c["returns"]) for c in checked[1:])  # generation 0 (the run's start) is not replayed
    assert [p.check_return for p in plan] == pytest.approx(worst[:3]) and [p.trial for p in plan] == [0, 1, 2]
    for item in plan:
        check = checked[item.check]
        track = check["seeds"].index(item.seed)
        assert check["returns"][track] == min(check["returns"])
        np.testing.assert_array_equal(item.actions, check["actions"][track])

    data_dir = tmp_path / "loop_data"
    original_replay = check_replays.replay

    def interrupting(env, seed, actions):
        if interrupting.calls == 2:
            raise Interrupted  # two replays saved, then a crash
        interrupting.calls += 1
        return original_replay(env, seed, actions)

    interrupting.calls = 0
    monkeypatch.setattr(check_replays, "replay", interrupting)
    with pytest.raises(Interrupted):
        check_replays.record_check_replays(data_dir, plan, iteration=4)
    assert check_replays.recorded_check_replays(data_dir, 4) == {0, 1}
    monkeypatch.undo()
    result = check_replays.record_check_replays(data_dir, plan, iteration=4)
    assert result["recorded_now"] == 1 and result["already_recorded"] == 2
    assert check_replays.record_check_replays(data_dir, plan, iteration=4)["recorded_now"] == 0

    data = load_recorded(data_dir)
    assert [e["driver"] for e in data.episodes] == ["check"] * 3
    for index, episode in enumerate(data.episodes):
        item = plan[episode["noise"]["check_trial"]]
        # the replay is the check's episode: the same track, actions and return (the env is deterministic)
        assert int(episode["seed"]) == item.seed and episode["noise"]["generation"] == item.generation
        np.testing.assert_array_equal(data.actions[data.episode_slice(index)], item.actions)
        assert float(episode["total_reward"]) == pytest.approx(item.check_return, abs=1e-3)
    assert sorted(e["noise"]["check_trial"] for e in data.episodes) == [0, 1, 2]  # each exactly once


def test_loop_records_each_iterations_worst_checks_from_both_runs(tmp_path, tiny_data_dir, capsys):
    write_tiny_checkpoints(tmp_path / "checkpoints")
    config = loop_config(tmp_path, tiny_data_dir, loop__controller_start="both", loop__fidelity_panel=0,
                         loop__agent_episodes=1, checks__every=1, loop__check_episodes=3, loop__repair_episodes=2,
                         loop__iterations=3, checks__best_candidate=True)  # (both vectors checked: more worst tracks)
    train_controller(config)
    data_dir = tmp_path / "data" / "dream_loop"
    final = json.loads((tmp_path / "checkpoints" / "dream_loop" / "dream_loop_state.json").read_text())
    # the check tracks are in the data now (and repairs may start from them), by design: no overlap warning
    assert "also recording seeds" not in capsys.readouterr().err
    stages = final["stages"]
    assert "2:checks" not in stages  # the last iteration has no next M to record for
    episodes = load_recorded(data_dir, mmap=True).episodes
    for iteration in (0, 1):
        recorded = [e for e in episodes if e["driver"] == "check" and e["noise"]["check_iteration"] == iteration]
        assert stages[f"{iteration}:checks"]["episodes"] == len(recorded) == 3
        assert stages[f"{iteration}:checks"]["replays_differing"] == 0
        assert all(e["noise"]["generation"] > 0 for e in recorded)
    # iteration 1 ran from the kept C and from zero: both runs' checks were candidates
    runs = {e["noise"]["run"] for e in episodes if e["driver"] == "check" and e["noise"]["check_iteration"] == 1}
    assert runs <= {"warm", "zero"} and stages["1:checks"]["checks_available"] == 2 * 5
    memory = stages["2:memory"]
    assert memory["frames"] == len(load_recorded(data_dir, mmap=True))  # M of iteration 2 trained on them
