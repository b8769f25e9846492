"""Stage 3: train the memory model M (MDN-RNN with reward, done and value heads) on V's latents.

Every recorded frame is encoded once by V (cached in ``<data-dir>/car_racing_latents.npz``); each epoch M learns,
on the recorded windows, the next z (an MDN), the reward, the end of the episode and, with
``--memory.value-discount`` γ > 0, the discounted average reward that follows (the value stage 4's short dreams
end on). Writes ``<checkpoint-dir>/memory_model.pth`` (best validation loss), the resumable
``memory_model_latest.pth``, ``memory_model_loss.png``, ``memory_metrics.jsonl`` (``--tensorboard``: TensorBoard
events too) and the resolved config ``memory.config.toml`` (``--config`` of it reruns exactly this). The work
is :func:`car_racing.training.memory.train_memory`, whose docstring has the losses and targets.

    python car_racing/train_memory.py                   # 25 epochs, dropout 0.05 on h, a value head (γ 0.98)
    python car_racing/train_memory.py --preset seed     # the seed's 20 epochs without dropout or value head
    python car_racing/train_memory.py --resume          # continue an interrupted run
    python car_racing/train_memory.py --memory.init-from checkpoints/memory_model.pth --memory.freeze-lstm \\
        --memory.epochs 4 --checkpoint-dir checkpoints/heads   # retrain only M's heads on grown data
    python car_racing/train_memory.py --config checkpoints/memory.config.toml   # a run's settings again
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from car_racing.common.config import Config, run_stage
from car_racing.training.memory import train_memory

Args = Config  # this stage's settings: the one config (car_racing/common/config.py), sections below
SECTIONS = ("run", "memory")  # the config sections this stage reads


def no_effect(config: Config) -> dict[str, str]:
    """The flags that change nothing when training M (given on the command line, each is an error)."""
    why = {key: "training M drives no real episode" for key in ("run.workers", "run.backend", "run.ray_address")}
    if config.run.resume:
        why["memory.init_from"] = "--resume continues the run's own latest weights"
    elif config.memory.init_from:
        for key in ("memory.hidden_size", "memory.num_mixtures"):
            why[key] = "M's sizes come from the --memory.init-from checkpoint"
    return why


def main(config: Config) -> dict:
    return train_memory(config)


if __name__ == "__main__":
    run_stage(main, SECTIONS, __doc__, no_effect)
