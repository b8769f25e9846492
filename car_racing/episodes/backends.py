"""Where real-env work runs: worker processes on this machine, or Ray actors on one machine or a cluster.

:mod:`car_racing.episodes.rollout` owns this choice for every script: a script only turns its ``--backend`` and
``--ray-address`` flags into a :class:`Backend` and wraps its ``main`` in :func:`backend_session`.

A :class:`WorkerPool` starts ``workers`` workers. Each builds its state **once** with
``init(*init_args)`` (an env and a driver with V and M loaded) and then runs ``run(state, job, shared)``
for every job it is given. ``shared`` is one object for all the jobs of one :meth:`WorkerPool.map`
call (a CMA-ES generation's candidate parameters): Ray puts it into its object store once per call
(each node fetches it once); worker processes receive it pickled with each job (it is small).

Backends:

- ``processes`` (default): ``workers`` spawned processes on this machine (``workers == 1``: this process).
- ``ray``: ``workers`` Ray actors of 1 CPU each. ``--ray-address auto`` or ``HOST:PORT`` joins a running
  cluster (``ray start --head`` / ``ray start --address``; see docs/scaling-with-ray.md); without it, the
  cluster in ``RAY_ADDRESS`` (Ray's own convention, set inside Ray jobs), and without that a private local
  Ray with ``workers`` CPUs, started for this run (``address="local"``) and shut down after it: a cluster
  file left behind by an earlier ``ray start`` (``/tmp/ray/ray_current_cluster``) is never joined. The
  actors import this repository from the path it has on this host, so every node needs the repository and
  the virtual environment at the same paths; a node without one of :data:`REQUIRED_PACKAGES`, or a Ray
  whose version differs from this host's, ends the run with one line naming it.

Both backends give bit-identical results: a job depends only on its inputs (an episode on its seed
and parameters), and every worker runs torch on 1 thread.

**Faults.** A worker that dies mid-job (killed, out of memory, its node lost) is replaced and the jobs
it had not finished run again on the replacement, so a ``map`` call still returns every result, the
same as without the fault. Ray: the dead actor's unfinished jobs go to a new actor. Processes: a dead
worker breaks the whole pool (``concurrent.futures`` raises ``BrokenProcessPool`` instead of hanging
forever as ``multiprocessing.Pool.imap`` does), so the pool is restarted and every unfinished job runs
again. Workers that keep dying without any job finishing in between end the call with an error.

**A cluster that stops answering** (its head died, the network is cut): the pool checks the head (its GCS
port) every :data:`RAY_HEARTBEAT_S` and stops with a one-line :class:`RayClusterLost` once it has not answered
for :data:`RAY_HEAD_LOST_S` (Ray itself would wait 60 s and then kill the process). Every result returned before
is the caller's (the scripts have saved them: episodes as they finish, CMA-ES generations as they end);
:func:`uses_backend` adds what the script saved and how to go on (``--resume``) to the line.

**Ctrl-C** is the main process's: workers ignore SIGINT; the pool's owner closes it (processes are
terminated, actors killed) and :func:`backend_session` shuts Ray down on the way out.
"""

from __future__ import annotations

import collections
import concurrent.futures as futures
import contextlib
import functools
import importlib.util
import inspect
import logging
import multiprocessing as mp
import os
import re
import signal
import socket
import sys
import time
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from car_racing.common.cli import UsageError

