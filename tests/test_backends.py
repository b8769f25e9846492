"""Real-env episodes on both backends (worker processes, Ray actors): identical results, dead workers
replaced, a bad --ray-address refused in one line. One local 2-CPU Ray serves the whole module, started in a
temporary Ray folder that holds a stale cluster file, as a machine where `ray start` was stopped by Ctrl-C does
(tests/test_ray_states.py: the other states of a machine and a cluster)."""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from car_racing import car_racing_gameplay_simulator as simulator
from car_racing.common.cli import UsageError
from car_racing.episodes import backends
from car_racing.episodes.agent import evaluate_agent, make_agent_driver
from car_racing.episodes.backends import Backend, backend_session, connect_ray
from car_racing.episodes.rollout import EpisodeWorkers
from car_racing.models.ffn import num_controller_params
from tests.test_agent_simulator import HIDDEN, LATENT, tiny_checkpoints  # noqa: F401 (fixture)

ray = pytest.importorskip("ray")

REPO = Path(__file__).resolve().parent.parent
RAY = Backend("ray")
PROCESSES = Backend("processes")


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray with 2 CPUs for the module (the scripts' own connection: repo on the workers' path), in a
    temporary Ray folder (RAY_TMPDIR) whose cluster file names a cluster that is gone: it must not be joined."""
    folder = tempfile.mkdtemp(prefix="rt-", dir="/tmp")  # short: Ray's socket paths live under it
    (Path(folder) / "ray").mkdir()
    (Path(folder) / "ray" / "ray_current_cluster").write_text("127.0.0.1:1\n")
    saved = {name: os.environ.pop(name, None) for name in ("RAY_TMPDIR", "RAY_ADDRESS")}
    os.environ["RAY_TMPDIR"] = folder
    try:
        assert connect_ray("", num_cpus=2)
        assert ray.cluster_resources()["CPU"] == 2  # a Ray of its own (joining would have failed or had other CPUs)
        assert ray.get_runtime_context().gcs_address != "127.0.0.1:1"
        yield
    finally:
        ray.shutdown()
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value
        shutil.rmtree(folder, ignore_errors=True)


def test_evaluation_and_simulator_identical_on_both_backends(tiny_checkpoints, local_ray, capsys):
    seeds = [10007, 10002, 10005]
    kwargs = dict(max_steps=12, workers=2, smoothing=0.3, device="cpu")
    on_processes = evaluate_agent(tiny_checkpoints, seeds, backend=PROCESSES, **kwargs)
    on_ray = evaluate_agent(tiny_checkpoints, seeds, backend=RAY, **kwargs)
    assert [r.seed for r in on_ray] == seeds
    for a, b in zip(on_processes, on_ray):  # bit for bit
        np.testing.assert_array_equal(a.actions, b.actions)
        np.testing.assert_array_equal(a.rewards, b.rewards)

    args = dict(checkpoint_dir=str(tiny_checkpoints), episodes=3, max_steps=12, workers=2)
    mean_processes = simulator.main(simulator.Args(**args))
    printed_processes = capsys.readouterr().out.splitlines()
    mean_ray = simulator.main(simulator.Args(**args, backend="ray"))
    printed_ray = capsys.readouterr().out.splitlines()
    assert mean_ray == mean_processes
    assert printed_ray[0].endswith("workers 2 (ray)")
    assert printed_ray[1:] == printed_processes[1:]  # every episode line and the score
    assert ray.is_initialized()  # the module's Ray: a session inside it leaves it running


def test_real_mode_generation_identical_on_both_backends(tmp_path, tiny_data_dir, local_ray):
    from car_racing.train_controller_cmaes import main
    from tests.test_controller_training import run_args
    from tests.test_controller_training import write_tiny_checkpoints as write_vm

    finals = {}
    for backend in ("processes", "ray"):
        folder = tmp_path / backend
        write_vm(folder / "checkpoints")
        finals[backend] = main(run_args(folder, tiny_data_dir, cmaes__mode="real", cmaes__population=4,
                                        cmaes__generations=1, cmaes__real_steps=10, cmaes__real_trials=2,
                                        checks__every=1, checks__episodes=2, checks__max_steps=10, run__workers=2,
                                        run__backend=backend))
    processes, on_ray = finals["processes"], finals["ray"]
    for key in ("fitness_best", "fitness_mean", "real_best_candidate", "real_cma_mean"):
        assert on_ray["history"][key] == processes["history"][key], key
    assert on_ray["best_real_score"] == processes["best_real_score"]
    np.testing.assert_array_equal(on_ray["best_params"], processes["best_params"])
    assert on_ray["config"]["run"]["backend"] == "ray" and processes["config"]["run"]["backend"] == "processes"


def _agent_workers(checkpoint_dir: Path, backend: Backend) -> EpisodeWorkers:
    make_driver = functools.partial(make_agent_driver, str(checkpoint_dir), np.zeros(num_controller_params(LATENT, HIDDEN)),
                                    "cpu")
    return EpisodeWorkers(make_driver, 2, backend=backend)


@pytest.mark.parametrize("backend", [RAY, PROCESSES], ids=["ray", "processes"])
def test_worker_killed_mid_generation_is_replaced_and_the_generation_completes(tiny_checkpoints, local_ray, backend):
    candidates = np.random.default_rng(0).normal(0, 0.3, (3, num_controller_params(LATENT, HIDDEN)))
    candidates[:, -2] = 2.0  # gas: the cars move
    seeds = [10001, 10004]
    with _agent_workers(tiny_checkpoints, backend) as workers:
        reference = dict(workers.run(seeds, 30, candidates=candidates))
        returned = {}
        for k, result in workers.run(seeds, 30, candidates=candidates):
            if not returned:  # one episode done, the others queued or running: kill a worker now
                if backend.is_ray:
                    ray.kill(workers.pool._impl.actors[0])
                else:
                    os.kill(workers.pool._impl.pids()[0], signal.SIGKILL)
            returned[k] = result
        assert workers.replacements >= 1
        after = dict(workers.run(seeds[:1], 30, candidates=candidates[:1]))  # the replacement keeps working
    assert sorted(returned) == sorted(reference) == list(range(6))
    for k in reference:
        np.testing.assert_array_equal(returned[k].rewards, reference[k].rewards)
        np.testing.assert_array_equal(returned[k].actions, reference[k].actions)
    np.testing.assert_array_equal(after[0].rewards, reference[0].rewards)


def test_actor_on_a_node_without_a_package_is_one_line(tiny_checkpoints, local_ray, monkeypatch):
    """Each actor checks the packages the episodes need before unpickling its work (a node of a cluster without
    them would fail with an import traceback, and its replacements too)."""
    monkeypatch.setattr(backends, "REQUIRED_PACKAGES", ("numpy", "no_such_package_38"))
    with _agent_workers(tiny_checkpoints, RAY) as workers:
        with pytest.raises(UsageError) as raised:
            list(workers.run([10001], 5))
        assert workers.replacements == 0  # a missing package is not a fault that a new actor would fix
    message = str(raised.value)
    assert "\n" not in message and message.startswith("--backend ray: the Ray node ")
    assert " has no no_such_package_38 " in message
    assert "pip install -r requirements.txt -r requirements-ray.txt" in message


def test_bad_ray_address_is_one_line_and_exit_2(tiny_checkpoints):
    env = dict(os.environ, SDL_VIDEODRIVER="dummy", PYGAME_HIDE_SUPPORT_PROMPT="1")
    script = REPO / "car_racing" / "car_racing_gameplay_simulator.py"
    # Ray itself would retry an unreachable address for minutes: the timeout catches a regression.
    proc = subprocess.run([sys.executable, str(script), "--checkpoint-dir", str(tiny_checkpoints), "--episodes", "1",
                           "--backend", "ray", "--ray-address", "nowhere:1"], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--ray-address nowhere:1" in lines[0] and "no Ray cluster answers" in lines[0], proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize("backend, message", [
    (Backend("ray", "not-an-address"), "expected auto or HOST:PORT"),
    (Backend("processes", "10.0.0.1:6379"), "only used with --backend ray"),
    (Backend("threads"), "expected one of processes, ray"),
])
def test_bad_backend_flags_are_usage_errors(backend, message):
    with pytest.raises(UsageError, match=message):
        with backend_session(backend):
            pass
