"""Controller training: batched dreams, the CMA-ES run and its resume, the behaviour-cloning warm start."""

from __future__ import annotations

import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import stage4_config

from car_racing.common.cli import UsageError
from car_racing.common.metrics import metrics_path, read_metrics
from car_racing.common.plain_data import resume_path
from car_racing.common.runtime import load_checkpoint, load_resume_state, save_checkpoint
from car_racing.episodes.agent import checkpoint_paths
from car_racing.episodes.rollout import EpisodeResult
from car_racing.models.ffn import Controller, flat_to_population, population_actions
from car_racing.models.mdn_rnn import MDNRNN
from car_racing.models.vae import VAE
from car_racing.recording.latent_cache import file_sha256
from car_racing.recording.recorded_data import load_memory_sequences, load_recorded
from car_racing.common import config
from car_racing.common.config import Config, ConfigError
from car_racing.train_controller_cmaes import main
from car_racing.training.dream import (
    collect_start_states,
    dream_rollout,
    dream_rollout_per_candidate,
    imagine,
    iter_recorded_states,
    sample_with_noise,
    windows_of_drivers,
)
from car_racing.training.imitation import LinearFit, bc_targets, linear_to_flat

LATENT, HIDDEN = 8, 16
TINY_VAE = dict(latent_size=LATENT, encoder_channels=(4, 4, 4, 8), dense_size=32, decoder_channels=(4, 4, 4))
TINY_MDN = dict(latent_size=LATENT, action_size=3, hidden_size=HIDDEN, num_mixtures=2)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_memory(seed: int = 0, done_bias: float = -1.0, done_gain: float = 4.0) -> MDNRNN:
    torch.manual_seed(seed)
    mdn = MDNRNN(**TINY_MDN).eval()
    with torch.no_grad():  # rewards of a useful size; a done head that can fire
        mdn.reward_head.weight.mul_(5.0)
        mdn.done_head.weight.mul_(done_gain)
        mdn.done_head.bias.fill_(done_bias)
    return mdn


def write_tiny_checkpoints(checkpoint_dir: Path) -> dict[str, Path]:
    """Untrained tiny V and M in the real checkpoint formats (M records the V it was trained with)."""
    torch.manual_seed(0)
    paths = checkpoint_paths(checkpoint_dir)
    save_checkpoint({"kind": "vision", "model_args": TINY_VAE, "model_state": VAE(**TINY_VAE).state_dict()},
                    paths["vision"])
    save_checkpoint({"kind": "memory", "model_args": TINY_MDN, "model_state": tiny_memory().state_dict(),
                     "vision": {"path": str(paths["vision"]), "sha256": file_sha256(paths["vision"])},
                     "reward": {"units": "real CarRacing reward per step", "scale": 1.0}}, paths["memory"])
    return paths


