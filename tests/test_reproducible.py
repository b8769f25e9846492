"""Bit for bit: the same seed on the same machine gives the same recording, V, M and C — whatever the worker count.

A tiny lineage (stage 1 → 2 → 3 → stage 4's repair loop, two iterations) runs twice in separate folders, the second
time with two worker processes instead of one; every recorded array and every tensor of every checkpoint must be
equal (timings and paths aside).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from car_racing import demo
from car_racing.common import config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = config.preset(
    "demo", record__episodes=2, record__steps=40, record__random_episodes=1, record__seq_len=10,
    vision__epochs=1, vision__kl_anneal_epochs=1.0, vision__batch_size=40, vision__latent_size=8, memory__epochs=1,
    memory__batch_size=4, memory__hidden_size=16, memory__num_mixtures=2, loop__memory_epochs=1, cmaes__population=4,
    cmaes__generations=2, dream__trials=2, dream__steps=5, dream__start_states=16, checks__every=1,
    checks__episodes=2, checks__max_steps=10, loop__agent_episodes=2, loop__repair_episodes=1, run__progress=False)
LINEAGE = [stage for stage in demo.STAGES if stage.key in demo.RECIPE_STAGES]


def lineage(run_dir: Path, workers: int) -> None:
    run_dir.mkdir(parents=True)
    demo.run_stages(run_dir, demo.demo_config(run_dir, config.replace(TINY, run__workers=workers)), {}, LINEAGE)


def tensors(value, prefix=""):
    """Every tensor and array inside a checkpoint, by its path (paths, timings and hashes of files left out)."""
    if isinstance(value, torch.Tensor):
        yield prefix, value
    elif isinstance(value, np.ndarray):
        yield prefix, torch.as_tensor(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from tensors(item, f"{prefix}/{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from tensors(item, f"{prefix}[{index}]")


def test_a_tiny_lineage_reruns_bit_for_bit_whatever_the_worker_count(tmp_path):
    lineage(tmp_path / "one", workers=1)
    lineage(tmp_path / "two", workers=2)
    one, two = tmp_path / "one", tmp_path / "two"
    arrays = sorted(p.relative_to(one) for p in one.rglob("*.npy"))
    assert arrays and arrays == sorted(p.relative_to(two) for p in two.rglob("*.npy"))
    for name in arrays:
        assert (one / name).read_bytes() == (two / name).read_bytes(), name  # the recordings, the loop's data
    checkpoints = sorted(p.relative_to(one) for p in one.rglob("*.pth"))
    assert len(checkpoints) >= 10 and checkpoints == sorted(p.relative_to(two) for p in two.rglob("*.pth"))
    compared = 0
    for name in checkpoints:
        a = dict(tensors(torch.load(one / name, weights_only=True)))
        b = dict(tensors(torch.load(two / name, weights_only=True)))
        assert a.keys() == b.keys(), name
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}{key}"
            compared += 1
    assert compared > 100
    for name in ("memory_model.pth", "control_model_cmaes.pth"):  # and the numbers beside the tensors
        a, b = (torch.load(d / "checkpoints" / name, weights_only=True) for d in (one, two))
        timings = ("seconds", "images_per_second")
        assert {k: v for k, v in a["history"].items() if k not in timings} == \
            {k: v for k, v in b["history"].items() if k not in timings}, name
