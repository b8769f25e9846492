"""The trained agents shipped in checkpoints/pretrained/: small, complete, they drive, and training never writes there."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from car_racing.common.runtime import checkpoint_paths, load_checkpoint
from car_racing.episodes.agent import evaluate_agent, load_agent_models
from car_racing.episodes.evaluation import EVALUATION_FILE, read_evaluation, stale_files
from car_racing.recording.latent_cache import file_sha256

REPO = Path(__file__).resolve().parent.parent
PRETRAINED = REPO / "checkpoints" / "pretrained"
SHIPPED = PRETRAINED / "default"  # DAgger, then real-env CMA-ES
DREAM = PRETRAINED / "dream"  # the agent whose C was trained only in M's dream
REWARD_ONLY = PRETRAINED / "reward-only"  # that C, then real-env CMA-ES: reward alone, no expert label
AGENTS = [folder for folder in (SHIPPED, DREAM, REWARD_ONLY)
          if all(p.is_file() for p in checkpoint_paths(folder).values())]
pytestmark = pytest.mark.skipif(not AGENTS, reason="no shipped checkpoints")


@pytest.mark.parametrize("folder", AGENTS, ids=lambda folder: folder.name)
def test_shipped_checkpoints_are_small_float16_and_chain(folder):
    paths = checkpoint_paths(folder)
    assert sum(p.stat().st_size for p in paths.values()) <= 25 * 2**20
    for kind, path in paths.items():
        checkpoint = load_checkpoint(path, kind)
        assert "optimizer_state" not in checkpoint and "es_state" not in checkpoint
        if kind != "controller":
            assert all(t.dtype == torch.float16 for t in checkpoint["model_state"].values() if t.is_floating_point())
    # M names the shipped V, so training C on top of them is accepted
    assert load_checkpoint(paths["memory"], "memory")["vision"]["sha256"] == file_sha256(paths["vision"])
    vae, mdnrnn, controller = load_agent_models(folder)
    assert (vae.latent_size, mdnrnn.hidden_size, controller.num_params) == (32, 512, 1635)


def test_the_dream_agent_was_trained_only_in_the_dream():
    if DREAM not in AGENTS:
        pytest.skip("no checkpoints/pretrained/dream")
    training = load_checkpoint(checkpoint_paths(DREAM)["controller"], "controller")["training"]
    lineage = training
    while True:  # every C of the lineage (the repair loop's warm starts), back to the first, which started at zero
        assert lineage["dream_trained"] and lineage["fitness_source"] == "dream"
        assert not lineage["expert_labels"] and not lineage["real_returns_as_fitness"]
        assert lineage["real_fitness_episodes"] == 0
        if "warm_start_training" not in lineage:
            break
        lineage = lineage["warm_start_training"]
    assert lineage["warm_start"] == "zero"
    # the five stages' defaults: 200-step dreams from recorded states, their mean, ended on M's value
    assert training["dream"]["rollout_steps"] == 200 and training["dream"]["fitness"]["aggregate"] == "mean"
    assert training["dream"]["value_bootstrap"]
    assert load_checkpoint(checkpoint_paths(DREAM)["memory"], "memory")["value"]["discount"] == 0.98


def test_the_reward_only_agent_never_saw_an_expert_label():
    if REWARD_ONLY not in AGENTS:
        pytest.skip("no checkpoints/pretrained/reward-only")
    training = load_checkpoint(checkpoint_paths(REWARD_ONLY)["controller"], "controller")["training"]
    assert training["reward_only"] and not training["expert_labels"] and training["fitness_source"] == "real"
    assert training["real_fitness_episodes"] > 0 and "selection" in training
    lineage = training
    while "warm_start_training" in lineage:  # back to the first C: trained in the dream from zero
        lineage = lineage["warm_start_training"]
        assert not lineage["expert_labels"]
    assert lineage["dream_trained"] and lineage["warm_start"] == "zero"
    # the default agent's V file (git stores it once): the reward-only agent's M is an earlier dream agent's
    assert file_sha256(checkpoint_paths(REWARD_ONLY)["vision"]) == file_sha256(checkpoint_paths(SHIPPED)["vision"])


def readme_shipped_table() -> dict[str, dict[str, str]]:
    """The README's table of the shipped agents: agent folder name → its cells as written (score "MEAN ± STD",
    min, median, laps "L of N"), bold marks removed."""
    rows = {}
    for line in (REPO / "README.md").read_text().splitlines():
        cells = [cell.strip().replace("**", "").strip("`") for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 5 and cells[0].startswith("checkpoints/pretrained/"):
            name = cells[0].removeprefix("checkpoints/pretrained/").strip("/")
            rows[name] = dict(zip(("score", "min", "median", "laps"), cells[1:5]))
    return rows


@pytest.mark.parametrize("folder", AGENTS, ids=lambda folder: folder.name)
def test_shipped_agent_carries_its_evaluation_and_the_readme_quotes_it(folder):
    """Every shipped agent has the record the simulator wrote when it scored the agent over the 100 held-out tracks
    (--evaluation-out), made from the very files beside it (a re-exported agent needs a new evaluation), and the
    README's table shows what that record says, to the decimal."""
    record = read_evaluation(folder / EVALUATION_FILE)
    assert stale_files(record, folder) == [], f"{folder}: the checkpoints changed since {EVALUATION_FILE} was measured"
    assert (record["episodes"], record["seeds"], record["max_steps"]) == (100, [10000, 10099], 1000)
    row = readme_shipped_table().get(folder.name)
    assert row is not None, f"README.md: no row for checkpoints/pretrained/{folder.name}/ in the shipped agents' table"
    measured = {"score": f"{record['mean']:.1f} ± {record['std']:.1f}", "min": f"{record['min']:.1f}",
                "median": f"{record['median']:.1f}", "laps": f"{record['laps_finished']} of {record['episodes']}"}
    assert row == measured, f"README.md's row for {folder.name} disagrees with {folder / EVALUATION_FILE}"


