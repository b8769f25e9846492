"""film_dream_vs_real.py: the same C in the real env and in M's dream, side by side, from the same start.

The dream side is C's training dream (training.dream.imagine with C's own settings): it ends where a training dream
ends (M's done signal) and, still alive at the end, on M's value."""

from __future__ import annotations

import pytest
import torch

from car_racing import film_dream_vs_real as film
from car_racing.common.cli import UsageError
from car_racing.common.runtime import load_checkpoint, save_checkpoint
from car_racing.common.video import read_video
from car_racing.episodes.agent import evaluate_agent, load_agent_models
from car_racing.models.mdn_rnn import MDNRNN
from car_racing.models.vae import frames_to_tensor
from car_racing.training.dream import controller_policy, imagine
from tests.test_agent_simulator import TINY_MDN, tiny_checkpoints, write_tiny_checkpoints  # noqa: F401 (fixture)


def training_dream(checkpoint_dir, seed: int, steps: int, **settings):
    """C's dream from the real track's first frame (M's zero state), as the film must drive it."""
    real = evaluate_agent(checkpoint_dir, [seed], max_steps=steps, record_frames=True)[0]
    vae, mdnrnn, controller = load_agent_models(checkpoint_dir)
    with torch.no_grad():
        start = vae.encode(frames_to_tensor(real.frames[:1]))[0]
    trace = imagine(mdnrnn, controller_policy(controller), start, mdnrnn.initial_state(1), steps,
                    settings.pop("temperature", 1.0), torch.Generator().manual_seed(seed), **settings)
    return real, start, trace


def test_film_rows_match_the_real_episode_and_the_dream(tmp_path, tiny_checkpoints):  # noqa: F811
    out = tmp_path / "film.mp4"
    summary = film.main(film.Args(checkpoint_dirs=[str(tiny_checkpoints), str(tiny_checkpoints)], seed=20_000,
                                  steps=12, out=str(out), scale=1, fps=10))
    frames = list(read_video(out))
    assert len(frames) == 12 and frames[0].shape[0] > 2 * 64  # two rows of 64×64 panels; the real side drives 12
    assert (tmp_path / "film_returns.png").is_file()
    real, start, trace = training_dream(tiny_checkpoints, 20_000, 12)
    row = next(iter(summary["rows"].values()))
    assert row["real_return"] == pytest.approx(real.total_reward, abs=1e-4)  # the very episode the simulator drives
    # the dream side is C's training dream from the track's first frame (a C without a training record: τ 1, no
    # dropout, no value): the same return, ending where it ends
    assert row["dream"] == {"temperature": 1.0, "dropout": 0.0, "value_discount": 0.0, "reward_scale": 1.0}
    assert row["dream_return"] == pytest.approx(float(trace.returns[0, 0]), rel=1e-5, abs=1e-5)
    assert row["dream_steps"] == int(trace.lengths[0, 0])
    assert row["dream_done_step"] == (int(trace.lengths[0, 0]) - 1 if bool(trace.ended[0, 0]) else None)
    torch.testing.assert_close(trace.z[0, 0, 0], start[0])  # the dream starts at the real first frame
    with pytest.raises(UsageError, match="--checkpoint-dirs"):
        film.main(film.Args(checkpoint_dirs=[str(tmp_path / "nothing")], out=str(out)))


def dream_trained_checkpoints(folder, done_bias: float):
    """Tiny V, M with a value head (γ 0.9, M's reward scale 2) and a C whose record says it trained in a dream at
    τ 0.7, dropout 0.2, with M's value."""
    paths = write_tiny_checkpoints(folder)
    torch.manual_seed(1)
    memory = MDNRNN(**TINY_MDN, value_head=True)
    with torch.no_grad():
        memory.done_head.weight.zero_()
        memory.done_head.bias.fill_(done_bias)
        memory.value_head.bias.fill_(0.5)
    save_checkpoint({"kind": "memory", "model_args": {**TINY_MDN, "value_head": True},
                     "model_state": memory.state_dict(), "reward": {"scale": 2.0}, "value": {"discount": 0.9}},
                    paths["memory"])
    controller = load_checkpoint(paths["controller"], "controller")
    controller["config"] = {"mode": "dream", "temperature": 0.7, "dream_dropout": 0.2, "dream_value": True}
    save_checkpoint(controller, paths["controller"])
    return paths


def test_the_film_shows_the_dream_c_was_trained_in(tmp_path):
    folder = tmp_path / "alive"
    dream_trained_checkpoints(folder, done_bias=-10.0)  # M never says done: the dream ends on M's value
    summary = film.main(film.Args(checkpoint_dirs=[str(folder)], seed=3, steps=10, out=str(tmp_path / "a.mp4"),
                                  scale=1, fps=10))
    row = summary["rows"][folder.as_posix()]
    settings = {"temperature": 0.7, "dropout": 0.2, "value_discount": 0.9, "reward_scale": 0.5}
    assert row["dream"] == settings
    _, _, trace = training_dream(folder, 3, 10, **settings)
    assert row["dream_steps"] == 10 and row["dream_done_step"] is None
    assert row["dream_value"] == pytest.approx(float(trace.value[0, 0]), rel=1e-5) and row["dream_value"] != 0
    assert row["dream_return"] == pytest.approx(float(trace.returns[0, 0]), rel=1e-5, abs=1e-5)
    # explicit flags win over C's record
    plain = film.main(film.Args(checkpoint_dirs=[str(folder)], seed=3, steps=10, out=str(tmp_path / "b.mp4"), scale=1,
                                fps=10, temperature=1.0, dream_dropout=0.0, dream_value=False))
    plain = plain["rows"][folder.as_posix()]
    assert plain["dream"] == {**settings, "temperature": 1.0, "dropout": 0.0, "value_discount": 0.0}
    assert plain["dream_value"] == 0.0

    folder = tmp_path / "ends"
    dream_trained_checkpoints(folder, done_bias=10.0)  # M says done at once: the dream pays its first step only
    out = tmp_path / "c.mp4"
    row = film.main(film.Args(checkpoint_dirs=[str(folder)], seed=3, steps=10, out=str(out), scale=1,
                              fps=10))["rows"][folder.as_posix()]
    _, _, trace = training_dream(folder, 3, 10, **settings)
    assert row["dream_steps"] == 1 and row["dream_done_step"] == 0 and row["dream_value"] == 0.0
    assert row["dream_return"] == pytest.approx(float(trace.rewards[0, 0, 0]), rel=1e-5, abs=1e-6)
    assert len(list(read_video(out))) == 10  # the real side drives on beside the ended dream's last frame
