"""The dream issue: measuring the dream, dropout fixed per dream, the dream-trained record, the whole loop."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_controller_training import HIDDEN, LATENT, tiny_memory, write_tiny_checkpoints

from bench import loop_table
from car_racing import dream_loop, evaluate_world_model
from car_racing.common.cli import UsageError
from car_racing.common.metrics import metrics_path, read_metrics
from car_racing.common.runtime import load_checkpoint
from car_racing.models.ffn import flat_to_population
from car_racing.models.mdn_rnn import MDNRNN, head_dropout_mask
from car_racing.recording.latent_cache import load_or_build_latents
from car_racing.recording.recorded_data import load_recorded
from car_racing.train_controller_cmaes import Args as ControllerArgs
from car_racing.train_controller_cmaes import main as train_controller
from car_racing.training import dream
from car_racing.training.dream import DreamNoise, dream_rollout, dream_rollout_per_candidate

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- dropout: one mask per dream -----------------------------------------------------------------------

def test_dropout_mask_is_fixed_within_a_dream_and_differs_between_dreams(monkeypatch):
    mdn = tiny_memory(done_bias=-5.0)
    population, trials, steps = 3, 4, 7
    flat = torch.randn(population, 3 * (LATENT + HIDDEN) + 3, generator=torch.Generator().manual_seed(0))
    weights, biases = flat_to_population(flat, LATENT, HIDDEN)
    start_z = torch.randn(trials, LATENT)
    start_state = (torch.zeros(trials, HIDDEN), torch.zeros(trials, HIDDEN))
    seen = []
    original = dream.FusedDreamWeights.head_outputs

    def spy(self, x, head_mask=None):
        seen.append(None if head_mask is None else head_mask.clone())
        return original(self, x, head_mask)

    monkeypatch.setattr(dream.FusedDreamWeights, "head_outputs", spy)
    fitness = dream_rollout(mdn, weights, biases, start_z, start_state, steps, 1.0,
                            torch.Generator().manual_seed(3), dropout=0.5)
    assert len(seen) == steps and all(mask is not None for mask in seen)
    for mask in seen[1:]:  # the same mask at every step of the dream
        torch.testing.assert_close(mask, seen[0], rtol=0, atol=0)
    rows = seen[0].view(population, trials, HIDDEN)
    assert set(rows.unique().tolist()) == {0.0, 2.0}  # kept units scaled by 1/(1 − p)
    torch.testing.assert_close(rows[0], rows[1], rtol=0, atol=0)  # candidates share each dream's mask (CRN)
    assert not torch.equal(rows[0, 0], rows[0, 1])  # each dream draws its own
    again = []
    monkeypatch.setattr(dream.FusedDreamWeights, "head_outputs",
                        lambda self, x, head_mask=None: (again.append(head_mask.clone()), original(self, x, head_mask))[1])
    dream_rollout(mdn, weights, biases, start_z, start_state, steps, 1.0, torch.Generator().manual_seed(4), dropout=0.5)
    assert not torch.equal(again[0], seen[0])  # the next generation's dreams draw new masks
    # the reference loop gives the same fitness with the same masks; p = 0 leaves the noise as before
    monkeypatch.setattr(dream.FusedDreamWeights, "head_outputs", original)
    reference = dream_rollout_per_candidate(mdn, weights, biases, start_z, start_state, steps, 1.0,
                                            torch.Generator().manual_seed(3), dropout=0.5)
    torch.testing.assert_close(fitness, reference, rtol=1e-4, atol=1e-4)
    plain = DreamNoise.draw(steps, trials, LATENT, torch.Generator().manual_seed(3))
    masked = DreamNoise.draw(steps, trials, LATENT, torch.Generator().manual_seed(3), 0.5, HIDDEN)
    assert plain.head_mask is None and masked.head_mask.shape == (trials, HIDDEN)
    torch.testing.assert_close(plain.gaussian, masked.gaussian, rtol=0, atol=0)


def test_memory_head_mask_is_one_mask_for_the_whole_sequence():
    torch.manual_seed(0)
    mdn = MDNRNN(latent_size=LATENT, action_size=3, hidden_size=HIDDEN, num_mixtures=2).eval()
    z, a = torch.randn(2, 5, LATENT), torch.rand(2, 5, 3)
    mask = head_dropout_mask(2, HIDDEN, 0.5, torch.Generator().manual_seed(1))
    out, _ = mdn(z, a, head_mask=mask)
    plain, _ = mdn(z, a)
    torch.testing.assert_close(out.hidden, plain.hidden)  # the recurrence (and what C sees) is unmasked
    for t in range(5):
        expected = mdn.heads(plain.hidden[:, t] * mask)
        torch.testing.assert_close(out.reward[:, t], expected.reward)
        torch.testing.assert_close(out.mu[:, t], expected.mu)
    assert head_dropout_mask(2, HIDDEN, 0.0) is None


# --- the dream-trained record -------------------------------------------------------------------------

def controller_args(tmp_path, data_dir, **overrides) -> ControllerArgs:
    options = dict(ControllerArgs.PRESETS["seed"])  # one pass (the defaults run the repair loop)
    options.update(population=4, generations=1, rollout_steps=4, dream_trials=2, start_states=32, eval_every=1,
                   eval_episodes=1, eval_max_steps=8, workers=1, data_dir=str(data_dir), batch_size=8,
                   checkpoint_dir=str(tmp_path), device="cpu", progress=False, cma_diagonal=True)
    options.update(overrides)
    return ControllerArgs(**options)


def test_checkpoint_records_whether_c_was_trained_only_in_the_dream(tmp_path, tiny_data_dir):
    write_tiny_checkpoints(tmp_path)
    dreamt = train_controller(controller_args(tmp_path, tiny_data_dir, init="zero", dream_dropout=0.1))
    record = load_checkpoint(tmp_path / "control_model_cmaes.pth", "controller")["training"]
    assert dreamt["training"] == record
    assert record["dream_trained"] and record["fitness_source"] == "dream" and record["warm_start"] == "zero"
    assert not record["expert_labels"] and not record["real_returns_as_fitness"]
    assert record["generations"] == 1 and record["dream"]["dropout"] == 0.1
    whole = train_controller(controller_args(tmp_path, tiny_data_dir, init="zero", dream_start="episode-start",
                                             eval_every=0))
    assert whole["training"]["dream"]["start"] == "episode-start" and whole["training"]["dream_trained"]
    # warm-started from that C, in a new dream: still dream-trained, and the lineage is in the file
    first = tmp_path / "first.pth"
    (tmp_path / "control_model_cmaes.pth").rename(first)
    chained = train_controller(controller_args(tmp_path, tiny_data_dir, init="checkpoint", init_from=str(first)))
    assert chained["training"]["dream_trained"] and chained["training"]["total_generations"] == 2
    assert chained["training"]["warm_start_training"]["warm_start"] == "zero"
    # behaviour cloning on the recorded drivers' actions: expert labels, not dream-trained
    bc = train_controller(controller_args(tmp_path, tiny_data_dir, init="bc"))
    assert bc["training"]["expert_labels"] and not bc["training"]["dream_trained"]
    # from a dream-trained C, fine-tuned on real returns: no longer dream-trained
    real = train_controller(controller_args(tmp_path, tiny_data_dir, init="checkpoint", init_from=str(first),
                                            mode="real", real_trials=1, population=2, eval_every=0))
    assert real["training"]["real_returns_as_fitness"] and not real["training"]["dream_trained"]
    assert not real["training"]["expert_labels"]


# --- measuring the dream --------------------------------------------------------------------------------

def test_fidelity_script_prints_its_line_and_writes_the_png(tmp_path, tiny_data_dir, capsys):
    write_tiny_checkpoints(tmp_path)
    out, json_out = tmp_path / "fidelity.png", tmp_path / "fidelity.json"
    summary = evaluate_world_model.main(evaluate_world_model.Args(
        checkpoint_dir=str(tmp_path), data_dir=str(tiny_data_dir), panel=5, episodes=1, max_steps=12, horizon=4,
        rollout_steps=6, dream_trials=3, start_states=32, out=str(out), json_out=str(json_out), workers=1,
        device="cpu", progress=False))
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("dream-real rank correlation: ") and lines[-1].endswith(" over 5 controllers")
    assert out.stat().st_size > 0 and json.loads(json_out.read_text())["controllers"] == 5
    rows = summary["rows"]
    assert len(rows) == 5 and len({r["name"] for r in rows}) == 5
    assert all(len(r["episodes"]) == 1 and np.isfinite(r["dream_fitness"]) for r in rows)
    assert {"one_step_nll", "one_step_mse", "multi_step_mse", "reward_mse"} <= set(summary["errors"])
    # controllers of different quality really drive differently in the real env
    assert len({round(r["real_return"], 3) for r in rows}) > 1
    with pytest.raises(UsageError, match="--panel 2"):
        evaluate_world_model.main(evaluate_world_model.Args(checkpoint_dir=str(tmp_path), panel=2))


class Interrupted(Exception):
    """Stands in for Ctrl-C (pytest itself stops on a real KeyboardInterrupt)."""


def test_fidelity_panel_episodes_join_the_data_once(tmp_path, tiny_data_dir, monkeypatch, capsys):
    write_tiny_checkpoints(tmp_path)
    before = len(load_recorded(tiny_data_dir, mmap=True).episodes)
    args = evaluate_world_model.Args(
        checkpoint_dir=str(tmp_path), data_dir=str(tiny_data_dir), panel=3, episodes=2, max_steps=12, horizon=4,
        rollout_steps=6, dream_trials=3, start_states=32, out=str(tmp_path / "fidelity.png"), workers=1,
        device="cpu", progress=False, record_into=str(tiny_data_dir), record_run=3)
    original = evaluate_world_model.memory_errors

    def interrupting(*a, **k):  # a crash while measuring the second controller's episodes
        interrupting.calls += 1
        if interrupting.calls == 3:
            raise Interrupted
        return original(*a, **k)

    interrupting.calls = 0
    monkeypatch.setattr(evaluate_world_model, "memory_errors", interrupting)
    with pytest.raises(Interrupted):
        evaluate_world_model.main(args)
    panel = [e for e in load_recorded(tiny_data_dir, mmap=True).episodes if e["driver"] == "panel"]
    assert sorted(e["noise"]["panel_trial"] for e in panel) == [0, 1, 2, 3]  # what was driven is kept
    monkeypatch.undo()
    summary = evaluate_world_model.main(args)  # the rerun drives the whole panel again, records only the missing
    assert [r["recorded"] for r in summary["rows"]] == [0, 0, 2]
    assert "recorded 2 of the panel's 6 real episodes" in capsys.readouterr().out
    data = load_recorded(tiny_data_dir)
    assert len(data.episodes) == before + 6
    panel = sorted((e for e in data.episodes if e["driver"] == "panel"), key=lambda e: e["noise"]["panel_trial"])
    assert [e["noise"]["panel_trial"] for e in panel] == list(range(6)) and {e["noise"]["panel_run"] for e in panel} == {3}
    assert [int(e["seed"]) for e in panel] == [args.eval_seed_base, args.eval_seed_base + 1] * 3
    for row, pair in zip(summary["rows"], (panel[0:2], panel[2:4], panel[4:6])):
        # each controller's recorded episodes are the ones it was scored on
        assert {e["noise"]["controller"] for e in pair} == {row["name"]}
        assert np.mean([e["total_reward"] for e in pair]) == pytest.approx(row["real_return"], abs=1e-3)
        assert all(e["length"] == 12 for e in pair)
    assert evaluate_world_model.main(args)["rows"][0]["recorded"] == 0  # nothing twice
    assert len(load_recorded(tiny_data_dir, mmap=True).episodes) == before + 6
    # the next run (the loop's next iteration) drives the same controllers the same way: identical episodes are
    # not copied; a changed C's are new data
    again = evaluate_world_model.main(dataclasses.replace(args, record_run=4))
    assert [r["recorded"] for r in again["rows"]] == [0, 0, 0]
    larger = evaluate_world_model.main(dataclasses.replace(args, record_run=5, panel=6))["rows"]
    assert [r["name"] for r in larger][3:] == ["circling left", "random σ=0.03", "random σ=0.1"]
    assert [r["recorded"] for r in larger] == [0, 0, 0, 2, 2, 2]  # only the controllers not driven before


def test_spearman_rank_correlation():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    assert evaluate_world_model.spearman(x, x ** 3) == pytest.approx(1.0)
    assert evaluate_world_model.spearman(x, -x) == pytest.approx(-1.0)
    assert evaluate_world_model.spearman(np.array([1.0, 1.0, 2.0]), np.array([3.0, 3.0, 5.0])) == pytest.approx(1.0)
    assert np.isnan(evaluate_world_model.spearman(x, np.ones(4)))


# --- the loop ---------------------------------------------------------------------------------------------

def loop_args(tmp_path: Path, init_dir: Path, paths: dict, **overrides) -> dream_loop.Args:
    options = dict(data_dir=str(tmp_path / "data"), checkpoint_dir=str(tmp_path / "loop"), iterations=2,
                   init_data_dir=str(init_dir), vision_from=str(paths["vision"]), memory_from=str(paths["memory"]),
                   memory_epochs_first=1, memory_epochs=1, generations=2, population=4, rollout_steps=4,
                   dream_trials=2, start_states=32, eval_every=2, eval_episodes=1, eval_max_steps=10,
                   agent_episodes=2, agent_steps=12, fidelity_panel=3, fidelity_episodes=1, workers=1, device="cpu",
                   progress=False)
    options.update(overrides)
    return dream_loop.Args(**options)


def test_two_loop_iterations_run_and_resume_after_an_interruption(tmp_path, tiny_data_dir, monkeypatch):
    paths = write_tiny_checkpoints(tmp_path / "tiny")
    args = loop_args(tmp_path, tiny_data_dir, paths, select_top=2, select_episodes=2, panel_as_data=True)
    calls: list[str] = []
    interrupted: list[bool] = []
    original = {stage.name: stage.run for stage in dream_loop.STAGES}

    def counting(name):
        def run(args, iteration):
            calls.append(f"{iteration}:{name}")
            if f"{iteration}:{name}" == "1:controller" and not interrupted:
                interrupted.append(True)
                raise Interrupted  # a crash (or Ctrl-C) between M and C of the second iteration
            return original[name](args, iteration)
        return run

    monkeypatch.setattr(dream_loop, "STAGES", [dataclasses.replace(s, run=counting(s.name)) for s in dream_loop.STAGES])
    with pytest.raises(Interrupted):
        dream_loop.main(args)
    state_path = Path(args.checkpoint_dir) / dream_loop.STATE_FILE
    saved = json.loads(state_path.read_text())
    assert list(saved["stages"]) == ["0:data", "0:vision", "0:memory", "0:controller", "0:fidelity", "0:record",
                                     "1:memory"]
    data = load_recorded(args.data_dir, mmap=True)
    assert [e["driver"] for e in data.episodes].count("agent") == 2  # C's own episodes joined the data
    assert [e["driver"] for e in data.episodes].count("panel") == 3  # and the fidelity panel's (3 Cs × 1 track)

    calls.clear()
    final = dream_loop.main(args)  # the rerun resumes: only the interrupted and later stages run
    assert calls == ["1:controller", "1:fidelity"]
    assert set(final["stages"]) >= {"1:controller", "1:fidelity"} and "1:record" not in final["stages"]
    assert final["stages"]["0:fidelity"]["recorded_now"] == 3
    assert final["stages"]["1:fidelity"]["panel_episodes"] == 0  # the last iteration has no next M to record for
    for iteration in (0, 1):
        folder = Path(args.checkpoint_dir) / f"iter_{iteration:02d}"
        controller = load_checkpoint(folder / "control_model_cmaes.pth", "controller")
        assert controller["training"]["dream_trained"] and controller["training"]["fitness_source"] == "dream"
        assert (folder / "fidelity.png").is_file()
        choice = load_checkpoint(folder / "dream_choice" / "control_model_cmaes.pth", "controller")
        assert choice["training"]["dream_trained"] and "the dream's choice" in choice["model_source"]
    memory = load_checkpoint(Path(args.checkpoint_dir) / "iter_01" / "memory_model.pth", "memory")
    assert memory["warm_start"]["from"].endswith("iter_00/memory_model.pth")
    # iteration 1's warm start: iteration 0's C, carried from iteration 0's M onto the retrained one
    warm_start = load_checkpoint(Path(args.checkpoint_dir) / "iter_01" / "control_model_cmaes.pth", "controller")["bc"]
    assert warm_start["method"] == "checkpoint" and warm_start["carried"]["from_memory"]["path"].endswith(
        "iter_00/memory_model.pth")
    assert memory["data"]["num_frames"] == len(data)
    # the final choice: both iterations' Cs drove the 2 selection tracks; the better mean was kept
    selection = final["selection"]
    assert selection["seeds"] == [dream_loop.SELECT_SEED_BASE, dream_loop.SELECT_SEED_BASE + 1]
    means = {int(i): np.mean(returns) for i, returns in selection["returns"].items()}
    assert set(means) == {0, 1} and final["best_iteration"] == max(means, key=means.get)
    assert final["best_by"] == "mean over 2 selection tracks"
    assert (Path(args.checkpoint_dir) / "best" / "control_model_cmaes.pth").is_file()

    def no_driving(*args, **kwargs):
        raise AssertionError("a rerun drives no selection track again")

    monkeypatch.setattr("car_racing.episodes.agent.evaluate_agent", no_driving)
    assert dream_loop.main(args)["best_iteration"] == final["best_iteration"]
    assert (Path(args.checkpoint_dir) / dream_loop.PLOT_FILE).stat().st_size > 0
    # one metrics line per finished stage, step = iteration, in the loop state's order (none lost or doubled)
    records = read_metrics(metrics_path(args.checkpoint_dir, "dream_loop"))
    assert [f"{r['step']}:{r['stage']}" for r in records] == list(final["stages"])
    controller_0 = records[3]
    assert controller_0["controller/best_real_score"] == pytest.approx(final["stages"]["0:controller"]["best_real_score"])
    assert [r["step"] for r in read_metrics(metrics_path(Path(args.checkpoint_dir) / "iter_01", "controller"))] == [0, 1, 2]
    with pytest.raises(UsageError, match="--seed 5"):  # a different loop cannot continue this one
        dream_loop.main(loop_args(tmp_path, tiny_data_dir, paths, seed=5))
    # bench/loop_table.py reads the same state back as the docs' per-iteration table
    table = loop_table.main(loop_table.Args(runs=(args.checkpoint_dir, args.checkpoint_dir)))
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith(("| 0 |", "| 1 |"))]
    assert len(rows) == 3 * 2 and rows[0][0] == "| 0" and rows[1][0] == "| 1"
    assert rows[0][4] == f"{final['stages']['0:controller']['best_real_score']:.1f} (zero)"
    assert rows[0][7].endswith("; 3") and rows[1][5] == "—"  # 3 panel episodes recorded; no record in the last
    assert f"| {final['stages']['1:controller']['best_real_score']:.1f} |" in table.split("kept check:")[-1]
    with pytest.raises(UsageError, match="--runs .*no dream_loop_state.json"):
        loop_table.main(loop_table.Args(runs=(str(tmp_path / "nowhere"),)))


def script_stages(monkeypatch, checks: dict[int, float], calls: list[str] | None = None) -> None:
    """Replace the loop's stages by stand-ins: the controller stage writes stand-in V, M, C files and reports
    ``checks[iteration]`` as its kept C's check; the others do nothing. Each call is appended to ``calls``."""
    from car_racing.common.runtime import CHECKPOINT_FILES

    def scripted(name):
        def run(args, iteration):
            if calls is not None:
                calls.append(f"{iteration}:{name}")
            if name != "controller":
                return {}
            folder = Path(args.checkpoint_dir) / f"iter_{iteration:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            for file in CHECKPOINT_FILES.values():
                (folder / file).write_bytes(b"stand-in")
            return {"best_real_score": checks[iteration], "real_checks": [], "dream_fitness_best": 0.0}
        return run

    monkeypatch.setattr(dream_loop, "STAGES", [dataclasses.replace(s, run=scripted(s.name)) for s in dream_loop.STAGES])


