"""Stage 4's repair loop (car_racing/training/loop.py): its stages, resume, stopping rule, final choice, both starts."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from test_controller_training import HIDDEN, LATENT, write_tiny_checkpoints

from bench import loop_iterations, loop_profile, loop_table
from car_racing.common import config as C
from car_racing.common.cli import UsageError
from car_racing.common.metrics import metrics_path, read_metrics
from car_racing.common.runtime import checkpoint_paths, load_checkpoint, save_checkpoint
from car_racing.recording.recorded_data import load_recorded
from car_racing.train_controller_cmaes import main as stage4
from car_racing.training import loop as repair_loop
from car_racing.training.loop_state import SELECT_SEED_BASE, STATE_FILE, LoopState, converged

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Interrupted(Exception):
    """Stands in for Ctrl-C (pytest itself stops on a real KeyboardInterrupt)."""


def loop_config(tmp_path: Path, data_dir: Path, **overrides) -> C.Config:
    """A tiny repair loop (2 iterations) on tiny V and M in ``tmp_path/checkpoints`` (stages 2 and 3's place)."""
    options = dict(run__data_dir=str(data_dir), run__checkpoint_dir=str(tmp_path / "checkpoints"), run__device="cpu",
                   run__workers=1, run__progress=False, loop__iterations=2, loop__memory_epochs=1,
                   cmaes__generations=2, cmaes__population=4, dream__steps=4, dream__trials=2, dream__start_states=32,
                   dream__batch_size=8, dream__value=False, dream__dropout=0.0, checks__every=2, checks__episodes=1,
                   checks__max_steps=10, loop__agent_episodes=2, loop__fidelity_panel=3, loop__fidelity_episodes=1,
                   loop__controller_start="warm", loop__repair_episodes=0, loop__select_top=0)
    options.update(overrides)
    return C.preset("default", **options)


def loop_dir(config: C.Config) -> Path:
    return Path(config.run.checkpoint_dir) / repair_loop.LOOP_DIR


def test_two_loop_iterations_run_and_resume_after_an_interruption(tmp_path, tiny_data_dir, monkeypatch):
    write_tiny_checkpoints(tmp_path / "checkpoints")
    config = loop_config(tmp_path, tiny_data_dir, loop__select_top=2, loop__select_episodes=2,
                         loop__panel_as_data=True)
    calls: list[str] = []
    interrupted: list[bool] = []
    original = {stage.name: stage.run for stage in repair_loop.STAGES}

    def counting(name):
        def run(loop, iteration):
            calls.append(f"{iteration}:{name}")
            if f"{iteration}:{name}" == "1:controller" and not interrupted:
                interrupted.append(True)
                raise Interrupted  # a crash (or Ctrl-C) between M and C of the second iteration
            return original[name](loop, iteration)
        return run

    monkeypatch.setattr(repair_loop, "STAGES", [dataclasses.replace(s, run=counting(s.name)) for s in repair_loop.STAGES])
    with pytest.raises(Interrupted):
        stage4(config)
    folder = loop_dir(config)
    saved = json.loads((folder / STATE_FILE).read_text())
    assert list(saved["stages"]) == ["0:data", "0:vision", "0:memory", "0:controller", "0:fidelity", "0:record",
                                     "1:memory"]
    data_dir = Path(config.run.data_dir) / repair_loop.LOOP_DIR
    data = load_recorded(data_dir, mmap=True)
    assert [e["driver"] for e in data.episodes].count("agent") == 2  # C's own episodes joined the data
    assert [e["driver"] for e in data.episodes].count("panel") == 3  # and the fidelity panel's (3 Cs × 1 track)
    assert len(load_recorded(tiny_data_dir, mmap=True).episodes) == 3  # stage 1's recording is left as it was
    with pytest.raises(UsageError, match="--resume continues it"):
        stage4(config)  # a loop is there: without --resume nothing is overwritten

    calls.clear()
    resumed = C.replace(config, run__resume=True)
    final_c = stage4(resumed)  # the rerun resumes: only the interrupted and later stages run
    final = json.loads((folder / STATE_FILE).read_text())
    assert calls == ["1:controller", "1:fidelity"]
    assert set(final["stages"]) >= {"1:controller", "1:fidelity"} and "1:record" not in final["stages"]
    assert final["stages"]["0:fidelity"]["recorded_now"] == 3
    assert final["stages"]["1:fidelity"]["panel_episodes"] == 0  # the last iteration has no next M to record for
    for iteration in (0, 1):
        it = folder / f"iter_{iteration:02d}"
        controller = load_checkpoint(it / "control_model_cmaes.pth", "controller")
        assert controller["training"]["dream_trained"] and controller["training"]["fitness_source"] == "dream"
        assert (it / "fidelity.png").is_file()
        choice = load_checkpoint(it / "dream_choice" / "control_model_cmaes.pth", "controller")
        assert choice["training"]["dream_trained"] and "the dream's choice" in choice["model_source"]
    memory = load_checkpoint(folder / "iter_01" / "memory_model.pth", "memory")
    assert memory["warm_start"]["from"].endswith("iter_00/memory_model.pth")
    # iteration 1's warm start: iteration 0's C, carried from iteration 0's M onto the retrained one
    warm_start = load_checkpoint(folder / "iter_01" / "control_model_cmaes.pth", "controller")["bc"]
    assert warm_start["method"] == "checkpoint" and warm_start["carried"]["from_memory"]["path"].endswith(
        "iter_00/memory_model.pth")
    assert memory["data"]["num_frames"] == len(data)
    # the final choice: both iterations' Cs drove the 2 selection tracks; the better mean was kept, and its M and C
    # are now stage 4's (CHECKPOINT_DIR); stage 3's M is kept in the loop's folder
    selection = final["selection"]
    assert selection["seeds"] == [SELECT_SEED_BASE, SELECT_SEED_BASE + 1]
    means = {int(i): np.mean(returns) for i, returns in selection["returns"].items()}
    assert set(means) == {0, 1} and final["best_iteration"] == max(means, key=means.get)
    assert final["best_by"] == "mean over 2 selection tracks"
    best = folder / f"iter_{final['best_iteration']:02d}"
    paths = checkpoint_paths(config.run.checkpoint_dir)
    kept = load_checkpoint(paths["controller"], "controller")
    for key, value in load_checkpoint(best / "control_model_cmaes.pth", "controller")["model_state"].items():
        np.testing.assert_array_equal(kept["model_state"][key].numpy(), value.numpy())
    assert paths["memory"].read_bytes() == (best / "memory_model.pth").read_bytes()
    assert final_c["generation"] == 2 and (folder / repair_loop.STAGE3_MEMORY_FILE).is_file()
    # C's record says what the whole loop used to choose it: every run's checks and the final choice's candidates
    record = load_checkpoint(paths["controller"], "controller")["training"]["loop"]
    assert record["best_iteration"] == final["best_iteration"] and record["iterations"] == 2
    assert set(record["final_choice"]["candidates"]) == {"0", "1"} and record["final_choice"]["episodes"] == 4
    for i in (0, 1):
        run = load_checkpoint(folder / f"iter_{i:02d}" / "control_model_cmaes.pth", "controller")
        assert [r["check_episodes"] for r in record["runs"] if r["iteration"] == i] == [len(run["checked"])]
        assert record["final_choice"]["candidates"][str(i)]["selection_returns"] == selection["returns"][str(i)]
    assert record["choice_real_episodes"] == sum(r["check_episodes"] for r in record["runs"]) + 4
    steps = record["real_env_steps"]  # sample efficiency: the real env steps by use
    assert steps["recording"] == len(load_recorded(tiny_data_dir, mmap=True)) and steps["loop_data"] > 0
    assert steps["selection"] == sum(map(sum, selection["steps"].values())) and 0 < steps["checks"]
    assert steps["total"] == steps["recording"] + steps["loop_data"] + steps["checks"] + steps["selection"]
    # the resolved config is beside the checkpoints, and --config of it gives the same config
    resolved = C.resolved_path(config.run.checkpoint_dir, "controller")
    again, _ = C.parse(("run", "dream", "cmaes", "checks", "loop"), ["--config", str(resolved)])
    assert again == resumed

    # bench/loop_iterations.py drives each iteration's C (with its own V and M) beside the check that chose it
    scored = loop_iterations.main(loop_iterations.Args(runs=(str(folder),), tracks=1, max_steps=10, workers=1))
    assert [(r["iteration"], r["check"]) for r in scored[str(folder)]["rows"]] == [
        (i, pytest.approx(final["stages"][f"{i}:controller"]["best_real_score"])) for i in (0, 1)]
    # its choice rules: the loop's own final choice (top 2 of 2) is the iteration the loop kept
    rules = scored[str(folder)]["rules"]
    assert rules["top-2"] == final["best_iteration"]
    assert rules["check"] == max((final["stages"][f"{i}:controller"]["best_real_score"], i) for i in (0, 1))[1]
    assert (folder / "loop_iterations.json").is_file()
    # bench/loop_profile.py splits each iteration's logged seconds into their parts, losing none
    logged = read_metrics(metrics_path(folder, "dream_loop"))
    for row in loop_profile.main(loop_profile.Args(runs=(str(folder),)))[str(folder)]:
        parts = ("memory", "controller", "fidelity", "record", "repair")
        assert row["total"] == pytest.approx(sum(r["seconds"] for r in logged
                                                 if r["step"] == row["iteration"] and r["stage"] in parts))
        assert row["checks_n"] >= 2 and row["checks"] >= 0 and row["dream"] > 0

    def no_driving(*args, **kwargs):
        raise AssertionError("a rerun drives no selection track again")

    monkeypatch.setattr("car_racing.episodes.agent.evaluate_agent", no_driving)
    assert repair_loop.iterate(repair_loop.start(resumed))["best_iteration"] == final["best_iteration"]
    assert (folder / "dream_loop.png").stat().st_size > 0
    # one metrics line per finished stage, step = iteration, in the loop state's order (none lost or doubled)
    records = read_metrics(metrics_path(folder, "dream_loop"))
    assert [f"{r['step']}:{r['stage']}" for r in records] == list(final["stages"])
    assert records[3]["controller/best_real_score"] == pytest.approx(final["stages"]["0:controller"]["best_real_score"])
    assert [r["step"] for r in read_metrics(metrics_path(folder / "iter_01", "controller"))] == [0, 1, 2]
    with pytest.raises(UsageError, match="--seed 5"):  # a different loop cannot continue this one
        stage4(C.replace(resumed, run__seed=5))
    # bench/loop_table.py reads the same state back as the docs' per-iteration table
    table = loop_table.main(loop_table.Args(runs=(str(folder), str(folder))))
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith(("| 0 |", "| 1 |"))]
    assert len(rows) == 3 * 2 and rows[0][0] == "| 0" and rows[1][0] == "| 1"
    assert rows[0][4] == f"{final['stages']['0:controller']['best_real_score']:.1f} (zero)"
    assert rows[0][7].endswith("; 3") and rows[1][5] == "—"  # 3 panel episodes recorded; no record in the last
    assert f"| {final['stages']['1:controller']['best_real_score']:.1f} |" in table.split("kept check:")[-1]
    with pytest.raises(UsageError, match="--runs .*no dream_loop/dream_loop_state.json"):
        loop_table.main(loop_table.Args(runs=(str(tmp_path / "nowhere"),)))
    # the three tools find the loop from its stage-4 checkpoint folder as from the loop folder
    stage4_dir = folder.parent
    by_checkpoint_dir, by_loop_dir = (loop_table.main(loop_table.Args(runs=(str(run),))) for run in (stage4_dir, folder))
    assert by_checkpoint_dir.split("\n", 1)[1] == by_loop_dir.split("\n", 1)[1]  # (the first line names the run)
    assert repair_loop.find_loop_dir(stage4_dir) == folder == repair_loop.find_loop_dir(folder)
    with pytest.raises(UsageError, match="--runs .*no dream_loop"):
        loop_profile.main(loop_profile.Args(runs=(str(tmp_path / "nowhere"),)))


