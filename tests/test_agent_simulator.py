"""The controller's flat parameters, the agent (V + M + C) and the gameplay simulator, on tiny checkpoints."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from car_racing.car_racing_gameplay_simulator import Args, main, score_line
from car_racing.common.cli import UsageError
from car_racing.common.runtime import CHECKPOINT_FILES, checkpoint_paths, save_checkpoint
from car_racing.common.video import video_codec, video_info
from car_racing.episodes.agent import Agent, evaluate_agent, load_agent_models, make_agent_driver
from car_racing.episodes.evaluation import read_evaluation, stale_files
from car_racing.models.ffn import Controller, flat_to_population, population_actions
from car_racing.models.mdn_rnn import MDNRNN
from car_racing.models.vae import VAE, frames_to_tensor
from car_racing.recording.latent_cache import file_sha256
from car_racing.world.envs import preprocess_frame

REPO = Path(__file__).resolve().parent.parent
SIMULATOR = REPO / "car_racing" / "car_racing_gameplay_simulator.py"
LATENT, HIDDEN = 8, 16
TINY_VAE = dict(latent_size=LATENT, encoder_channels=(4, 4, 4, 8), dense_size=32, decoder_channels=(4, 4, 4))
TINY_MDN = dict(latent_size=LATENT, action_size=3, hidden_size=HIDDEN, num_mixtures=2)
SCORE_RE = re.compile(r"^score: -?\d+\.\d ± \d+\.\d over \d+ episodes$")


def write_tiny_checkpoints(checkpoint_dir: Path, controller: bool = True, seed: int = 0) -> dict[str, Path]:
    """Untrained tiny V and M, and a controller that drives forward (gas bias), in the real formats."""
    torch.manual_seed(seed)
    paths = checkpoint_paths(checkpoint_dir)
    vae, mdn = VAE(**TINY_VAE), MDNRNN(**TINY_MDN)
    save_checkpoint({"kind": "vision", "model_args": TINY_VAE, "model_state": vae.state_dict()}, paths["vision"])
    save_checkpoint({"kind": "memory", "model_args": TINY_MDN, "model_state": mdn.state_dict()}, paths["memory"])
    if controller:
        c = Controller(LATENT, HIDDEN)
        params = np.random.default_rng(seed).normal(0, 0.1, c.num_params)
        params[-2] = 2.0  # gas bias: the car moves
        c.set_flat_params(params)
        save_checkpoint({"kind": "controller", "model_args": {"latent_size": LATENT, "hidden_size": HIDDEN,
                                                              "action_size": 3},
                         "model_state": c.state_dict(), "generation": 0, "best_real_score": None,
                         "history": {}}, paths["controller"])
    return paths


@pytest.fixture
def tiny_checkpoints(tmp_path):
    checkpoint_dir = tmp_path / "checkpoints"
    write_tiny_checkpoints(checkpoint_dir)
    return checkpoint_dir


def test_flat_params_round_trip():
    a, b = Controller(LATENT, HIDDEN), Controller(LATENT, HIDDEN)
    assert a.num_params == 3 * (LATENT + HIDDEN) + 3 == len(a.get_flat_params())
    assert Controller().num_params == 3 * (32 + 512) + 3
    flat = a.get_flat_params()
    assert flat.dtype == np.float64
    b.set_flat_params(flat)
    np.testing.assert_array_equal(b.get_flat_params(), flat)
    z, h = torch.randn(5, LATENT), torch.randn(5, HIDDEN)
    torch.testing.assert_close(a(z, h), b(z, h), rtol=0, atol=0)
    # The documented layout: weight row-major (A, L+H), then the bias.
    np.testing.assert_allclose(flat[-3:], a.fc.bias.detach().numpy())
    np.testing.assert_allclose(flat[LATENT + HIDDEN:2 * (LATENT + HIDDEN)], a.fc.weight[1].detach().numpy())
    with pytest.raises(ValueError):
        b.set_flat_params(flat[:-1])


def test_population_actions_match_controller_forward():
    torch.manual_seed(0)
    population, n = 6, 4
    controller = Controller(LATENT, HIDDEN)
    flat = torch.randn(population, controller.num_params, dtype=torch.float64) * 2
    weights, biases = flat_to_population(flat.float(), LATENT, HIDDEN)
    assert weights.shape == (population, LATENT + HIDDEN, 3) and biases.shape == (population, 3)
    z, h = torch.randn(population, n, LATENT), torch.randn(population, n, HIDDEN)
    actions = population_actions(weights, biases, z, h)
    assert actions.shape == (population, n, 3)
    for p in range(population):
        controller.set_flat_params(flat[p].numpy())
        torch.testing.assert_close(actions[p], controller(z[p], h[p]), rtol=1e-5, atol=1e-6)
    assert actions[..., 0].abs().max() <= 1 and actions[..., 1:].min() >= 0 and actions[..., 1:].max() <= 1


def test_agent_steps_v_then_c_then_m(tiny_checkpoints):
    vae, mdn, controller = load_agent_models(tiny_checkpoints)
    agent = Agent(vae, mdn, controller)
    observations = np.random.default_rng(0).integers(0, 256, (5, 96, 96, 3), dtype=np.uint8)
    agent.reset(None, 0)
    actions = np.stack([agent.act(obs, None, t, 0.0) for t, obs in enumerate(observations)])
    assert actions.dtype == np.float32 and actions.shape == (5, 3)
    # The same computation by hand: z = μ, a_t = C(z_t, h_t), h from M's sequence forward over (z, a).
    with torch.no_grad():
        z, _ = vae.encode(frames_to_tensor(np.stack([preprocess_frame(o) for o in observations])))
        a = torch.as_tensor(actions)
        out, _ = mdn(z[None], a[None])
        hidden = torch.cat([torch.zeros(1, HIDDEN), out.hidden[0, :-1]])  # h_0 = 0, then h_1..h_4
        torch.testing.assert_close(controller(z, hidden), a, rtol=1e-4, atol=1e-5)
    agent.reset(None, 0)  # a new episode starts from h = 0 again
    np.testing.assert_allclose(agent.act(observations[0]), actions[0], rtol=1e-5, atol=1e-6)


def test_memory_sees_the_applied_action(tiny_checkpoints):
    """With smoothing the env gets â_t = (1-s)·a_t + s·â_{t-1}; M must be stepped with â_t, not a_t."""
    vae, mdn, controller = load_agent_models(tiny_checkpoints)
    agent = Agent(vae, mdn, controller)
    observations = np.random.default_rng(1).integers(0, 256, (2, 96, 96, 3), dtype=np.uint8)
    agent.reset(None, 0)
    raw = agent.act(observations[0])
    applied = np.array([0.5, 0.25, 0.0], dtype=np.float32)
    agent.applied(applied)
    with torch.no_grad():
        z, _ = vae.encode(frames_to_tensor(preprocess_frame(observations[0])[None]))
        _, (h_applied, _) = mdn.step(z, torch.as_tensor(applied)[None], mdn.initial_state(1))
        _, (h_raw, _) = mdn.step(z, torch.as_tensor(raw)[None], mdn.initial_state(1))
    torch.testing.assert_close(agent.hidden, h_applied)
    assert not torch.allclose(agent.hidden, h_raw)


def test_controller_params_override_without_controller_checkpoint(tmp_path):
    checkpoint_dir = tmp_path / "checkpoints"
    write_tiny_checkpoints(checkpoint_dir, controller=False)
    with pytest.raises(UsageError, match="control_model_cmaes.pth.*train_controller_cmaes.py"):
        make_agent_driver(checkpoint_dir)
    params = np.zeros(3 * (LATENT + HIDDEN) + 3)
    params[-3:] = [0.0, 10.0, -10.0]  # straight ahead, full gas, no brake
    agent = make_agent_driver(checkpoint_dir, controller_params=params)
    action = agent.act(np.zeros((96, 96, 3), dtype=np.uint8))
    np.testing.assert_allclose(action, [0.0, 1.0, 0.0], atol=1e-4)
    with pytest.raises(UsageError, match="controller parameters"):
        make_agent_driver(checkpoint_dir, controller_params=params[:-1])


def test_incompatible_checkpoints_name_the_file(tmp_path):
    checkpoint_dir = tmp_path / "checkpoints"
    paths = write_tiny_checkpoints(checkpoint_dir)
    c = Controller(LATENT, HIDDEN + 1)
    save_checkpoint({"kind": "controller", "model_args": {"latent_size": LATENT, "hidden_size": HIDDEN + 1,
                                                          "action_size": 3}, "model_state": c.state_dict()},
                    paths["controller"])
    with pytest.raises(UsageError, match=r"control_model_cmaes\.pth: controller expects latent 8 / hidden 17"):
        main(Args(checkpoint_dir=str(checkpoint_dir), episodes=1, max_steps=2, workers=1))
    save_checkpoint({"kind": "vision", "model_args": TINY_VAE, "model_state": {}}, paths["vision"])
    with pytest.raises(UsageError, match=r"vision_model\.pth: vision checkpoint does not fit VAE"):
        main(Args(checkpoint_dir=str(checkpoint_dir), episodes=1, max_steps=2, workers=1))


def test_evaluate_agent_in_seed_order_and_same_in_workers(tiny_checkpoints):
    seeds = [10005, 10003]
    kwargs = dict(max_steps=6, smoothing=0.3, capture_raw=True)
    in_process = evaluate_agent(tiny_checkpoints, seeds, workers=1, **kwargs)
    assert [r.seed for r in in_process] == seeds
    assert all(r.steps == 6 and r.raw_frames.shape == (6, 96, 96, 3) for r in in_process)
    again = evaluate_agent(tiny_checkpoints, seeds[:1], workers=1, **kwargs)
    np.testing.assert_array_equal(again[0].actions, in_process[0].actions)  # h reset between episodes
    in_workers = evaluate_agent(tiny_checkpoints, seeds, workers=2, **kwargs)  # spawned: the driver pickles
    assert [r.seed for r in in_workers] == seeds
    for a, b in zip(in_process, in_workers):
        np.testing.assert_allclose(a.actions, b.actions, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a.rewards, b.rewards, rtol=1e-5, atol=1e-4)
    # Smoothing: the env got a_t = 0.7 C(z_t, h_t) + 0.3 a_{t-1}; the first step from a_{-1} = 0.
    raw = make_agent_driver(tiny_checkpoints).act(in_process[0].raw_frames[0])
    np.testing.assert_allclose(in_process[0].actions[0], 0.7 * raw, rtol=1e-5, atol=1e-6)


def _run_simulator(*flags: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, SDL_VIDEODRIVER="dummy", PYGAME_HIDE_SUPPORT_PROMPT="1")
    return subprocess.run([sys.executable, str(SIMULATOR), *flags], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=120)


def test_simulator_runs_one_short_episode_and_prints_the_score(tiny_checkpoints, tmp_path):
    video = tmp_path / "runs" / "agent.mp4"
    evaluation = tmp_path / "records" / "evaluation.json"
    flags = ("--checkpoint-dir", str(tiny_checkpoints), "--episodes", "1", "--max-steps", "30", "--workers", "1",
             "--video", str(video), "--video-scale", "2", "--evaluation-out", str(evaluation))
    proc = _run_simulator(*flags)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert SCORE_RE.match(lines[-1]), lines[-1]
    assert lines[-1].endswith("over 1 episodes")
    episode_line = next(line for line in lines if line.startswith("episode 1/1"))
    assert "seed 10000" in episode_line and "steps 30" in episode_line
    reward = float(re.search(r"reward (-?\d+\.\d)", episode_line).group(1))
    assert lines[-1].startswith(f"score: {reward:.1f} ± 0.0")
    assert lines[-2] == f"evaluation: {evaluation}"
    assert lines[-3] == f"video: {video}"
    assert lines[-4] == f"min {reward:.1f}, median {reward:.1f}, max {reward:.1f}; laps finished 0 of 1"
    assert video_info(video)[:3] == (30, 192, 192)  # 30 frames, 96×96 upscaled ×2
    assert video_codec(video) == ("h264", "yuv420p")  # plays in browsers
    assert [p.name for p in video.parent.iterdir()] == ["agent.mp4"]  # the temporary file was renamed
    # The record names the command as typed (python and the script's argv), and it is the only file written there.
    record = read_evaluation(evaluation)
    assert record["command"] == shlex.join(["python", str(SIMULATOR), *flags])
    assert f"{record['mean']:.1f}" == f"{reward:.1f}" and record["steps"] == [30]
    assert [p.name for p in evaluation.parent.iterdir()] == ["evaluation.json"]


def test_evaluation_record_round_trip_and_one_line_errors(tiny_checkpoints, tmp_path):
    """--evaluation-out writes what the simulator measured; read_evaluation checks it, and a missing, corrupt,
    hand-edited or foreign record is one line naming the file; the sha256s tell a re-exported agent."""
    out = tmp_path / "evaluation.json"
    mean = main(Args(checkpoint_dir=str(tiny_checkpoints), episodes=2, max_steps=5, workers=1, seed=10003,
                     smoothing=0.2, progress=False, evaluation_out=str(out)))
    record = read_evaluation(out)
    assert record["mean"] == pytest.approx(mean) and record["episodes"] == 2 and record["seeds"] == [10003, 10004]
    assert (record["max_steps"], record["smoothing"], record["laps_finished"], record["steps"]) == (5, 0.2, 0, [5, 5])
    assert record["mean"] == pytest.approx(np.mean(record["returns"])) and record["laps"] == [False, False]
    assert record["std"] == pytest.approx(np.std(record["returns"]))
    assert record["sha256"] == {path.name: file_sha256(path) for path in checkpoint_paths(tiny_checkpoints).values()}
    assert stale_files(record, tiny_checkpoints) == []
    assert set(record["versions"]) >= {"torch", "gymnasium"} and record["date"].endswith("Z")
    # called in-process: the command is rebuilt from the flags that differ from their defaults
    assert record["command"].startswith("python car_racing/car_racing_gameplay_simulator.py --episodes 2 --seed 10003")
    assert f"--evaluation-out {out}" in record["command"]

    write_tiny_checkpoints(tiny_checkpoints, seed=1)  # a re-exported agent: the record no longer describes it
    assert stale_files(record, tiny_checkpoints) == sorted(CHECKPOINT_FILES.values())

    def one_line_error(text: str, match: str) -> None:
        out.write_text(text)
        with pytest.raises(UsageError, match=match) as raised:
            read_evaluation(out)
        assert "\n" not in str(raised.value) and str(out) in str(raised.value)

    good = json.dumps(record)
    one_line_error(good[:40], "not a readable evaluation record")  # truncated
    one_line_error("[1, 2]", "not an evaluation record")
    one_line_error(json.dumps(dict(record, mean=999.0)), "disagrees with its own episodes: mean 999.0")
    one_line_error(json.dumps(dict(record, laps_finished=2)), "laps_finished 2")
    one_line_error(json.dumps({k: v for k, v in record.items() if k != "sha256"}), "missing or malformed sha256")
    one_line_error(json.dumps(dict(record, returns=record["returns"][:1])), "2 episodes holds 1 returns")
    out.unlink()
    with pytest.raises(UsageError, match="no evaluation record here"):
        read_evaluation(out)
    with pytest.raises(UsageError, match="--evaluation-out x.txt: expected a path ending in .json"):
        main(Args(checkpoint_dir=str(tiny_checkpoints), episodes=1, max_steps=2, workers=1, evaluation_out="x.txt"))


def test_simulator_bad_checkpoint_dir_is_one_line_error(tmp_path):
    missing = tmp_path / "nowhere"
    proc = _run_simulator("--checkpoint-dir", str(missing), "--episodes", "1")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert str(missing / CHECKPOINT_FILES["vision"]) in lines[0] and "train_vision.py" in lines[0]
    assert "score:" not in proc.stdout


def test_score_line_format():
    assert score_line([900.0, 906.4]) == "score: 903.2 ± 3.2 over 2 episodes"


def test_evaluate_agent_drives_with_the_given_controller_params(tiny_checkpoints):
    # The CMA-ES real-env checks pass candidates as controller_params: each vector must really drive
    # (not the checkpoint's controller, not the previous candidate's parameters).
    params = np.zeros(3 * (LATENT + HIDDEN) + 3)
    right, left = params.copy(), params.copy()
    right[-3:], left[-3:] = [10.0, 10.0, -10.0], [-10.0, -10.0, 10.0]
    kwargs = dict(max_steps=4, workers=1)
    for vector, expected in ((right, [1.0, 1.0, 0.0]), (left, [-1.0, 0.0, 1.0])):
        result = evaluate_agent(tiny_checkpoints, [10007], controller_params=vector, **kwargs)[0]
        np.testing.assert_allclose(result.actions, np.tile(expected, (4, 1)), atol=1e-4)
    own = evaluate_agent(tiny_checkpoints, [10007], **kwargs)[0]  # the checkpoint's controller: gas bias 2
    assert np.all(np.abs(own.actions[:, 0]) < 0.99) and np.all(own.actions[:, 1] > 0.5)
