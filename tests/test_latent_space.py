"""explore_latent_space.py: V's latent dimensions ranked by KL, the sweep grid PNG, the sliders window."""

from __future__ import annotations

import cv2
import numpy as np
import pygame
import pytest
from test_memory import save_tiny_vision
from test_recording import ScriptedEvents

from car_racing import explore_latent_space as latent
from car_racing.common.cli import UsageError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run(tiny_data_dir, checkpoints, **overrides):
    options = dict(checkpoint_dir=str(checkpoints), data_dir=str(tiny_data_dir), device="cpu", scale=1, steps=5)
    options.update(overrides)
    return latent.main(latent.Args(**options))


def test_sweep_grid_has_one_row_per_active_dimension(tiny_data_dir, tmp_path):
    save_tiny_vision(tmp_path / "ck" / "vision_model.pth")
    ranked = run(tiny_data_dir, tmp_path / "ck", active_kl=0.0, out=str(tmp_path / "all.png"))
    kl = ranked["kl"]
    assert kl == sorted(kl, reverse=True) and len(kl) == 8  # every dimension, most KL first
    threshold = (kl[2] + kl[3]) / 2  # exactly three dimensions above it
    summary = run(tiny_data_dir, tmp_path / "ck", active_kl=threshold, out=str(tmp_path / "runs" / "sweep.png"))
    assert summary["active"] == ranked["order"][:3]
    image = cv2.imread(summary["out"])
    row_height = 22 + 64 + 2 * 2  # title strip, one 64×64 image (scale 1), gaps
    assert image.shape[0] == 3 * row_height and image.shape[1] == 5 * (64 + 2) + 2
    first_row = image[22 + 2:22 + 2 + 64]
    assert np.abs(first_row[:, 2:66].astype(int) - first_row[:, -66:-2].astype(int)).mean() > 0  # the sweep shows
    with pytest.raises(UsageError, match="--active-kl"):
        run(tiny_data_dir, tmp_path / "ck", active_kl=1e9, out=str(tmp_path / "none.png"))
    with pytest.raises(UsageError, match="--frame 999"):
        run(tiny_data_dir, tmp_path / "ck", frame=999)


def test_sliders_window_follows_the_mouse_and_keys(tiny_data_dir, tmp_path, monkeypatch):
    save_tiny_vision(tmp_path / "ck" / "vision_model.pth")
    x, y, width, height = latent.LatentExplorer.slider_box(0)
    right_end = (x + width - 1, y + height // 2)
    # click at the right end of the top slider (the dimension with most KL), then one slider down and ←, Esc
    script = ScriptedEvents({1: [pygame.event.Event(pygame.MOUSEBUTTONDOWN, button=1, pos=right_end),
                                 pygame.event.Event(pygame.MOUSEBUTTONUP, button=1, pos=right_end),
                                 pygame.event.Event(pygame.KEYDOWN, key=pygame.K_DOWN, mod=0, unicode=""),
                                 pygame.event.Event(pygame.KEYDOWN, key=pygame.K_LEFT, mod=0, unicode="")],
                             3: [pygame.event.Event(pygame.KEYDOWN, key=pygame.K_ESCAPE, mod=0, unicode="")]})
    monkeypatch.setattr(latent, "WINDOW_OPTIONS", {"fps": 0, "event_source": script})
    summary = run(tiny_data_dir, tmp_path / "ck", interactive=True, active_kl=0.0)
    z, mu = np.array(summary["z"]), np.array(summary["mu"])
    mean, std = np.array(summary["mean"]), np.array(summary["std"])
    first, second = summary["order"][:2]
    assert z[first] == pytest.approx(mean[first] + 3 * std[first] - 6 * std[first] / width, rel=1e-4)
    assert z[second] == pytest.approx(max(mu[second] - std[second] / 4, mean[second] - 3 * std[second]), rel=1e-4)
    untouched = [d for d in range(8) if d not in (first, second)]
    np.testing.assert_allclose(z[untouched], mu[untouched], rtol=1e-6)
    assert script.calls == 4


def test_interactive_without_a_display_points_to_out(tiny_data_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("SDL_VIDEODRIVER", raising=False)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr("sys.platform", "linux")
    with pytest.raises(UsageError, match="--interactive.*--out"):
        run(tiny_data_dir, tmp_path / "ck", interactive=True)