def scripted_loop(tmp_path: Path, monkeypatch, checks: dict[int, float], calls: list[str] | None = None,
                  **overrides) -> repair_loop.Loop:
    """A loop whose stages are stand-ins: the controller stage writes stand-in V, M, C files and reports
    ``checks[iteration]`` as its kept C's check; the others do nothing. Each call is appended to ``calls``."""
    from car_racing.common.runtime import CHECKPOINT_FILES

    def scripted(name):
        def run(loop, iteration):
            if calls is not None:
                calls.append(f"{iteration}:{name}")
            if name != "controller":
                return {}
            folder = loop.dir / f"iter_{iteration:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            for file in CHECKPOINT_FILES.values():
                (folder / file).write_bytes(b"stand-in")
            return {"best_real_score": checks[iteration], "real_checks": [], "dream_fitness_best": 0.0}
        return run

    monkeypatch.setattr(repair_loop, "STAGES", [dataclasses.replace(s, run=scripted(s.name))
                                                for s in repair_loop.STAGES])
    options = dict(run__checkpoint_dir=str(tmp_path / "checkpoints"), run__data_dir=str(tmp_path / "data"),
                   run__workers=1, run__progress=False, loop__select_top=0)
    config = C.preset("default", **{**options, **overrides})
    return repair_loop.Loop(config, 0.0, 0.0, "sample", None)


