"""Carrying C onto a retrained M: the refit reproduces C's outputs, and the warm start uses it only when M changed."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch
from test_controller_training import HIDDEN, LATENT, tiny_memory, write_tiny_checkpoints
from conftest import tiny_stage4_config

from car_racing.common.cli import UsageError
from car_racing.common.runtime import load_checkpoint, load_model, save_checkpoint
from car_racing.recording.latent_cache import file_sha256, load_or_build_latents
from car_racing.recording.recorded_data import load_recorded
from car_racing.train_controller_cmaes import main as train_controller
from car_racing.training.carry import carry_controller, seen_hidden

pytestmark = pytest.mark.usefixtures("one_torch_thread")




def recorded_inputs(data_dir, vision_path):
    mu, _ = load_or_build_latents(data_dir, vision_path, "cpu", progress=False)
    data = load_recorded(data_dir)
    return mu, data.actions, [(e["start"], e["length"]) for e in data.episodes]


def pre_squash(params: np.ndarray, mdnrnn, mu, actions, episodes) -> torch.Tensor:
    """C's raw outputs (N, 3) at every recorded step, M run over each episode from zeros."""
    flat = torch.as_tensor(params, dtype=torch.float32)
    n_weight = 3 * (LATENT + HIDDEN)
    weight, bias = flat[:n_weight].reshape(3, -1), flat[n_weight:]
    outputs = []
    with torch.no_grad():
        for start, length in episodes:
            z = torch.as_tensor(mu[start:start + length])[None]
            a = torch.as_tensor(actions[start:start + length])[None]
            outputs.append((torch.cat([z, seen_hidden(mdnrnn, z, a)], -1) @ weight.T + bias)[0])
    return torch.cat(outputs)


def perturbed(mdnrnn, scale: float, seed: int = 3):
    """M with its LSTM weights moved (as further training moves them)."""
    moved = tiny_memory()
    moved.load_state_dict(mdnrnn.state_dict())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in moved.lstm.named_parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * p.std())
    return moved


def test_the_hidden_c_sees_is_the_agents_step_by_step_state(tiny_data_dir, tmp_path):
    paths = write_tiny_checkpoints(tmp_path)
    mu, actions, episodes = recorded_inputs(tiny_data_dir, paths["vision"])
    mdn = tiny_memory()
    start, length = episodes[1]
    z, a = torch.as_tensor(mu[start:start + length])[None], torch.as_tensor(actions[start:start + length])[None]
    with torch.no_grad():
        seen = seen_hidden(mdn, z, a)[0]
        state = mdn.initial_state(1)
        for t in range(length):  # Agent: C sees h_t, then M consumes (z_t, a_t)
            assert torch.allclose(seen[t], state[0][0], atol=1e-5)
            _, state = mdn.step(z[:, t], a[:, t], state)


def test_carry_onto_the_same_m_keeps_c_and_onto_a_moved_m_restores_its_outputs(tiny_data_dir, tmp_path):
    paths = write_tiny_checkpoints(tmp_path)
    mu, actions, episodes = recorded_inputs(tiny_data_dir, paths["vision"])
    old = tiny_memory()
    params = np.random.default_rng(0).normal(0, 0.5, 3 * (LATENT + HIDDEN) + 3)
    target = pre_squash(params, old, mu, actions, episodes)

    same, record = carry_controller(params, old, old, mu, actions, episodes, ridge=1e-6)
    assert record["samples"] == sum(length for _, length in episodes)
    assert min(record["target_r2"]) > 0.999
    assert torch.allclose(pre_squash(same, old, mu, actions, episodes), target, atol=1e-2)

    new = perturbed(old, 1.0)
    as_is = ((pre_squash(params, new, mu, actions, episodes) - target) ** 2).mean()
    carried, record = carry_controller(params, old, new, mu, actions, episodes)
    refit = ((pre_squash(carried, new, mu, actions, episodes) - target) ** 2).mean()
    assert as_is > 0.02 * target.var()  # the moved M really changes what C does
    assert refit < 0.05 * as_is


