"""Stage 5: the trained agent (V + M + C) drives the real CarRacing-v3.

    python car_racing/car_racing_gameplay_simulator.py --episodes 100          # the score over 100 tracks
    python car_racing/car_racing_gameplay_simulator.py --episodes 3 --render   # watch it drive (a window)
    python car_racing/car_racing_gameplay_simulator.py --episodes 3 --video runs/agent.mp4
    python car_racing/car_racing_gameplay_simulator.py --episodes 1 --strip runs/agent_strip.png  # README film strip
    python car_racing/car_racing_gameplay_simulator.py --episodes 1024 --backend ray --ray-address auto --workers 256

Episode i uses track seed ``--seed + i``. The default 10000 is far from the seeds the recorder and the
controller's real-env checks use (small numbers counting up from 0), so the score is measured on
tracks the agent never trained or was selected on.

Action smoothing (the seed project's): ``a_t = (1 − s) · C(z_t, h_t) + s · a_{t−1}`` with ``a_{−1} = 0``
and ``s = --smoothing`` (0 turns it off; by default the value the controller was trained and checked
with, stored in its checkpoint). The memory model M is fed the action the env received (the smoothed one).

Prints one line per episode (reward, steps) in seed order, and as its last line
``score: MEAN ± STD over N episodes`` (population standard deviation over the episodes' total rewards).

``--render`` shows the drive in a window (:class:`car_racing.world.viewer.WatchedDriver`): the env's own
full-resolution view rotating with the car, the 64×64 frame V sees, bars of C's steer/gas/brake and of
M's predicted reward for the last step (beside the real reward in the status line), at the env's 50
steps per second. P pauses; Esc or closing the window stops, and the score covers the episodes driven.
Videos (``--video``) are H.264 MP4s that play in browsers (:mod:`car_racing.common.video`).

``--strip PATH`` writes a PNG film strip of the first episode (seed ``--seed``): ``--strip-frames`` raw
frames evenly spaced from its first to its last step, upscaled ×``--strip-scale``, side by side, each
labelled with its step and the episode return so far.

``--evaluation-out PATH`` writes the run's evaluation record as JSON (:mod:`car_racing.episodes.evaluation`): the
summary and every episode, how they were run, the sha256 of the three checkpoints, the date and this command. Each
shipped agent carries the one that scored it over the 100 held-out tracks (``checkpoints/pretrained/<agent>/
evaluation.json``); the README's table and the demo quote it.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import contextlib
import functools
from dataclasses import dataclass, field
from typing import Iterator, Literal, Optional

import numpy as np
from tqdm import tqdm

from car_racing.common.cli import UsageError, run_main
from car_racing.common.runtime import agent_dir, checkpoint_paths, load_checkpoint, resolve_device, seed_everything
from car_racing.common.video import VideoWriter, check_strip_args, label, side_by_side, upscale, write_image
from car_racing.episodes.rollout import Backend, EpisodeResult, default_workers, uses_backend

VIDEO_FPS = 50  # CarRacing's simulation rate: the video plays in real time
STRIP_GAP = 4  # white pixel columns between the film strip's frames


@dataclass
class Args:
    """Run the trained World Models agent in the real CarRacing-v3 and print its score."""

    episodes: int = 10
    """number of episodes (tracks) to drive"""
    seed: int = 10000
    """episode i uses track seed SEED + i (default far from the recording/training seeds)"""
    progress: bool = True
    """show tqdm progress bars (--no-progress for logs and notebooks)"""
    smoothing: Optional[float] = None
    """action smoothing s: a_t = (1 - s) * C(z_t, h_t) + s * a_{t-1}; 0 turns it off (default: the value the
    controller checkpoint was trained and checked with, 0 if it names none)"""
    checkpoint_dir: Optional[str] = None
    """folder with vision_model.pth, memory_model.pth and control_model_cmaes.pth (default: checkpoints/ once you have trained V and M and C there, else the shipped agent in checkpoints/pretrained/default)"""
    render: bool = False
    """watch the agent drive in a window: the full-resolution view, V's 64x64 input, bars of C's action and
    M's predicted reward; P pauses, Esc stops (one process: --workers is forced to 1)"""
    video: str | None = None
    """write an MP4 of the episodes here (e.g. runs/agent.mp4), with reward and step drawn on each frame"""
    video_scale: int = 4
    """the 96x96 frames are upscaled by this factor in the video"""
    strip: str | None = None
    """write a PNG film strip of the first episode here (e.g. runs/agent_strip.png)"""
    strip_frames: int = 8
    """frames in the film strip, evenly spaced over the first episode"""
    strip_scale: int = 2
    """the 96x96 frames are upscaled by this factor in the film strip"""
    workers: int = field(default_factory=default_workers)
    """workers running episodes in parallel: processes, or Ray actors with --backend ray (defaults to the number
    of CPUs)"""
    backend: Literal["processes", "ray"] = "processes"
    """where the episodes run (--render always drives in this process): processes on this machine, or ray (actors on a local Ray or a cluster; same
    results; see docs/scaling-with-ray.md)"""
    ray_address: str = ""
    """--backend ray: auto or HOST:PORT = join a running cluster; empty = the cluster in RAY_ADDRESS when that is set,
    else a private local Ray with --workers CPUs for this run (never a cluster an earlier `ray start` left behind)"""
    max_steps: int = 1000
    """step limit per episode (the env's own limit is 1000)"""
    device: str = "cpu"
    """torch device for the agent: cpu (fastest for batch-1 inference), auto or cuda[:N]"""
    evaluation_out: Optional[str] = None
    """write the evaluation record here as JSON (e.g. checkpoints/pretrained/default/evaluation.json): mean, std,
    min, median, max, laps, every episode's return, the seeds, step limit and smoothing, the sha256 of the three
    checkpoints, the date, this command and the torch/gymnasium versions (what the README's table and the demo
    read; nothing is written when the drive is stopped early)"""


