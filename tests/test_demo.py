"""The demo driver: its preset covers every stage, and a tiny run writes only into its run folder."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from car_racing import demo
from car_racing.common import config
from car_racing.common.cli import UsageError

# Every stage on the smallest settings that still run the real code paths (in-process, 1 worker).
TINY = config.preset(
    "demo", run__workers=1, record__episodes=2, record__steps=40, record__random_episodes=1, record__seq_len=10,
    vision__epochs=1, vision__kl_anneal_epochs=1.0, vision__batch_size=40, vision__latent_size=8, memory__epochs=1,
    memory__batch_size=4, memory__hidden_size=16, memory__num_mixtures=2, loop__memory_epochs=1, cmaes__population=4,
    cmaes__generations=2, dream__trials=2, dream__steps=5, dream__start_states=16, checks__every=2,
    checks__episodes=1, checks__max_steps=10, loop__agent_episodes=2, loop__repair_episodes=1)
TOOLS = {
    "simulator": {"episodes": 1, "max_steps": 10, "video_scale": 1},
    "vision_png": {"columns": 2, "scale": 1},
    "vision_video": {"max_steps": 10, "scale": 1},
    "memory_video": {"max_steps": 10, "dream_steps": 5, "scale": 1},
}


def test_the_demo_preset_is_the_recipe_at_a_quick_size():
    quick = config.preset("demo")
    assert {stage.key for stage in demo.STAGES} == set(demo.RECIPE_STAGES) | set(demo.TOOLS) == \
        set(demo.RECIPE_STAGES) | set(TOOLS)
    assert quick.vision.kl_anneal_epochs <= quick.vision.epochs, "β must reach 1 within the quick run"
    assert quick.loop.iterations >= 2 and 1 <= quick.cmaes.generations // quick.checks.every <= 2
    assert (quick.cmaes.mode, quick.cmaes.init) == ("dream", "zero")  # from zero, only in the dream
    assert quick.record.driver == "autopilot"  # headless: the stand-in for a person's driving
    # only sizes differ from the default recipe: the same dream, fitness, loop stages and M's heads
    default = config.preset("default")
    for key in ("dream.steps", "dream.dropout", "dream.value", "dream.fitness", "dream.start", "memory.dropout",
                "memory.value_discount", "cmaes.diagonal", "cmaes.sigma0", "checks.max_steps"):
        assert config.get(quick, key) == config.get(default, key), key
    assert quick.loop.select_top >= 2  # the best checks are compared again on more tracks (a final choice)


def test_missing_tool_settings_is_one_line_error(tmp_path):
    with pytest.raises(UsageError, match="no settings for memory_video"):
        demo.run_stages(tmp_path, TINY, {k: v for k, v in TOOLS.items() if k != "memory_video"})


def test_tiny_demo_writes_only_into_its_run_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # repo-relative defaults (data/, checkpoints/, runs/) would land here
    run_dir = demo.main(demo.Args(runs_dir=str(tmp_path / "runs")), TINY, TOOLS)
    assert run_dir.parent == tmp_path / "runs" and run_dir.name.startswith("demo-")
    assert sorted(os.listdir(tmp_path)) == ["runs"]
    assert os.listdir(tmp_path / "runs") == [run_dir.name]
    files = {str(p) for p in demo.written_files(run_dir)}
    for name in ("checkpoints/vision_model.pth", "checkpoints/memory_model.pth", "checkpoints/control_model_cmaes.pth",
                 "checkpoints/dream_loop/dream_loop.png", "agent_driving.mp4", "vision_reconstructions.png",
                 "vision_episode.mp4", "memory_dream.mp4", "memory_dream_reward.png",
                 "data/car_racing_recorded_frames.npy"):
        assert name in files
    out = capsys.readouterr().out
    assert "score: " in out and f"everything is in {run_dir}" in out
    last = out.strip().splitlines()[-6:]  # the last lines say where to look
    assert last[0] == "watch it:" and str(run_dir / "agent_driving.mp4") in last[1]
    assert any(str(run_dir / "memory_dream.mp4") in line for line in last)
    assert any(str(run_dir / "checkpoints/dream_loop/dream_loop.png") in line for line in last)
    assert "this run trained (V, M and C from its own recording)" in out and "checkpoints/pretrained/dream" in out
    from car_racing.common.runtime import load_checkpoint

    checkpoints = run_dir / "checkpoints"
    controller = load_checkpoint(checkpoints / "control_model_cmaes.pth", "controller")
    assert controller["training"]["dream_trained"]  # the demo's agent never saw an expert label
    assert controller["training"]["fitness_source"] == "dream"
    # V, M and C all come from this run: the loop read the run's own V and stage-3 M, and its M continued on the
    # run's own recording (the records name the files they were made from)
    memory = load_checkpoint(checkpoints / "memory_model.pth", "memory")
    assert Path(memory["vision"]["path"]).resolve().is_relative_to(run_dir.resolve())
    assert Path(memory["data"]["data_dir"]).resolve().is_relative_to(run_dir.resolve())
    assert memory["warm_start"]["from"].startswith(str(checkpoints / "dream_loop")) or memory["epoch"] >= 1
    stage3 = load_checkpoint(checkpoints / "dream_loop" / "memory_from_stage3.pth", "memory")
    assert Path(stage3["data"]["data_dir"]).resolve() == (run_dir / "data").resolve()
    state = json.loads((checkpoints / "dream_loop" / "dream_loop_state.json").read_text())
    assert Path(state["stages"]["0:vision"]["from"]).resolve() == (checkpoints / "vision_model.pth").resolve()
    assert state["config"]["cmaes"]["init"] == "zero"  # iteration 0's C started from zero
    # the resolved config reruns: --config of it gives the demo's config with the run folder's paths
    again, _ = config.parse(("run", "record"), ["--config", str(run_dir / "demo.config.toml")])
    assert again == demo.demo_config(run_dir, TINY)


def test_failing_stage_names_itself(tmp_path, monkeypatch):
    broken = dataclasses.replace(TINY, vision=dataclasses.replace(TINY.vision, epochs=0))  # past the config's checks
    with pytest.raises(UsageError, match=r"stage 1 \(record autopilot driving .*vision.epochs = 0: expected a positive"):
        demo.run_stages(tmp_path, demo.demo_config(tmp_path, broken), TOOLS)  # checked before anything is recorded
    assert not (tmp_path / "data").exists()

    def crash(config):
        raise RuntimeError("out of memory")

    monkeypatch.setattr("car_racing.training.vision.train_vision", crash)
    stages = [s for s in demo.STAGES if s.key in ("record", "vision")]
    with pytest.raises(UsageError, match=r"stage 2 \(train the vision model V .*RuntimeError: out of memory "
                                         r"\(traceback in .*error.log\)"):
        demo.run_stages(tmp_path, demo.demo_config(tmp_path, TINY), TOOLS, stages)
    assert "out of memory" in (tmp_path / "error.log").read_text()


def test_verdict_says_plainly_how_the_run_compares():
    low = demo.verdict("score: -35.3 ± 2.9 over 3 episodes", 3, "kept: initial mean (zero) of generation 0")
    assert "it barely drives" in low and "the kept C is all zeros" in low
    assert all(f"checkpoints/pretrained/{name}" in low for name, _ in demo.SHIPPED_AGENTS)
    good = demo.verdict("score: 700.0 ± 50.0 over 3 episodes", 3, "kept: cma_mean of generation 15")
    assert "it drives." in good and "all zeros" not in good


def test_verdict_quotes_the_shipped_agents_evaluation_records(tmp_path, monkeypatch):
    """The shipped agents' scores come from their evaluation records; a missing or corrupt one is said, not guessed."""
    from car_racing.common import runtime
    from car_racing.episodes.evaluation import EVALUATION_FILE, summarize

    monkeypatch.setattr(runtime, "SHIPPED_DIR", tmp_path)
    returns = [900.0, 950.0, 920.0]
    record = {"kind": "evaluation", "format": 1, **summarize(returns), "laps_finished": 2, "episodes": 3,
              "seeds": [10000, 10002], "max_steps": 1000, "smoothing": 0.0, "device": "cpu", "returns": returns,
              "steps": [1000, 900, 950], "laps": [False, True, True], "checkpoint_dir": "x", "sha256": {},
              "date": "2025-01-01T00:00:00Z", "command": "python car_racing/car_racing_gameplay_simulator.py",
              "versions": {}}
    (tmp_path / "dream").mkdir()
    (tmp_path / "dream" / EVALUATION_FILE).write_text(json.dumps(record))
    (tmp_path / "default").mkdir()
    (tmp_path / "default" / EVALUATION_FILE).write_text("{not json")
    text = demo.verdict("score: 700.0 ± 50.0 over 3 episodes", 3)
    lines = {name: next(line for line in text.splitlines() if f"checkpoints/pretrained/{name}:" in line)
             for name, _ in demo.SHIPPED_AGENTS}
    assert "923.3 ± 20.5 over 3 tracks (seeds 10000–10002), 2 laps" in lines["dream"]
    assert "no score" in lines["reward-only"] and "missing" in lines["reward-only"]
    assert "no score" in lines["default"] and "not a readable evaluation record" in lines["default"]


def test_it_says_how_long_it_expects_to_take_before_it_starts():
    two = demo.expectation(2, 0.0)
    assert two.startswith(f"expect about {demo.MEASURED['minutes']:.0f} min here") and "one core" not in two
    busy = demo.expectation(2, 1.0)  # another process holds one of the two cores
    assert f"expect about {2 * demo.MEASURED['minutes']:.0f} min" in busy and "with one core free it runs, slower" in busy
    assert demo.expectation(1, 0.0) == demo.expectation(2, 1.0).replace("2 cores, load 1.0", "1 core, load 0.0")