def test_patience_stops_the_loop_when_checks_stop_improving_and_a_rerun_without_it_continues(tmp_path, monkeypatch):
    checks = {0: 300.0, 1: 500.0, 2: 480.0, 3: 490.0, 4: 900.0}
    calls: list[str] = []
    loop = scripted_loop(tmp_path, monkeypatch, checks, calls, loop__iterations=5, loop__patience=2,
                         loop__fidelity_panel=3, loop__repair_episodes=0)
    final = repair_loop.iterate(loop)
    # iteration 1 checked best; iterations 2 and 3 did not beat it: stop after 3, recording nothing for a next M
    assert calls[-3:] == ["3:memory", "3:controller", "3:fidelity"] and not [c for c in calls if c.startswith("4:")]
    assert final["stopped_early"] == {"after_iteration": 3, "best_checked_iteration": 1, "patience": 2,
                                      "patience_delta": 0.0}
    assert final["best_iteration"] == 1
    calls.clear()
    assert repair_loop.iterate(loop)["best_iteration"] == 1 and calls == []  # a rerun stops at the same place
    without = dataclasses.replace(loop, config=C.replace(loop.config, loop__patience=0))
    final = repair_loop.iterate(without)  # without patience it runs every iteration
    assert calls == ["3:record", "4:memory", "4:controller", "4:fidelity"]
    assert final["stopped_early"] is None and final["best_iteration"] == 4
    with pytest.raises(C.ConfigError, match="loop.patience = -1"):
        C.preset("default", loop__patience=-1)