BACKENDS = ("processes", "ray")
REPO_ROOT = Path(__file__).resolve().parents[2]
RAY_INSTALL = "pip install -r requirements-ray.txt"  # Ray is an optional extra (make test installs it)
RAY_CONNECT_TIMEOUT_S = 5.0  # a bad --ray-address fails within this (Ray itself retries for minutes)
RAY_ADDRESS_ENV = "RAY_ADDRESS"  # Ray's own variable: the cluster to join when --ray-address is not given
RAY_HEARTBEAT_S = 2.0  # how often a Ray pool checks that the cluster's head still answers
RAY_HEAD_LOST_S = 10.0  # a head unanswering this long ends the run (Ray kills the driver after 60 s)
RAY_POLL_S = 1.0  # the longest a Ray pool waits for a result before checking the head again
# Ray kills a driver whose head has not answered for 60 s, also while the run does no Ray work (training M,
# dreaming): with this, such a run goes on with its work and stops in one line when it next needs the cluster
RAY_DRIVER_PATIENCE = ("RAY_gcs_rpc_server_reconnect_timeout_s", str(30 * 24 * 3600))
# what the actors need besides Ray and this repository (checked on each actor: one line names a missing one)
REQUIRED_PACKAGES = ("numpy", "torch", "gymnasium", "Box2D")
RAY_JOBS_IN_FLIGHT = 2  # jobs queued on each actor: the next one starts without a round trip to the driver
PROCESS_POOL_RESTARTS = 3  # restarts of a broken process pool in a row with no job finished in between


@dataclass(frozen=True)
class Backend:
    """Where real-env episodes run: ``kind`` ``processes`` or ``ray``; ``ray_address`` ``auto`` or ``HOST:PORT``
    (join a running cluster) or ``""`` (not given: ``RAY_ADDRESS`` if set, else a private local Ray)."""

    kind: str = "processes"
    ray_address: str = ""

    @property
    def is_ray(self) -> bool:
        return self.kind == "ray"

    def check(self) -> None:
        """One-line :class:`UsageError` for a bad backend or address; a ``HOST:PORT`` (or the cluster
        ``auto`` finds) must accept a connection within :data:`RAY_CONNECT_TIMEOUT_S`."""
        if self.kind not in BACKENDS:
            raise UsageError(f"--backend {self.kind!r}: expected one of {', '.join(BACKENDS)}")
        if not self.is_ray:
            if self.ray_address:
                raise UsageError(f"--ray-address {self.ray_address}: only used with --backend ray")
            return
        try:
            import ray  # noqa: F401
        except ImportError:
            raise UsageError(f"--backend ray: needs the optional Ray package, which is not installed; "
                             f"run: {RAY_INSTALL}") from None
        address, source = resolve_ray_address(self.ray_address)
        if address:
            check_ray_address(address, source)


def backend_of(run: Any) -> Backend:
    """The backend a config's ``run`` section names (:class:`car_racing.common.config.Run`)."""
    return Backend(run.backend, run.ray_address)


def resolve_ray_address(flag: str = "") -> tuple[str, str]:
    """The Ray cluster a run joins and the words that name where that came from: ``--ray-address`` when
    given, else ``RAY_ADDRESS`` from the environment (Ray's convention: set inside Ray jobs and on cluster
    nodes); ``("", "")`` means neither: a private local Ray for this run (``RAY_ADDRESS=local`` too)."""
    if flag:
        return flag, f"--ray-address {flag}"
    from_env = os.environ.get(RAY_ADDRESS_ENV, "").strip()
    if from_env and from_env != "local":
        return from_env, f"{RAY_ADDRESS_ENV}={from_env}"
    return "", ""


def _split_host_port(address: str) -> tuple[str, int] | None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host.strip("[]"), int(port)


