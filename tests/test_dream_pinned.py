"""Results do not move: the dream fitness of the default settings, and the repair step's dream, pinned to numbers.

A fixed M (tiny, and one at the real sizes: L 32, H 512, K 5, value head), a fixed start pool, a fixed population
of Cs and a fixed generation seed, scored by the CMA-ES fitness source with the training defaults (200 steps,
40 dreams, τ 1.0, dream dropout 0.1, the mean, M's value at γ 0.98 ending the dreams still alive, M's reward scale).
The numbers were produced by commit 26bae56 (before the one dream function, issue 33 item 3), with one torch thread
on the project's CPU machine; any later change to the dream must reproduce them.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from car_racing.common import config
from car_racing.models.ffn import num_controller_params
from car_racing.models.mdn_rnn import MDNRNN
from car_racing.training import repair
from car_racing.training.dream import StartStates
from car_racing.training.fitness import DreamFitness, generation_generator

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = (8, 16, 2)  # latent, hidden, mixtures
REAL = (32, 512, 5)
# the training defaults (train_controller_cmaes.py at 26bae56): the dream every CMA-ES generation scores
DEFAULTS = dict(run__seed=11, dream__trials=40, dream__steps=200, dream__temperature=1.0, dream__dtype="float32",
                dream__dropout=0.1, dream__value=True, dream__fitness="mean", dream__fitness_q=0.25,
                dream__fitness_k=1.0, cmaes__mode="dream")
VALUE_DISCOUNT, MEMORY_REWARD_SCALE, GENERATION = 0.98, 2.0, 3


def pinned_memory(latent: int, hidden: int, mixtures: int, done_gain: float, done_bias: float) -> MDNRNN:
    """An untrained M with rewards of a useful size, a value head, and a done head that ends some dreams."""
    torch.manual_seed(0)
    memory = MDNRNN(latent_size=latent, action_size=3, hidden_size=hidden, num_mixtures=mixtures, value_head=True)
    with torch.no_grad():
        memory.reward_head.weight.mul_(5.0)
        memory.reward_head.bias.fill_(0.3)
        memory.done_head.weight.mul_(done_gain)
        memory.done_head.bias.fill_(done_bias)
        memory.value_head.bias.fill_(0.2)
    return memory.eval()


def pinned_setup(sizes: tuple[int, int, int], population: int, done_gain: float, done_bias: float):
    """(setup for :class:`DreamFitness`, the candidates, CMA's mean)."""
    latent, hidden, mixtures = sizes
    memory = pinned_memory(latent, hidden, mixtures, done_gain, done_bias)
    g = torch.Generator().manual_seed(1)
    pool = StartStates(torch.randn(64, latent, generator=g), torch.tanh(torch.randn(64, hidden, generator=g)) * 0.5,
                       torch.randn(64, hidden, generator=g) * 0.5)
    params = num_controller_params(latent, hidden)
    candidates = [np.random.default_rng([0, k]).normal(0, 0.1, params) for k in range(population)]
    mean = np.random.default_rng([0, 99]).normal(0, 0.05, params)
    setup = SimpleNamespace(config=config.preset("default", **DEFAULTS), pool=pool, mdnrnn=memory,
                            sizes=(latent, hidden, 3), reward_scale=MEMORY_REWARD_SCALE, value_discount=VALUE_DISCOUNT,
                            device=torch.device("cpu"))
    return setup, candidates, mean


# produced by commit 26bae56 (DreamFitness → dream_rollout → _fused_rollout); 18 of the first candidate's 40 tiny
# dreams and 22 of its real-size ones end on M's done signal, the others on M's value
TINY_FITNESS = [15.486741148680448, 18.068495067954064, 17.728449566662313, 16.46332032904029, 17.446861922740936,
                19.123767597973348]
TINY_MEAN_FITNESS = 18.419630308449268
REAL_FITNESS = [22.351563045196237, 19.638788825646042, 20.538539892993867, 21.44311863426119]
REAL_MEAN_FITNESS = 21.36553710885346


def test_the_default_config_is_the_pinned_dream():
    """The pinned numbers are the default config's dream: every setting above is its default (only the seed is not)."""
    default = config.preset("default")
    for key, value in DEFAULTS.items():
        if key != "run__seed":
            assert config.get(default, key.replace("__", ".")) == value, key
    assert default.memory.value_discount == VALUE_DISCOUNT  # stage 3's default M has the value head these dreams end on


@pytest.mark.parametrize("fused", [True, False])
def test_default_dream_fitness_is_pinned(fused, monkeypatch):
    setup, candidates, mean = pinned_setup(TINY, 6, 12.0, -1.6)
    if not fused:  # the reference path must give the same numbers
        import car_racing.training.fitness as fitness_module
        original = fitness_module.dream_rollout
        monkeypatch.setattr(fitness_module, "dream_rollout", lambda *a, **k: original(*a, **k, fused=False))
    fitness, mean_fitness = DreamFitness(setup)(candidates, mean, GENERATION)
    np.testing.assert_allclose(fitness, TINY_FITNESS, rtol=1e-5, atol=1e-5)
    assert mean_fitness == pytest.approx(TINY_MEAN_FITNESS, rel=1e-5, abs=1e-5)


def test_default_dream_fitness_is_pinned_at_the_real_sizes():
    setup, candidates, mean = pinned_setup(REAL, 4, 60.0, -3.0)
    fitness, mean_fitness = DreamFitness(setup)(candidates, mean, GENERATION)
    np.testing.assert_allclose(fitness, REAL_FITNESS, rtol=1e-5, atol=1e-5)
    assert mean_fitness == pytest.approx(REAL_MEAN_FITNESS, rel=1e-5, abs=1e-5)


# the repair step's dreams at 26bae56: C = the first tiny candidate, 8 dreams of 200 steps, τ 1, dropout 0.1
REPAIR_LENGTHS = [200, 71, 186, 40, 200, 126, 200, 200]
REPAIR_RETURNS = [3.6518452167510986, 7.745605945587158, 7.668845176696777, 3.3200454711914062,
                  11.10152816772461, 13.289588928222656, 6.0201005935668945, 26.10698127746582]
REPAIR_ACTION_SUMS = [[40.20615005493164, 93.56535339355469, 102.28423309326172],
                      [15.7164888381958, 34.017425537109375, 37.52876281738281],
                      [28.75871467590332, 89.81099700927734, 97.56388092041016],
                      [7.64506721496582, 18.816059112548828, 21.050065994262695],
                      [28.55001449584961, 97.02650451660156, 105.7552719116211],
                      [22.221166610717773, 60.32761001586914, 65.33940124511719],
                      [32.758182525634766, 96.0667495727539, 102.72576904296875],
                      [36.113346099853516, 95.87535858154297, 103.80427551269531]]


def test_repair_dreams_are_pinned():
    setup, candidates, _ = pinned_setup(TINY, 1, 12.0, -1.6)
    generator = generation_generator(11, GENERATION)
    start_z, start_state = setup.pool.pick(8, generator)
    actions, rewards, lengths = repair.dream_actions(setup.mdnrnn, candidates[0], start_z, start_state, 200, 1.0,
                                                     generator, reward_scale=0.5, dropout=0.1)
    assert actions.shape == (8, 200, 3) and rewards.shape == (8, 200)
    assert lengths.tolist() == REPAIR_LENGTHS
    np.testing.assert_allclose([rewards[k, :n].sum() for k, n in enumerate(lengths)], REPAIR_RETURNS,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose([actions[k, :n].sum(axis=0) for k, n in enumerate(lengths)], REPAIR_ACTION_SUMS,
                               rtol=1e-5, atol=1e-4)