def test_patience_delta_counts_only_gains_above_it_as_improvements(tmp_path):
    state = LoopState(tmp_path / "state.json", C.as_dict(C.Config()))
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

    checks = {0: 300.0, 1: 500.0, 2: 505.0, 3: 503.0, 4: 504.0}  # 2-4 are within --loop.patience-delta 10 of 1
    selection = {1: 700.0, 2: 600.0, 3: 650.0, 4: 640.0}

    def evaluate(folder, seeds, **kwargs):
        iteration = int(Path(folder).name.split("_")[1])
        return [SimpleNamespace(total_reward=selection[iteration], steps=1000) for _ in seeds]

    monkeypatch.setattr("car_racing.episodes.agent.evaluate_agent", evaluate)
    loop = scripted_loop(tmp_path, monkeypatch, checks, loop__iterations=6, loop__patience=2, loop__patience_delta=10.0,
                         loop__select_top=1, loop__select_episodes=2)
    final = repair_loop.iterate(loop)
    assert final["stopped_early"]["best_checked_iteration"] == 1 and final["stopped_early"]["after_iteration"] == 3
    # the top check (iteration 2) and the rule's best (iteration 1) drove the selection tracks; 1 won
    assert set(final["selection"]["returns"]) == {"1", "2"} and final["best_iteration"] == 1
    strict = scripted_loop(tmp_path / "strict", monkeypatch, checks, loop__iterations=6, loop__patience=2,
                           loop__select_top=1, loop__select_episodes=2)
    assert set(repair_loop.iterate(strict)["selection"]["returns"]) == {"2"}  # strictly, 2 is the best: one candidate