def check_ray_address(address: str, source: str = "") -> str:
    """The ``HOST:PORT`` that ``address`` (``auto`` or ``HOST:PORT``) names, once something accepts a TCP
    connection there; else a one-line :class:`UsageError` that starts with ``source`` (default: the
    ``--ray-address`` flag). Ray's own ``ray.init`` retries an unreachable address for minutes, hence this
    check first."""
    flag = _named(source or f"--ray-address {address}")
    if address.startswith("ray://"):
        raise UsageError(f"{flag}: Ray Client addresses (ray://) are not supported; give the cluster's "
                         f"HOST:PORT (the port `ray start --head` printed, 6379 by default) or auto")
    found_in = ""
    if address == "auto":
        try:
            from ray._private.services import canonicalize_bootstrap_address, find_bootstrap_address

            found = canonicalize_bootstrap_address("auto")
            if os.environ.get(RAY_ADDRESS_ENV, "").strip() not in ("", "auto"):
                found_in = f" (from {RAY_ADDRESS_ENV})"
            elif found and found == canonicalize_bootstrap_address(find_bootstrap_address(None) or "local"):
                found_in = f" (from {_cluster_file()}, left by the last `ray start`)"
        except Exception as err:  # a private helper: if it moved, let ray.init find the cluster itself
            if isinstance(err, (ImportError, AttributeError)):
                return address
            raise UsageError(f"{flag}: {_first_line(err)}") from None
        if not found:
            raise UsageError(f"{flag}: no running Ray cluster found from this host (start one with "
                             f"`ray start --head`, or give HOST:PORT)")
        target = found
    else:
        target = address
    parsed = _split_host_port(target)
    if parsed is None:
        raise UsageError(f"{flag}: expected auto or HOST:PORT (e.g. 10.0.0.1:6379)")
    reason = _unanswered(target, RAY_CONNECT_TIMEOUT_S)
    if reason:
        raise UsageError(f"{flag}: no Ray cluster answers at {target}{found_in} ({reason}){_env_hint(flag)}")
    return target


def _named(source: str) -> str:
    """``source`` for a message: ``RAY_ADDRESS=...`` says it came from the environment."""
    return f"{source} (from the environment)" if source.startswith(RAY_ADDRESS_ENV) else source


def _env_hint(flag: str) -> str:
    return f"; unset {RAY_ADDRESS_ENV} for a private local Ray, or give --ray-address" if flag.startswith(
        RAY_ADDRESS_ENV) else ""


def _unanswered(address: str, timeout: float) -> str:
    """``""`` when something accepts a TCP connection at ``address`` (``HOST:PORT``) within ``timeout``
    seconds, else why not (``Connection refused``, ``timed out``, ...)."""
    parsed = _split_host_port(address)
    if parsed is None:
        return f"not HOST:PORT: {address}"
    try:
        with socket.create_connection(parsed, timeout=timeout):
            return ""
    except OSError as err:
        return err.strerror or str(err) or type(err).__name__


def _cluster_file() -> str:
    """Where ``ray start`` records the last cluster it started (``/tmp/ray/ray_current_cluster``)."""
    try:
        from ray._common.utils import get_ray_address_file

        return get_ray_address_file(None)
    except Exception:  # a private helper: the words only
        return "/tmp/ray/ray_current_cluster"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# --- the Ray connection ---------------------------------------------------------------------------------

_sessions: list[Backend] = []  # open backend_session()s: while one is open, pools leave Ray running
_joined: dict[str, str] = {}  # the cluster this process joined: {"address": ..., "source": ...} (messages)


class RayClusterLost(UsageError):
    """The Ray cluster stopped answering mid-run (its head died, the network is cut): one line, exit 2.
    :func:`uses_backend` adds what the script saved and how to go on."""


def connect_ray(address: str = "", num_cpus: int | None = None) -> bool:
    """Connect this process to Ray unless it already is: join the cluster that ``address`` (``auto`` or
    ``HOST:PORT``) or, without it, ``RAY_ADDRESS`` names (never passing ``num_cpus``: a cluster has its
    own), or start a private local Ray with ``num_cpus`` CPUs (``address="local"``: whatever cluster file
    an earlier ``ray start`` left behind is not read). Returns True when this call connected (the caller
    then shuts Ray down when done). Workers find this repository on their path."""
    import ray

    if ray.is_initialized():
        return False
    options: dict[str, Any] = dict(job_config=ray.job_config.JobConfig(code_search_path=[str(REPO_ROOT)]))
    target, source = resolve_ray_address(address)
    _joined.clear()
    if target:
        check_ray_address(target, source)
        try:
            with _environment(*RAY_DRIVER_PATIENCE):
                ray.init(address=target, logging_level=logging.WARNING, **options)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise UsageError(f"{_named(source)}: {_join_error(err)}{_env_hint(source)}") from None
        _joined.update(address=ray.get_runtime_context().gcs_address, source=source)
        resources = ray.cluster_resources()
        print(f"ray: joined the cluster at {target}: {int(resources.get('CPU', 0))} CPUs on "
              f"{len([n for n in ray.nodes() if n.get('Alive')])} nodes", file=sys.stderr)
    else:
        # ERROR: a local Ray's start-up warnings (e.g. its token authentication notice) are not the user's concern
        with _environment(*RAY_DRIVER_PATIENCE):
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level=logging.ERROR,
                     **options)
    return True


