"""The trained models shipped in checkpoints/: small, complete, and they drive."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from car_racing.agent import evaluate_agent, load_agent_models
from car_racing.latent_cache import file_sha256
from car_racing.runtime import checkpoint_paths, load_checkpoint

SHIPPED = Path(__file__).resolve().parent.parent / "checkpoints"
PATHS = checkpoint_paths(SHIPPED)
pytestmark = pytest.mark.skipif(not all(p.is_file() for p in PATHS.values()), reason="no shipped checkpoints")


def test_shipped_checkpoints_are_small_float16_and_chain():
    assert sum(p.stat().st_size for p in PATHS.values()) <= 25 * 2**20
    for kind, path in PATHS.items():
        checkpoint = load_checkpoint(path, kind)
        assert "optimizer_state" not in checkpoint and "es_state" not in checkpoint
        if kind != "controller":
            assert all(t.dtype == torch.float16 for t in checkpoint["model_state"].values() if t.is_floating_point())
    # M names the shipped V, so training C on top of them is accepted
    assert load_checkpoint(PATHS["memory"], "memory")["vision"]["sha256"] == file_sha256(PATHS["vision"])
    vae, mdnrnn, controller = load_agent_models(SHIPPED)
    assert (vae.latent_size, mdnrnn.hidden_size, controller.num_params) == (32, 512, 1635)


def test_shipped_agent_drives_forward():
    result = evaluate_agent(SHIPPED, [20_000], max_steps=120)[0]
    assert result.steps == 120
    assert result.total_reward > 50  # new tiles are being visited: ~+3 per tile, -0.1 per step
    assert np.all(np.isfinite(result.actions))