def test_warm_runs_dream_short_dreams_from_cs_own_episodes(tmp_path, tiny_data_dir):
    """--loop.warm-dreams agent:N: a warm start dreams N-step dreams branched from C's recorded episodes, scored by
    their mean, as many as keep the dreamt steps; a run from zero (iteration 0, no C episodes yet) keeps the loop's."""
    write_tiny_checkpoints(tmp_path / "checkpoints")
    config = loop_config(tmp_path, tiny_data_dir, loop__fidelity_panel=0, loop__controller_start="both",
                         loop__warm_dreams="agent:2", loop__warm_generations=1, dream__fitness="quantile")
    stage4(config)
    folder = loop_dir(config)
    zero = load_checkpoint(folder / "iter_00" / "control_model_cmaes.pth", "controller")["training"]["dream"]
    assert (zero["rollout_steps"], zero["trials"], zero["start_drivers"]) == (4, 2, [])
    assert zero["fitness"]["aggregate"] == "quantile"
    warm = load_checkpoint(folder / "iter_01" / "warm" / "control_model_cmaes.pth", "controller")["training"]["dream"]
    assert (warm["rollout_steps"], warm["trials"], warm["start"], warm["start_drivers"]) == (2, 4, "recorded", ["agent"])
    assert warm["fitness"]["aggregate"] == "mean"
    assert [r["step"] for r in read_metrics(metrics_path(folder / "iter_01" / "warm", "controller"))] == [0, 1]
    again = load_checkpoint(folder / "iter_01" / "from_zero" / "control_model_cmaes.pth", "controller")["training"]
    assert again["dream"]["rollout_steps"] == 4 and again["warm_start"] == "zero"
    for bad in ("onpolicy:200", "agent:", "agent:0"):
        with pytest.raises(C.ConfigError, match="loop.warm_dreams"):
            C.validate(C.replace(config, loop__warm_dreams=bad))


def test_loop_dreams_end_on_ms_value_in_every_iteration(tmp_path, tiny_data_dir):
    """Stage 3's M with a value head (γ 0.9) trained on V's mean latents: every iteration's M keeps both;
    --dream.value: every CMA-ES run's dreams end on it (C's record says so). Without a value head the loop refuses
    in one line."""
    from car_racing.models.mdn_rnn import MDNRNN

    paths = write_tiny_checkpoints(tmp_path / "checkpoints")
    memory = load_checkpoint(paths["memory"], "memory")
    with_value = MDNRNN(**{**memory["model_args"], "value_head": True})
    state = with_value.state_dict()
    state.update(memory["model_state"])
    save_checkpoint({**memory, "model_args": {**memory["model_args"], "value_head": True}, "model_state": state,
                     "value": {"discount": 0.9}, "dropout": 0.0, "latents": "mean"}, tmp_path / "with_value.pth")
    plain = tmp_path / "plain.pth"
    paths["memory"].rename(plain)
    (tmp_path / "with_value.pth").rename(paths["memory"])
    config = loop_config(tmp_path, tiny_data_dir, loop__fidelity_panel=0, loop__controller_start="zero",
                         loop__agent_episodes=1, dream__value=True)
    stage4(config)
    for iteration in ("iter_00", "iter_01"):
        m = load_checkpoint(loop_dir(config) / iteration / "memory_model.pth", "memory")
        assert m["model_args"]["value_head"] and m["value"]["discount"] == 0.9
        assert m["latents"] == "mean"  # iteration 0's is stage 3's M; later ones are trained on μ too
        controller = load_checkpoint(loop_dir(config) / iteration / "control_model_cmaes.pth", "controller")
        assert controller["training"]["dream"]["value_bootstrap"] is True
    other = C.replace(config, run__checkpoint_dir=str(tmp_path / "other"))
    write_tiny_checkpoints(tmp_path / "other")
    with pytest.raises(UsageError, match="--dream.value: .* has no value head"):
        stage4(other)