def test_patience_stops_the_loop_when_checks_stop_improving_and_a_rerun_without_it_continues(tmp_path, monkeypatch):
    checks = {0: 300.0, 1: 500.0, 2: 480.0, 3: 490.0, 4: 900.0}
    calls: list[str] = []
    script_stages(monkeypatch, checks, calls)
    args = dream_loop.Args(data_dir=str(tmp_path / "data"), checkpoint_dir=str(tmp_path / "loop"), iterations=5,
                           patience=2, workers=1, progress=False)
    final = dream_loop.main(args)
    # iteration 1 checked best; iterations 2 and 3 did not beat it: stop after 3, recording nothing for a next M
    assert calls[-3:] == ["3:memory", "3:controller", "3:fidelity"] and not [c for c in calls if c.startswith("4:")]
    assert final["stopped_early"] == {"after_iteration": 3, "best_checked_iteration": 1, "patience": 2,
                                      "patience_delta": 0.0}
    assert final["best_iteration"] == 1
    calls.clear()
    assert dream_loop.main(args)["best_iteration"] == 1 and calls == []  # a rerun stops at the same place
    final = dream_loop.main(dataclasses.replace(args, patience=0))  # without patience it runs every iteration
    assert calls == ["3:record", "4:memory", "4:controller", "4:fidelity"]
    assert final["stopped_early"] is None and final["best_iteration"] == 4
    with pytest.raises(UsageError, match="--patience -1"):
        dream_loop.main(dataclasses.replace(args, patience=-1))


