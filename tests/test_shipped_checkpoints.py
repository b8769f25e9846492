"""The trained models shipped in checkpoints/: small, complete, and they drive."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from car_racing.common.runtime import checkpoint_paths, load_checkpoint
from car_racing.episodes.agent import evaluate_agent, load_agent_models
from car_racing.recording.latent_cache import file_sha256

SHIPPED = Path(__file__).resolve().parent.parent / "checkpoints"
DREAM = SHIPPED / "dream"  # the agent whose C was trained only in M's dream
REWARD_ONLY = SHIPPED / "reward-only"  # that C, then real-env CMA-ES: reward alone, no expert label
AGENTS = [folder for folder in (SHIPPED, DREAM, REWARD_ONLY)
          if all(p.is_file() for p in checkpoint_paths(folder).values())]
pytestmark = pytest.mark.skipif(not AGENTS, reason="no shipped checkpoints")


@pytest.mark.parametrize("folder", AGENTS, ids=lambda folder: folder.name)
def test_shipped_checkpoints_are_small_float16_and_chain(folder):
    paths = checkpoint_paths(folder)
    assert sum(p.stat().st_size for p in paths.values()) <= 25 * 2**20
    for kind, path in paths.items():
        checkpoint = load_checkpoint(path, kind)
        assert "optimizer_state" not in checkpoint and "es_state" not in checkpoint
        if kind != "controller":
            assert all(t.dtype == torch.float16 for t in checkpoint["model_state"].values() if t.is_floating_point())
    # M names the shipped V, so training C on top of them is accepted
    assert load_checkpoint(paths["memory"], "memory")["vision"]["sha256"] == file_sha256(paths["vision"])
    vae, mdnrnn, controller = load_agent_models(folder)
    assert (vae.latent_size, mdnrnn.hidden_size, controller.num_params) == (32, 512, 1635)


def test_the_dream_agent_was_trained_only_in_the_dream():
    if DREAM not in AGENTS:
        pytest.skip("no checkpoints/dream")
    training = load_checkpoint(checkpoint_paths(DREAM)["controller"], "controller")["training"]
    assert training["dream_trained"] and training["fitness_source"] == "dream"
    assert not training["expert_labels"] and not training["real_returns_as_fitness"]
    # the same V file as the main agent: git stores it once
    assert file_sha256(checkpoint_paths(DREAM)["vision"]) == file_sha256(checkpoint_paths(SHIPPED)["vision"])


def test_the_reward_only_agent_never_saw_an_expert_label():
    if REWARD_ONLY not in AGENTS:
        pytest.skip("no checkpoints/reward-only")
    training = load_checkpoint(checkpoint_paths(REWARD_ONLY)["controller"], "controller")["training"]
    assert training["reward_only"] and not training["expert_labels"] and training["fitness_source"] == "real"
    assert training["real_fitness_episodes"] > 0 and "selection" in training
    lineage = training
    while "warm_start_training" in lineage:  # back to the first C: trained in the dream from zero
        lineage = lineage["warm_start_training"]
        assert not lineage["expert_labels"]
    assert lineage["dream_trained"] and lineage["warm_start"] == "zero"
    for kind in ("vision", "memory"):  # the dream agent's V and M files: git stores them once
        assert file_sha256(checkpoint_paths(REWARD_ONLY)[kind]) == file_sha256(checkpoint_paths(DREAM)[kind])


@pytest.mark.parametrize("folder", AGENTS, ids=lambda folder: folder.name)
def test_shipped_agent_drives_forward(folder):
    result = evaluate_agent(folder, [20_000], max_steps=120)[0]
    assert result.steps == 120
    assert result.total_reward > 50  # new tiles are being visited: ~+3 per tile, -0.1 per step
    assert np.all(np.isfinite(result.actions))
