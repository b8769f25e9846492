"""Stage 2: train the vision model V (ConvVAE) on the recorded frames.

Reads ``<data-dir>/car_racing_recorded_*``; writes ``<checkpoint-dir>/vision_model.pth`` (the best epoch by
validation loss), a resumable ``vision_model_latest.pth`` after every epoch, the loss curves
``vision_model_loss.png``, one JSON line per epoch in ``vision_metrics.jsonl`` (``--tensorboard``: TensorBoard
events too) and the resolved config ``vision.config.toml`` (``--config`` of it reruns exactly this). The work is
:func:`car_racing.training.vision.train_vision`.

The training objective is ``recon + β·KL`` with β rising linearly from 0 to 1 over ``--vision.kl-anneal-epochs``
and ``--vision.free-bits`` nats per latent dimension not penalised; the best checkpoint is chosen on the
validation loss ``recon + KL`` of whole held-out episodes (seeded by ``--seed``).

    python car_racing/train_vision.py                       # 6 epochs on data/ (3 of KL annealing, 0.5-nat free bits)
    python car_racing/train_vision.py --resume              # continue an interrupted run
    python car_racing/train_vision.py --preset seed         # the seed's 100 epochs of KL annealing, no free bits
    python car_racing/train_vision.py --vision.epochs 10 --threads 1 --device cpu
    python car_racing/train_vision.py --config checkpoints/vision.config.toml   # a run's settings again
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from car_racing.common.config import Config, run_stage
from car_racing.training.vision import train_vision

Args = Config  # this stage's settings: the one config (car_racing/common/config.py), sections below
SECTIONS = ("run", "vision")  # the config sections this stage reads


def no_effect(config: Config) -> dict[str, str]:
    """The flags that change nothing when training V (given on the command line, each is an error)."""
    why = {key: "training V drives no real episode" for key in ("run.workers", "run.backend", "run.ray_address")}
    if config.run.device.startswith("cuda"):
        why["run.threads"] = "torch CPU threads; V trains on the GPU here"
        why["vision.bf16"] = "bfloat16 autocast is for CPUs with native bf16; V trains on the GPU here"
    return why


def main(config: Config) -> dict:
    return train_vision(config)


if __name__ == "__main__":
    run_stage(main, SECTIONS, __doc__, no_effect)