def test_patience_delta_counts_only_gains_above_it_as_improvements(tmp_path):
    from car_racing.training.loop import LoopState, converged

    state = LoopState(tmp_path / "state.json", dream_loop.Args(progress=False))
    for iteration, score in enumerate([467.0, 740.0, 919.0, 918.7, 926.0, 925.9, 921.0, 929.5]):  # r23's, then more
        state.finish(f"{iteration}:controller", 1.0, {"best_real_score": score})
    assert converged(state, 7, patience=5) is None  # strict: 926.0 (it. 4) and 929.5 (it. 7) restart the count
    assert converged(state, 6, patience=4, delta=0.0) is None
    assert converged(state, 6, patience=4, delta=10.0) == 2  # +7 and +3 over 919.0 are within the check's noise
    assert converged(state, 7, patience=5, delta=10.0) is None  # 929.5 is +10.5 over 919.0: an improvement
    assert converged(state, 7, patience=5, delta=11.0) == 2
    assert converged(state, 6, patience=5, delta=10.0) is None  # only 4 iterations after it
    assert converged(state, 7, patience=5, delta=500.0) == 0  # nothing beat 467 by 500


def test_final_choice_includes_the_iteration_the_stopping_rule_counts_as_best(tmp_path, monkeypatch):
    from types import SimpleNamespace

    checks = {0: 300.0, 1: 500.0, 2: 505.0, 3: 503.0, 4: 504.0}  # 2-4 are within --patience-delta 10 of iteration 1
    selection = {1: 700.0, 2: 600.0, 3: 650.0, 4: 640.0}

    def evaluate(folder, seeds, **kwargs):
        iteration = int(Path(folder).name.split("_")[1])
        return [SimpleNamespace(total_reward=selection[iteration]) for _ in seeds]

    script_stages(monkeypatch, checks)
    monkeypatch.setattr("car_racing.episodes.agent.evaluate_agent", evaluate)
    args = dream_loop.Args(data_dir=str(tmp_path / "data"), checkpoint_dir=str(tmp_path / "loop"), iterations=6,
                           patience=2, patience_delta=10.0, select_top=1, select_episodes=2, workers=1, progress=False)
    final = dream_loop.main(args)
    assert final["stopped_early"]["best_checked_iteration"] == 1 and final["stopped_early"]["after_iteration"] == 3
    # the top check (iteration 2) and the rule's best (iteration 1) drove the selection tracks; 1 won
    assert set(final["selection"]["returns"]) == {"1", "2"} and final["best_iteration"] == 1
    without = dream_loop.main(dataclasses.replace(args, checkpoint_dir=str(tmp_path / "strict"), patience_delta=0.0))
    assert set(without["selection"]["returns"]) == {"2"}  # strictly, iteration 2 is the best: one candidate


