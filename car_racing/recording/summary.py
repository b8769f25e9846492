"""What a recording holds, in a few lines: how much (against what the defaults record) and how varied.

:func:`summarize` reads a data folder (:mod:`car_racing.recording.recorded_data`) and returns a plain dict;
:func:`format_summary` turns it into the lines the recorder prints when it ends. :func:`amount_line` is the
one-line "where you stand" the recorder shows after every episode.

Nothing beyond the recorded arrays is needed: the signals come from the 64×64 frames and the actions.

- **On the road or on the grass** (per frame): the pixels just left and right of the car (rows 43–52, columns
  29 and 34 of the 64×64 frame: the car sits at rows 44–51, columns 30–33 and always points up) are grass when
  green exceeds red by more than 20; the frame is *off the road* when more than half of them are. Measured
  against the env's own wheel contacts on 4000 noisy-autopilot frames (36% of them with a wheel on the grass):
  97% agree with "a wheel on the grass" and 99% with "two or more", past the first 50 frames of an episode.
  Those first 50 frames (the camera zooming in: the car is drawn smaller) are left out of the road figures.
- **Recoveries from the grass**: off-road spells of at least :data:`MIN_SPELL` frames followed, in the same
  episode, by at least :data:`RECOVERED` frames back on the road.
- **Speed** (units/s; the car's top speed is 100): read from the dashboard's white speed bar (rows 56–63,
  columns 8–9), ``18.96 · bar − 3.78`` with ``bar`` the bar's summed red channel / 255 (0 without a bar);
  within 0.8 units/s (RMS) of the env's true speed on those 4000 frames.
- **Steering, gas, brake**: from the recorded actions.

Warnings (:func:`warnings_for`) name what a dream needs and the data lacks, with what to add; they judge the
driven episodes (every driver but ``random``), or the random ones when there are no others.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from car_racing.recording.recorded_data import load_recorded

ENV_FPS = 50  # CarRacing-v3's steps per second
ZOOM_FRAMES = 50  # the camera zooms in over an episode's first frames: left out of the road figures
ROAD_ROWS = slice(43, 53)
ROAD_COLUMNS = (29, 34)  # just left and right of the car in the 64×64 frame
GRASS_GREEN_OVER_RED = 20  # a pixel is grass when G − R exceeds this (road is grey, kerbs red or white)
SPEED_BAR = (slice(56, 64), slice(8, 10))  # the dashboard's white speed bar in the 64×64 frame
SPEED_GAIN, SPEED_OFFSET = 18.96, -3.78  # units/s from the bar's summed red / 255 (fitted on true speeds)
MIN_SPELL = 5  # frames off the road that count as a spell on the grass (0.1 s)
RECOVERED = 25  # frames back on the road that count as a recovery (0.5 s)
SPEED_BINS = (0.0, 20.0, 40.0, 60.0, 80.0, np.inf)
STEER_BINS = (-1.0, -0.6, -0.2, 0.2, 0.6, 1.0)
CHUNK = 4096  # frames read at a time

# a recording is too narrow when the driven episodes have less than these
MIN_OFF_ROAD = 0.01  # share of frames off the road
MIN_BRAKING = 0.005  # share of frames with the brake on
MIN_STEERING = 0.05  # share of frames steering at least 0.2 either way
MIN_EACH_SIDE = 0.01  # share of frames steering at least 0.2 to the left, and to the right
MIN_FAST = 40.0  # units/s that the fastest tenth of the frames should reach


def frame_signals(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(off_road, speed)`` per frame of uint8 ``(N, 64, 64, 3)`` frames: bool and float32 units/s (see the
    module docstring). Reads the frames in chunks (a memory-mapped recording stays on disk)."""
    off_road = np.zeros(len(frames), dtype=bool)
    speed = np.zeros(len(frames), dtype=np.float32)
    for start in range(0, len(frames), CHUNK):
        chunk = np.asarray(frames[start:start + CHUNK, ROAD_ROWS.start:, :, :2], dtype=np.int16)
        sides = chunk[:, :ROAD_ROWS.stop - ROAD_ROWS.start][:, :, list(ROAD_COLUMNS)]
        grass = (sides[..., 1] - sides[..., 0]) > GRASS_GREEN_OVER_RED
        off_road[start:start + len(chunk)] = grass.reshape(len(chunk), -1).mean(axis=1) > 0.5
        rows = slice(SPEED_BAR[0].start - ROAD_ROWS.start, SPEED_BAR[0].stop - ROAD_ROWS.start)
        bar = chunk[:, rows, SPEED_BAR[1], 0].reshape(len(chunk), -1).sum(axis=1) / 255.0
        speed[start:start + len(chunk)] = np.where(bar > 0, np.maximum(0.0, SPEED_GAIN * bar + SPEED_OFFSET), 0.0)
    return off_road, speed


