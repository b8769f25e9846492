"""V's latent space by hand: a frame, its z, and what each dimension of z does to the decoding.

The dimensions are sorted by their KL (nats, averaged over up to ``--stats-frames`` frames of the checkpoint's
held-out episodes): a dimension the encoder uses carries KL, an unused one (posterior = prior) about 0.
Dimensions above ``--active-kl`` are the *active* ones.

- Default (headless-safe): ``--out`` gets a PNG grid with one row per active dimension, most KL first:
  that dimension swept from −``--sigmas``σ to +``--sigmas``σ (the mean and spread of μ over those frames)
  while the others keep the frame's μ.
- ``--interactive``: a window with the frame, its decoding, and z as sliders (sorted by KL, active ones
  first, the rest greyed) that re-decode live. Mouse: drag a slider. Keys: ↑/↓ choose a slider, ←/→ move
  it by σ/4, Z back to the frame's μ, N another frame, A remember this frame as the start of an
  interpolation, then [ and ] move z from that frame (t = 0) to the current one (t = 1) in steps of 0.1;
  Esc or closing the window ends. Needs a display (else one line, exit 2: use ``--out``).

    python car_racing/explore_latent_space.py                    # runs/latent_sweep.png
    python car_racing/explore_latent_space.py --interactive      # the sliders window
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

import numpy as np

from car_racing.common.cli import UsageError, run_main
from car_racing.common.runtime import agent_dir, checkpoint_paths, load_model, resolve_device
from car_racing.common.video import titled_rows, upscale, write_image
from car_racing.recording.recorded_data import episode_frame_indices, load_recorded


@dataclass
class Args:
    """V's latent space: a PNG sweep of each active dimension, or live sliders in a window (--interactive)."""

    checkpoint_dir: Optional[str] = None
    """folder with vision_model.pth (car_racing/train_vision.py writes it) (default: checkpoints/ once you have trained V there, else the shipped agent in checkpoints/pretrained/default)"""
    data_dir: str = "data"
    """the recording (its held-out episodes supply the frames and the statistics)"""
    out: str = "runs/latent_sweep.png"
    """the sweep grid PNG (written unless --interactive)"""
    interactive: bool = False
    """open the sliders window instead of writing --out (needs a display)"""
    frame: int = -1
    """index of the recorded frame to start from (-1: one of the held-out frames, chosen by --seed)"""
    steps: int = 9
    """images per dimension in the sweep (odd: the middle one is the mean)"""
    sigmas: float = 3.0
    """the sweep runs from the mean of μ_d minus this many σ to plus this many σ"""
    active_kl: float = 0.05
    """a dimension whose mean KL (nats) is above this is active"""
    stats_frames: int = 1000
    """frames used for the KL ranking and each dimension's mean and σ"""
    scale: int = 2
    """upscaling of each 64×64 image in the PNG"""
    seed: int = 0
    """picks the frames"""
    device: str = "auto"
    """auto, cpu or cuda[:N]"""


def latent_stats(model: Any, frames: np.ndarray, device: Any, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Encode ``frames``: μ (N, L), and per dimension the mean KL to the prior (nats), μ's mean and σ."""
    import torch

    from car_racing.models.vae import frames_to_tensor

    mus, kls = [], []
    with torch.no_grad():
        for start in range(0, len(frames), batch_size):
            mu, logvar = model.encode(frames_to_tensor(frames[start:start + batch_size], device))
            mus.append(mu.float().cpu().numpy())
            kls.append((0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)).float().cpu().numpy())
    mu = np.concatenate(mus)
    return {"mu": mu, "kl": np.concatenate(kls).mean(axis=0), "mean": mu.mean(axis=0),
            "std": np.maximum(mu.std(axis=0), 1e-3)}


