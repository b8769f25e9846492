"""Stage 2, the vision model V: the ConvVAE, its training (car_racing/training/vision.py) and its visualisations."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from car_racing import visualize_vision_model, visualize_vision_video
from car_racing.common import config as cfg
from car_racing.common.cli import UsageError
from car_racing.common.metrics import metrics_path, read_metrics
from car_racing.common.runtime import checkpoint_paths, load_checkpoint, load_model, save_checkpoint
from car_racing.common.video import video_info, write_video
from car_racing.models.vae import VAE, frames_to_tensor, kl_per_image, vae_loss
from car_racing.recording.recorded_data import load_recorded
from car_racing.training import vision as train_vision


@pytest.fixture(autouse=True)
def one_thread():
    """These batches are tiny, and on a busy shared CPU two spinning threads are several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


RUN_KEYS = {"data_dir", "checkpoint_dir", "seed", "device", "threads", "resume", "progress", "tensorboard"}


def train_args(data_dir, checkpoint_dir, **overrides) -> cfg.Config:
    """A tiny stage-2 config: ``overrides`` by field name (run's or vision's)."""
    options = dict(data_dir=str(data_dir), checkpoint_dir=str(checkpoint_dir), epochs=1, batch_size=16,
                   kl_anneal_epochs=2.0, val_fraction=0.34, device="cpu", seed=3, progress=False)
    options.update(overrides)
    return cfg.replace(cfg.Config(), **{("run__" if k in RUN_KEYS else "vision__") + k: v for k, v in options.items()})


def test_paper_parameter_count():
    assert sum(p.numel() for p in VAE().parameters()) == 4_348_547


def test_shapes_and_frame_conversion():
    torch.manual_seed(0)
    model = VAE()
    frames = np.random.default_rng(0).integers(0, 256, size=(5, 64, 64, 3), dtype=np.uint8)
    x = frames_to_tensor(frames)
    assert x.shape == (5, 3, 64, 64) and x.dtype == torch.float32 and x.is_contiguous()
    assert float(x[2, 1, 10, 20]) == pytest.approx(frames[2, 10, 20, 1] / 255)
    assert torch.equal(frames_to_tensor(torch.from_numpy(frames), channels_last=True), x)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (5, 32)
    z = model.sample(mu, logvar)
    assert z.shape == (5, 32)
    with torch.no_grad():
        recon = model.decode(z)
    assert recon.shape == (5, 3, 64, 64) and 0 <= float(recon.min()) and float(recon.max()) <= 1
    out, mu2, _ = model(x)
    assert out.shape == x.shape and torch.equal(mu2, mu)
    assert VAE(latent_size=8).encode(x)[0].shape == (5, 8)


def test_loss_terms():
    x = torch.rand(4, 3, 64, 64)
    recon = torch.rand(4, 3, 64, 64)
    zeros = torch.zeros(4, 32)
    recon_loss, kl = vae_loss(recon, x, zeros, zeros)
    assert float(recon_loss) == pytest.approx(float(((recon - x) ** 2).sum() / 4), rel=1e-5)
    assert float(kl) == 0.0
    mu = torch.full((4, 32), 0.5)
    assert float(kl_per_image(mu, zeros)[0]) == pytest.approx(32 * 0.125)
    _, floored = vae_loss(recon, x, mu, zeros, free_bits=0.5)
    assert float(floored) == pytest.approx(16.0)  # 4 nats < the floor of 0.5 · 32


def test_loss_decreases_on_a_tiny_batch():
    torch.manual_seed(0)
    model = VAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    frames = np.zeros((8, 64, 64, 3), dtype=np.uint8)
    frames[:, 20:40, 10:50] = (200, 50, 50)
    frames[:, :, :, 1] += 100
    step = train_vision.make_train_step(model, optimizer)
    x = frames_to_tensor(frames)
    losses = [sum(step(x, 0.1)) for _ in range(15)]
    assert losses[-1] < 0.7 * losses[0], losses


def test_split_by_whole_episodes():
    train, val = train_vision.split_episodes(10, 0.2, seed=1)
    assert train_vision.split_episodes(10, 0.2, seed=1) == (train, val)
    assert len(val) == 2 and sorted(train + val) == list(range(10))
    for n in (2, 3, 5):
        train, val = train_vision.split_episodes(n, 0.01, seed=0)
        assert len(train) >= 1 and len(val) >= 1 and sorted(train + val) == list(range(n))
    assert train_vision.split_episodes(2, 0.9, seed=0)[0]  # never everything in validation
    assert train_vision.split_episodes(1, 0.5, seed=0) == ([0], [])


