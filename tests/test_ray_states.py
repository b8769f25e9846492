"""--backend ray on a machine and a cluster in the states a real one gets into (issue 38): a cluster file
left behind by an earlier `ray start`, RAY_ADDRESS naming a dead or a live head, a head killed in the middle
of a CMA-ES run and the run resumed, a Ray version or a package that differs between here and the cluster.

One Ray head serves the module: `ray start --head --block` in a temporary Ray folder on free ports (it never
touches /tmp/ray), token authentication off so that the test does not depend on ~/.ray; the test that kills it
leaves the next user of the fixture a new one. The scripts run as subprocesses, as a user runs them: a driver
whose head dies is killed by Ray itself after 60 s, which must never be pytest.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from car_racing.common.cli import UsageError
from car_racing.episodes import backends
from car_racing.episodes.backends import (Backend, RayClusterLost, _actor_init_error, _join_error, going_on,
                                          resolve_ray_address)
from tests.test_agent_simulator import tiny_checkpoints  # noqa: F401 (fixture)

ray = pytest.importorskip("ray")

REPO = Path(__file__).resolve().parent.parent
RAY_CLI = Path(sys.executable).with_name("ray")
SIMULATOR = REPO / "car_racing" / "car_racing_gameplay_simulator.py"
TRAINER = REPO / "car_racing" / "train_controller_cmaes.py"
HEAD_PORT_FLAGS = ("--port", "--ray-client-server-port", "--dashboard-port", "--dashboard-agent-listen-port",
                   "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port")


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _children(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [child for child, ppid in parents.items() if ppid == parent]
        found += kids
        frontier += kids
    return found


def _process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class Head:
    """A Ray head of this test's own: `ray start --head --block` in a temporary Ray folder."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="rh-", dir="/tmp"))  # short: Ray's socket paths live under it
        ports = _free_ports(len(HEAD_PORT_FLAGS))
        self.port = ports[0]
        self.address = f"127.0.0.1:{self.port}"
        self.env = _clean_env(RAY_TMPDIR=str(self.folder))
        command = [str(RAY_CLI), "start", "--head", "--block", "--temp-dir", str(self.folder / "ray"),
                   "--num-cpus", "2", "--include-dashboard=false", "--disable-usage-stats"]
        for flag, port in zip(HEAD_PORT_FLAGS, ports):
            command += [flag, str(port)]
        self.log = open(self.folder / "head.log", "w")
        self.process = subprocess.Popen(command, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        cluster_file = self.folder / "ray" / "ray_current_cluster"  # written once the head is up
        deadline = time.monotonic() + 60
        while not cluster_file.is_file():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"ray start --head did not come up: {(self.folder / 'head.log').read_text()[-2000:]}")
            time.sleep(0.1)

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """The head dies at once, as a crashed or powered-off machine does: `ray start`, its GCS, raylet and
        the actors on it, all SIGKILLed."""
        tree = _children(self.process.pid)
        assert any(_process_name(pid).startswith("gcs_server") for pid in tree), "no gcs_server under the head"
        for pid in [self.process.pid, *tree]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait()
        with contextlib.suppress(ProcessLookupError):  # what the head started in its own process group
            os.killpg(self.process.pid, signal.SIGKILL)

    def stop(self) -> None:
        if self.alive():
            self.kill()  # (a graceful `ray stop` of a --block head takes ~30 s; nothing of it is needed after)
        self.log.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment without any Ray address or Ray folder of the machine, token authentication off."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_TMPDIR")}
    env.update(SDL_VIDEODRIVER="dummy", PYGAME_HIDE_SUPPORT_PROMPT="1", RAY_AUTH_MODE="disabled",
               PYTHONWARNINGS="ignore", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def heads():
    """``heads()``: the module's live head (a new one when a test killed the last)."""
    started: list[Head] = []

    def live() -> Head:
        if not started or not started[-1].alive():
            started.append(Head())
        return started[-1]

    yield live
    for head in started:
        head.stop()


def _run(script: Path, *flags: str, env: dict[str, str], timeout: float = 120,
         prelude: str = "") -> subprocess.CompletedProcess:
    """``script`` with ``flags`` as a user runs it; ``prelude`` (Python) runs first in the same process."""
    argv = [str(script), *flags]
    code = (f"import runpy, sys; {prelude + '; ' if prelude else ''}sys.argv = {argv!r}; "
            f"runpy.run_path({str(script)!r}, run_name='__main__')")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=timeout)