def _runs(flags: np.ndarray) -> list[tuple[bool, int]]:
    """Run-length encoding: ``[(value, length), ...]``."""
    if not len(flags):
        return []
    edges = np.flatnonzero(np.diff(flags.astype(np.int8))) + 1
    bounds = np.concatenate([[0], edges, [len(flags)]])
    return [(bool(flags[a]), int(b - a)) for a, b in zip(bounds[:-1], bounds[1:])]


def grass_spells(off_road: np.ndarray) -> tuple[int, int]:
    """``(spells, recoveries)`` in one episode's off-road flags: spells of at least :data:`MIN_SPELL` frames on
    the grass, and those followed by at least :data:`RECOVERED` frames on the road (shorter blips on either
    side do not break a run)."""
    runs = _runs(off_road)
    # blips shorter than MIN_SPELL off the road count as road
    cleaned = np.concatenate([np.full(n, off and n >= MIN_SPELL) for off, n in runs]) if runs else off_road
    runs = _runs(cleaned)
    spells = recoveries = 0
    for i, (off, _) in enumerate(runs):
        if not off:
            continue
        spells += 1
        if i + 1 < len(runs) and runs[i + 1][1] >= RECOVERED:
            recoveries += 1
    return spells, recoveries


def _shares(values: np.ndarray, edges: tuple[float, ...]) -> list[float]:
    counts, _ = np.histogram(np.clip(values, edges[0], edges[-1] if np.isfinite(edges[-1]) else None), bins=edges)
    return [float(c) / max(1, len(values)) for c in counts]


def group_figures(data: Any, indices: list[int], off_road: np.ndarray, speed: np.ndarray) -> dict[str, Any]:
    """The figures of some episodes of a recording."""
    episodes = [data.episodes[i] for i in indices]
    frames = sum(int(e["length"]) for e in episodes)
    road_flags, speeds, actions, spells, recoveries = [], [], [], 0, 0
    for e in episodes:
        part = slice(e["start"], e["start"] + e["length"])
        flags = off_road[part][ZOOM_FRAMES:]
        road_flags.append(flags)
        n_spells, n_recoveries = grass_spells(flags)
        spells, recoveries = spells + n_spells, recoveries + n_recoveries
        speeds.append(speed[part])
        actions.append(np.asarray(data.actions[part]))
    flags = np.concatenate(road_flags) if road_flags else np.zeros(0, dtype=bool)
    speeds_all = np.concatenate(speeds) if speeds else np.zeros(0, dtype=np.float32)
    acts = np.concatenate(actions) if actions else np.zeros((0, 3), dtype=np.float32)
    steer, gas, brake = acts.T if len(acts) else (np.zeros(0),) * 3
    returns = [float(e["total_reward"]) for e in episodes]
    quantiles = np.percentile(speeds_all, [10, 50, 90]) if len(speeds_all) else np.zeros(3)
    return {
        "episodes": len(episodes), "frames": frames, "minutes": frames / ENV_FPS / 60.0,
        "mean_return": float(np.mean(returns)) if returns else None,
        "laps_finished": sum(bool(e["lap_finished"]) for e in episodes),
        "on_road": float(1.0 - flags.mean()) if len(flags) else None, "road_frames": int(len(flags)),
        "grass_spells": spells, "recoveries": recoveries,
        "speed": {"mean": float(speeds_all.mean()) if len(speeds_all) else 0.0, "p10": float(quantiles[0]),
                  "p50": float(quantiles[1]), "p90": float(quantiles[2]),
                  "max": float(speeds_all.max()) if len(speeds_all) else 0.0,
                  "bins": list(SPEED_BINS[:-1]), "shares": _shares(speeds_all, SPEED_BINS)},
        "steering": {"bins": list(STEER_BINS), "shares": _shares(steer, STEER_BINS),
                     "left": float(np.mean(steer <= -0.2)) if len(steer) else 0.0,
                     "right": float(np.mean(steer >= 0.2)) if len(steer) else 0.0},
        "gas": float(np.mean(gas > 0)) if len(gas) else 0.0,
        "braking": float(np.mean(brake > 0)) if len(brake) else 0.0,
        # the mean pedal: a controller's continuous brake is above 0 on every frame, however light
        "gas_mean": float(np.mean(gas)) if len(gas) else 0.0,
        "brake_mean": float(np.mean(brake)) if len(brake) else 0.0,
    }