@contextlib.contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    """``name=value`` in this process's environment inside (unless the user set it), as it was after."""
    if name in os.environ:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)


_VERSION_MISMATCH = re.compile(r"cluster was started with:\s*Ray: (\S+)\s*Python: (\S+)\s*This process on (.*?) "
                               r"was started with:\s*Ray: (\S+)\s*Python: (\S+)", re.S)


def _join_error(err: BaseException) -> str:
    """Why ``ray.init`` could not join: both versions when they differ (Ray's own message spans lines)."""
    found = _VERSION_MISMATCH.search(str(err))
    if not found:
        hint = ("; a cluster with token authentication also needs RAY_AUTH_MODE=token here and its token (see "
                "docs/scaling-with-ray.md)" if os.environ.get("RAY_AUTH_MODE") != "token" else "")
        return f"could not join the Ray cluster ({_first_line(err)}){hint}"
    cluster_ray, cluster_python, _, ray_here, python_here = found.groups()
    which = "Ray" if cluster_ray != ray_here else "Python"
    return (f"the cluster runs Ray {cluster_ray} on Python {cluster_python} but this machine has Ray {ray_here} on "
            f"Python {python_here}: every host needs the same {which} (requirements-ray.txt pins the Ray version; "
            f"run: {RAY_INSTALL})")


@contextlib.contextmanager
def backend_session(backend: Backend) -> Iterator[Backend]:
    """Check ``backend`` (a bad ``--ray-address`` fails here, in seconds), then let every pool opened
    inside share one Ray connection, made by the first pool that needs it (a run that drives no real
    episode never starts Ray). Ray is shut down on the way out of the outermost session, also on Ctrl-C or
    an error, when it was started inside."""
    backend.check()
    outermost, was_connected = not _sessions, _ray_connected()
    _sessions.append(backend)
    try:
        yield backend
    finally:
        _sessions.pop()
        if outermost and not was_connected and _ray_connected():  # (a stage inside the dream loop leaves it on)
            import ray

            ray.shutdown()


# what each script has saved when the cluster is lost, and how it goes on (the script's file name)
GOING_ON = {
    "train_controller_cmaes": "every finished stage and generation is saved: rerun with --resume to go on",
    "dream_loop": "every finished stage and generation is saved: rerun with --resume to go on",
    "recorded_frames": "every finished episode is saved: rerun with --record.append to record more after them",
}


def going_on(script: str, resumable: bool) -> str:
    """What script ``script`` (its file's name) saved before a lost cluster, and how to go on."""
    how = GOING_ON.get(script, "rerun with --resume to go on" if resumable else "rerun the same command")
    return f"{how}, on a new cluster or with --backend processes (no Ray)"


