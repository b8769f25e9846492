"""Stage 3: the memory model M (MDN-RNN), its latent cache, training (car_racing/training/memory.py) and dream
visualisation."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from car_racing import visualize_memory_prediction
from car_racing.common import config as cfg
from car_racing.common.cli import UsageError
from car_racing.common.metrics import metrics_path, read_metrics
from car_racing.common.runtime import load_checkpoint, save_checkpoint
from car_racing.models.mdn_rnn import MDNRNN, MDNOutput, mdn_loss
from car_racing.models.vae import VAE
from car_racing.recording import latent_cache
from car_racing.recording.recorded_data import RecordedData
from car_racing.training import memory as train_memory
from car_racing.training.memory_film import dream_episode

pytestmark = pytest.mark.usefixtures("one_torch_thread")


TINY_VAE_ARGS = {"latent_size": 8, "encoder_channels": (4, 8, 8, 16), "dense_size": 64, "decoder_channels": (8, 8, 4)}


def save_tiny_vision(path, seed=0):
    torch.manual_seed(seed)
    vae = VAE(**TINY_VAE_ARGS)
    save_checkpoint({"kind": "vision", "model_args": TINY_VAE_ARGS, "model_state": vae.state_dict()}, path)
    return vae


RUN_KEYS = {"data_dir", "checkpoint_dir", "seed", "device", "threads", "resume", "progress", "tensorboard"}


def tiny_args(data_dir, checkpoint_dir, **overrides) -> cfg.Config:
    """A tiny stage-3 config: ``overrides`` by field name (run's or memory's); ranges are left to the stage."""
    values = dict(data_dir=str(data_dir), checkpoint_dir=str(checkpoint_dir), epochs=1, batch_size=4,
                  hidden_size=16, num_mixtures=3, device="cpu", progress=False,
                  value_discount=0.5)  # the tiny episodes are cut short: γ 0.98 would mask every value target
    values.update(overrides)
    return cfg.replace(cfg.Config(), **{("run__" if k in RUN_KEYS else "memory__") + k: v for k, v in values.items()})


def normal_pdf(x, mean, sigma):
    return math.exp(-0.5 * ((x - mean) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))


def test_mdn_loss_equals_hand_computed_log_likelihood():
    # 2 latent dims, 2 components each
    logits = [[0.0, math.log(3.0)], [1.0, 1.0]]  # weights (0.25, 0.75) and (0.5, 0.5)
    means = [[0.0, 1.0], [-1.0, 2.0]]
    sigmas = [[1.0, 0.5], [2.0, 0.25]]
    target = [0.5, 1.8]
    expected = 0.0
    for d in range(2):
        weights = np.exp(logits[d]) / np.sum(np.exp(logits[d]))
        density = sum(weights[k] * normal_pdf(target[d], means[d][k], sigmas[d][k]) for k in range(2))
        expected += -math.log(density) / 2
    loss = mdn_loss(torch.tensor([logits]), torch.tensor([means]), torch.log(torch.tensor([sigmas])),
                    torch.tensor([target]))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # a mask drops positions from the mean
    masked = mdn_loss(torch.tensor([logits, logits]), torch.tensor([means, means]),
                      torch.log(torch.tensor([sigmas, sigmas])), torch.tensor([target, [9.0, 9.0]]),
                      mask=torch.tensor([True, False]))
    assert masked.item() == pytest.approx(expected, rel=1e-5)


def test_mdn_loss_is_stable_far_from_the_mixture():
    loss = mdn_loss(torch.zeros(1, 1, 3), torch.zeros(1, 1, 3), torch.full((1, 1, 3), -5.0), torch.tensor([[50.0]]))
    assert torch.isfinite(loss) and loss.item() > 1e4


def test_mdn_loss_recovers_a_known_mixture():
    generator = torch.Generator().manual_seed(0)
    n = 2000
    component = torch.rand(n, generator=generator) < 0.3
    samples = torch.where(component, -2.0 + 0.5 * torch.randn(n, generator=generator),
                          1.5 + 0.3 * torch.randn(n, generator=generator))
    torch.manual_seed(0)
    logits = torch.zeros(2, requires_grad=True)
    means = torch.tensor([-0.5, 0.5], requires_grad=True)
    log_sigma = torch.zeros(2, requires_grad=True)
    optimizer = torch.optim.Adam([logits, means, log_sigma], lr=0.08)
    for _ in range(250):
        optimizer.zero_grad()
        loss = mdn_loss(logits.expand(n, 1, 2), means.expand(n, 1, 2), log_sigma.expand(n, 1, 2), samples[:, None])
        loss.backward()
        optimizer.step()
    order = torch.argsort(means.detach())
    assert means.detach()[order].tolist() == pytest.approx([-2.0, 1.5], abs=0.05)
    assert log_sigma.detach().exp()[order].tolist() == pytest.approx([0.5, 0.3], abs=0.05)
    assert torch.softmax(logits.detach(), 0)[order].tolist() == pytest.approx([0.3, 0.7], abs=0.03)


def test_sequence_forward_equals_step_by_step():
    torch.manual_seed(0)
    model = MDNRNN(latent_size=6, action_size=3, hidden_size=12, num_mixtures=4).eval()
    z, actions = torch.randn(3, 7, 6), torch.randn(3, 7, 3)
    start = (torch.randn(3, 12), torch.randn(3, 12))
    for initial in (None, start):
        sequence, (h, c) = model(z, actions, initial)
        assert sequence.mu.shape == (3, 7, 6, 4) and sequence.reward.shape == (3, 7)
        assert sequence.hidden.shape == (3, 7, 12)
        state = model.initial_state(3) if initial is None else initial
        steps = []
        for t in range(7):
            out, state = model.step(z[:, t], actions[:, t], state)
            steps.append(out)
        for name in MDNOutput._fields:
            stepped = torch.stack([getattr(o, name) for o in steps], dim=1)
            torch.testing.assert_close(stepped, getattr(sequence, name), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(state[0], h, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(state[1], c, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(steps[-1].hidden, h, rtol=1e-5, atol=1e-5)


def test_sample_next_z_temperature():
    n, latent = 20000, 2
    logit_pi = torch.tensor([0.0, 2.0]).expand(n, latent, 2)
    mu = torch.tensor([-3.0, 1.0]).expand(n, latent, 2)
    log_sigma = torch.log(torch.tensor([0.1, 0.2])).expand(n, latent, 2)
    output = MDNOutput(logit_pi, mu, log_sigma, torch.zeros(n), torch.zeros(n), torch.zeros(n, 1))
    assert torch.equal(MDNRNN.sample_next_z(output, 0.0), torch.ones(n, latent))
    generator = torch.Generator().manual_seed(0)
    z = MDNRNN.sample_next_z(output, 1.0, generator)
    frac_low = (z < -1).float().mean().item()
    assert frac_low == pytest.approx(1 / (1 + math.e ** 2), abs=0.01)
    high = z[z > -1]
    assert high.mean().item() == pytest.approx(1.0, abs=0.01) and high.std().item() == pytest.approx(0.2, abs=0.01)
    cold = MDNRNN.sample_next_z(output, 0.25, generator)  # logits × 4, σ × 0.5
    assert (cold < -1).float().mean().item() == pytest.approx(1 / (1 + math.e ** 8), abs=0.002)
    assert cold[cold > -1].std().item() == pytest.approx(0.1, abs=0.005)


def test_terminal_flags_only_mark_real_terminations():
    rewards = np.array([1, 1, 1, 1, -100, 1, 1, 1, 3], dtype=np.float32)
    dones = np.zeros(9, dtype=bool)
    dones[[2, 4, 8]] = True
    episodes = [{"start": 0, "length": 3, "lap_finished": False},  # time limit: not terminal
                {"start": 3, "length": 2, "lap_finished": False},  # left the playfield (−100)
                {"start": 5, "length": 4, "lap_finished": True}]
    data = RecordedData(frames=np.zeros((9, 64, 64, 3), np.uint8), actions=np.zeros((9, 3), np.float32),
                        rewards=rewards, dones=dones, meta={"episodes": episodes})
    assert np.flatnonzero(train_memory.terminal_flags(data, "terminal")).tolist() == [4, 8]
    assert np.flatnonzero(train_memory.terminal_flags(data, "episode-end")).tolist() == [2, 4, 8]


def test_latent_cache_rebuilt_when_v_changes(tiny_data_dir, tmp_path, monkeypatch):
    vision = tmp_path / "ck" / "vision_model.pth"
    vae = save_tiny_vision(vision, seed=0)
    calls = []
    original = latent_cache.build_latents
    monkeypatch.setattr(latent_cache, "build_latents", lambda *a, **k: calls.append(1) or original(*a, **k))
    mu, logvar = latent_cache.load_or_build_latents(tiny_data_dir, vision, "cpu", batch_size=32, progress=False)
    assert mu.shape == logvar.shape == (95, 8) and mu.dtype == np.float32 and len(calls) == 1
    assert (tiny_data_dir / latent_cache.LATENTS_FILE).is_file()
    from car_racing.recording.recorded_data import load_recorded
    frames = torch.from_numpy(load_recorded(tiny_data_dir).frames[:5]).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        np.testing.assert_allclose(mu[:5], vae.encode(frames)[0].numpy(), rtol=1e-4, atol=1e-5)
    again, _ = latent_cache.load_or_build_latents(tiny_data_dir, vision, "cpu", progress=False)
    assert len(calls) == 1 and np.array_equal(again, mu)  # same V: read from the cache
    save_tiny_vision(vision, seed=1)  # V retrained
    changed, _ = latent_cache.load_or_build_latents(tiny_data_dir, vision, "cpu", progress=False)
    assert len(calls) == 2 and not np.allclose(changed, mu)
    (tiny_data_dir / latent_cache.LATENTS_FILE).write_bytes(b"truncated")  # a corrupt cache is rebuilt
    rebuilt, _ = latent_cache.load_or_build_latents(tiny_data_dir, vision, "cpu", progress=False)
    assert len(calls) == 3 and np.array_equal(rebuilt, changed)


def test_train_one_epoch_resume_and_visualise(tiny_data_dir, tmp_path):
    checkpoints = tmp_path / "ck"
    save_tiny_vision(checkpoints / "vision_model.pth")
    first = train_memory.train_memory(tiny_args(tiny_data_dir, checkpoints))
    saved = load_checkpoint(checkpoints / "memory_model.pth", "memory")
    for key in ("model_args", "model_state", "optimizer_state", "epoch", "best_val_loss", "config", "history",
                "vision", "reward"):
        assert key in saved
    assert saved["model_args"] == {"latent_size": 8, "action_size": 3, "hidden_size": 16, "num_mixtures": 3,
                                   "value_head": True}
    assert saved["vision"]["sha256"] == latent_cache.file_sha256(checkpoints / "vision_model.pth")
    assert saved["reward"]["scale"] == 1.0 and saved["epoch"] == 1 == first["epoch"]
    assert saved["config"] == cfg.as_dict(tiny_args(tiny_data_dir, checkpoints))  # the whole config, as plain data
    resolved = cfg.read_file(cfg.resolved_path(checkpoints, "memory"))  # and as the TOML file --config reads
    assert cfg.with_values(cfg.Config(), resolved) == tiny_args(tiny_data_dir, checkpoints)
    # a run saved before the one config recorded its script's flat arguments: --resume still reads them
    assert train_memory._saved_setting({"config": {"value_discount": 0.9}}, "value_discount", 0.5) == 0.9
    assert train_memory._saved_setting(saved, "done_target", None) == "terminal"
    assert {"train_mdn", "val_mdn", "train_reward", "val_reward", "train_done", "val_done"} <= set(saved["history"])
    assert all(np.isfinite(v[0]) for v in saved["history"].values())
    assert (checkpoints / "memory_model_latest.pth").is_file() and (checkpoints / "memory_model_loss.png").is_file()

    resumed = train_memory.train_memory(tiny_args(tiny_data_dir, checkpoints, epochs=2, resume=True))
    latest = load_checkpoint(checkpoints / "memory_model_latest.pth", "memory")
    assert latest["epoch"] == 2 and len(latest["history"]["train_mdn"]) == 2
    assert latest["history"]["train_mdn"][0] == saved["history"]["train_mdn"][0]
    records = read_metrics(metrics_path(checkpoints, "memory"))  # epoch 1 kept on resume, epoch 2 appended
    assert [r["step"] for r in records] == [1, 2]
    assert [r["val_total"] for r in records] == pytest.approx(latest["history"]["val_total"])
    # resuming gives the same model as training two epochs straight
    straight_dir = tmp_path / "straight"
    save_tiny_vision(straight_dir / "vision_model.pth")
    train_memory.train_memory(tiny_args(tiny_data_dir, straight_dir, epochs=2))
    straight = load_checkpoint(straight_dir / "memory_model_latest.pth", "memory")
    for name, value in straight["model_state"].items():
        torch.testing.assert_close(latest["model_state"][name], value)
    assert resumed["kind"] == "memory"

    with pytest.raises(UsageError, match="hidden_size"):
        train_memory.train_memory(tiny_args(tiny_data_dir, checkpoints, epochs=3, resume=True, hidden_size=8))

    out = tmp_path / "runs" / "dream.mp4"
    summary = visualize_memory_prediction.main(visualize_memory_prediction.Args(
        checkpoint_dir=str(checkpoints), data_dir=str(tiny_data_dir), out=str(out), episode=2, dream_steps=10,
        scale=2, device="cpu"))
    capture = cv2.VideoCapture(str(out))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    assert len(frames) == summary["steps"] == 40
    assert frames[0].shape[1] > 3 * 128 and frames[0].std() > 5  # three 128-pixel panels with content
    plot = cv2.imread(str(tmp_path / "runs" / "dream_reward.png"))
    assert plot is not None and plot.shape[0] > 100


def test_dream_resyncs_to_real_encoding():
    torch.manual_seed(0)
    model = MDNRNN(latent_size=4, hidden_size=8, num_mixtures=2).eval()
    real_mu, actions = torch.randn(12, 4), torch.randn(12, 3)
    result = dream_episode(model, real_mu, actions, dream_steps=5, temperature=1.0,
                          generator=torch.Generator().manual_seed(0))
    assert np.flatnonzero(result["resync"]).tolist() == [0, 5, 10]
    for t in (0, 5, 10):
        np.testing.assert_allclose(result["dream_z"][t], real_mu[t].numpy())
    assert not np.allclose(result["dream_z"][1], real_mu[1].numpy())
    # with real z fed in, M's reward predictions equal a plain sequence forward over the real episode
    with torch.no_grad():
        sequence, _ = model(real_mu[None], actions[None])
    np.testing.assert_allclose(result["real_reward_pred"], sequence.reward[0].numpy(), rtol=1e-5, atol=1e-5)


def test_bad_flags_are_usage_errors(tiny_data_dir, tmp_path):
    with pytest.raises(UsageError, match="memory.epochs = 0"):
        train_memory.train_memory(tiny_args(tiny_data_dir, tmp_path, epochs=0))
    with pytest.raises(UsageError, match="vision"):
        train_memory.train_memory(tiny_args(tiny_data_dir, tmp_path / "empty"))


def test_warm_start_and_head_dropout(tiny_data_dir, tmp_path):
    checkpoints = tmp_path / "ck"
    save_tiny_vision(checkpoints / "vision_model.pth")
    first = train_memory.train_memory(tiny_args(tiny_data_dir, checkpoints))
    # --init-from: the new run starts from those weights (sizes from the checkpoint), with dropout on the heads
    tuned_dir = tmp_path / "tuned"
    save_tiny_vision(tuned_dir / "vision_model.pth")
    tuned = train_memory.train_memory(tiny_args(tiny_data_dir, tuned_dir, hidden_size=512, num_mixtures=5, dropout=0.3,
                                        init_from=str(checkpoints / "memory_model.pth")))
    assert tuned["model_args"] == first["model_args"]  # not the flags' 512 / 5: M is rebuilt from its checkpoint
    assert tuned["warm_start"]["from"] == str(checkpoints / "memory_model.pth") and tuned["dropout"] == 0.3
    # it continued from those weights, not restarted: one epoch moves them little, a new start would be far away
    for name, value in first["model_state"].items():
        if value.ndim == 2:
            assert torch.norm(tuned["model_state"][name] - value) < 0.5 * torch.norm(value), name
    assert tuned["data"]["num_frames"] == 95 and tuned["data"]["drivers"] == ["synthetic"]
    with pytest.raises(UsageError, match="memory.dropout = 1.0"):
        train_memory.train_memory(tiny_args(tiny_data_dir, tuned_dir, dropout=1.0))
    with pytest.raises(UsageError, match="--memory.init-from"):
        train_memory.train_memory(tiny_args(tiny_data_dir, tuned_dir, init_from=str(tmp_path / "none.pth")))


def test_freeze_lstm_trains_only_the_heads(tiny_data_dir, tmp_path):
    checkpoints = tmp_path / "ck"
    save_tiny_vision(checkpoints / "vision_model.pth")
    first = train_memory.train_memory(tiny_args(tiny_data_dir, checkpoints))
    tuned_dir = tmp_path / "tuned"
    save_tiny_vision(tuned_dir / "vision_model.pth")
    tuned = train_memory.train_memory(tiny_args(tiny_data_dir, tuned_dir, freeze_lstm=True, epochs=2,
                                        init_from=str(checkpoints / "memory_model.pth")))
    for name, value in first["model_state"].items():
        if name.startswith("lstm."):  # h is unchanged: a C trained on the first M drives the same
            torch.testing.assert_close(tuned["model_state"][name], value, rtol=0, atol=0)
        else:
            assert not torch.equal(tuned["model_state"][name], value), name
    assert tuned["freeze_lstm"]
    # a frozen run resumes (the optimizer holds only the heads), and still leaves the LSTM alone
    train_memory.train_memory(tiny_args(tiny_data_dir, tuned_dir, freeze_lstm=True, epochs=3, resume=True))
    latest = load_checkpoint(tuned_dir / "memory_model_latest.pth", "memory")
    assert latest["epoch"] == 3
    for name, value in first["model_state"].items():
        if name.startswith("lstm."):
            torch.testing.assert_close(latest["model_state"][name], value, rtol=0, atol=0)
    with pytest.raises(UsageError, match="--memory.freeze-lstm"):
        train_memory.train_memory(tiny_args(tiny_data_dir, tuned_dir, freeze_lstm=False, epochs=4, resume=True))
    with pytest.raises(UsageError, match="--memory.freeze-lstm"):
        train_memory.train_memory(tiny_args(tiny_data_dir, tmp_path / "fresh", freeze_lstm=True))


def test_value_targets_discount_the_rewards_after_each_step_within_its_episode():
    rewards = np.array([1, 2, 4, -100, 1, 1, 1, 1, 1], dtype=np.float32)
    dones = np.zeros(9, dtype=bool)
    dones[[3, 8]] = True
    episodes = [{"start": 0, "length": 4, "terminated": True},  # left the playfield: its futures are known
                {"start": 4, "length": 5, "terminated": False}]  # cut by the time limit
    data = RecordedData(frames=np.zeros((9, 64, 64, 3), np.uint8), actions=np.zeros((9, 3), np.float32),
                        rewards=rewards, dones=dones, meta={"episodes": episodes})
    flags = train_memory.terminal_flags(data, "terminal")
    targets, mask = train_memory.value_targets(data, flags, 0.5, reward_clip=10.0)
    # (1 − γ)·Σ_{k≥1} γ^(k−1) r_(t+k), the −100 clipped to −10, nothing crossing into the next episode
    expected_first = 0.5 * np.array([2 + 0.5 * 4 + 0.25 * -10, 4 + 0.5 * -10, -10, 0])
    np.testing.assert_allclose(targets[:4], expected_first, rtol=1e-6)
    assert mask[:4].all()
    # the cut episode: its last 2/(1 − γ) = 4 steps have no target (what follows them was never recorded)
    assert mask[4:].tolist() == [True, False, False, False, False]
    assert targets[4] == pytest.approx(0.5 * (1 + 0.5 + 0.25 + 0.125))


def test_value_head_trains_beside_the_other_heads_and_can_be_added_to_an_m(tiny_data_dir, tmp_path):
    checkpoints = tmp_path / "ck"
    save_tiny_vision(checkpoints / "vision_model.pth")
    plain = train_memory.train_memory(tiny_args(tiny_data_dir, checkpoints, value_discount=0.0))
    assert plain["model_args"]["value_head"] is False and plain["value"] is None
    assert plain["history"]["train_value"] == [0.0]
    valued_dir = tmp_path / "valued"
    save_tiny_vision(valued_dir / "vision_model.pth")
    valued = train_memory.train_memory(tiny_args(tiny_data_dir, valued_dir, epochs=2, value_discount=0.9,
                                         init_from=str(checkpoints / "memory_model_latest.pth")))
    assert valued["model_args"]["value_head"] is True and valued["value"]["discount"] == 0.9
    assert valued["history"]["train_value"][0] > 0 and valued["history"]["val_value"][-1] > 0
    for name, value in plain["model_state"].items():  # the rest of M continued from its checkpoint
        assert name in valued["model_state"]
    model = MDNRNN(**valued["model_args"])
    model.load_state_dict(valued["model_state"])
    assert model.value_rate(torch.zeros(2, 5, 16)).shape == (2, 5)
    with pytest.raises(ValueError, match="value head"):
        MDNRNN(8, 3, 16, 3).value_rate(torch.zeros(1, 16))
    with pytest.raises(UsageError, match="memory.value_discount = 1.0"):
        train_memory.train_memory(tiny_args(tiny_data_dir, valued_dir, value_discount=1.0))
    with pytest.raises(UsageError, match="--memory.value-discount 0.9, this run asks for 0.5"):  # a resumed run keeps γ
        train_memory.train_memory(tiny_args(tiny_data_dir, valued_dir, epochs=3, value_discount=0.5, resume=True))


def test_mean_latents_train_m_on_vs_mean_alone(tiny_data_dir, tmp_path, monkeypatch):
    """--memory.latents mean: M reads and predicts V's μ, what C sees in the real env; V's σ plays no part (with
    samples it does). The choice is recorded, kept on resume, and a change is refused."""
    original = latent_cache.load_or_build_latents
    widen = {"by": 0.0}  # added to V's log σ² as the stage reads the cache

    def latents(*args, **kwargs):
        mu, logvar = original(*args, **kwargs)
        return mu, logvar + widen["by"]

    monkeypatch.setattr(latent_cache, "load_or_build_latents", latents)
    states = {}
    for latents_kind in ("mean", "sample"):
        for by in (0.0, 2.0):
            widen["by"] = by
            folder = tmp_path / f"{latents_kind}-{by}"
            save_tiny_vision(folder / "vision_model.pth")
            best = train_memory.train_memory(tiny_args(tiny_data_dir, folder, latents=latents_kind))
            assert best["latents"] == latents_kind and best["config"]["memory"]["latents"] == latents_kind
            states[latents_kind, by] = best["model_state"]
    for name, value in states["mean", 0.0].items():
        torch.testing.assert_close(states["mean", 2.0][name], value, rtol=0, atol=0)
    assert any(not torch.equal(states["sample", 2.0][name], value) for name, value in states["sample", 0.0].items())
    with pytest.raises(UsageError, match="--memory.latents"):
        train_memory.train_memory(tiny_args(tiny_data_dir, tmp_path / "mean-0.0", latents="sample", epochs=2,
                                            resume=True))