def _errors(stderr: str | subprocess.CompletedProcess) -> list[str]:
    """stderr's lines without those Ray forwards from the cluster's processes (`(RayWorker pid=...)`, `(raylet)`:
    their warnings, e.g. a slow head's metrics agent, are Ray's, not the script's)."""
    text = stderr if isinstance(stderr, str) else stderr.stderr
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in text.splitlines()]
    return [line for line in lines if line.strip() and not line.lstrip().startswith("(")]


def _episode_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith(("episode ", "score:", "min "))]


@pytest.fixture
def reference_lines(tiny_checkpoints) -> list[str]:
    """What the simulator prints for the flags below on the processes backend (1 worker: in this process, on one
    torch thread as every worker runs)."""
    import io

    import torch

    from car_racing import car_racing_gameplay_simulator as simulator

    printed, threads = io.StringIO(), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(printed):
            simulator.main(simulator.Args(checkpoint_dir=str(tiny_checkpoints), episodes=2, max_steps=12, workers=1,
                                          progress=False))
    finally:
        torch.set_num_threads(threads)
    return _episode_lines(printed.getvalue())


SIMULATOR_FLAGS = ("--episodes", "2", "--max-steps", "12", "--workers", "1", "--no-progress", "--backend", "ray")


# --- no address: a private local Ray, whatever the machine holds ---------------------------------------------

def test_cluster_file_of_a_live_cluster_is_not_joined_without_an_address(tiny_checkpoints, heads, reference_lines):
    """A Ray folder whose ray_current_cluster names a running cluster (somebody else's `ray start`; a dead one:
    tests/test_backends.py): a run without --ray-address and RAY_ADDRESS starts a Ray of its own (joining would
    print `ray: joined`; before issue 38 it raised ValueError: num_cpus) and scores as the processes backend."""
    head = heads()
    assert (head.folder / "ray" / "ray_current_cluster").read_text().strip().endswith(f":{head.port}")
    on_ray = _run(SIMULATOR, "--checkpoint-dir", str(tiny_checkpoints), *SIMULATOR_FLAGS,
                  env=head.env)  # head.env: RAY_TMPDIR = the head's folder
    assert on_ray.returncode == 0, on_ray.stderr
    assert not [line for line in _errors(on_ray) if "joined" in line], on_ray.stderr
    assert on_ray.stdout.splitlines()[0].endswith("workers 1 (ray)")
    assert _episode_lines(on_ray.stdout) == reference_lines != []


def test_auto_names_the_stale_cluster_file_it_read(tmp_path, monkeypatch):
    """--ray-address auto reads the cluster file as Ray does: when that cluster is gone, the line says where the
    address came from."""
    (tmp_path / "ray").mkdir()
    dead = f"127.0.0.1:{_free_ports(1)[0]}"
    (tmp_path / "ray" / "ray_current_cluster").write_text(dead)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    # no other Ray running here (with exactly one, Ray's `auto` would take it over the file: the module's head)
    from ray._private import services

    monkeypatch.setattr(services, "find_gcs_addresses", lambda: frozenset())
    with pytest.raises(UsageError) as raised:
        Backend("ray", "auto").check()
    assert re.fullmatch(rf"--ray-address auto: no Ray cluster answers at \S+:{dead.split(':')[1]} \(from "
                        rf"{tmp_path}/ray/ray_current_cluster, left by the last `ray start`\) \(Connection refused\)",
                        str(raised.value)), raised.value


# --- RAY_ADDRESS (a live head: the killed-head test below joins through it) -----------------------------------

def test_ray_address_of_a_dead_head_is_one_line_and_exit_2(tiny_checkpoints, tmp_path):
    dead = f"127.0.0.1:{_free_ports(1)[0]}"
    proc = _run(SIMULATOR, "--checkpoint-dir", str(tiny_checkpoints), "--episodes", "1", "--backend", "ray",
                env=_clean_env(RAY_ADDRESS=dead, RAY_TMPDIR=str(tmp_path)), timeout=60)
    assert proc.returncode == 2
    assert _errors(proc) == [f"car_racing_gameplay_simulator.py: error: RAY_ADDRESS={dead} (from the environment): no "
                             f"Ray cluster answers at {dead} (Connection refused); unset RAY_ADDRESS for a private "
                             f"local Ray, or give --ray-address"]
    assert proc.stdout == ""