def test_warm_runs_dream_short_dreams_from_cs_own_episodes(tmp_path, tiny_data_dir):
    """--warm-dreams agent:N: a warm start dreams N-step dreams branched from C's recorded episodes, scored by their
    mean, as many as keep the dreamt steps; a run from zero (iteration 0, no C episodes yet) keeps the loop's dreams."""
    paths = write_tiny_checkpoints(tmp_path / "tiny")
    args = loop_args(tmp_path, tiny_data_dir, paths, fidelity_panel=0, controller_start="both", warm_dreams="agent:2",
                     warm_generations=1, dream_fitness="quantile")
    dream_loop.main(args)
    loop = Path(args.checkpoint_dir)
    zero = load_checkpoint(loop / "iter_00" / "control_model_cmaes.pth", "controller")["training"]["dream"]
    assert (zero["rollout_steps"], zero["trials"], zero["start_drivers"]) == (4, 2, [])
    assert zero["fitness"]["aggregate"] == "quantile"
    warm = load_checkpoint(loop / "iter_01" / "warm" / "control_model_cmaes.pth", "controller")["training"]["dream"]
    assert (warm["rollout_steps"], warm["trials"], warm["start"], warm["start_drivers"]) == (2, 4, "recorded", ["agent"])
    assert warm["fitness"]["aggregate"] == "mean"
    assert [r["step"] for r in read_metrics(metrics_path(loop / "iter_01" / "warm", "controller"))] == [0, 1]
    again = load_checkpoint(loop / "iter_01" / "from_zero" / "control_model_cmaes.pth", "controller")["training"]
    assert again["dream"]["rollout_steps"] == 4 and again["warm_start"] == "zero"
    for bad in ("onpolicy:200", "agent:", "agent:0"):
        with pytest.raises(UsageError, match="--warm-dreams"):
            dream_loop.check_args(dataclasses.replace(args, warm_dreams=bad))