def decode(model: Any, z: np.ndarray, device: Any) -> np.ndarray:
    """z (B, L) or (L,) → uint8 images (B, 64, 64, 3)."""
    import torch

    from car_racing.models.vae import to_images

    with torch.no_grad():
        return to_images(model.decode(torch.as_tensor(np.atleast_2d(z), dtype=torch.float32, device=device)))


def sweep_rows(model: Any, z: np.ndarray, dims: Iterable[int], stats: dict, steps: int, sigmas: float,
               device: Any) -> list[tuple[str, np.ndarray]]:
    """One titled row per dimension: z with that dimension swept over mean ± sigmas·σ (the others as in z)."""
    rows = []
    for d in dims:
        values = stats["mean"][d] + np.linspace(-sigmas, sigmas, steps) * stats["std"][d]
        batch = np.repeat(z[None], steps, axis=0)
        batch[:, d] = values
        title = (f"z[{d}]  KL {stats['kl'][d]:.2f} nats: {values[0]:+.2f} ... {values[-1]:+.2f} "
                 f"(mean {stats['mean'][d]:+.2f} +- {sigmas:g} sd)")
        rows.append((title, decode(model, batch, device)))
    return rows


WINDOW_OPTIONS: dict[str, Any] = {}  # tests set fps=0 and an event_source here


