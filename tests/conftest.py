"""Shared fixtures: tiny recorded datasets that every stage's tests can train on in seconds."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

from car_racing.recording.recorded_data import EpisodeStore, RecordedEpisode  # noqa: E402


def write_synthetic_recording(data_dir, lengths=(30, 25, 40), seq_len=10, seed=0):
    """A recording of synthetic episodes (smoothly moving blobs, random actions) in the real format."""
    rng = np.random.default_rng(seed)
    store = EpisodeStore(data_dir, append=False, seq_len=seq_len)
    yy, xx = np.mgrid[0:64, 0:64]
    for episode, length in enumerate(lengths):
        centres = np.cumsum(rng.normal(0, 1.5, size=(length, 2)), axis=0) + 32
        frames = np.zeros((length, 64, 64, 3), dtype=np.uint8)
        frames[..., 1] = 100  # grass-like background
        for t, (cy, cx) in enumerate(centres):
            blob = (yy - cy) ** 2 + (xx - cx) ** 2 < 64
            frames[t][blob] = (105, 105, 105)
        actions = np.stack([rng.uniform(-1, 1, length), rng.uniform(0, 1, length), rng.uniform(0, 1, length)],
                           axis=1).astype(np.float32)
        rewards = rng.normal(0, 1, length).astype(np.float32)
        store.add(RecordedEpisode(seed=100 + episode, driver="synthetic", frames=frames, actions=actions,
                                  rewards=rewards, lap_finished=False))
    return store.commit()


@pytest.fixture
def tiny_data_dir(tmp_path):
    """A data folder with 3 synthetic episodes (95 steps) and memory sequences of length 10."""
    data_dir = tmp_path / "data"
    write_synthetic_recording(data_dir)
    return data_dir


@pytest.fixture
def one_torch_thread():
    """Tiny models run fastest on one thread (and do not fight other tests' threads for the 2 cores).
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def stage4_config(data_dir, checkpoint_dir, **overrides):
    """A tiny stage-4 config: the seed's one pass (the defaults run the repair loop) at test sizes, CPU, one worker,
    no bars; ``overrides`` are dotted keys written ``section__field`` (``dream__trials=3``)."""
    from car_racing.common import config

    options = dict(run__data_dir=str(data_dir), run__checkpoint_dir=str(checkpoint_dir), run__device="cpu",
                   run__workers=1, run__progress=False, cmaes__population=6, cmaes__generations=2, dream__steps=6,
                   dream__trials=3, dream__start_states=64, dream__batch_size=8, checks__every=2, checks__episodes=1,
                   checks__max_steps=15)
    options.update(overrides)
    return config.preset("seed", **options)


# Stage 4's one pass at the smallest sizes: population 4, one generation of 2 dreams of 4 steps, separable CMA, a
# check on 1 track of 8 steps every generation.
TINY_STAGE4 = dict(cmaes__population=4, cmaes__generations=1, dream__steps=4, dream__trials=2, dream__start_states=32,
                   checks__every=1, checks__max_steps=8, cmaes__diagonal=True)


def tiny_stage4_config(checkpoint_dir, data_dir, **overrides):
    """:data:`TINY_STAGE4` in CHECKPOINT_DIR on DATA_DIR (``overrides``: dotted keys written ``section__field``)."""
    return stage4_config(data_dir, checkpoint_dir, **{**TINY_STAGE4, **overrides})