def test_loop_dreams_end_on_ms_value_in_every_iteration(tmp_path, tiny_data_dir):
    """--memory-value-discount γ: every iteration's M has a value head (added to stage 3's M, kept when M continues);
    --dream-value: every CMA-ES run's dreams end on it (C's record says so)."""
    paths = write_tiny_checkpoints(tmp_path / "tiny")
    args = loop_args(tmp_path, tiny_data_dir, paths, fidelity_panel=0, controller_start="zero", agent_episodes=1,
                     repair_episodes=0, memory_value_discount=0.9, dream_value=True)
    dream_loop.main(args)
    loop = Path(args.checkpoint_dir)
    for iteration in ("iter_00", "iter_01"):
        memory = load_checkpoint(loop / iteration / "memory_model.pth", "memory")
        assert memory["model_args"]["value_head"] and memory["value"]["discount"] == 0.9
        controller = load_checkpoint(loop / iteration / "control_model_cmaes.pth", "controller")
        assert controller["training"]["dream"]["value_bootstrap"] is True
    with pytest.raises(UsageError, match="--dream-value.*--memory-value-discount"):
        dream_loop.check_args(dataclasses.replace(args, memory_value_discount=0.0))


def test_appended_episodes_encode_only_the_new_frames(tmp_path, monkeypatch):
    from conftest import write_synthetic_recording

    from car_racing.recording import latent_cache
    from car_racing.recording.recorded_data import EpisodeStore, RecordedEpisode

    paths = write_tiny_checkpoints(tmp_path / "tiny")
    data_dir = tmp_path / "data"
    write_synthetic_recording(data_dir)
    first, _ = load_or_build_latents(data_dir, paths["vision"])
    encoded = []
    original = latent_cache.encode_frames
    monkeypatch.setattr(latent_cache, "encode_frames",
                        lambda vae, frames, *a, **k: (encoded.append(len(frames)), original(vae, frames, *a, **k))[1])
    store = EpisodeStore(data_dir, append=True, seq_len=10)
    rng = np.random.default_rng(0)
    store.add(RecordedEpisode(seed=999, driver="agent", frames=rng.integers(0, 255, (12, 64, 64, 3), dtype=np.uint8),
                              actions=np.zeros((12, 3), np.float32), rewards=np.zeros(12, np.float32),
                              lap_finished=False))
    store.commit()
    grown, _ = load_or_build_latents(data_dir, paths["vision"])
    assert encoded == [12] and len(grown) == len(first) + 12
    np.testing.assert_array_equal(grown[:len(first)], first)
    (data_dir / latent_cache.LATENTS_FILE).unlink()
    rebuilt, _ = load_or_build_latents(data_dir, paths["vision"])
    np.testing.assert_allclose(rebuilt, grown, rtol=1e-5, atol=1e-5)