def needed(episodes: int | None = None, steps: int | None = None) -> dict[str, Any]:
    """What the defaults record: ``record.episodes`` × ``record.steps`` (the default config's unless given)."""
    from car_racing.common.config import Record

    episodes = Record.episodes if episodes is None else episodes
    steps = Record.steps if steps is None else steps
    return {"episodes": episodes, "steps": steps, "frames": episodes * steps,
            "minutes": episodes * steps / ENV_FPS / 60.0}


def _episodes_by_driver(data: Any) -> dict[str, list[int]]:
    """Each driver's episode indices, in the order the drivers first appear."""
    indices: dict[str, list[int]] = {}
    for i, e in enumerate(data.episodes):
        indices.setdefault(e["driver"], []).append(i)
    return indices


def summarize(data_dir: str | os.PathLike) -> dict[str, Any]:
    """The figures of the recording in ``data_dir``: ``{"data_dir", "episodes", "frames", "minutes",
    "needed", "share_of_needed", "driven", "random", "drivers", "warnings"}``. ``driven`` and ``random`` are
    the figures of the driven episodes (every driver but ``random``) and of the random driver's (``None`` when
    there are none): episodes, frames, minutes, mean_return, laps_finished, on_road (share of frames past the
    zoom-in), grass_spells, recoveries, speed (mean, p10, p50, p90, max, shares per bin of ``bins``), steering
    (shares per bin of ``bins``; left, right: shares at least 0.2 that way), gas and braking (share of frames
    with it on), gas_mean and brake_mean (the mean pedal). ``share_of_needed`` is the driven frames (the random
    ones when nothing else) over what the defaults record (:func:`needed`)."""
    data = load_recorded(data_dir, mmap=True)
    off_road, speed = frame_signals(data.frames)
    episode_counts = {driver: len(indices) for driver, indices in _episodes_by_driver(data).items()}
    driven = [i for i, e in enumerate(data.episodes) if e["driver"] != "random"]
    random = [i for i, e in enumerate(data.episodes) if e["driver"] == "random"]
    summary: dict[str, Any] = {
        "data_dir": str(data_dir), "episodes": len(data.episodes), "frames": len(data),
        "minutes": len(data) / ENV_FPS / 60.0, "needed": needed(), "drivers": episode_counts,
        "driven": group_figures(data, driven, off_road, speed) if driven else None,
        "random": group_figures(data, random, off_road, speed) if random else None,
    }
    counted = summary["driven"] or summary["random"] or {"frames": 0}
    summary["share_of_needed"] = counted["frames"] / summary["needed"]["frames"]
    summary["warnings"] = warnings_for(summary)
    return summary


def by_driver(data_dir: str | os.PathLike, last: int = 0) -> dict[str, dict[str, Any]]:
    """The figures of :func:`group_figures` for each driver of the recording in ``data_dir``, in the order the
    drivers first appear; ``last`` > 0 keeps only each driver's last ``last`` episodes (a dream loop's folder
    holds C's episodes of every iteration: the last 16 are its latest C's)."""
    data = load_recorded(data_dir, mmap=True)
    off_road, speed = frame_signals(data.frames)
    return {driver: group_figures(data, idx[-last:] if last > 0 else idx, off_road, speed)
            for driver, idx in _episodes_by_driver(data).items()}