def score_line(rewards: list[float]) -> str:
    """``score: MEAN ± STD over N episodes`` (1 decimal; population standard deviation)."""
    values = np.asarray(rewards, dtype=np.float64)
    return f"score: {values.mean():.1f} ± {values.std():.1f} over {len(values)} episodes"


def annotate_frames(result: EpisodeResult, episode: int, scale: int) -> Iterator[np.ndarray]:
    """The episode's raw 96×96 frames, upscaled ×``scale``, with episode, seed, step and reward so far
    drawn on them: RGB uint8 (96·scale, 96·scale, 3) each. Frame t is what the agent saw before action
    t, so the reward shown is the sum of the rewards of steps 0 … t−1."""
    assert result.raw_frames is not None
    so_far = np.concatenate([[0.0], np.cumsum(result.rewards, dtype=np.float64)])
    for t, frame in enumerate(result.raw_frames):
        text = f"episode {episode}  seed {result.seed}\nstep {t}  reward {so_far[t]:.1f}"
        yield label(upscale(frame, scale), text)


def film_strip(result: EpisodeResult, frames: int, scale: int) -> np.ndarray:
    """``frames`` of the episode's raw frames, evenly spaced from its first to its last step (all of them
    when it is shorter), upscaled ×``scale`` and side by side with white gaps, each labelled with its
    step and the return so far (as in :func:`annotate_frames`): RGB uint8 (96·scale, width, 3)."""
    assert result.raw_frames is not None and len(result.raw_frames) > 0
    so_far = np.concatenate([[0.0], np.cumsum(result.rewards, dtype=np.float64)])
    steps = np.unique(np.linspace(0, len(result.raw_frames) - 1, frames).round().astype(int))
    return side_by_side([label(upscale(result.raw_frames[t], scale), f"step {t}\nreturn {so_far[t]:.1f}")
                         for t in steps], gap=STRIP_GAP)


def typed_command(args: Args) -> str:
    """The command line as the user typed it (``python`` and ``sys.argv``) when this script is the program;
    else (called in-process, e.g. by the demo or a test) the equivalent command built from ``args``' flags that
    differ from their defaults."""
    import dataclasses
    import shlex

    if Path(sys.argv[0]).name == Path(__file__).name:
        return shlex.join(["python", *sys.argv])
    flags = []
    for spec in dataclasses.fields(Args):
        default = spec.default if spec.default is not dataclasses.MISSING else spec.default_factory()  # type: ignore[misc]
        value, flag = getattr(args, spec.name), "--" + spec.name.replace("_", "-")
        if value == default:
            continue
        flags += ([flag] if value else ["--no-" + flag[2:]]) if isinstance(value, bool) else [flag, str(value)]
    return shlex.join(["python", "car_racing/car_racing_gameplay_simulator.py", *flags])