def test_readme_table_lists_every_shipped_agent():
    assert set(readme_shipped_table()) == {folder.name for folder in AGENTS}


@pytest.mark.parametrize("folder", AGENTS, ids=lambda folder: folder.name)
def test_shipped_agent_drives_forward(folder):
    result = evaluate_agent(folder, [20_000], max_steps=120)[0]
    assert result.steps == 120
    assert result.total_reward > 50  # new tiles are being visited: ~+3 per tile, -0.1 per step
    assert np.all(np.isfinite(result.actions))


def shipped_digests() -> dict[str, str]:
    return {str(path): file_sha256(path) for path in sorted(PRETRAINED.rglob("*.pth"))}


def test_training_stages_never_write_into_a_shipped_agent(tmp_path, monkeypatch):
    from car_racing import dream_loop, select_controller, train_controller_cmaes, train_memory, train_vision
    from car_racing.common import config
    from car_racing.common.cli import UsageError

    before = shipped_digests()
    assert "pretrained" not in config.Config().run.checkpoint_dir  # the stages' default: the user's own folder
    for stage in (train_vision, train_memory, train_controller_cmaes, dream_loop):  # the stages on the one config
        for agent in ("default", "dream"):
            with pytest.raises(UsageError, match="shipped agent"):
                stage.main(config.preset("default", run__checkpoint_dir=str(PRETRAINED / agent),
                                         run__data_dir=str(tmp_path)))
    assert "pretrained" not in select_controller.Args().checkpoint_dir
    for agent in ("default", "dream"):
        with pytest.raises(UsageError, match="shipped agent"):
            select_controller.main(select_controller.Args(checkpoint_dir=str(PRETRAINED / agent)))
    assert shipped_digests() == before and before


def test_read_only_scripts_load_your_models_once_you_have_them_else_the_shipped_agent(tmp_path, monkeypatch, capsys):
    from car_racing.common.runtime import agent_dir, save_checkpoint

    monkeypatch.chdir(tmp_path)  # a fresh clone's checkpoints/ holds no model of the user's yet
    assert Path(agent_dir(None)).resolve() == SHIPPED.resolve()
    assert "shipped agent" in capsys.readouterr().out
    assert agent_dir("somewhere") == "somewhere"  # a given --checkpoint-dir is taken as it is
    own = checkpoint_paths(tmp_path / "checkpoints")
    save_checkpoint({"kind": "vision", "model_args": {}, "model_state": {}}, own["vision"])
    assert agent_dir(None, ("vision",)) == "checkpoints"  # V of your own: the V-only scripts use it
    assert "your own" in capsys.readouterr().out
    assert Path(agent_dir(None)).resolve() == SHIPPED.resolve()  # no M and C of yours yet: the whole shipped agent