def test_train_writes_checkpoint_and_resume_continues_exactly(tiny_data_dir, tmp_path):
    checkpoint_dir = tmp_path / "checkpoints"
    first = train_vision.train_vision(train_args(tiny_data_dir, checkpoint_dir))
    best_path = checkpoint_paths(checkpoint_dir)["vision"]
    latest_path = checkpoint_dir / train_vision.LATEST_FILE
    curves = cv2.imread(str(checkpoint_dir / train_vision.CURVES_FILE))
    assert curves is not None and curves.shape[0] > 100
    best = load_checkpoint(best_path, "vision")
    assert best["epoch"] == 1 and best["model_args"] == {"latent_size": 32}
    assert best["config"] == cfg.as_dict(train_args(tiny_data_dir, checkpoint_dir))  # the config, as plain data
    resolved = cfg.resolved_path(checkpoint_dir, "vision")  # and as the TOML file --config reads
    assert cfg.with_values(cfg.Config(), cfg.read_file(resolved)) == train_args(tiny_data_dir, checkpoint_dir)
    assert set(best["history"]) >= {"train_recon", "train_kl", "val_recon", "val_kl"}
    assert all(len(v) == 1 for v in best["history"].values())
    # validation = whole episodes, disjoint from training
    split = best["split"]
    assert split["val"] and split["train"] and not set(split["val"]) & set(split["train"])
    assert best["best_val_loss"] == pytest.approx(best["history"]["val_recon"][0] + best["history"]["val_kl"][0])

    data = load_recorded(tiny_data_dir)
    train_frames = sum(data.episodes[i]["length"] for i in split["train"])
    steps_per_epoch = -(-train_frames // 16)
    resumed = train_vision.train_vision(train_args(tiny_data_dir, checkpoint_dir, epochs=2, resume=True))
    assert resumed["epoch"] == 2 and len(resumed["history"]["train_recon"]) == 2
    assert resumed["history"]["train_recon"][0] == first["history"]["train_recon"][0]
    adam_steps = {int(s["step"]) for s in resumed["optimizer_state"]["state"].values()}
    assert adam_steps == {2 * steps_per_epoch}  # the optimiser state went on from epoch 1
    assert load_checkpoint(latest_path, "vision")["epoch"] == 2
    # the metrics file matches the resumed history: epoch 1 kept, epoch 2 appended
    records = read_metrics(metrics_path(checkpoint_dir, "vision"))
    assert [r["step"] for r in records] == [1, 2]
    assert [r["train_recon"] for r in records] == pytest.approx(resumed["history"]["train_recon"])

    # 1 epoch + resume 1 epoch == 2 epochs in one go (weights, β schedule, shuffling and RNG restored)
    straight = train_vision.train_vision(train_args(tiny_data_dir, tmp_path / "straight", epochs=2))
    assert straight["history"]["train_recon"] == pytest.approx(resumed["history"]["train_recon"], rel=1e-4)
    for key, value in straight["model_state"].items():
        assert torch.allclose(value, resumed["model_state"][key], atol=1e-5), key

    # nothing left to do
    assert train_vision.train_vision(train_args(tiny_data_dir, checkpoint_dir, epochs=2, resume=True))["epoch"] == 2


def test_mismatched_or_truncated_checkpoint_is_a_one_line_error(tiny_data_dir, tmp_path):
    checkpoint_dir = tmp_path / "checkpoints"
    train_vision.train_vision(train_args(tiny_data_dir, checkpoint_dir))
    latest_path = checkpoint_dir / train_vision.LATEST_FILE
    checkpoint = load_checkpoint(latest_path, "vision")
    checkpoint["model_args"] = {"latent_size": 16}
    save_checkpoint(checkpoint, checkpoint_paths(checkpoint_dir)["vision"])
    save_checkpoint(checkpoint, latest_path)
    with pytest.raises(UsageError, match="does not fit VAE") as err:
        load_model(checkpoint_paths(checkpoint_dir)["vision"], "vision")
    assert "\n" not in str(err.value)
    with pytest.raises(UsageError, match="does not fit VAE") as err:
        train_vision.train_vision(train_args(tiny_data_dir, checkpoint_dir, epochs=2, resume=True))
    assert "\n" not in str(err.value)
    latest_path.write_bytes(latest_path.read_bytes()[:1000])
    with pytest.raises(UsageError, match="truncated or corrupt") as err:
        train_vision.train_vision(train_args(tiny_data_dir, checkpoint_dir, epochs=2, resume=True))
    assert "\n" not in str(err.value)
    with pytest.raises(UsageError, match="vision.val_fraction = 1.0"):
        train_vision.train_vision(train_args(tiny_data_dir, checkpoint_dir, val_fraction=1.0))


def test_visualisations_write_png_and_mp4(tiny_data_dir, tmp_path):
    checkpoint_dir = tmp_path / "checkpoints"
    train_vision.train_vision(train_args(tiny_data_dir, checkpoint_dir))
    png = visualize_vision_model.main(visualize_vision_model.Args(
        checkpoint_dir=str(checkpoint_dir), data_dir=str(tiny_data_dir), out=str(tmp_path / "runs" / "grid.png"),
        columns=5, scale=2, device="cpu"))
    image = cv2.imread(str(png))
    assert image is not None and image.shape[1] == 5 * (64 * 2 + 2) + 2 and image.shape[0] > 3 * 128

    checkpoint = load_checkpoint(checkpoint_paths(checkpoint_dir)["vision"], "vision")
    episode = checkpoint["split"]["val"][0]
    length = load_recorded(tiny_data_dir).episodes[episode]["length"]
    mp4 = visualize_vision_video.main(visualize_vision_video.Args(
        checkpoint_dir=str(checkpoint_dir), data_dir=str(tiny_data_dir), out=str(tmp_path / "runs" / "ep.mp4"),
        scale=4, device="cpu"))
    assert video_info(mp4)[:3] == (length, 2 * 64 * 4 + 4, 64 * 4)
    with pytest.raises(UsageError, match="--episode 7"):
        visualize_vision_video.main(visualize_vision_video.Args(
            checkpoint_dir=str(checkpoint_dir), data_dir=str(tiny_data_dir), out=str(tmp_path / "x.mp4"),
            episode=7, device="cpu"))
    assert not (tmp_path / "x.mp4").exists()


def test_video_writer_pads_odd_sizes_and_is_atomic(tmp_path):
    frames = [np.full((33, 47, 3), i * 20, dtype=np.uint8) for i in range(6)]
    assert write_video(tmp_path / "odd.mp4", frames, fps=10) == 6
    assert video_info(tmp_path / "odd.mp4")[:3] == (6, 48, 34)
    with pytest.raises(ValueError):
        write_video(tmp_path / "empty.mp4", [])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd.mp4"]