def test_batched_dream_matches_per_candidate_loop():
    mdn = tiny_memory(done_bias=-1.0, done_gain=20.0)
    population, trials, steps = 5, 4, 12
    num_params = 3 * (LATENT + HIDDEN) + 3
    g = torch.Generator().manual_seed(1)
    flat = torch.randn(population, num_params, generator=g)
    weights, biases = flat_to_population(flat, LATENT, HIDDEN)
    start_z = torch.randn(trials, LATENT, generator=g)
    start_state = (torch.randn(trials, HIDDEN, generator=g) * 0.3, torch.randn(trials, HIDDEN, generator=g) * 0.3)
    runs = {}
    for name, rollout in (("batched", dream_rollout), ("loop", dream_rollout_per_candidate)):
        runs[name] = rollout(mdn, weights, biases, start_z, start_state, steps, 1.0,
                             torch.Generator().manual_seed(7))
    one_by_one = dream_rollout_per_candidate(mdn, weights, biases, start_z, start_state, steps, 1.0,
                                             torch.Generator().manual_seed(7), batch_trials=False)
    assert runs["batched"].shape == (population, trials)
    torch.testing.assert_close(runs["batched"], runs["loop"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(runs["batched"], one_by_one, rtol=1e-4, atol=1e-4)
    # Real behaviour: candidates differ, the done head ends some trials early, and another seed gives
    # other noise (so other fitness) while the same seed repeats exactly.
    assert runs["batched"].std(dim=0).max() > 1e-3
    other = dream_rollout(mdn, weights, biases, start_z, start_state, steps, 1.0, torch.Generator().manual_seed(8))
    assert not torch.allclose(other, runs["batched"])
    again = dream_rollout(mdn, weights, biases, start_z, start_state, steps, 1.0, torch.Generator().manual_seed(7))
    torch.testing.assert_close(again, runs["batched"], rtol=0, atol=0)
    with torch.no_grad():
        mdn.done_head.bias.fill_(-100.0)
    never_done = dream_rollout(mdn, weights, biases, start_z, start_state, steps, 1.0, torch.Generator().manual_seed(7))
    ended_early = (never_done - runs["batched"]).abs() > 1e-6
    assert 0 < int(ended_early.sum()) < ended_early.numel()  # the done head ended some trials, not all


def dream_setup(population: int = 5, trials: int = 4):
    g = torch.Generator().manual_seed(1)
    flat = torch.randn(population, 3 * (LATENT + HIDDEN) + 3, generator=g)
    weights, biases = flat_to_population(flat, LATENT, HIDDEN)
    start_z = torch.randn(trials, LATENT, generator=g)
    start_state = (torch.randn(trials, HIDDEN, generator=g) * 0.3, torch.randn(trials, HIDDEN, generator=g) * 0.3)
    return weights, biases, start_z, start_state


@pytest.mark.parametrize("temperature", [0.0, 0.5, 1.3])
def test_fused_dream_matches_the_reference_step_at_any_temperature(temperature):
    """The fused batched path (rearranged weights, tanh via sigmoid, (K, L) component choice, τ ≤ 0 argmax)
    gives the reference step's fitness, batched and per candidate."""
    mdn = tiny_memory(done_bias=-1.0, done_gain=20.0)
    setup = dream_setup()
    fused = dream_rollout(mdn, *setup, 12, temperature, torch.Generator().manual_seed(3), reward_scale=0.5)
    plain = dream_rollout(mdn, *setup, 12, temperature, torch.Generator().manual_seed(3), reward_scale=0.5,
                          fused=False)
    loop = dream_rollout_per_candidate(mdn, *setup, 12, temperature, torch.Generator().manual_seed(3), reward_scale=0.5)
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fused, loop, rtol=1e-4, atol=1e-4)
    assert fused.std() > 1e-2


def test_smoothed_dream_matches_the_reference_and_smooths_cs_actions():
    """``smoothing`` s: in the dream C's action is a_t = (1 − s)·C(z_t, h_t) + s·a_{t−1} (a_{−1} = 0), as in the real
    episodes; the fused path gives the reference dream's fitness, and the reference trace shows the recursion."""
    mdn = tiny_memory(done_bias=-1.0, done_gain=20.0)
    weights, biases, start_z, start_state = dream_setup()
    smoothed = {fused: dream_rollout(mdn, weights, biases, start_z, start_state, 12, 1.0,
                                     torch.Generator().manual_seed(3), fused=fused, smoothing=0.6)
                for fused in (True, False)}
    torch.testing.assert_close(smoothed[True], smoothed[False], rtol=1e-4, atol=1e-4)
    plain = dream_rollout(mdn, weights, biases, start_z, start_state, 12, 1.0, torch.Generator().manual_seed(3))
    assert not torch.allclose(plain, smoothed[True])
    trace = imagine(mdn, (weights[:1], biases[:1]), start_z[:1], (start_state[0][:1], start_state[1][:1]), 4, 1.0,
                    torch.Generator().manual_seed(3), smoothing=0.6)
    actions, z = trace.actions[0, 0], trace.z[0, 0]
    h = start_state[0][:1]
    raw = population_actions(weights[:1], biases[:1], z[:1].view(1, 1, -1), h.view(1, 1, -1)).reshape(-1)
    torch.testing.assert_close(actions[0], 0.4 * raw)  # a_0 = (1 − s)·C(z_0, h_0)


def test_bfloat16_dream_agrees_with_float32():
    """bfloat16 products round each LSTM/MDN output to 8 significant bits (relative error ≤ 2⁻⁹ ≈ 0.2%),
    while c, the biases, rewards, C and the sampling stay float32. Over 12 steps that moves most dreams'
    fitness by about 1% of its size (measured here: 63 of 64 trials within 0.02 + 2%, the largest
    difference 0.03 on fitness ~1); a trial may go elsewhere when a rounding flips its mixture component
    or its done step, so 90% of the trials must agree to 0.02 + 2%, and the candidates' mean fitness must
    move by less than 5% of what another noise seed moves it (measured: 0.6%), the yardstick of the
    noise CMA-ES sees anyway."""
    mdn = tiny_memory(done_bias=-1.0, done_gain=20.0)
    setup = dream_setup(population=8, trials=8)
    f32 = dream_rollout(mdn, *setup, 12, 1.0, torch.Generator().manual_seed(7))
    bf16 = dream_rollout(mdn, *setup, 12, 1.0, torch.Generator().manual_seed(7), dtype=torch.bfloat16)
    other_seed = dream_rollout(mdn, *setup, 12, 1.0, torch.Generator().manual_seed(8))
    assert bf16.dtype == torch.float32 and (bf16 - f32).abs().max() > 0  # really computed differently
    close = (bf16 - f32).abs() <= 0.02 + 0.02 * f32.abs()
    assert close.float().mean() >= 0.9
    seed_spread = (other_seed.mean(1) - f32.mean(1)).abs().mean()
    assert (bf16.mean(1) - f32.mean(1)).abs().mean() < 0.05 * seed_spread
    assert abs(float(bf16.mean() - f32.mean())) < 0.05 * seed_spread
    assert dream_rollout(mdn, *setup, 12, 1.0, torch.Generator().manual_seed(7), dtype="bfloat16").equal(bf16)
    with pytest.raises(ValueError, match="float32 only"):
        dream_rollout(mdn, *setup, 12, 1.0, torch.Generator().manual_seed(7), dtype="bfloat16", fused=False)


def test_dream_fitness_is_masked_after_done():
    mdn = tiny_memory()
    with torch.no_grad():  # constant reward 1 per step; done on every step → only the first reward counts
        mdn.reward_head.weight.zero_()
        mdn.reward_head.bias.fill_(1.0)
        mdn.done_head.weight.zero_()
    weights, biases = flat_to_population(torch.zeros(2, 3 * (LATENT + HIDDEN) + 3), LATENT, HIDDEN)
    start = (torch.zeros(3, LATENT), (torch.zeros(3, HIDDEN), torch.zeros(3, HIDDEN)))
    with torch.no_grad():
        mdn.done_head.bias.fill_(5.0)
    ended = dream_rollout(mdn, weights, biases, *start, 10, 1.0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(ended, torch.ones(2, 3))
    with torch.no_grad():
        mdn.done_head.bias.fill_(-5.0)
    full = dream_rollout(mdn, weights, biases, *start, 10, 1.0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(full, torch.full((2, 3), 10.0))


def test_a_short_dream_ends_on_ms_value_of_its_last_state():
    torch.manual_seed(0)
    mdn = MDNRNN(**TINY_MDN, value_head=True).eval()
    with torch.no_grad():  # reward 1 per step; value rate 0.5 per step after the end; done never / always
        mdn.reward_head.weight.zero_()
        mdn.reward_head.bias.fill_(1.0)
        mdn.value_head.weight.zero_()
        mdn.value_head.bias.fill_(0.5)
        mdn.done_head.weight.zero_()
        mdn.done_head.bias.fill_(-5.0)
    weights, biases = flat_to_population(torch.randn(2, 3 * (LATENT + HIDDEN) + 3) * 0.1, LATENT, HIDDEN)
    start = (torch.zeros(3, LATENT), (torch.zeros(3, HIDDEN), torch.zeros(3, HIDDEN)))
    for fused in (True, False):
        plain = dream_rollout(mdn, weights, biases, *start, 10, 1.0, torch.Generator().manual_seed(0), fused=fused)
        valued = dream_rollout(mdn, weights, biases, *start, 10, 1.0, torch.Generator().manual_seed(0), fused=fused,
                               value_discount=0.9, reward_scale=2.0)
        torch.testing.assert_close(plain, torch.full((2, 3), 10.0))
        torch.testing.assert_close(valued, torch.full((2, 3), 2.0 * (10.0 + 0.5 / (1 - 0.9))))  # + value of h_10
    reference = dream_rollout_per_candidate(mdn, weights, biases, *start, 10, 1.0, torch.Generator().manual_seed(0),
                                            value_discount=0.9, reward_scale=2.0, dropout=0.2)
    torch.testing.assert_close(dream_rollout(mdn, weights, biases, *start, 10, 1.0, torch.Generator().manual_seed(0),
                                             value_discount=0.9, reward_scale=2.0, dropout=0.2), reference)
    with torch.no_grad():
        mdn.done_head.bias.fill_(5.0)  # a dream that ended is paid nothing after its end, value included
    ended = dream_rollout(mdn, weights, biases, *start, 10, 1.0, torch.Generator().manual_seed(0), value_discount=0.9)
    torch.testing.assert_close(ended, torch.ones(2, 3))


def test_noise_sampler_follows_the_mixture():
    """Pre-drawn-noise sampling has the mixture's mean and variance at temperature τ (as sample_next_z)."""
    n, tau = 200_000, 0.7
    logit = torch.tensor([[0.0, 1.0]]).expand(n, 1, 2)
    mu = torch.tensor([[-1.0, 2.0]]).expand(n, 1, 2)
    log_sigma = torch.tensor([[0.0, -1.0]]).expand(n, 1, 2)
    g = torch.Generator().manual_seed(0)
    z = sample_with_noise(logit, mu, log_sigma, tau, torch.rand(n, 1, generator=g), torch.randn(n, 1, generator=g))
    pi = torch.softmax(torch.tensor([0.0, 1.0]) / tau, 0)
    var = tau * torch.exp(torch.tensor([0.0, -1.0])) ** 2
    mean = (pi * torch.tensor([-1.0, 2.0])).sum()
    second = (pi * (var + torch.tensor([-1.0, 2.0]) ** 2)).sum()
    assert abs(z.mean() - mean) < 0.02 and abs(z.var() - (second - mean ** 2)) < 0.05
    output = SimpleNamespace(logit_pi=logit, mu=mu, log_sigma=log_sigma)
    reference = MDNRNN.sample_next_z(output, tau, torch.Generator().manual_seed(1))
    assert abs(reference.mean() - z.mean()) < 0.03 and abs(reference.var() - z.var()) < 0.06


def test_recorded_states_are_m_states_before_each_step(tiny_data_dir):
    mdn = tiny_memory()
    sequences = load_memory_sequences(tiny_data_dir)
    mu = np.random.default_rng(0).normal(size=(int(sequences.indices.max()) + 1, LATENT)).astype(np.float32)
    batch = next(iter_recorded_states(mdn, mu, sequences.indices, sequences.actions, batch_size=4))
    z = torch.as_tensor(mu[sequences.indices[:4]])
    with torch.no_grad():
        out, _ = mdn(z, torch.as_tensor(sequences.actions[:4]))
    torch.testing.assert_close(batch.h[:, 0], torch.zeros(4, HIDDEN))
    torch.testing.assert_close(batch.h[:, 1:], out.hidden[:, :-1], rtol=1e-5, atol=1e-5)
    pool = collect_start_states(mdn, mu, sequences.indices, sequences.actions, 20, np.random.default_rng(0))
    assert len(pool) == 20 and pool.h.shape == (20, HIDDEN)
    assert sum(bool(torch.isclose(pool.z[i:i + 1], torch.as_tensor(mu)).all(1).any()) for i in range(20)) == 20
    # Only the windows holding a chosen position are run, unless every batch must be visited: same pool.
    visited = []
    full = collect_start_states(mdn, mu, sequences.indices, sequences.actions, 20, np.random.default_rng(0),
                                batch_size=3, visit=lambda b: visited.extend(b.rows.tolist()))
    assert visited == list(range(len(sequences.indices)))
    for name in ("z", "h", "c"):
        torch.testing.assert_close(getattr(full, name), getattr(pool, name), rtol=1e-5, atol=1e-6)


def test_start_states_can_be_limited_to_one_drivers_episodes(tiny_data_dir, tmp_path):
    """--dream.start-drivers: every start state comes from a window of the named driver's episodes, and the
    windows are attributed to the episode their first step lies in."""
    mdn = tiny_memory()
    sequences = load_memory_sequences(tiny_data_dir)
    episodes = [dict(e) for e in load_recorded(tiny_data_dir).episodes]
    episodes[1]["driver"] = "agent"  # the middle episode stands for C's own
    eligible = windows_of_drivers(sequences.indices, episodes, ("agent",))
    begin, end = episodes[1]["start"], episodes[1]["start"] + episodes[1]["length"]
    inside = (sequences.indices[:, 0] >= begin) & (sequences.indices[:, 0] < end)
    assert inside.any() and not inside.all()
    np.testing.assert_array_equal(eligible, inside)
    # every window's z row is distinct, so a start state names its window
    mu = np.random.default_rng(0).normal(size=(int(sequences.indices.max()) + 1, LATENT)).astype(np.float32)
    pool = collect_start_states(mdn, mu, sequences.indices, sequences.actions, 1000, np.random.default_rng(0),
                                eligible=eligible)
    assert len(pool) == int(eligible.sum()) * sequences.indices.shape[1]  # all of them: fewer than asked
    rows = [int(np.flatnonzero((np.abs(mu - z.numpy()) < 1e-6).all(1))[0]) for z in pool.z]
    assert all(begin <= r < end for r in rows)
    assert not windows_of_drivers(sequences.indices, episodes, ("nobody",)).any()
    # stage 4: a driver the data does not hold is a one-line usage error; a malformed loop.warm_dreams is refused
    # by the config itself, naming the key
    write_tiny_checkpoints(tmp_path / "checkpoints")
    with pytest.raises(UsageError, match="--dream.start-drivers nobody"):
        main(run_args(tmp_path, tiny_data_dir, cmaes__generations=1, checks__every=0, dream__start="recorded",
                      dream__start_drivers=("nobody",)))
    with pytest.raises(ConfigError, match=r"^loop\.warm_dreams = 'agent:none': expected .*START:STEPS"):
        run_args(tmp_path, tiny_data_dir, loop__iterations=2, loop__warm_dreams="agent:none")


def test_bc_recovers_a_known_linear_policy():
    rng = np.random.default_rng(0)
    n = 4000
    x = torch.as_tensor(np.concatenate([rng.normal(size=(n, LATENT)), np.tanh(rng.normal(size=(n, HIDDEN)))], 1))
    true_w = torch.as_tensor(rng.normal(0, 0.3, size=(LATENT + HIDDEN, 3)))
    true_b = torch.tensor([0.1, 0.5, -1.0], dtype=torch.float64)
    controller = Controller(LATENT, HIDDEN)
    controller.set_flat_params(linear_to_flat(true_w, true_b))
    with torch.no_grad():
        actions = controller(x[:, :LATENT].float(), x[:, LATENT:].float()).double()
    fit = LinearFit(LATENT + HIDDEN, 3)
    for chunk in torch.split(torch.arange(n), 1000):  # streaming, as over the recorded windows
        fit.add(x[chunk], bc_targets(actions[chunk], eps=1e-6))
    weight, bias = fit.solve(ridge=1e-8)
    torch.testing.assert_close(weight, true_w, rtol=0, atol=2e-3)
    torch.testing.assert_close(bias, true_b, rtol=0, atol=2e-3)
    assert fit.residual_mse(weight, bias).max() < 1e-6
    # The flat vector drives Controller and population_actions like the true policy.
    flat = torch.as_tensor(linear_to_flat(weight, bias))[None].float()
    w, b = flat_to_population(flat, LATENT, HIDDEN)
    predicted = population_actions(w, b, x[None, :, :LATENT].float(), x[None, :, LATENT:].float())[0]
    torch.testing.assert_close(predicted, actions.float(), rtol=0, atol=2e-3)
    # Saturated actions get finite targets (clipped ε inside their range).
    targets = bc_targets(np.array([[1.0, 1.0, 0.0], [-1.0, 0.0, 1.0]]), eps=0.02)
    assert torch.isfinite(targets).all() and targets[0, 0] > 2 and targets[0, 2] < -3


def run_args(tmp_path, data_dir, **overrides) -> Config:
    """The seed's one-pass stage 4 at tiny sizes (:func:`tests.conftest.stage4_config`) in TMP_PATH/checkpoints;
    ``overrides`` are dotted keys written ``section__field``."""
    return stage4_config(data_dir, tmp_path / "checkpoints", **overrides)


def test_cmaes_run_writes_state_and_resume_continues_it(tmp_path, tiny_data_dir):
    paths = write_tiny_checkpoints(tmp_path / "checkpoints")
    first = main(run_args(tmp_path, tiny_data_dir, cmaes__init="bc"))
    assert first["generation"] == 2 and first["kind"] == "controller"
    assert first["model_args"] == {"latent_size": LATENT, "hidden_size": HIDDEN, "action_size": 3}
    assert len(first["history"]["fitness_best"]) == 2 and first["history"]["eval_generation"] == [2]
    assert first["best_real_score"] is not None and "generation 2" in first["model_source"]
    assert first["bc"]["samples"] == load_memory_sequences(tiny_data_dir).indices.size  # every step of every window
    assert first["models"]["memory"]["sha256"] == file_sha256(paths["memory"])
    assert (tmp_path / "checkpoints" / "control_model_cmaes.png").is_file()
    # the checkpoint is plain data; CMA-ES's and the RNGs' state sit in the run's resume file beside it
    assert "es_state" not in first and "rng_state" not in first
    resume_file = resume_path(paths["controller"])
    saved_es_state = load_resume_state(resume_file)["es_state"]
    es = pickle.loads(saved_es_state)
    assert es.countiter == 2
    np.testing.assert_array_equal(first["cma_mean"], es.mean)

    resumed = main(run_args(tmp_path, tiny_data_dir, cmaes__init="bc", cmaes__generations=4, run__resume=True))
    assert resumed["generation"] == 4 and pickle.loads(load_resume_state(resume_file)["es_state"]).countiter == 4
    assert resumed["history"]["fitness_best"][:2] == first["history"]["fitness_best"]
    assert resumed["history"]["eval_generation"] == [2, 4]
    records = read_metrics(metrics_path(tmp_path / "checkpoints", "controller"))  # one line per generation
    assert [r["step"] for r in records] == [0, 1, 2, 3, 4]  # 0: the warm start's real check
    assert records[0]["real_cma_mean"] == pytest.approx(first["checked"][0]["score"])
    assert [r["fitness_best"] for r in records[1:]] == resumed["history"]["fitness_best"]
    assert [r.get("real_best_candidate") for r in records[2::2]] == resumed["history"]["real_best_candidate"]
    assert "real_best_candidate" not in records[1]

    # A straight 4-generation run gives the same result: the resume continued the same ES state and RNGs.
    straight_dir = tmp_path / "straight"
    write_tiny_checkpoints(straight_dir / "checkpoints")
    straight = main(run_args(straight_dir, tiny_data_dir, cmaes__init="bc", cmaes__generations=4, checks__every=0))
    assert straight["history"]["fitness_best"] == resumed["history"]["fitness_best"]
    np.testing.assert_array_equal(straight["cma_mean"], resumed["cma_mean"])
    assert pickle.loads(saved_es_state).countiter == 2
    controller = load_checkpoint(paths["controller"], "controller")
    Controller(**controller["model_args"]).load_state_dict(controller["model_state"])


def test_resume_refuses_a_different_population(tmp_path, tiny_data_dir):
    write_tiny_checkpoints(tmp_path / "checkpoints")
    main(run_args(tmp_path, tiny_data_dir, cmaes__generations=1, checks__every=0))
    with pytest.raises(UsageError, match="--cmaes.population 8: the resumed run used 6"):
        main(run_args(tmp_path, tiny_data_dir, cmaes__generations=2, checks__every=0, cmaes__population=8,
                      run__resume=True))
    with pytest.raises(UsageError, match="memory"):
        main(run_args(tmp_path / "none", tiny_data_dir))


def test_real_mode_scores_candidates_in_the_real_env(tmp_path, tiny_data_dir):
    write_tiny_checkpoints(tmp_path / "checkpoints")
    result = main(run_args(tmp_path, tiny_data_dir, cmaes__mode="real", cmaes__population=3, cmaes__generations=1,
                           cmaes__real_steps=8, cmaes__real_trials=1, checks__every=0))
    history = result["history"]
    assert result["generation"] == 1 and len(history["fitness_best"]) == 1
    # 8 real steps: −0.1 per frame plus any tiles reached; every candidate drove the same track.
    assert -0.8 - 1e-4 <= history["fitness_mean"][0] <= history["fitness_best"][0] < 20
    assert np.isnan(history["fitness_cma_mean"][0])


@pytest.mark.parametrize("initial_wins", [True, False])
def test_initial_mean_is_real_checked_and_kept_unless_beaten(tmp_path, tiny_data_dir, monkeypatch, initial_wins):
    # In the dream CMA can drift to a policy M overrates; the warm start (here all zeros) is real-checked
    # at generation 0 and the checkpoint keeps it unless a later check scores at least as well.
    import car_racing.training.cmaes_run as cmaes

    checked = []

    def fake_real_check(params, config, episodes):
        checked.append(np.array(params))
        norm = float(np.linalg.norm(params))
        return [EpisodeResult(seed=0, actions=np.zeros((1, 3), np.float32),
                              rewards=np.array([-norm if initial_wins else norm], np.float32),
                              lap_finished=False, terminated=False)]

    monkeypatch.setattr(cmaes, "real_check", fake_real_check)
    write_tiny_checkpoints(tmp_path / "checkpoints")
    result = main(run_args(tmp_path, tiny_data_dir, cmaes__init="zero", cmaes__generations=2, checks__every=1))
    assert len(checked) == 1 + 2 * 2 and not checked[0].any()  # generation 0, then best and mean per check
    assert result["history"]["eval_generation"] == [1, 2]
    controller = Controller(**result["model_args"])
    controller.load_state_dict(result["model_state"])
    if initial_wins:
        assert result["model_source"].startswith("initial mean (zero) of generation 0")
        assert result["best_real_score"] == 0.0 and not controller.get_flat_params().any()
    else:
        assert "generation 2" in result["model_source"] and result["best_real_score"] > 0
        np.testing.assert_allclose(controller.get_flat_params(), result["best_params"], rtol=1e-6, atol=1e-7)


def test_checks_drive_only_cmas_mean_unless_asked_and_keep_the_same_c(tmp_path, tiny_data_dir):
    # The defaults check only CMA's mean (the seed's and the paper's presets also the generation's best candidate,
    # --checks.best-candidate). A check never touches CMA-ES or the RNGs: both runs evolve the same generations and
    # give the mean the same scores, so whenever a mean (not a best candidate) won with both checked, the mean-only
    # run keeps the same C with fewer real episodes.
    assert not config.preset("default").checks.best_candidate and not config.preset("demo").checks.best_candidate
    assert config.preset("seed").checks.best_candidate and config.preset("paper").checks.best_candidate
    runs = {}
    for both in (False, True):
        write_tiny_checkpoints(tmp_path / str(both) / "checkpoints")
        runs[both] = main(run_args(tmp_path / str(both), tiny_data_dir, cmaes__init="zero", cmaes__generations=2,
                                   checks__every=1, checks__best_candidate=both))
    mean_only, both = runs[False], runs[True]
    sources = {key: [c["source"].split(" of ")[0] for c in run["checked"]] for key, run in runs.items()}
    assert sources[False] == ["initial mean (zero)", "cma_mean", "cma_mean"]
    assert sources[True] == ["initial mean (zero)", "best_candidate", "cma_mean", "best_candidate", "cma_mean"]
    assert mean_only["history"]["real_best_candidate"] == [None, None]
    assert None not in both["history"]["real_best_candidate"]
    for key in ("fitness_best", "fitness_cma_mean", "real_cma_mean", "eval_generation"):
        assert mean_only["history"][key] == both["history"][key], key
    assert (mean_only["training"]["choice"]["checked_vectors"], both["training"]["choice"]["checked_vectors"]) == (3, 5)
    if not both["model_source"].startswith("best_candidate"):
        assert mean_only["model_source"] == both["model_source"]
        np.testing.assert_array_equal(mean_only["best_params"], both["best_params"])
    assert (tmp_path / "False" / "checkpoints" / "control_model_cmaes.png").is_file()


STAGE4 = ["run", "dream", "cmaes", "checks", "loop"]  # the sections stage 4's command line reads


def test_paper_preset_sets_the_protocol_and_flags_given_win():
    paper, given = config.parse(STAGE4, ["--preset", "paper"])
    assert (paper.cmaes.mode, paper.cmaes.population, paper.cmaes.real_trials, paper.cmaes.real_steps) == (
        "real", 64, 16, 1000)
    assert (paper.checks.every, paper.checks.episodes, paper.cmaes.generations, paper.preset) == (
        25, 1024, 1800, "paper")
    assert given == set()  # a preset's values are not flags given
    # flags given win over the preset, before or after it
    flagged, given = config.parse(STAGE4, ["--cmaes.population", "8", "--preset", "paper", "--checks.every", "10"])
    assert (flagged.cmaes.population, flagged.checks.every, flagged.cmaes.real_trials) == (8, 10, 16)
    assert given == {"cmaes.population", "checks.every"}
    assert config.parse(STAGE4, [])[0].cmaes.population == Config().cmaes.population == 32  # no preset: the defaults
    assert config.preset("paper", cmaes__population=8, checks__every=10) == flagged
    with pytest.raises(SystemExit) as raised:
        config.parse(STAGE4, ["--preset", "nature"])
    assert raised.value.code == 2


@pytest.mark.parametrize("how", ["quantile", "mean-minus-std"])
def test_pessimistic_dream_fitness_is_at_most_the_mean_on_the_same_dreams(tmp_path, tiny_data_dir, how):
    from car_racing.training import fitness as cmaes
    from car_racing.training.cmaes_run import load_setup

    write_tiny_checkpoints(tmp_path / "checkpoints")
    rng = np.random.default_rng(0)
    fitness = {}
    for name in ("mean", how):
        args = run_args(tmp_path, tiny_data_dir, dream__trials=8, dream__steps=8, dream__dropout=0.1,
                        dream__fitness=name, dream__fitness_q=0.25, dream__fitness_k=1.0)
        source = cmaes.DreamFitness(load_setup(args))
        candidates = [np.random.default_rng(k).normal(0, 0.5, source.setup.num_params) for k in range(6)]
        fitness[name] = source(candidates, np.zeros(source.setup.num_params), generation=3)
        trials = source.trials(candidates, np.zeros(source.setup.num_params), 3)  # the same generator: same dreams
        np.testing.assert_allclose(source.last_trial_means, trials.double().mean(dim=1).numpy(), rtol=1e-6)
    (mean, mean_of_mean), (pessimistic, pessimistic_of_mean) = fitness["mean"], fitness[how]
    assert mean.shape == pessimistic.shape == (6,) and np.ptp(mean) > 0  # candidates really differ
    assert (pessimistic <= mean + 1e-9).all() and pessimistic_of_mean <= mean_of_mean + 1e-9
    assert (pessimistic < mean - 1e-6).any()  # and it is pessimistic, not the mean again
    # the aggregates themselves: worst dream ≤ q-quantile ≤ median; mean − 0·std is the mean
    trials = torch.as_tensor(rng.normal(size=(5, 8)))
    worst, q25, median = (cmaes.aggregate_dream_fitness(trials, "quantile", q) for q in (0.0, 0.25, 0.5))
    assert (worst <= q25).all() and (q25 <= median).all()
    np.testing.assert_allclose(worst, trials.min(dim=1).values.numpy())
    np.testing.assert_allclose(cmaes.aggregate_dream_fitness(trials, "mean-minus-std", k=0.0),
                               cmaes.aggregate_dream_fitness(trials, "mean"))
    # the setting is in C's training record; bad values are one-line usage errors
    result = main(run_args(tmp_path, tiny_data_dir, cmaes__generations=1, checks__every=0, dream__fitness=how,
                           dream__fitness_q=0.25, dream__fitness_k=2.0))
    assert result["training"]["dream"]["fitness"] == {"aggregate": how, "q": 0.25, "k": 2.0}
    assert len(result["history"]["fitness_best_trial_mean"]) == 1
    assert result["history"]["fitness_best"][0] <= result["history"]["fitness_best_trial_mean"][0] + 1e-9
    # bad values are refused while the config is built, in one line naming the key
    for bad, match in ((dict(dream__fitness_q=1.5), r"^dream\.fitness_q = 1\.5: expected a quantile in \[0, 1\]$"),
                       (dict(dream__fitness_k=-1.0), r"^dream\.fitness_k = -1\.0: expected 0 or more$"),
                       (dict(dream__fitness="median"), r"^dream\.fitness = 'median': expected one of mean, quantile, "
                                                       r"mean-minus-std$")):
        with pytest.raises(ConfigError, match=match):
            run_args(tmp_path, tiny_data_dir, **bad)
    assert result["training"]["dream"]["value_bootstrap"] is False
    # the value bootstrap needs M's value head: stage 4 refuses an M file without one
    with pytest.raises(UsageError, match="--dream.value: .*no value head"):
        main(run_args(tmp_path, tiny_data_dir, dream__value=True))