@uses_backend
def main(args: Args) -> float:
    command = typed_command(args)  # before the defaults are filled in below
    args.checkpoint_dir = agent_dir(args.checkpoint_dir, ('vision', 'memory', 'controller'))  # yours, else the shipped agent
    from car_racing.episodes.agent import iter_agent_episodes, make_agent_driver

    if args.episodes < 1:
        raise UsageError(f"--episodes {args.episodes}: expected at least 1")
    if args.smoothing is not None and not 0.0 <= args.smoothing < 1.0:
        raise UsageError(f"--smoothing {args.smoothing}: expected 0 <= s < 1 (0 turns smoothing off)")
    if args.max_steps < 1:
        raise UsageError(f"--max-steps {args.max_steps}: expected at least 1")
    if args.workers < 1:
        raise UsageError(f"--workers {args.workers}: expected at least 1")
    if args.video_scale < 1:
        raise UsageError(f"--video-scale {args.video_scale}: expected at least 1")
    if args.video is not None and Path(args.video).suffix.lower() != ".mp4":
        raise UsageError(f"--video {args.video}: expected a path ending in .mp4")
    if args.evaluation_out is not None and Path(args.evaluation_out).suffix.lower() != ".json":
        raise UsageError(f"--evaluation-out {args.evaluation_out}: expected a path ending in .json")
    check_strip_args(args.strip, args.strip_frames, args.strip_scale)
    device = resolve_device(args.device)
    # All three checkpoints are loaded and checked before any env work (one-line error naming the file).
    make_agent_driver(args.checkpoint_dir, device=device)
    seed_everything(args.seed)
    paths = checkpoint_paths(args.checkpoint_dir)
    smoothing = args.smoothing
    if smoothing is None:  # what C was trained and checked with
        smoothing = float(load_checkpoint(paths["controller"], "controller").get("config", {}).get("smoothing", 0.0))

    workers = 1 if args.render else args.workers
    backend = Backend() if args.render else Backend(args.backend, args.ray_address)  # the window opens here, not on an actor
    if args.render:
        from car_racing.world.drivers import check_display

        check_display("--render", "leave it out (--video writes an MP4 instead)")
    seeds = [args.seed + i for i in range(args.episodes)]
    print(f"agent: {paths['vision']}, {paths['memory']}, {paths['controller']}; "
          f"seeds {seeds[0]}..{seeds[-1]}, smoothing {smoothing}, workers {min(workers, len(seeds))}"
          + (" (ray)" if backend.is_ray else ""))
    rewards: list[float] = []
    steps: list[int] = []
    finished: list[bool] = []  # per episode: lap finished
    with contextlib.ExitStack() as stack:
        # The video is written under a temporary name and appears only when every episode is in it.
        video = None if args.video is None else stack.enter_context(VideoWriter(args.video, fps=VIDEO_FPS))
        wrap = None
        if args.render:
            from car_racing.world.viewer import DrivingView, WatchedDriver

            view = DrivingView("CarRacing-v3: the World Models agent (P pauses, Esc stops)")
            stack.callback(view.close)
            wrap = functools.partial(WatchedDriver, view=view)
        episodes = stack.enter_context(contextlib.closing(iter_agent_episodes(
            args.checkpoint_dir, seeds, max_steps=args.max_steps, workers=workers, smoothing=smoothing,
            device=device, capture_raw=video is not None or args.strip is not None, wrap=wrap, backend=backend)))
        bar = stack.enter_context(tqdm(total=len(seeds), desc="episodes", unit="ep",
                                       disable=None if args.progress else True, file=sys.stderr))
        for index, result in enumerate(episodes):
            rewards.append(result.total_reward)
            steps.append(result.steps)
            finished.append(bool(result.lap_finished))
            lap = "  lap finished" if result.lap_finished else ""
            tqdm.write(f"episode {index + 1}/{len(seeds)}  seed {result.seed}  reward {result.total_reward:.1f}"
                       f"  steps {result.steps}{lap}", file=sys.stdout)
            if args.strip is not None and index == 0:
                write_image(args.strip, film_strip(result, args.strip_frames, args.strip_scale))
            if video is not None:
                for frame in annotate_frames(result, index + 1, args.video_scale):
                    video.write(frame)
            result.raw_frames = None  # keep memory flat over many episodes
            bar.update(1)
            bar.set_postfix(mean=f"{np.mean(rewards):.1f}")
            if result.ended_by_driver:
                tqdm.write("stopped in the window (Esc or closed); the score covers the episodes driven",
                           file=sys.stdout)
                break
    values = np.asarray(rewards)
    print(f"min {values.min():.1f}, median {np.median(values):.1f}, max {values.max():.1f}; laps finished "
          f"{sum(finished)} of {len(values)}")
    if args.video is not None:
        print(f"video: {args.video}")
    if args.strip is not None:
        print(f"strip: {args.strip}")
    if args.evaluation_out is not None:
        if len(rewards) < len(seeds):
            print(f"evaluation: not written ({len(rewards)} of {len(seeds)} episodes driven)")
        else:
            from car_racing.episodes.evaluation import make_evaluation, write_evaluation

            write_evaluation(make_evaluation(args.checkpoint_dir, returns=rewards, steps=steps, laps=finished,
                                             seeds=seeds, max_steps=args.max_steps, smoothing=smoothing,
                                             device=str(device), command=command), args.evaluation_out)
            print(f"evaluation: {args.evaluation_out}")
    print(score_line(rewards))
    return float(np.mean(rewards))


if __name__ == "__main__":
    run_main(main, Args)
