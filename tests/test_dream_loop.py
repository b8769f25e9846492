"""The dream issue: measuring the dream, dropout fixed per dream, the dream-trained record, the whole loop."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import TINY_STAGE4, stage4_config
from test_controller_training import HIDDEN, LATENT, tiny_memory, write_tiny_checkpoints

from car_racing import evaluate_world_model
from car_racing.common.cli import UsageError
from car_racing.common.runtime import load_checkpoint
from car_racing.models.ffn import flat_to_population
from car_racing.models.mdn_rnn import MDNRNN, head_dropout_mask
from car_racing.recording.latent_cache import load_or_build_latents
from car_racing.recording.recorded_data import load_recorded
from car_racing.train_controller_cmaes import main as train_controller
from car_racing.training import dream, fidelity
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

TINY = TINY_STAGE4  # (stage4_config: the seed's one pass)


def test_checkpoint_records_whether_c_was_trained_only_in_the_dream(tmp_path, tiny_data_dir):
    write_tiny_checkpoints(tmp_path)
    dreamt = train_controller(stage4_config(tiny_data_dir, tmp_path, cmaes__init="zero", dream__dropout=0.1, **TINY))
    record = load_checkpoint(tmp_path / "control_model_cmaes.pth", "controller")["training"]
    assert dreamt["training"] == record
    assert record["dream_trained"] and record["fitness_source"] == "dream" and record["warm_start"] == "zero"
    assert not record["expert_labels"] and not record["real_returns_as_fitness"]
    assert record["generations"] == 1 and record["dream"]["dropout"] == 0.1
    whole = train_controller(stage4_config(tiny_data_dir, tmp_path, **{**TINY, "cmaes__init": "zero",
                                                                    "dream__start": "episode-start", "checks__every": 0}))
    assert whole["training"]["dream"]["start"] == "episode-start" and whole["training"]["dream_trained"]
    # warm-started from that C, in a new dream: still dream-trained, and the lineage is in the file
    first = tmp_path / "first.pth"
    (tmp_path / "control_model_cmaes.pth").rename(first)
    chained = train_controller(stage4_config(tiny_data_dir, tmp_path, cmaes__init="checkpoint", cmaes__init_from=str(first), **TINY))
    assert chained["training"]["dream_trained"] and chained["training"]["total_generations"] == 2
    assert chained["training"]["warm_start_training"]["warm_start"] == "zero"
    # behaviour cloning on the recorded drivers' actions: expert labels, not dream-trained
    bc = train_controller(stage4_config(tiny_data_dir, tmp_path, cmaes__init="bc", **TINY))
    assert bc["training"]["expert_labels"] and not bc["training"]["dream_trained"]
    # from a dream-trained C, fine-tuned on real returns: no longer dream-trained
    real = train_controller(stage4_config(tiny_data_dir, tmp_path, **{**TINY, "cmaes__init": "checkpoint",
                                          "cmaes__init_from": str(first), "cmaes__mode": "real", "cmaes__real_trials": 1,
                                          "cmaes__real_steps": 4, "cmaes__population": 2, "checks__every": 0}))
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
    original = fidelity.memory_errors

    def interrupting(*a, **k):  # a crash while measuring the second controller's episodes
        interrupting.calls += 1
        if interrupting.calls == 3:
            raise Interrupted
        return original(*a, **k)

    interrupting.calls = 0
    monkeypatch.setattr(fidelity, "memory_errors", interrupting)
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
    assert fidelity.spearman(x, x ** 3) == pytest.approx(1.0)
    assert fidelity.spearman(x, -x) == pytest.approx(-1.0)
    assert fidelity.spearman(np.array([1.0, 1.0, 2.0]), np.array([3.0, 3.0, 5.0])) == pytest.approx(1.0)
    assert np.isnan(fidelity.spearman(x, np.ones(4)))


# --- the loop's data ------------------------------------------------------------------------------------

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


def test_the_record_counts_what_was_used_not_what_the_settings_say(tmp_path, tiny_data_dir, monkeypatch):
    """A real-env return slipped into the dream's fitness, or an expert label into the zero start, is in the record:
    it counts what the run drove and what the warm start says it used, not what the settings promise."""
    from car_racing.training import fitness as fitness_module
    from car_racing.training import warm_starts

    write_tiny_checkpoints(tmp_path)
    honest = train_controller(stage4_config(tiny_data_dir, tmp_path, **{**TINY, "cmaes__generations": 2}))
    record = honest["training"]
    assert record["dream_trained"] and record["real_fitness_episodes"] == 0
    # the checks are counted: generation 0's start, then each generation's best candidate and CMA mean, 1 track each
    assert record["choice"]["check_episodes"] == 5 == len(honest["checked"]) == record["choice"]["checked_vectors"]
    assert record["kept_generation"] == max(c["generation"] for c in honest["checked"]
                                            if c["score"] == honest["best_real_score"])
    assert record["total_generations"] == record["kept_generation"]

    original = fitness_module.DreamFitness.__call__

    def peeking(self, candidates, mean, generation):  # the dream's fitness, secretly plus real returns
        fitness, mean_fitness = original(self, candidates, mean, generation)
        real = self.setup.real_episodes()(candidates, [9_000_000], max_steps=5)
        return fitness + real, mean_fitness

    monkeypatch.setattr(fitness_module.DreamFitness, "__call__", peeking)
    write_tiny_checkpoints(tmp_path / "cheat")
    cheated = train_controller(stage4_config(tiny_data_dir, tmp_path / "cheat", **{**TINY, "cmaes__generations": 2}))
    assert cheated["training"]["fitness_source"] == "dream"  # what the settings say …
    assert cheated["training"]["real_returns_as_fitness"] and not cheated["training"]["dream_trained"]  # … and did
    assert cheated["training"]["real_fitness_episodes"] == 2 * TINY["cmaes__population"]
    monkeypatch.undo()

    monkeypatch.setitem(warm_starts.WARM_STARTS, "zero", warm_starts.bc_start)  # an expert label behind "zero"
    write_tiny_checkpoints(tmp_path / "labelled")
    labelled = train_controller(stage4_config(tiny_data_dir, tmp_path / "labelled", **TINY))
    assert labelled["training"]["warm_start"] == "zero" and labelled["training"]["expert_labels"]
    assert not labelled["training"]["dream_trained"] and not labelled["training"]["reward_only"]
