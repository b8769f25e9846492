"""Stage 4: evolve the controller C with CMA-ES in M's dream, checked in the real env.

C is linear on ``[z, h]``. By default this runs the repair loop (:mod:`car_racing.training.loop`, the recipe in
docs/dream-repair.md): C evolves in M's dream only — its fitness is the sum of M's predicted rewards over short
dreams from recorded states, ended on M's value — while fixed real tracks are driven every few generations to
choose which parameters are kept, never as fitness; C's own episodes and the dream's replayed lies then join the
data, M continues on them, and C evolves again in the new dream. The iteration that wins the final choice gives
CHECKPOINT_DIR its M and C (stage 3's M is kept as ``dream_loop/memory_from_stage3.pth``).

``--loop.iterations 1`` runs one CMA-ES pass (the seed's stage 4: ``--preset seed``); ``--cmaes.mode real`` scores C
by real-env returns instead (``--preset paper``: the paper's protocol); ``--cmaes.init`` picks CMA's initial mean.
Every setting is in car_racing/common/config.py; the resolved config is written to
CHECKPOINT_DIR/controller.config.toml (``--config`` of it reruns the stage exactly). The checkpoint records how C
was made (fitness source, warm start, generations, whether expert labels or real returns shaped it) and is saved
every generation; ``--resume`` continues an interrupted run or loop.

    python car_racing/train_controller_cmaes.py                          # the repair loop, default recipe
    python car_racing/train_controller_cmaes.py --resume                 # after Ctrl-C or a crash
    python car_racing/train_controller_cmaes.py --preset seed            # the seed's one pass
    python car_racing/train_controller_cmaes.py --loop.iterations 1 --cmaes.generations 2 --cmaes.population 4
    python car_racing/train_controller_cmaes.py --preset paper --backend ray --ray-address auto --workers 256
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from car_racing.common.config import Config, run_stage
from car_racing.episodes.backends import uses_backend
from car_racing.training.controller import no_effect, train_controller

Args = Config  # this stage's settings: the one config (car_racing/common/config.py), sections below
SECTIONS = ("run", "dream", "cmaes", "checks", "loop")  # the config sections stage 4 reads


@uses_backend
def main(config: Config) -> dict:
    """Stage 4 (:func:`car_racing.training.controller.train_controller`); returns C's final checkpoint dict."""
    return train_controller(config)


if __name__ == "__main__":
    run_stage(main, SECTIONS, __doc__, no_effect)