class LatentExplorer:
    """The sliders window: see the module docstring for the mouse and keys. ``event_source`` returns the
    pending pygame events (tests inject lists); ``fps`` paces the loop (0 = as fast as possible)."""

    SLIDER_W, SLIDER_H, SLIDER_GAP, IMAGE_SCALE = 260, 14, 6, 5

    def __init__(self, model: Any, device: Any, frames: np.ndarray, stats: dict, order: np.ndarray,
                 active: int, start: int, seed: int = 0, fps: int = 30,
                 event_source: Callable[[], Iterable[Any]] | None = None) -> None:
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        import pygame

        self.pygame, self.model, self.device, self.frames, self.stats = pygame, model, device, frames, stats
        self.order, self.active, self.fps = order, active, int(fps)
        self.rng = np.random.default_rng(seed)
        self.event_source = event_source if event_source is not None else pygame.event.get
        pygame.display.init()
        pygame.font.init()
        size = 64 * self.IMAGE_SCALE
        self.rows_h = len(order) * (self.SLIDER_H + self.SLIDER_GAP) + 40
        self.screen = pygame.display.set_mode((2 * size + self.SLIDER_W + 200, max(size + 80, self.rows_h)))
        pygame.display.set_caption("V's latent space: drag a slider, arrows, N another frame, A/[/] interpolate, "
                                   "Esc ends")
        self.font = pygame.font.Font(None, 20)
        self.clock = pygame.time.Clock()
        self.selected, self.dragging = 0, False
        self.anchor: int | None = None
        self.t = 1.0
        self.set_frame(start)

    def set_frame(self, index: int) -> None:
        self.index = int(index)
        self.z = self.stats["mu"][self.index].copy()
        self.t = 1.0

    @classmethod
    def slider_box(cls, row: int) -> tuple[int, int, int, int]:
        """(x, y, width, height) of the ``row``-th slider in the window."""
        return (2 * 64 * cls.IMAGE_SCALE + 120, 30 + row * (cls.SLIDER_H + cls.SLIDER_GAP), cls.SLIDER_W,
                cls.SLIDER_H)

    def _slider_rect(self, row: int) -> Any:
        return self.pygame.Rect(*self.slider_box(row))

    def _range(self, d: int) -> tuple[float, float]:
        mean, std = self.stats["mean"][d], self.stats["std"][d]
        return mean - 3 * std, mean + 3 * std

    def _set_from_x(self, row: int, x: int) -> None:
        rect, d = self._slider_rect(row), int(self.order[row])
        low, high = self._range(d)
        self.z[d] = low + (high - low) * min(1.0, max(0.0, (x - rect.left) / rect.width))

    def _row_at(self, pos: tuple[int, int]) -> int | None:
        for row in range(len(self.order)):
            if self._slider_rect(row).inflate(0, self.SLIDER_GAP).collidepoint(pos):
                return row
        return None

    def handle(self, event: Any) -> bool:
        """Apply one event; False when the session ends."""
        pygame = self.pygame
        if event.type == pygame.QUIT or (event.type == pygame.KEYDOWN and event.key == pygame.K_ESCAPE):
            return False
        if event.type == pygame.MOUSEBUTTONDOWN and getattr(event, "button", 1) == 1:
            row = self._row_at(event.pos)
            if row is not None:
                self.selected, self.dragging = row, True
                self._set_from_x(row, event.pos[0])
        elif event.type == pygame.MOUSEBUTTONUP:
            self.dragging = False
        elif event.type == pygame.MOUSEMOTION and self.dragging:
            self._set_from_x(self.selected, event.pos[0])
        elif event.type == pygame.KEYDOWN:
            d = int(self.order[self.selected])
            if event.key == pygame.K_UP:
                self.selected = max(0, self.selected - 1)
            elif event.key == pygame.K_DOWN:
                self.selected = min(len(self.order) - 1, self.selected + 1)
            elif event.key in (pygame.K_LEFT, pygame.K_RIGHT):
                step = self.stats["std"][d] / 4 * (1 if event.key == pygame.K_RIGHT else -1)
                low, high = self._range(d)
                self.z[d] = float(np.clip(self.z[d] + step, low, high))
            elif event.key == pygame.K_z:
                self.set_frame(self.index)
            elif event.key == pygame.K_n:
                self.set_frame(int(self.rng.integers(len(self.frames))))
            elif event.key == pygame.K_a:
                self.anchor = self.index
            elif event.key in (pygame.K_LEFTBRACKET, pygame.K_RIGHTBRACKET) and self.anchor is not None:
                self.t = float(np.clip(self.t + (0.1 if event.key == pygame.K_RIGHTBRACKET else -0.1), 0.0, 1.0))
                self.z = ((1 - self.t) * self.stats["mu"][self.anchor] + self.t * self.stats["mu"][self.index]
                          ).astype(np.float32)
        return True

    def draw(self) -> np.ndarray:
        """Draw the window; returns the decoded image."""
        pygame = self.pygame
        image = decode(self.model, self.z, self.device)[0]
        self.screen.fill((25, 25, 25))
        size = 64 * self.IMAGE_SCALE
        for i, (title, picture) in enumerate((("frame", self.frames[self.index]), ("decode(z)", image))):
            surface = pygame.surfarray.make_surface(np.ascontiguousarray(upscale(picture, self.IMAGE_SCALE).swapaxes(0, 1)))
            self.screen.blit(surface, (10 + i * (size + 10), 30))
            self.screen.blit(self.font.render(title, True, (255, 255, 255)), (10 + i * (size + 10), 10))
        info = f"frame {self.index}" + (f"   interpolating from frame {self.anchor}: t {self.t:.1f}"
                                        if self.anchor is not None else "   A marks a frame to interpolate from")
        self.screen.blit(self.font.render(info, True, (255, 255, 255)), (10, size + 40))
        for row, d in enumerate(self.order):
            rect, active = self._slider_rect(row), row < self.active
            low, high = self._range(int(d))
            colour = (80, 200, 255) if active else (110, 110, 110)
            pygame.draw.rect(self.screen, (60, 60, 60), rect)
            x = rect.left + int(rect.width * min(1.0, max(0.0, (self.z[d] - low) / (high - low))))
            pygame.draw.rect(self.screen, colour, pygame.Rect(rect.left, rect.top, x - rect.left, rect.height))
            if row == self.selected:
                pygame.draw.rect(self.screen, (255, 255, 255), rect, 1)
            text = f"z[{int(d)}] {self.stats['kl'][d]:.2f}"
            self.screen.blit(self.font.render(text, True, (255, 255, 255) if active else (150, 150, 150)),
                             (rect.left - 100, rect.top))
        pygame.display.flip()
        return image

    def run(self) -> np.ndarray:
        """The loop until Esc or closing; returns the last z."""
        while True:
            for event in self.event_source():
                if not self.handle(event):
                    return self.z
            self.draw()
            if self.fps > 0:
                self.clock.tick(self.fps)

    def close(self) -> None:
        self.pygame.display.quit()


