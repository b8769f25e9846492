"""The repair loop: the same as stage 4 (``train_controller_cmaes.py``), kept as a name for the loop.

Stage 4 runs the repair loop by default (:mod:`car_racing.training.loop`; docs/dream-repair.md): C evolves in M's
dream, C's own episodes and the dream's replayed lies join the data, M continues on them, C evolves again. This
command takes the same flags and config (car_racing/common/config.py) and does exactly what stage 4 does.

    python car_racing/dream_loop.py --loop.iterations 6          # = train_controller_cmaes.py --loop.iterations 6
    python car_racing/dream_loop.py --loop.iterations 6 --resume
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
SECTIONS = ("run", "dream", "cmaes", "checks", "loop")


@uses_backend
def main(config: Config) -> dict:
    """Stage 4 (:func:`car_racing.training.controller.train_controller`); returns C's final checkpoint dict."""
    return train_controller(config)


if __name__ == "__main__":
    run_stage(main, SECTIONS, __doc__, no_effect)