def test_a_checkpoint_warm_start_is_carried_only_when_m_changed(tiny_data_dir, tmp_path, capsys):
    paths = write_tiny_checkpoints(tmp_path)
    train_controller(tiny_stage4_config(tmp_path, tiny_data_dir, cmaes__init="zero", checks__every=0))
    first, old_memory = tmp_path / "first.pth", tmp_path / "old_memory.pth"
    shutil.move(paths["controller"], first)
    shutil.copy(paths["memory"], old_memory)
    start_params = load_model(first, "controller")[0].get_flat_params()

    def warm(**overrides):
        final = train_controller(tiny_stage4_config(tmp_path, tiny_data_dir, cmaes__init="checkpoint",
                                                   cmaes__init_from=str(first), cmaes__generations=0, checks__every=0,
                                                   **overrides))
        params = load_model(paths["controller"], "controller")[0].get_flat_params()  # CMA's initial mean
        paths["controller"].unlink()
        return final["bc"]["carried"], params

    carried, params = warm()  # M is the one C was evolved on: nothing to carry
    assert carried is None and np.allclose(params, start_params)

    memory = load_checkpoint(paths["memory"], "memory")
    save_checkpoint({**memory, "model_state": perturbed(tiny_memory(), 0.3).state_dict()}, paths["memory"])
    carried, params = warm()  # the file C names changed under it: it cannot be carried from there
    assert carried is None and np.allclose(params, start_params)
    assert "changed since C was evolved on it" in capsys.readouterr().out

    carried, params = warm(cmaes__init_memory=str(old_memory))
    assert carried["from_memory"] == {"path": str(old_memory), "sha256": file_sha256(old_memory)}
    mu, actions, episodes = recorded_inputs(tiny_data_dir, paths["vision"])
    expected, _ = carry_controller(start_params, load_model(old_memory, "memory")[0],
                                   load_model(paths["memory"], "memory")[0], mu, actions, episodes)
    assert np.allclose(params, expected, atol=1e-6)

    carried, params = warm(cmaes__init_memory=str(old_memory), cmaes__carry=False)
    assert carried is None and np.allclose(params, start_params)



def test_carry_check_drives_the_three_agents_on_the_same_tracks(tiny_data_dir, tmp_path):
    from bench import carry_check

    paths = write_tiny_checkpoints(tmp_path / "loop" / "iter_00")
    train_controller(tiny_stage4_config(paths["vision"].parent, tiny_data_dir, cmaes__init="zero",
                                       checks__every=0))
    memory = load_checkpoint(paths["memory"], "memory")
    new = tmp_path / "loop" / "iter_01" / "memory_model.pth"
    new.parent.mkdir()
    save_checkpoint({**memory, "model_state": perturbed(tiny_memory(), 1.0).state_dict()}, new)
    result = carry_check.main(carry_check.Args(loop_dir=str(tmp_path / "loop"), data_dir=str(tiny_data_dir),
                                               episodes=2, max_steps=5, workers=1))
    assert list(result["returns"]) == ["C_i with M_i", "C_i with M_i+1 as it is", "C_i carried onto M_i+1"]
    assert all(len(returns) == 2 for returns in result["returns"].values())
    assert result["fit"]["samples"] == sum(e["length"] for e in load_recorded(tiny_data_dir).episodes)


def test_local_fidelity_scores_c_and_its_neighbours_in_the_dream_and_the_real_env(tiny_data_dir, tmp_path,
                                                                                  monkeypatch):
    from bench import local_fidelity

    write_tiny_checkpoints(tmp_path)
    train_controller(tiny_stage4_config(tmp_path, tiny_data_dir, cmaes__init="zero", checks__every=0))
    args = local_fidelity.Args(checkpoint_dir=str(tmp_path), data_dir=str(tiny_data_dir), neighbours=3,
                               dreams=("episode-start:10", "recorded:5"), dream_generations=2, dream_step_budget=20,
                               episodes=2, max_steps=5, workers=1, save=str(tmp_path / "fidelity.json"))
    result = local_fidelity.main(args)
    assert result["names"][0] == "C" and len(result["names"]) == 4
    assert np.asarray(result["real"]).shape == (4, 2)
    assert set(result["dreams"]) == {"episode-start:10", "recorded:5"}
    for scores in result["dreams"].values():
        assert len(scores["dream_q25"]) == len(scores["dream_mean"]) == 4
    # more settings on the same controllers: the saved real returns are read back, not driven again
    monkeypatch.setattr(local_fidelity, "RealFitness", None)  # driving again would fail here
    again = local_fidelity.main(dataclasses.replace(args, dreams=("recorded:10",), save="", real_from=args.save))
    assert again["real"] == result["real"]
    with pytest.raises(UsageError, match="--real-from"):
        local_fidelity.main(dataclasses.replace(args, sigma=0.1, save="", real_from=args.save))
    with pytest.raises(UsageError, match="--dreams"):
        local_fidelity.main(dataclasses.replace(args, dreams=("onpolicy:10",), save=""))
    # --gas-shifts: copies of C with only the gas bias moved, scored beside the neighbours (the dreams need no new
    # driving for the old controllers, but the shifted ones must be driven: a --real-from without them refuses)
    with pytest.raises(UsageError, match="--real-from"):
        local_fidelity.main(dataclasses.replace(args, gas_shifts=(1.0,), save="", real_from=args.save))
    monkeypatch.undo()
    shifted = local_fidelity.main(dataclasses.replace(args, gas_shifts=(-1.0, 2.0), save=""))
    assert shifted["names"][-2:] == ["C, gas -1", "C, gas +2"] and np.asarray(shifted["real"]).shape == (6, 2)
    assert shifted["real"][:4] == result["real"]  # the same controllers on the same tracks drive the same