def test_both_starts_keep_the_better_checked_c_and_resume_inside_the_stage(tmp_path, tiny_data_dir, monkeypatch):
    paths = write_tiny_checkpoints(tmp_path / "tiny")
    args = loop_args(tmp_path, tiny_data_dir, paths, controller_start="both", dream_fitness="quantile",
                     fidelity_panel=0, agent_episodes=1, repair_episodes=2)
    original = dream_loop.evolve_in_dream
    runs: list[str] = []
    interrupted: list[bool] = []

    def evolve(args, iteration, folder, start_from, start_memory=None):
        runs.append(f"{iteration}:{Path(folder).relative_to(args.checkpoint_dir)}")
        if iteration == 1 and Path(folder).name == "from_zero" and not interrupted:
            interrupted.append(True)
            raise Interrupted  # the warm run of iteration 1 finished, the zero run did not start
        return original(args, iteration, folder, start_from, start_memory)

    monkeypatch.setattr(dream_loop, "evolve_in_dream", evolve)
    with pytest.raises(Interrupted):
        dream_loop.main(args)
    assert runs == ["0:iter_00", "1:iter_01/warm", "1:iter_01/from_zero"]  # iteration 0 has no previous C: zero only
    warm_path = Path(args.checkpoint_dir) / "iter_01" / "warm" / "control_model_cmaes.pth"
    warm_before = load_checkpoint(warm_path, "controller")
    runs.clear()
    final = dream_loop.main(args)
    assert runs == ["1:iter_01/warm", "1:iter_01/from_zero"]  # the warm run is only reloaded (already finished)
    warm = load_checkpoint(warm_path, "controller")
    assert warm["generation"] == warm_before["generation"] == args.generations
    assert warm["history"] == warm_before["history"]
    stage = final["stages"]["1:controller"]
    assert final["stages"]["0:controller"]["start"] == "zero" and "starts" not in final["stages"]["0:controller"]
    assert set(stage["starts"]) == {"warm", "zero"}
    scores = {start: run["best_real_score"] for start, run in stage["starts"].items()}
    assert stage["start"] == ("zero" if scores["zero"] > scores["warm"] else "warm")
    assert stage["best_real_score"] == scores[stage["start"]]
    folder = Path(args.checkpoint_dir) / "iter_01"
    kept = load_checkpoint(folder / "control_model_cmaes.pth", "controller")
    winner = load_checkpoint(folder / dream_loop.START_DIRS[stage["start"]] / "control_model_cmaes.pth", "controller")
    for key, value in winner["model_state"].items():
        torch.testing.assert_close(kept["model_state"][key], value)
    zero = load_checkpoint(folder / "from_zero" / "control_model_cmaes.pth", "controller")
    assert zero["training"]["warm_start"] == "zero" and warm["training"]["warm_start"] == "checkpoint"
    assert warm["training"]["dream"]["fitness"]["aggregate"] == "quantile"
    assert (folder / "dream_choice" / "control_model_cmaes.pth").is_file()
    # the repair step of iteration 0 (the last iteration records nothing): two replayed dreams joined the data
    assert final["stages"]["0:repair"]["episodes"] == 2 and "1:repair" not in final["stages"]
    repairs = [e for e in load_recorded(args.data_dir, mmap=True).episodes if e["driver"] == "repair"]
    assert sorted(e["noise"]["repair_trial"] for e in repairs) == [0, 1]
    with pytest.raises(UsageError, match="--controller-start"):
        dream_loop.main(loop_args(tmp_path, tiny_data_dir, paths, controller_start="cold"))