def test_resolve_ray_address(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert resolve_ray_address("") == ("", "")
    assert resolve_ray_address("auto") == ("auto", "--ray-address auto")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert resolve_ray_address("") == ("10.0.0.1:6379", "RAY_ADDRESS=10.0.0.1:6379")
    assert resolve_ray_address("10.0.0.2:6379") == ("10.0.0.2:6379", "--ray-address 10.0.0.2:6379")
    monkeypatch.setenv("RAY_ADDRESS", "local")  # Ray's own word for "start one here"
    assert resolve_ray_address("") == ("", "")
    monkeypatch.setenv("RAY_ADDRESS", "ray://10.0.0.1:10001")
    with pytest.raises(UsageError, match=r"^RAY_ADDRESS=ray://10.0.0.1:10001 \(from the environment\): Ray Client"):
        Backend("ray").check()
    Backend("processes").check()  # no Ray: RAY_ADDRESS is not looked at


# --- versions and packages ------------------------------------------------------------------------------------

def test_version_mismatch_is_one_line_naming_both_versions(tiny_checkpoints, heads):
    head = heads()
    proc = _run(SIMULATOR, "--checkpoint-dir", str(tiny_checkpoints), "--episodes", "1", "--backend", "ray",
                "--ray-address", head.address, env=_clean_env(), prelude="import ray; ray.__version__ = '2.59.1'")
    assert proc.returncode == 2, proc.stderr
    python = ".".join(map(str, sys.version_info[:3]))
    assert _errors(proc) == [
        f"car_racing_gameplay_simulator.py: error: --ray-address {head.address}: the cluster runs Ray "
        f"{ray.__version__} on Python {python} but this machine has Ray 2.59.1 on Python {python}: every host needs "
        f"the same Ray (requirements-ray.txt pins the Ray version; run: pip install -r requirements-ray.txt)"]


def test_join_error_names_both_python_versions():
    from ray._private.utils import check_version_info

    with pytest.raises(RuntimeError) as raised:  # Ray's own message, several lines
        check_version_info({"ray_version": ray.__version__, "python_version": "3.10.2"}, "node 10.0.0.1")
    line = _join_error(raised.value)
    assert "\n" not in line and "Python 3.10.2" in line and f"Ray {ray.__version__}" in line
    assert "every host needs the same Python" in line


def test_actor_that_cannot_import_the_repository_is_one_line():
    error = _actor_init_error(RuntimeError("The actor died because of an error raised in its creation task, "
                                           "ray::RayWorker.__init__()\nModuleNotFoundError: No module named "
                                           "'car_racing.episodes'"))
    assert isinstance(error, UsageError) and "\n" not in str(error)
    assert str(error).startswith("--backend ray: a Ray node cannot import car_racing: this repository")


# --- a head that dies mid-run, and --resume -------------------------------------------------------------------

def test_ray_address_of_a_live_head_then_the_head_killed_mid_generation_and_resume(tmp_path, tiny_data_dir, heads):
    """RAY_ADDRESS names a live head: the run joins it (2 CPUs: num_cpus is not passed). The head dies during
    generation 2: the run stops with one line, generation 1 saved; --resume on processes ends where the unbroken
    run on processes does, every generation the same (so the generations on Ray were the same too)."""
    from car_racing.common.runtime import load_checkpoint
    from car_racing.train_controller_cmaes import main
    from tests.test_controller_training import run_args
    from tests.test_controller_training import write_tiny_checkpoints as write_vm

    from car_racing.common.config import flag_of

    settings = dict(cmaes__mode="real", cmaes__population=4, cmaes__generations=3, cmaes__real_steps=20,
                    cmaes__real_trials=2, checks__every=1, checks__episodes=1, checks__max_steps=10)
    write_vm(tmp_path / "unbroken" / "checkpoints")
    unbroken = main(run_args(tmp_path / "unbroken", tiny_data_dir, **settings))  # 1 worker: in this process

    head = heads()
    folder = tmp_path / "broken"
    write_vm(folder / "checkpoints")
    flags = ["--preset", "seed", "--workers", "2", "--device", "cpu", "--no-progress", "--data-dir", str(tiny_data_dir),
             "--checkpoint-dir", str(folder / "checkpoints"), "--backend", "ray"]
    for key, value in settings.items():
        flags += [flag_of(key.replace("__", ".")), str(value)]
    argv = [str(TRAINER), *flags]
    code = ("import runpy, sys; from car_racing.episodes import backends; "
            "backends.RAY_HEAD_LOST_S = 2.0; backends.RAY_HEARTBEAT_S = 0.5; "  # the test's patience: 2 s, not 10
            f"sys.argv = {argv!r}; runpy.run_path({str(TRAINER)!r}, run_name='__main__')")
    driver = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=_clean_env(RAY_ADDRESS=head.address), cwd=REPO)
    for line in driver.stdout:  # the head dies once generation 1 is checked (and saved right after)
        if line.startswith("generation 1:"):
            head.kill()
            break
    stdout, stderr = driver.communicate(timeout=90)
    errors = _errors(stderr)
    assert driver.returncode == 2, stderr
    assert errors[0] == f"ray: joined the cluster at {head.address}: 2 CPUs on 1 nodes", stderr
    assert len(errors) == 2, stderr  # no traceback, no Ray noise
    assert re.fullmatch(
        rf"train_controller_cmaes\.py: error: the Ray cluster at \S+:{head.port} \(RAY_ADDRESS={head.address}\) "
        rf"stopped answering during the run \(Connection refused for 2 s: its head died or the network is cut\); "
        rf"every finished stage and generation is saved: rerun with --resume to go on, on a new cluster or with "
        rf"--backend processes \(no Ray\)", errors[1]), stderr
    saved = load_checkpoint(folder / "checkpoints" / "control_model_cmaes.pth", "controller")
    assert saved["generation"] == 1  # generation 2 was under way: lost; generation 1 on disk

    resumed = main(run_args(folder, tiny_data_dir, **settings, run__resume=True))  # on processes (1 worker)
    assert resumed["generation"] == settings["cmaes__generations"]
    for key in ("fitness_best", "fitness_mean", "real_best_candidate", "real_cma_mean"):
        assert resumed["history"][key] == unbroken["history"][key], key
    np.testing.assert_array_equal(resumed["best_params"], unbroken["best_params"])
    assert resumed["best_real_score"] == unbroken["best_real_score"]
    assert len(resumed["checked"]) == len(unbroken["checked"]) == 2 * settings["cmaes__generations"] + 1
    for after, before in zip(resumed["checked"], unbroken["checked"]):  # every checked C: CMA's mean, its best
        assert after["source"] == before["source"]
        np.testing.assert_array_equal(after["params"], before["params"])