def main(args: Args) -> dict:
    """Write the sweep grid (or run the window); returns the ranking, the active dimensions and the output."""
    args.checkpoint_dir = agent_dir(args.checkpoint_dir, ('vision',))  # yours, else the shipped agent
    if args.steps < 2 or args.scale < 1 or args.stats_frames < 1 or not args.sigmas > 0:
        raise UsageError("--steps must be at least 2, --scale and --stats-frames at least 1, --sigmas positive")
    if args.interactive:
        from car_racing.world.drivers import check_display

        check_display("--interactive", "use --out (the sweep grid PNG) instead")
    device = resolve_device(args.device)
    model, checkpoint = load_model(checkpoint_paths(args.checkpoint_dir)["vision"], "vision", device)
    data = load_recorded(args.data_dir)
    if len(data) == 0:
        raise UsageError(f"--data-dir {args.data_dir}: the recording holds no frames")
    if args.frame >= len(data):
        raise UsageError(f"--frame {args.frame}: the recording has {len(data)} frames (0 … {len(data) - 1})")
    val = [e for e in checkpoint.get("split", {}).get("val", []) if e < len(data.episodes)]
    pool = episode_frame_indices(data.episodes, val) if val else np.arange(len(data))
    rng = np.random.default_rng(args.seed)
    chosen = np.sort(rng.choice(pool, size=min(args.stats_frames, len(pool)), replace=False))
    start = int(rng.integers(len(chosen)))
    if args.frame >= 0:  # the asked-for frame joins the statistics' frames
        chosen = np.unique(np.append(chosen, args.frame))
        start = int(np.searchsorted(chosen, args.frame))
    frames = np.asarray(data.frames[chosen])
    stats = latent_stats(model, frames, device)
    order = np.argsort(-stats["kl"], kind="stable")
    active = int((stats["kl"] > args.active_kl).sum())
    summary = {"frame": int(chosen[start]), "order": order.tolist(), "kl": stats["kl"][order].tolist(),
               "active": order[:active].tolist(), "mu": stats["mu"][start].tolist(), "mean": stats["mean"].tolist(),
               "std": stats["std"].tolist()}
    print(f"V (epoch {checkpoint.get('epoch')}): {active} of {len(order)} dimensions active (KL > {args.active_kl} "
          f"nats over {len(chosen)} frames); by KL: " +
          ", ".join(f"z[{d}] {stats['kl'][d]:.2f}" for d in order[:max(active, 1)]))
    if args.interactive:
        explorer = LatentExplorer(model, device, frames, stats, order, active, start, args.seed, **WINDOW_OPTIONS)
        try:
            summary["z"] = explorer.run().tolist()
        finally:
            explorer.close()
        return summary
    if active == 0:
        raise UsageError(f"--active-kl {args.active_kl}: no dimension has more KL (highest "
                         f"{float(stats['kl'].max()):.3f} nats); lower it")
    rows = sweep_rows(model, stats["mu"][start], order[:active], stats, args.steps, args.sigmas, device)
    grid = titled_rows(rows, args.scale)
    out = Path(args.out)
    write_image(out, grid)
    print(f"wrote {out} ({grid.shape[1]}×{grid.shape[0]}): frame {chosen[start]}, one row per active dimension, "
          f"each swept over mean ± {args.sigmas:g}σ in {args.steps} steps")
    return {**summary, "out": str(out)}


if __name__ == "__main__":
    run_main(main, Args)