def uses_backend(main: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Decorator for a script's ``main``: runs it inside :func:`backend_session` for the backend its settings name
    (a config's ``run.backend`` and ``run.ray_address``, or a tool's own ``backend`` and ``ray_address`` fields). A
    lost Ray cluster ends the outermost script with one line that says what was saved and how to go on."""
    script = Path(inspect.getfile(main)).stem

    @functools.wraps(main)
    def wrapper(settings: Any) -> Any:
        run = getattr(settings, "run", settings)  # a config names its backend in its run section
        outermost = not _sessions
        try:
            with backend_session(Backend(run.backend, run.ray_address or "")):
                return main(settings)
        except RayClusterLost as err:
            if not outermost:
                raise
            raise RayClusterLost(f"{err}; {going_on(script, hasattr(run, 'resume'))}") from None
    return wrapper


def _ray_connected() -> bool:
    if "ray" not in sys.modules:
        return False
    import ray

    return ray.is_initialized()


# --- the pool ---------------------------------------------------------------------------------------------

def _one_torch_thread() -> None:
    """1 torch thread per worker whose state loaded torch (a model-driven driver): one core each, and the same
    floating-point results on every backend. Workers that never need torch (the autopilot) never import it."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


class WorkerPool:
    """``workers`` workers that each build their state once with ``init(*init_args)`` and run
    ``run(state, job, shared)`` for the jobs of each :meth:`map` call (see the module docstring).

    ``init`` and ``run`` must be top-level functions (they are sent to the workers by reference) and
    ``init_args`` picklable. Use as a context manager, or call :meth:`close`. :attr:`replacements`
    counts the workers replaced after a fault (a restarted process pool counts its workers).
    """

    def __init__(self, init: Callable[..., Any], init_args: Sequence[Any], run: Callable[[Any, Any, Any], Any],
                 workers: int, backend: Backend | None = None):
        backend = backend or Backend()
        workers = max(1, int(workers))
        if backend.is_ray:
            self._impl: Any = _RayPool(init, tuple(init_args), run, workers, backend.ray_address)
        elif workers > 1:
            self._impl = _ProcessPool(init, tuple(init_args), run, workers)
        else:
            self._impl = _InProcess(init, tuple(init_args), run)
        self.backend = backend

    @property
    def workers(self) -> int:
        return self._impl.workers

    @property
    def replacements(self) -> int:
        return self._impl.replacements

    def map(self, jobs: Sequence[Any], shared: Any = None, ordered: bool = False) -> Iterator[tuple[int, Any]]:
        """``(index, run(state, jobs[index], shared))`` for every job, as they finish (``ordered``: in job
        order). An exception raised by ``run`` is raised here."""
        return self._impl.map(list(jobs), shared, ordered)

    def close(self) -> None:
        self._impl.close()

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _in_order(results: Iterator[tuple[int, Any]], count: int, ordered: bool) -> Iterator[tuple[int, Any]]:
    """Pass results through as they come, or (``ordered``) hold them back until all before them came."""
    if not ordered:
        yield from results
        return
    held: dict[int, Any] = {}
    following = 0
    for index, result in results:
        held[index] = result
        while following in held:
            yield following, held.pop(following)
            following += 1
    assert following == count, f"{count - following} results missing"


class _InProcess:
    """``workers == 1`` on the processes backend: the state lives in this process; 1 torch thread while a
    job runs (the previous setting is restored after)."""

    workers = 1
    replacements = 0

    def __init__(self, init: Callable[..., Any], init_args: tuple, run: Callable[[Any, Any, Any], Any]):
        with self._one_thread():
            self.state = init(*init_args)
        self.run = run

    @staticmethod
    @contextlib.contextmanager
    def _one_thread() -> Iterator[None]:
        torch = sys.modules.get("torch")
        previous = torch.get_num_threads() if torch is not None else None
        if torch is not None:
            torch.set_num_threads(1)
        try:
            yield
        finally:
            if torch is not None:
                torch.set_num_threads(previous)

    def map(self, jobs: list, shared: Any, ordered: bool) -> Iterator[tuple[int, Any]]:
        for index, job in enumerate(jobs):
            with self._one_thread():
                result = self.run(self.state, job, shared)
            yield index, result

    def close(self) -> None:
        self.state = None


# processes -----------------------------------------------------------------------------------------------

_process_state: dict[str, Any] = {}


def _process_init(init: Callable[..., Any], init_args: tuple) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it saves, then ends the pool
    _process_state["state"] = init(*init_args)
    _one_torch_thread()


def _process_job(run: Callable[[Any, Any, Any], Any], job: Any, shared: Any) -> Any:
    return run(_process_state["state"], job, shared)


class _ProcessPool:
    """Spawned worker processes (spawn, not fork: forking a process whose torch/OpenMP threads are running
    can deadlock), restarted when one dies."""

    def __init__(self, init: Callable[..., Any], init_args: tuple, run: Callable[[Any, Any, Any], Any], workers: int):
        self.init, self.init_args, self.run, self.workers = init, init_args, run, workers
        self.replacements = 0
        self.executor = self._start()

    def _start(self) -> futures.ProcessPoolExecutor:
        return futures.ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"),
                                           initializer=_process_init, initargs=(self.init, self.init_args))

    def pids(self) -> list[int]:
        """The worker processes' ids (those started so far)."""
        return [process.pid for process in (self.executor._processes or {}).values()]

    def map(self, jobs: list, shared: Any, ordered: bool) -> Iterator[tuple[int, Any]]:
        return _in_order(self._unordered(jobs, shared), len(jobs), ordered)

    def _unordered(self, jobs: list, shared: Any) -> Iterator[tuple[int, Any]]:
        pending = {self.executor.submit(_process_job, self.run, job, shared): index for index, job in enumerate(jobs)}
        restarts_without_progress = 0
        try:
            while pending:
                done, _ = futures.wait(pending, return_when=futures.FIRST_COMPLETED)
                broken: BaseException | None = None
                for future in sorted(done, key=pending.get):
                    try:
                        result = future.result()
                    except BrokenProcessPool as err:
                        broken = err
                        continue
                    index = pending.pop(future)
                    restarts_without_progress = 0
                    yield index, result
                if broken is None:
                    continue
                # A worker died: the pool is broken and every job not finished yet fails the same way.
                restarts_without_progress += 1
                if restarts_without_progress > PROCESS_POOL_RESTARTS:
                    raise RuntimeError(f"worker processes died {restarts_without_progress} times in a row without "
                                       f"finishing a job ({_first_line(broken)})")
                unfinished = sorted(pending.values())
                print(f"a worker process died; restarting the pool of {self.workers} and running "
                      f"{len(unfinished)} unfinished jobs again", file=sys.stderr)
                self._terminate()
                self.executor = self._start()
                self.replacements += self.workers
                pending = {self.executor.submit(_process_job, self.run, jobs[index], shared): index
                           for index in unfinished}
        finally:
            for future in pending:
                future.cancel()

    def _terminate(self) -> None:
        processes = list((self.executor._processes or {}).values())
        self.executor.shutdown(wait=False, cancel_futures=True)
        for process in processes:  # running episodes are not waited for (Ctrl-C, or a broken pool)
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(timeout=10)

    def close(self) -> None:
        self._terminate()


