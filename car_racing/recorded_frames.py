"""Stage 1: record driving episodes of CarRacing-v3 (frames, actions, rewards, dones) for the world model.

    python car_racing/recorded_frames.py --record.driver autopilot  # headless expert: 64 × 1000 steps, 16 random
    python car_racing/recorded_frames.py                            # you drive (keys or gamepad), then 16 random
    python car_racing/recorded_frames.py --record.input keyboard --record.episodes 5 --record.random-episodes 0 \\
        --record.append                                             # 5 more by hand
    python car_racing/recorded_frames.py --record.driver keyboard --record.episodes 10  # a headless stand-in for you
    python car_racing/recorded_frames.py --record.driver autopilot --preset seed  # the seed's 20 × 500, no random
    python car_racing/recorded_frames.py --config data/record.config.toml          # a recording's settings again

Writes the data folder of :mod:`car_racing.recording.recorded_data` in ``--data-dir`` and the resolved config
``record.config.toml`` beside it; the work is :func:`car_racing.episodes.recording.record`, whose docstring has
the details (seeds, appending, the random-driver episodes, workers and Ray).

Seeds: episode ``i`` resets the env with ``--seed`` + i. With ``--record.append`` the default ``--seed 0``
continues after the seeds already recorded; any other ``--seed`` is used as given.

Driving by hand (:class:`car_racing.world.drivers.HumanDriver`): the window shows the env's own full-resolution
view rotating with the car, the 64×64 frame V will see (top right), the action's bars and a status line
(seed, step, reward, the episode's reward against the 800 target). Keyboard: ←/→ (or A/D) steer, ramping
towards full lock while held and back to centre on release, so a tap is a small correction; ↑ (W) gas,
ramped the same way; ↓ (S) brake. A gamepad (picked automatically when connected, ``--record.input``): left
stick steers, right trigger or A is gas, left trigger or B/X brakes. ``P`` (Start) pauses: nothing is recorded
while paused. After each episode a summary (reward, lap finished) waits for Enter/Space (A). Esc or closing
the window ends the session, keeping every step. What is recorded is exactly what the headless drivers
record: the 64×64 frames of the 96×96 observation, replayable from seed and actions.

After each episode a line says how much driving is recorded against what the defaults record (64 × 1000
frames, 21.3 minutes); when it ends the recorder prints a data summary of the whole recording (on the road,
recoveries from the grass, speed, steering, braking) and a warning for what the data lacks. Continue a session
later with ``--record.append``; Ctrl-C or Esc keeps every finished episode.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from car_racing.common.config import Config, run_stage
from car_racing.episodes.recording import record

Args = Config  # this stage's settings: the one config (car_racing/common/config.py), sections below
SECTIONS = ("run", "record")  # the config sections this stage reads


def no_effect(config: Config) -> dict[str, str]:
    """The flags that change nothing for this recording (given on the command line, each is an error)."""
    driver, headless = config.record.driver, config.record.driver != "human" or config.record.random_episodes > 0
    why = {key: "recording does not use it" for key in ("run.device", "run.threads", "run.tensorboard")}
    why["run.resume"] = "a recording goes on with --record.append"
    if driver != "human":
        why["record.input"] = f"only the human driver reads it, not --record.driver {driver}"
    if driver in ("human", "random", "keyboard"):
        why["record.noise"] = f"--record.driver {driver} has no noise level"
    if driver != "keyboard":
        for key in ("record.reaction_steps", "record.mistakes"):
            why[key] = f"only --record.driver keyboard reads it, not --record.driver {driver}"
    if driver != "agent":
        why["run.checkpoint_dir"] = "only --record.driver agent loads models"
    if not headless:
        for key in ("run.workers", "run.backend", "run.ray_address"):
            why[key] = "the human driver runs in this process (and --record.random-episodes is 0)"
    if config.run.backend != "ray":
        why.setdefault("run.ray_address", "only used with --backend ray")
    return why


def main(config: Config) -> dict:
    return record(config)


if __name__ == "__main__":
    run_stage(main, SECTIONS, __doc__, no_effect)
