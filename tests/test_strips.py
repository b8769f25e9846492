"""The README film strips: the agent driving the real env (simulator --strip) and M dreaming (--strip)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from car_racing import car_racing_gameplay_simulator as simulator
from car_racing import visualize_memory_prediction
from car_racing.common.cli import UsageError
from car_racing.common.runtime import load_model
from car_racing.common.video import upscale
from car_racing.episodes.agent import evaluate_agent
from car_racing.models.vae import frames_to_tensor
from car_racing.recording.recorded_data import load_recorded
from tests.test_agent_simulator import tiny_checkpoints, write_tiny_checkpoints  # noqa: F401 (fixture)

GAP = 4  # white pixels between the strip's frames (and rows)
UNLABELLED = slice(-40, None)  # the bottom rows of a panel: below the step/return label


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def read_rgb(path) -> np.ndarray:
    image = cv2.imread(str(path))
    assert image is not None, path
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def panels(row: np.ndarray, size: int, count: int) -> list[np.ndarray]:
    """Cut a strip row into its ``count`` square panels, checking the white gaps between them."""
    assert row.shape[1] == count * size + (count - 1) * GAP
    for i in range(1, count):
        assert np.all(row[:, i * (size + GAP) - GAP:i * (size + GAP)] == 255)
    return [row[:, i * (size + GAP):i * (size + GAP) + size] for i in range(count)]


def test_simulator_strip_is_the_first_episode_evenly_spaced(tiny_checkpoints, tmp_path, capsys):  # noqa: F811
    strip = tmp_path / "runs" / "agent_strip.png"
    args = simulator.Args(checkpoint_dir=str(tiny_checkpoints), episodes=2, max_steps=10, workers=1,
                          strip=str(strip), strip_frames=4, strip_scale=2)
    mean = simulator.main(args)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("score: ") and lines[-1].endswith("over 2 episodes")
    assert lines[-2] == f"strip: {strip}"
    assert np.isfinite(mean)
    image = read_rgb(strip)
    assert image.shape == (192, 4 * 192 + 3 * GAP, 3)  # 96×96 frames ×2, four of them
    assert [p.name for p in strip.parent.iterdir()] == ["agent_strip.png"]  # written atomically
    # The first episode (seed 10000), steps 0, 3, 6, 9 of its 10: the same raw frames, upscaled.
    first = evaluate_agent(tiny_checkpoints, [10000], max_steps=10, workers=1, smoothing=0.0,
                           capture_raw=True)[0]
    for panel, step in zip(panels(image, 192, 4), (0, 3, 6, 9)):
        np.testing.assert_array_equal(panel[UNLABELLED], upscale(first.raw_frames[step], 2)[UNLABELLED])


def test_simulator_strip_of_a_short_episode_and_bad_flags(tiny_checkpoints, tmp_path):  # noqa: F811
    strip = tmp_path / "short.png"
    simulator.main(simulator.Args(checkpoint_dir=str(tiny_checkpoints), episodes=1, max_steps=3, workers=1,
                                  strip=str(strip), strip_frames=8, strip_scale=1))
    assert read_rgb(strip).shape == (96, 3 * 96 + 2 * GAP, 3)  # only 3 steps: every one of them
    base = dict(checkpoint_dir=str(tiny_checkpoints), episodes=1, max_steps=3, workers=1)
    with pytest.raises(UsageError, match="--strip .*png"):
        simulator.main(simulator.Args(**base, strip=str(tmp_path / "strip.jpg")))
    with pytest.raises(UsageError, match="--strip-frames 0"):
        simulator.main(simulator.Args(**base, strip=str(strip), strip_frames=0))
    with pytest.raises(UsageError, match="--strip-scale 0"):
        simulator.main(simulator.Args(**base, strip=str(strip), strip_scale=0))


def test_dream_strip_real_over_dream(tiny_data_dir, tmp_path):
    checkpoints = tmp_path / "checkpoints"
    paths = write_tiny_checkpoints(checkpoints, controller=False)  # untrained tiny V and M (latent 8)
    strip = tmp_path / "runs" / "dream_strip.png"
    summary = visualize_memory_prediction.main(visualize_memory_prediction.Args(
        checkpoint_dir=str(checkpoints), data_dir=str(tiny_data_dir), out=str(tmp_path / "runs" / "dream.mp4"),
        episode=0, dream_steps=10, max_steps=20, strip=str(strip), strip_frames=4, strip_scale=2, device="cpu"))
    assert summary["strip"] == str(strip) and summary["steps"] == 20
    image = read_rgb(strip)
    assert image.shape == (2 * 128 + GAP, 4 * 128 + 3 * GAP, 3)  # two rows of four 64×64 frames ×2
    assert np.all(image[128:128 + GAP] == 255)  # white gap between the rows
    real_row, dream_row = panels(image[:128], 128, 4), panels(image[128 + GAP:], 128, 4)
    # Top row: the recorded frames at steps 0, 3, 6, 9 of the first dream segment (0 … 9).
    data = load_recorded(tiny_data_dir, mmap=True)
    start = data.episode_slice(0).start
    for panel, step in zip(real_row, (0, 3, 6, 9)):
        np.testing.assert_array_equal(panel[UNLABELLED], upscale(np.array(data.frames[start + step]), 2)[UNLABELLED])
    # Bottom row, step 0 is the re-sync: V's reconstruction of the real frame; later steps are M's own dream.
    vae, _ = load_model(paths["vision"], "vision", "cpu")
    with torch.no_grad():
        mu, _ = vae.encode(frames_to_tensor(np.array(data.frames[start:start + 1])))
        recon = (vae.decode(mu).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()[0]
    np.testing.assert_allclose(dream_row[0][UNLABELLED].astype(int), upscale(recon, 2)[UNLABELLED].astype(int), atol=1)
    assert not np.array_equal(dream_row[0], real_row[0])

    # A dream segment shorter than --strip-frames shows each of its steps once.
    short = tmp_path / "short.png"
    visualize_memory_prediction.main(visualize_memory_prediction.Args(
        checkpoint_dir=str(checkpoints), data_dir=str(tiny_data_dir), out=str(tmp_path / "short.mp4"), episode=0,
        dream_steps=3, max_steps=6, strip=str(short), strip_frames=8, strip_scale=1, scale=1, device="cpu"))
    assert read_rgb(short).shape == (2 * 64 + GAP, 3 * 64 + 2 * GAP, 3)
    with pytest.raises(UsageError, match="--strip .*png"):
        visualize_memory_prediction.main(visualize_memory_prediction.Args(
            checkpoint_dir=str(checkpoints), data_dir=str(tiny_data_dir), strip=str(tmp_path / "s.mp4")))