def test_head_watch_bears_a_blip_and_stops_after_a_silence(monkeypatch):
    monkeypatch.setattr(backends, "RAY_HEAD_LOST_S", 0.5)
    monkeypatch.setattr(backends, "RAY_HEARTBEAT_S", 0.1)

    def listen(port: int = 0) -> socket.socket:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen()
        return listener

    head = listen()
    port = head.getsockname()[1]
    watch = backends._HeadWatch(f"127.0.0.1:{port}", f"--ray-address 127.0.0.1:{port}")
    watch.wait_alive()  # it answers: back at once
    head.close()
    watch.poll(force=True)  # silent, not for long yet: no stop
    assert watch.silent_since is not None and not watch.lost
    head = listen(port)
    watch.poll(force=True)  # back: the silence is forgotten
    assert watch.silent_since is None
    head.close()
    started = time.monotonic()
    with pytest.raises(RayClusterLost) as raised:
        watch.wait_alive()
    assert 0.5 <= time.monotonic() - started < 5 and watch.lost
    assert str(raised.value) == (f"the Ray cluster at 127.0.0.1:{port} (--ray-address 127.0.0.1:{port}) stopped "
                                 f"answering during the run (Connection refused for 0.5 s: its head died or the network "
                                 f"is cut)")


def test_lost_cluster_line_says_how_each_script_goes_on(monkeypatch):
    from car_racing import train_controller_cmaes
    from car_racing.common.config import Config
    from car_racing.episodes import recording

    stage4 = going_on("train_controller_cmaes", resumable=True)
    assert stage4.startswith("every finished stage and generation is saved: rerun with --resume")
    assert going_on("dream_loop", resumable=True) == stage4  # the same stage under its other name
    assert recording.GOING_ON.startswith("every finished episode is saved: rerun with --record.append")
    assert going_on("car_racing_gameplay_simulator", resumable=False).startswith("rerun the same command")

    def lost(config):  # stage 4's library, as a lost cluster ends it
        raise RayClusterLost("the Ray cluster at 10.0.0.1:6379 stopped answering")

    monkeypatch.setattr(train_controller_cmaes, "train_controller", lost)
    with pytest.raises(RayClusterLost, match=r"^the Ray cluster at 10.0.0.1:6379 stopped answering; every finished "
                                             r"stage and generation is saved: rerun with --resume"):
        train_controller_cmaes.main(Config())
