"""film_dream_vs_real.py: the same C in the real env and in M's dream, side by side, from the same start."""

from __future__ import annotations

import pytest
import torch

from car_racing import film_dream_vs_real as film
from car_racing.common.cli import UsageError
from car_racing.common.runtime import checkpoint_paths, load_checkpoint
from car_racing.common.video import read_video
from car_racing.episodes.agent import evaluate_agent, load_agent_models
from car_racing.models.vae import frames_to_tensor
from car_racing.training.dream import dream_closed_loop
from tests.test_agent_simulator import tiny_checkpoints  # noqa: F401 (fixture)


def test_film_rows_match_the_real_episode_and_the_dream(tmp_path, tiny_checkpoints):  # noqa: F811
    out = tmp_path / "film.mp4"
    summary = film.main(film.Args(checkpoint_dirs=[str(tiny_checkpoints), str(tiny_checkpoints)], seed=20_000,
                                  steps=12, out=str(out), scale=1, fps=10))
    frames = list(read_video(out))
    assert len(frames) == 12 and frames[0].shape[0] > 2 * 64  # two rows of 64×64 panels
    assert (tmp_path / "film_returns.png").is_file()
    real = evaluate_agent(tiny_checkpoints, [20_000], max_steps=12, record_frames=True)[0]
    row = next(iter(summary["rows"].values()))
    assert row["real_return"] == pytest.approx(real.total_reward, abs=1e-4)  # the very episode the simulator drives
    # the dream side is M's closed loop from the track's first frame: the same numbers again from the same seed
    vae, mdnrnn, controller = load_agent_models(tiny_checkpoints)
    with torch.no_grad():
        start = vae.encode(frames_to_tensor(real.frames[:1]))[0]
        again = dream_closed_loop(mdnrnn, controller, start, 12, 1.0, torch.Generator().manual_seed(20_000))
    scale = load_checkpoint(checkpoint_paths(tiny_checkpoints)["memory"], "memory").get("reward", {}).get("scale", 1.0)
    assert again["z"].shape == (12, mdnrnn.latent_size)
    assert row["dream_return"] == pytest.approx(float(again["reward"].sum()) / scale, rel=1e-4, abs=1e-4)
    torch.testing.assert_close(torch.from_numpy(again["z"][0]), start[0])  # the dream starts at the real first frame
    with pytest.raises(UsageError, match="--checkpoint-dirs"):
        film.main(film.Args(checkpoint_dirs=[str(tmp_path / "nothing")], out=str(out)))