def test_both_starts_keep_the_better_checked_c_and_resume_inside_the_stage(tmp_path, tiny_data_dir, monkeypatch):
    write_tiny_checkpoints(tmp_path / "checkpoints")
    config = loop_config(tmp_path, tiny_data_dir, loop__controller_start="both", dream__fitness="quantile",
                         loop__fidelity_panel=0, loop__agent_episodes=1, loop__repair_episodes=2)
    original = repair_loop.evolve_in_dream
    runs: list[str] = []
    interrupted: list[bool] = []

    def evolve(loop, iteration, folder, start_from, start_memory=None):
        runs.append(f"{iteration}:{Path(folder).relative_to(loop.dir)}")
        if iteration == 1 and Path(folder).name == "from_zero" and not interrupted:
            interrupted.append(True)
            raise Interrupted  # the warm run of iteration 1 finished, the zero run did not start
        return original(loop, iteration, folder, start_from, start_memory)

    monkeypatch.setattr(repair_loop, "evolve_in_dream", evolve)
    with pytest.raises(Interrupted):
        stage4(config)
    assert runs == ["0:iter_00", "1:iter_01/warm", "1:iter_01/from_zero"]  # iteration 0 has no previous C: zero only
    warm_path = loop_dir(config) / "iter_01" / "warm" / "control_model_cmaes.pth"
    warm_before = load_checkpoint(warm_path, "controller")
    runs.clear()
    stage4(C.replace(config, run__resume=True))
    assert runs == ["1:iter_01/warm", "1:iter_01/from_zero"]  # the warm run is only reloaded (already finished)
    warm = load_checkpoint(warm_path, "controller")
    assert warm["generation"] == warm_before["generation"] == config.cmaes.generations
    assert warm["history"] == warm_before["history"]
    final = json.loads((loop_dir(config) / STATE_FILE).read_text())
    stage = final["stages"]["1:controller"]
    assert final["stages"]["0:controller"]["start"] == "zero" and "starts" not in final["stages"]["0:controller"]
    assert set(stage["starts"]) == {"warm", "zero"}
    scores = {start: run["best_real_score"] for start, run in stage["starts"].items()}
    assert stage["start"] == ("zero" if scores["zero"] > scores["warm"] else "warm")
    assert stage["best_real_score"] == scores[stage["start"]]
    folder = loop_dir(config) / "iter_01"
    kept = load_checkpoint(folder / "control_model_cmaes.pth", "controller")
    winner = load_checkpoint(folder / repair_loop.START_DIRS[stage["start"]] / "control_model_cmaes.pth", "controller")
    for key, value in winner["model_state"].items():
        np.testing.assert_array_equal(kept["model_state"][key].numpy(), value.numpy())
    zero = load_checkpoint(folder / "from_zero" / "control_model_cmaes.pth", "controller")
    assert zero["training"]["warm_start"] == "zero" and warm["training"]["warm_start"] == "checkpoint"
    assert warm["training"]["dream"]["fitness"]["aggregate"] == "quantile"
    assert (folder / "dream_choice" / "control_model_cmaes.pth").is_file()
    # the repair step of iteration 0 (the last iteration records nothing): two replayed dreams joined the data
    assert final["stages"]["0:repair"]["episodes"] == 2 and "1:repair" not in final["stages"]
    data_dir = Path(config.run.data_dir) / repair_loop.LOOP_DIR
    repairs = [e for e in load_recorded(data_dir, mmap=True).episodes if e["driver"] == "repair"]
    assert sorted(e["noise"]["repair_trial"] for e in repairs) == [0, 1]
    with pytest.raises(C.ConfigError, match="loop.controller_start = 'cold'"):
        C.replace(config, loop__controller_start="cold")