# Ray -------------------------------------------------------------------------------------------------------

def missing_packages(names: Sequence[str]) -> list[str]:
    """Those of ``names`` (top-level packages) that this Python cannot import."""
    return [name for name in names if importlib.util.find_spec(name) is None]


class RayWorker:
    """A Ray actor's body (wrapped with ``ray.remote`` in :class:`_RayPool`): the worker state built once.

    ``payload`` is ``(init, init_args, run)`` pickled by the driver and unpickled here, after checking that
    this node has ``required`` (the packages they import): a node without one gets a one-line
    :class:`UsageError` naming it instead of an import traceback. That error, or any raised by ``init``,
    is raised by every :meth:`run` (the pool raises it as the processes backend would)."""

    def __init__(self, payload: bytes, required: Sequence[str] = REQUIRED_PACKAGES):
        with contextlib.suppress(ValueError):  # only possible in the main thread
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.state: Any = None
        self.problem: BaseException | None = None
        missing = missing_packages(required)
        if missing:
            self.problem = UsageError(
                f"--backend ray: the Ray node {_node_ip()} has no {' and no '.join(missing)} (Python "
                f"{sys.executable}); every node needs this project's packages at the same paths: pip install "
                f"-r requirements.txt -r requirements-ray.txt")
            return
        try:
            import ray.cloudpickle

            init, init_args, self.run_job = ray.cloudpickle.loads(payload)
            self.state = init(*init_args)
        except Exception as err:  # raised by run(): the caller sees init's own error
            self.problem = err
            return
        _one_torch_thread()

    def run(self, job: Any, shared: Any) -> Any:
        if self.problem is not None:
            raise self.problem
        return self.run_job(self.state, job, shared)

    def pid(self) -> int:
        return os.getpid()