def warnings_for(summary: dict[str, Any]) -> list[str]:
    """One plain line per way the recording is too narrow for a working dream, each saying what to add."""
    group = summary["driven"] or summary["random"]
    if group is None:
        return ["nothing recorded yet"]
    random_note = "" if summary["random"] else " (or add --record.random-episodes 16: the random driver's)"
    found = []
    if group["on_road"] is not None and group["road_frames"] > 0:
        if 1.0 - group["on_road"] < MIN_OFF_ROAD:
            found.append("never off the road: M never sees the grass; drive onto it and back a few times"
                         + random_note)
        elif group["recoveries"] == 0:
            found.append("never came back from the grass: steer back onto the road after leaving it" + random_note)
    if group["braking"] < MIN_BRAKING:
        found.append("never braked: brake (↓) into a few corners")
    steering = group["steering"]
    if steering["left"] + steering["right"] < MIN_STEERING:
        found.append("almost no steering: follow the bends, and weave a little on the straights")
    else:
        for side, key in (("left", "←"), ("right", "→")):
            if steering[side] < MIN_EACH_SIDE:
                found.append(f"hardly ever steered {side}: M never sees it; steer {side} ({key}) now and then")
    if group["speed"]["p90"] < MIN_FAST:
        found.append(f"never fast (90% of frames under {group['speed']['p90']:.0f} units/s): drive the straights "
                     f"with ↑ held")
    if summary["share_of_needed"] < 0.25:
        found.append(f"{summary['share_of_needed']:.0%} of the frames the defaults record: expect a weaker dream; "
                     f"continue later with --record.append")
    return found


def plural(count: int, word: str) -> str:
    """``1 episode``, ``2 episodes``, ``1,000 frames``."""
    return f"{count:,} {word}" + ("" if count == 1 else "s")


def amount_line(episodes: int, frames: int, target: dict[str, Any] | None = None, short: bool = False) -> str:
    """Where a recording stands: ``episodes`` and ``frames`` of driving against what the defaults record."""
    target = target or needed()
    minutes = frames / ENV_FPS / 60.0
    share = frames / max(1, target["frames"])
    if short:
        return f"recorded {episodes} ep, {minutes:.1f} of {target['minutes']:.1f} min ({share:.0%})"
    return (f"recorded: {plural(episodes, 'episode')}, {plural(frames, 'frame')} = {minutes:.1f} min of driving; "
            f"the defaults record {target['episodes']} × {target['steps']} = {target['frames']:,} frames "
            f"({target['minutes']:.1f} min): {share:.0%} of that")


def _bar(share: float, width: int = 20) -> str:
    return "#" * int(round(share * width))


def format_summary(summary: dict[str, Any]) -> list[str]:
    """The data summary's lines (see :func:`summarize`), warnings last."""
    drivers = ", ".join(f"{n} {name}" for name, n in summary["drivers"].items())
    lines = [f"data summary of {summary['data_dir']}: {plural(summary['episodes'], 'episode')} ({drivers}), "
             f"{summary['frames']:,} frames, {summary['minutes']:.1f} min"]
    driven = summary["driven"] or summary["random"]  # (a recording of the random driver alone: its episodes)
    lines.append(amount_line(driven["episodes"] if driven else 0, driven["frames"] if driven else 0,
                             summary["needed"]))
    for name, group in (("driven", summary["driven"]), ("random", summary["random"])):
        if group is None:
            continue
        road = "–" if group["on_road"] is None else f"{group['on_road']:.0%}"
        speed = group["speed"]
        returns = "" if group["mean_return"] is None else f"mean return {group['mean_return']:.0f}, "
        lines += [f"  {name}: {plural(group['episodes'], 'episode')}, {returns}"
                  f"laps finished {group['laps_finished']}; "
                  f"on the road {road} of frames, {group['grass_spells']} spells on the grass, "
                  f"{group['recoveries']} recoveries",
                  f"    speed (units/s): mean {speed['mean']:.0f}, 10/50/90% {speed['p10']:.0f}/{speed['p50']:.0f}/"
                  f"{speed['p90']:.0f}, max {speed['max']:.0f}; gas on {group['gas']:.0%}, brake on "
                  f"{group['braking']:.0%} of frames"]
        speed_bins = [f"{lo:.0f}-{hi:.0f}" if np.isfinite(hi) else f"{lo:.0f}+"
                      for lo, hi in zip(SPEED_BINS[:-1], SPEED_BINS[1:])]
        lines.append("    speed    " + "  ".join(f"{label} {share:.0%}"
                                                 for label, share in zip(speed_bins, speed["shares"])))
        steer_bins = ["hard left", "left", "straight", "right", "hard right"]
        lines.append(("    steering " + "  ".join(f"{label} {share:.0%} {_bar(share, 10)}" for label, share
                                                   in zip(steer_bins, group["steering"]["shares"]))).rstrip())
    lines += [f"warning: {warning}" for warning in summary["warnings"]]
    return lines
