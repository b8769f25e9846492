"""Shippable checkpoints: resume state dropped, float16 weights that load back into float32 models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from car_racing.common.cli import UsageError
from car_racing.common.runtime import load_checkpoint, save_checkpoint
from car_racing.episodes.agent import evaluate_agent, load_agent_models
from car_racing.export_checkpoints import Args, main
from car_racing.recording.latent_cache import file_sha256
from tests.test_agent_simulator import write_tiny_checkpoints


def test_export_strips_resume_state_and_halves_the_weights(tmp_path):
    source = write_tiny_checkpoints(tmp_path / "trained")
    for kind, extra in (("vision", {"optimizer_state": {"state": torch.zeros(1000)}, "epoch": 3}),
                        ("controller", {"es_state": b"x" * 100_000, "best_params": np.zeros(10)})):
        checkpoint = load_checkpoint(source[kind], kind)
        save_checkpoint({**checkpoint, **extra}, source[kind])
    memory = load_checkpoint(source["memory"], "memory")
    save_checkpoint({**memory, "vision": {"path": str(source["vision"]), "sha256": file_sha256(source["vision"])}},
                    source["memory"])

    out = main(Args(source_dir=str(tmp_path / "trained"), out_dir=str(tmp_path / "shipped"), half=True))
    vision = load_checkpoint(out["vision"], "vision")
    assert "optimizer_state" not in vision and vision["epoch"] == 3
    assert all(t.dtype == torch.float16 for t in vision["model_state"].values() if t.is_floating_point())
    assert vision["exported"]["source"]["sha256"] == file_sha256(source["vision"])
    controller = load_checkpoint(out["controller"], "controller")
    assert "es_state" not in controller and "best_params" not in controller
    assert out["controller"].stat().st_size < source["controller"].stat().st_size / 10
    # M now names the exported V, so later stages accept the pair
    assert load_checkpoint(out["memory"], "memory")["vision"]["sha256"] == file_sha256(out["vision"])

    # the float16 agent computes in float32 and acts like the original
    originals = load_agent_models(tmp_path / "trained")
    shipped = load_agent_models(tmp_path / "shipped")
    assert all(p.dtype == torch.float32 for model in shipped for p in model.parameters())
    x = torch.rand(2, 3, 64, 64)
    mu_a, _ = originals[0].encode(x)
    mu_b, _ = shipped[0].encode(x)
    torch.testing.assert_close(mu_a, mu_b, atol=2e-2, rtol=2e-2)
    a = evaluate_agent(tmp_path / "trained", [5], max_steps=20)[0]
    b = evaluate_agent(tmp_path / "shipped", [5], max_steps=20)[0]
    np.testing.assert_allclose(a.actions, b.actions, atol=5e-2)


def test_export_missing_source_is_one_line_error(tmp_path):
    with pytest.raises(UsageError, match="vision_model.pth"):
        main(Args(source_dir=str(tmp_path / "nothing"), out_dir=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()