def _node_ip() -> str:
    try:
        import ray.util

        return ray.util.get_node_ip_address()
    except Exception:
        return socket.gethostname()


class _HeadWatch:
    """Whether the Ray cluster's head still answers (a TCP connection to its GCS port): :meth:`poll` raises
    :class:`RayClusterLost` once it has not for :data:`RAY_HEAD_LOST_S` (checked at most every
    :data:`RAY_HEARTBEAT_S`); :attr:`lost` then tells the pool to leave Ray's calls alone."""

    def __init__(self, address: str, source: str):
        self.address, self.source = address, source
        self.checked = time.monotonic()
        self.silent_since: float | None = None
        self.lost = False

    def poll(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.address or (not force and now - self.checked < RAY_HEARTBEAT_S):
            return
        self.checked = now
        reason = _unanswered(self.address, min(RAY_HEARTBEAT_S, RAY_CONNECT_TIMEOUT_S))
        if not reason:
            self.silent_since = None
            return
        if self.silent_since is None:
            self.silent_since = now
        if now - self.silent_since >= RAY_HEAD_LOST_S:
            self.lost = True
            where = f"the Ray cluster at {self.address} ({self.source})" if self.source else \
                f"the local Ray of this run (its head at {self.address})"
            raise RayClusterLost(f"{where} stopped answering during the run ({reason} for {RAY_HEAD_LOST_S:g} s: "
                                 f"its head died or the network is cut)")

    def wait_alive(self) -> None:
        """Return once the head answers; raise :class:`RayClusterLost` if it stays silent (an actor just died:
        replacing it on a cluster without a head would wait until Ray kills this process)."""
        while True:
            self.poll(force=True)
            if self.silent_since is None:
                return
            time.sleep(0.5)


class _RayPool:
    """``workers`` actors of 1 CPU each (at most the cluster's CPUs); jobs go to whichever actor is free,
    :data:`RAY_JOBS_IN_FLIGHT` at a time per actor; a dead actor is replaced and its jobs run again; a
    cluster whose head stops answering ends the call with :class:`RayClusterLost`."""

    def __init__(self, init: Callable[..., Any], init_args: tuple, run: Callable[[Any, Any, Any], Any],
                 workers: int, address: str):
        import ray
        import ray.cloudpickle

        self.owns_ray = connect_ray(address, workers)
        self.watch = _HeadWatch(ray.get_runtime_context().gcs_address or "", _joined.get("source", ""))
        self.watch.wait_alive()  # (a run that joined earlier may have lost its head since, e.g. while training M)
        cpus = int(ray.cluster_resources().get("CPU", workers))
        if workers > cpus:
            print(f"ray: --workers {workers} but the cluster has {cpus} CPUs: starting {cpus} actors", file=sys.stderr)
        self.workers = max(1, min(workers, cpus))
        self.actor_class = ray.remote(num_cpus=1, max_restarts=0)(RayWorker)
        self.init_args = (ray.cloudpickle.dumps((init, init_args, run)), tuple(REQUIRED_PACKAGES))
        self.actors = [self.actor_class.remote(*self.init_args) for _ in range(self.workers)]
        self.incarnation = [0] * self.workers  # bumped when a slot's actor is replaced
        self.replacements = 0

    def map(self, jobs: list, shared: Any, ordered: bool) -> Iterator[tuple[int, Any]]:
        return _in_order(self._unordered(jobs, shared), len(jobs), ordered)

    def _unordered(self, jobs: list, shared: Any) -> Iterator[tuple[int, Any]]:
        import ray
        from ray.exceptions import RayActorError, RayTaskError, WorkerCrashedError

        self.watch.wait_alive()
        shared_ref = ray.put(shared) if shared is not None else None  # into the object store once per call
        queue = collections.deque(range(len(jobs)))
        in_flight: dict[Any, tuple[int, int, int]] = {}  # ref → (job index, slot, incarnation)
        load = [0] * self.workers
        deaths_without_progress = 0

        def submit() -> None:  # one job per actor first, then a second: no actor idles while another queues two
            for depth in range(1, RAY_JOBS_IN_FLIGHT + 1):
                for slot in range(self.workers):
                    if load[slot] < depth and queue:
                        index = queue.popleft()
                        ref = self.actors[slot].run.remote(jobs[index], shared_ref)
                        in_flight[ref] = (index, slot, self.incarnation[slot])
                        load[slot] += 1

        try:
            submit()
            while in_flight:
                ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=RAY_POLL_S)
                for ref in ready:
                    if ref not in in_flight:  # dropped with its dead actor below
                        continue
                    index, slot, incarnation = in_flight.pop(ref)
                    try:
                        result = ray.get(ref)
                    except (RayActorError, WorkerCrashedError) as err:
                        if getattr(err, "actor_init_failed", False):  # the actor could not even be built here
                            raise _actor_init_error(err) from None
                        self.watch.wait_alive()  # the head gone: stop here, not replace actors nobody can start
                        deaths_without_progress += 1
                        if deaths_without_progress > self.workers + 2:
                            raise RuntimeError(f"Ray actors died {deaths_without_progress} times in a row without "
                                               f"finishing a job ({_first_line(err)})") from None
                        self._replace(slot, incarnation, index, in_flight, queue, load)
                        continue
                    except RayTaskError as err:  # the job itself raised: raise that, not Ray's wrapper
                        cause = getattr(err, "cause", None)
                        if isinstance(cause, BaseException):
                            raise cause from None
                        raise
                    load[slot] -= 1
                    deaths_without_progress = 0
                    yield index, result
                self.watch.poll()  # (after the results that came: they are the caller's even if the head is gone)
                submit()
        finally:
            if not self.watch.lost:
                for ref in in_flight:  # stopped early (Ctrl-C, an error, the caller stopped): drop queued jobs
                    with contextlib.suppress(Exception):
                        ray.cancel(ref)

    def _replace(self, slot: int, incarnation: int, index: int, in_flight: dict, queue: collections.deque,
                 load: list[int]) -> None:
        """A new actor in ``slot`` (unless done already); its predecessor's unfinished jobs go back to the queue."""
        import ray

        unfinished = [index]
        if incarnation == self.incarnation[slot]:
            for ref, (other, other_slot, other_incarnation) in list(in_flight.items()):
                if other_slot == slot and other_incarnation == incarnation:
                    unfinished.append(other)
                    del in_flight[ref]
            with contextlib.suppress(Exception):
                ray.kill(self.actors[slot])
            self.actors[slot] = self.actor_class.remote(*self.init_args)
            self.incarnation[slot] += 1
            self.replacements += 1
            load[slot] = 0
            print(f"ray: actor {slot} died; started a replacement and running its {len(unfinished)} unfinished "
                  f"jobs again", file=sys.stderr)
        queue.extendleft(sorted(unfinished, reverse=True))

    def close(self) -> None:
        import ray

        if not ray.is_initialized():
            return
        if not self.watch.lost:  # (without a head these calls could wait for it)
            for actor in self.actors:
                with contextlib.suppress(Exception):
                    ray.kill(actor)
        self.actors = []
        if self.owns_ray and not _sessions:
            ray.shutdown()


def _actor_init_error(err: BaseException) -> Exception:
    """An actor that Ray could not build on its node (the class failed to load there): one line naming the
    missing module when that is the reason."""
    text = str(err)
    missing = re.search(r"No module named '([^']+)'", text)
    if missing:
        name = missing.group(1).split(".")[0]
        where = (f"this repository ({REPO_ROOT}) must be at the same path on every node" if name == "car_racing" else
                 "every node needs this project's packages: pip install -r requirements.txt -r requirements-ray.txt")
        return UsageError(f"--backend ray: a Ray node cannot import {name}: {where}")
    return RuntimeError(f"a Ray actor could not be started: {_first_line(err)}")
