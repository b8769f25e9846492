"""The repair step: a dream's actions replayed in the real env from the state the dream started from."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_controller_training import HIDDEN, LATENT, tiny_memory, write_tiny_checkpoints

from car_racing.common.config import preset
from car_racing.episodes.recording import record
from car_racing.models.ffn import num_controller_params
from car_racing.recording.latent_cache import load_or_build_latents
from car_racing.recording.recorded_data import load_recorded
from car_racing.training import repair

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Interrupted(Exception):
    """Stands in for Ctrl-C."""


@pytest.fixture
def real_recording(tmp_path):
    """Two real random-driver episodes of 30 steps (replayable from their seeds and actions)."""
    data_dir = tmp_path / "data"
    record(preset("default", record__driver="random", record__episodes=2, record__random_episodes=0,
                  record__steps=30, record__seq_len=10, run__seed=3, run__data_dir=str(data_dir), run__workers=1))
    return data_dir


def test_replayed_prefix_reproduces_the_recording_and_a_rerun_records_no_trial_twice(tmp_path, real_recording,
                                                                                      monkeypatch):
    paths = write_tiny_checkpoints(tmp_path / "tiny")
    mu, _ = load_or_build_latents(real_recording, paths["vision"], progress=False)
    mdn = tiny_memory(done_bias=-5.0)
    params = np.random.default_rng(0).normal(0, 0.5, num_controller_params(LATENT, HIDDEN, 3))
    original_replay = repair.replay
    replayed: list[int] = []

    def interrupting(env, seed, actions):
        if len(replayed) == 2:
            raise Interrupted  # two trials recorded, then a crash
        replayed.append(seed)
        return original_replay(env, seed, actions)

    monkeypatch.setattr(repair, "replay", interrupting)
    options = dict(seed=1, rollout_steps=8, dropout=0.1, from_start=False)
    with pytest.raises(Interrupted):
        repair.repair_iteration(real_recording, mdn, mu, params, iteration=2, count=4, **options)
    assert repair.recorded_repairs(real_recording, 2) == {0, 1}
    monkeypatch.setattr(repair, "replay", lambda env, seed, actions: (replayed.append(seed),
                                                                     original_replay(env, seed, actions))[1])
    result = repair.repair_iteration(real_recording, mdn, mu, params, iteration=2, count=4, **options)
    assert result["recorded_now"] == 2 and result["already_recorded"] == 2 and len(replayed) == 4
    again = repair.repair_iteration(real_recording, mdn, mu, params, iteration=2, count=4, **options)
    assert again["recorded_now"] == 0 and len(replayed) == 4  # a finished iteration records nothing more

    data = load_recorded(real_recording)
    sources = {int(e["seed"]): data.episode_slice(i) for i, e in enumerate(data.episodes) if e["driver"] == "random"}
    repairs = [(i, e) for i, e in enumerate(data.episodes) if e["driver"] == "repair"]
    assert sorted(e["noise"]["repair_trial"] for _, e in repairs) == [0, 1, 2, 3]  # each trial exactly once
    assert any(e["noise"]["start_step"] > 0 for _, e in repairs)
    for index, episode in repairs:
        start, own = episode["noise"]["start_step"], data.episode_slice(index)
        source = sources[int(episode["seed"])]
        # the replayed prefix is the recorded episode: same actions, and the same frames up to the dream's start
        np.testing.assert_array_equal(data.actions[own][:start], data.actions[source][:start])
        np.testing.assert_array_equal(data.frames[own][:start + 1], data.frames[source][:start + 1])
        assert 1 <= episode["length"] - start <= 8  # then the dream's actions (8 dreamt steps at most)
    # the dreamt part is what C chose in the dream: the same dream again gives the same actions
    trials = repair.plan_trials(data.episodes[:2], 4, np.random.default_rng([1, 2, 7]), False)
    assert [t.start_step for t in trials] == [e["noise"]["start_step"] for _, e in sorted(
        repairs, key=lambda r: r[1]["noise"]["repair_trial"])]


def test_dream_actions_follow_the_training_dream():
    from car_racing.models.ffn import flat_to_population
    from car_racing.training.dream import dream_rollout

    mdn = tiny_memory(done_bias=-1.0, done_gain=20.0)
    params = np.random.default_rng(1).normal(0, 0.5, num_controller_params(LATENT, HIDDEN, 3))
    g = torch.Generator().manual_seed(0)
    start_z = torch.randn(3, LATENT, generator=g)
    state = (torch.randn(3, HIDDEN, generator=g) * 0.3, torch.randn(3, HIDDEN, generator=g) * 0.3)
    actions, rewards, lengths = repair.dream_actions(mdn, params, start_z, state, 12, 1.0,
                                                     torch.Generator().manual_seed(5), dropout=0.2)
    weights, biases = flat_to_population(torch.as_tensor(params[None], dtype=torch.float32), LATENT, HIDDEN)
    fitness = dream_rollout(mdn, weights, biases, start_z, state, 12, 1.0, torch.Generator().manual_seed(5), dropout=0.2)
    dreamt = np.array([rewards[k, :lengths[k]].sum() for k in range(3)])
    np.testing.assert_allclose(dreamt, fitness[0].numpy(), rtol=1e-4, atol=1e-4)  # the fitness training saw
    assert actions.shape == (3, 12, 3) and (np.abs(actions[..., 0]) <= 1).all()
