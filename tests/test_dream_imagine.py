"""One dream: training.dream.imagine is the reference dream; the fused batched kernel is its fast path."""

from __future__ import annotations

import pytest
import torch
from test_dream_pinned import REAL, pinned_memory

from car_racing.models.ffn import flat_to_population, num_controller_params, population_actions
from car_racing.models.mdn_rnn import DONE_THRESHOLD
from car_racing.training.dream import DreamNoise, dream_rollout, imagine

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def dream_inputs(latent: int, hidden: int, population: int, trials: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    flat = torch.randn(population, num_controller_params(latent, hidden), generator=g) * 0.3
    start_z = torch.randn(trials, latent, generator=g)
    start_state = (torch.tanh(torch.randn(trials, hidden, generator=g)) * 0.5,
                   torch.randn(trials, hidden, generator=g) * 0.5)
    return flat_to_population(flat, latent, hidden), start_z, start_state


@pytest.mark.parametrize("temperature", [0.0, 0.6, 1.0])
def test_the_fused_kernel_gives_imagines_returns(temperature):
    memory = pinned_memory(8, 16, 2, 12.0, -1.6)
    policy, start_z, start_state = dream_inputs(8, 16, 5, 6)
    settings = dict(dropout=0.2, reward_scale=0.5, value_discount=0.95)
    trace = imagine(memory, policy, start_z, start_state, 40, temperature, torch.Generator().manual_seed(3), **settings)
    fused = dream_rollout(memory, *policy, start_z, start_state, 40, temperature, torch.Generator().manual_seed(3),
                          **settings)
    torch.testing.assert_close(fused, trace.returns, rtol=1e-4, atol=1e-4)
    assert 0 < int(trace.ended.sum()) < trace.ended.numel()  # some dreams end on M's done, others on its value


def test_the_fused_kernel_gives_imagines_returns_at_the_real_sizes():
    memory = pinned_memory(*REAL, 60.0, -3.0)
    policy, start_z, start_state = dream_inputs(REAL[0], REAL[1], 3, 8)
    settings = dict(dropout=0.1, reward_scale=0.5, value_discount=0.98)
    trace = imagine(memory, policy, start_z, start_state, 60, 1.0, torch.Generator().manual_seed(3), **settings)
    fused = dream_rollout(memory, *policy, start_z, start_state, 60, 1.0, torch.Generator().manual_seed(3), **settings)
    torch.testing.assert_close(fused, trace.returns, rtol=1e-4, atol=1e-4)


def test_the_trace_is_the_dream_and_fixed_actions_replay_it():
    memory = pinned_memory(8, 16, 2, 12.0, -1.6)
    (weights, biases), start_z, start_state = dream_inputs(8, 16, 3, 5)
    steps = 30
    noise = DreamNoise.draw(steps, 5, 8, torch.Generator().manual_seed(4), 0.2, 16)
    trace = imagine(memory, (weights, biases), start_z, start_state, steps, 1.0, noise, reward_scale=0.5,
                    value_discount=0.9)
    assert trace.actions.shape == (3, 5, steps, 3) and trace.z.shape == (3, 5, steps, 8)
    torch.testing.assert_close(trace.z[:, :, 0], start_z.expand(3, 5, 8))  # every candidate starts at the same states
    # the first action is C's on the start state; a dream's return is its rewards up to its end plus M's value
    torch.testing.assert_close(trace.actions[:, :, 0], population_actions(weights, biases, start_z.expand(3, 5, 8),
                                                                          start_state[0].expand(3, 5, 16)))
    paid = torch.arange(steps) < trace.lengths[..., None]
    torch.testing.assert_close(trace.returns, (trace.rewards * paid).sum(-1) + trace.value, rtol=1e-5, atol=1e-5)
    last = trace.done_probability.gather(-1, (trace.lengths - 1)[..., None])[..., 0]
    assert torch.equal(trace.ended, last > DONE_THRESHOLD) and bool((trace.value[trace.ended] == 0).all())
    assert bool((trace.value[~trace.ended] != 0).all()) and 0 < int(trace.ended.sum()) < trace.ended.numel()
    # a fixed action sequence driven in the same dreams (same noise) is the same dream
    for p in range(3):
        again = imagine(memory, trace.actions[p], start_z, start_state, steps, 1.0, noise, reward_scale=0.5,
                        value_discount=0.9)
        n = trace.steps_run
        torch.testing.assert_close(again.z[0, :, :n], trace.z[p, :, :n], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(again.returns[0], trace.returns[p], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(again.lengths[0], trace.lengths[p])
