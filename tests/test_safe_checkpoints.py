"""A model file someone hands you cannot run code: every loader reads plain data only (``weights_only=True``).

A V, M or C checkpoint with one extra entry whose pickle calls ``os.system`` is handed to every script that reads a
checkpoint: each stops with one line naming the file and what it would call, exit 2, and the command never runs.
Files written before the plain-data format are told apart and converted once by ``convert_checkpoints.py``; a CMA-ES
run's state moves to its resume file, which ``--resume`` still continues.
"""

from __future__ import annotations

import os
import pickle
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from car_racing import (
    car_racing_gameplay_simulator,
    convert_checkpoints,
    dream_loop,
    drive_in_dream,
    evaluate_world_model,
    explore_latent_space,
    export_checkpoints,
    film_dream_vs_real,
    readme_animations,
    recorded_frames,
    select_controller,
    train_controller_cmaes,
    train_memory,
    visualize_memory_prediction,
    visualize_vision_model,
    visualize_vision_video,
)
from car_racing.common.cli import USAGE_EXIT_CODE, run_main
from car_racing.common.config import run_stage
from car_racing.common.plain_data import globals_in, load_plain, plain, resume_path
from car_racing.common.runtime import (
    SHIPPED_AGENTS,
    SHIPPED_DIR,
    checkpoint_paths,
    load_checkpoint,
    load_resume_state,
    save_checkpoint,
)
from tests.test_agent_simulator import write_tiny_checkpoints
from tests.test_controller_training import run_args

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Payload:
    """What a hostile file carries: unpickling it runs a shell command (here: create the marker file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def poison(path: Path, marker: Path) -> None:
    """``path``'s checkpoint, still complete and valid, plus one entry that runs a command when unpickled."""
    checkpoint = load_checkpoint(path, path.stem.split("_")[0] if "control" not in path.name else "controller")
    torch.save({**checkpoint, "note": Payload(marker)}, path)


def poisoned_folder(root: Path, kind: str) -> tuple[Path, Path]:
    """Tiny V, M, C in ``root/kind`` with ``kind``'s file poisoned; returns (folder, marker)."""
    folder, marker = root / f"poisoned_{kind}", root / f"ran_{kind}"
    paths = write_tiny_checkpoints(folder)
    poison(paths[kind], marker)
    return folder, marker


# Every script that reads a checkpoint, with a command line that reaches each kind it reads (V and M beside a
# poisoned C are fine, so the script gets as far as C).
def loaders(folder: Path, data: Path, out: Path) -> dict[str, tuple[object, list[str], tuple[str, ...]]]:
    c = str(checkpoint_paths(folder)["controller"])
    d, f = str(folder), str(data)
    return {
        "simulator": (car_racing_gameplay_simulator, ["--checkpoint-dir", d, "--episodes", "1", "--max-steps", "5",
                                                      "--workers", "1", "--no-progress"], ("vision", "memory", "controller")),
        "visualize_vision_model": (visualize_vision_model, ["--checkpoint-dir", d, "--data-dir", f, "--out",
                                                            str(out / "v.png")], ("vision",)),
        "visualize_vision_video": (visualize_vision_video, ["--checkpoint-dir", d, "--data-dir", f, "--out",
                                                            str(out / "v.mp4")], ("vision",)),
        "visualize_memory_prediction": (visualize_memory_prediction, ["--checkpoint-dir", d, "--data-dir", f, "--out",
                                                                      str(out / "m.mp4")], ("vision", "memory")),
        "explore_latent_space": (explore_latent_space, ["--checkpoint-dir", d, "--data-dir", f, "--out",
                                                        str(out / "z.png")], ("vision",)),
        "evaluate_world_model": (evaluate_world_model, ["--checkpoint-dir", d, "--data-dir", f, "--out",
                                                        str(out / "panel.png"), "--workers", "1", "--no-progress"],
                                 ("vision", "memory")),
        "film_dream_vs_real": (film_dream_vs_real, ["--checkpoint-dirs", d, "--out", str(out / "film.mp4")],
                               ("vision", "memory", "controller")),
        "drive_in_dream": (drive_in_dream, ["--checkpoint-dir", d, "--data-dir", f], ("vision", "memory")),
        "readme_animations": (readme_animations, ["--checkpoint-dir", d, "--out-dir", str(out)],
                              ("vision", "memory", "controller")),
        "recorded_frames (agent)": (recorded_frames, ["--record.driver", "agent", "--checkpoint-dir", d, "--data-dir",
                                                      str(out / "rec"), "--record.episodes", "1",
                                                      "--record.random-episodes", "0", "--record.steps", "5",
                                                      "--no-progress"], ("vision", "memory", "controller")),
        "export_checkpoints": (export_checkpoints, ["--source-dir", d, "--out-dir", str(out / "export")],
                               ("vision", "memory", "controller")),
        "select_controller": (select_controller, ["--checkpoint-dir", d, "--workers", "1", "--no-progress"],
                              ("controller",)),
        "warm start (--cmaes.init-from)": (train_controller_cmaes, [
            "--checkpoint-dir", str(out / "stage4"), "--data-dir", f, "--cmaes.init", "checkpoint", "--cmaes.init-from",
            c, "--loop.iterations", "1", "--cmaes.generations", "1", "--cmaes.population", "4", "--checks.every", "0",
            "--no-dream.value", "--no-progress", "--workers", "1"], ("controller",)),
        "dream_loop (stage 4) --cmaes.init-from": (dream_loop, [
            "--checkpoint-dir", str(out / "stage4"), "--data-dir", f, "--cmaes.init", "checkpoint", "--cmaes.init-from",
            c, "--loop.iterations", "2", "--cmaes.generations", "1", "--cmaes.population", "4", "--no-dream.value",
            "--no-progress", "--workers", "1"], ("controller",)),
        "train_memory --memory.init-from": (train_memory, [
            "--checkpoint-dir", str(out / "stage3"), "--data-dir", f, "--memory.init-from",
            str(checkpoint_paths(folder)["memory"]), "--memory.vision-checkpoint",
            str(checkpoint_paths(folder)["vision"]), "--memory.epochs", "1", "--no-progress"], ("memory",)),
        "convert_checkpoints": (convert_checkpoints, ["--paths", d], ("vision", "memory", "controller")),
    }


def run_script(module, argv: list[str]) -> None:
    """``module``'s command line as the shell runs it: a stage on the one config (``SECTIONS``) or a tool's Args."""
    if hasattr(module, "SECTIONS"):
        run_stage(module.main, module.SECTIONS, no_effect=getattr(module, "no_effect", None), argv=argv)
    else:
        run_main(module.main, module.Args, argv)


@pytest.mark.parametrize("kind", ["vision", "memory", "controller"])
def test_every_loader_refuses_a_file_that_would_run_code_in_one_line(kind, tmp_path, tiny_data_dir, capsys):
    folder, marker = poisoned_folder(tmp_path, kind)
    path = checkpoint_paths(folder)[kind]
    write_tiny_checkpoints(tmp_path / "stage4", controller=False)  # stage 4's own V and M: C is its warm start
    assert "posix.system" in globals_in(path) and not marker.exists()  # seen without running it
    tried = []
    for name, (module, argv, kinds) in loaders(folder, tiny_data_dir, tmp_path).items():
        if kind not in kinds:
            continue
        tried.append(name)
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            run_script(module, argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == USAGE_EXIT_CODE, (name, err)
        assert len(err) == 1 and str(path) in err[0] and "posix.system" in err[0] and "refused" in err[0], (name, err)
        assert not marker.exists(), f"{name} ran the file's command"
    assert len(tried) == {"vision": 12, "memory": 10, "controller": 9}[kind], tried


def test_saving_refuses_what_would_need_code_to_load(tmp_path):
    with pytest.raises(TypeError, match=r"c\.pth\.note: .*Payload is not plain data"):
        save_checkpoint({"kind": "vision", "note": Payload(tmp_path / "x")}, tmp_path / "c.pth")
    assert not (tmp_path / "c.pth").exists()
    converted = plain({"a": np.arange(3), "b": np.float64(0.5), "c": (Path("x"), [np.int64(2)])})
    assert torch.equal(converted["a"], torch.arange(3)) and type(converted["b"]) is float
    assert converted["c"] == ("x", [2]) and type(converted["c"][1][0]) is int


def test_shipped_agents_are_plain_data():
    for agent in SHIPPED_AGENTS:
        for path in checkpoint_paths(SHIPPED_DIR / agent).values():
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            assert checkpoint["kind"] in ("vision", "memory", "controller")
            assert not resume_path(path).exists()


def legacy(value):
    """What the stages wrote before: numpy arrays and numpy numbers where the plain format has tensors and floats."""
    if isinstance(value, torch.Tensor) and value.ndim == 1 and value.dtype == torch.float64:
        return value.numpy()
    if isinstance(value, float):
        return np.float64(value)
    if isinstance(value, dict) and not any(isinstance(v, torch.Tensor) and v.ndim > 1 for v in value.values()):
        return {k: legacy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [legacy(v) for v in value]
    return value


def test_an_older_cmaes_run_is_refused_then_converted_once_and_resumes_as_before(tmp_path, tiny_data_dir, capsys):
    paths = write_tiny_checkpoints(tmp_path / "checkpoints")
    train_controller_cmaes.main(run_args(tmp_path, tiny_data_dir, cmaes__generations=2, checks__every=1))
    reference = tmp_path / "reference"
    shutil.copytree(tmp_path / "checkpoints", reference / "checkpoints")

    # the older format: one controller file with numpy arrays, the CMA-ES state and the RNG states inside (protocol 5)
    state = load_resume_state(resume_path(paths["controller"]))
    older = {**{k: legacy(v) for k, v in load_checkpoint(paths["controller"], "controller").items() if k != "cma_mean"},
             "es_state": state["es_state"], "rng_state": state["rng_state"]}
    assert isinstance(older["best_params"], np.ndarray)
    torch.save(older, paths["controller"], pickle_protocol=5)
    resume_path(paths["controller"]).unlink()
    with pytest.raises(Exception, match="written before model files held plain data only.*convert_checkpoints.py"):
        load_checkpoint(paths["controller"], "controller")
    # a run's own protocol-5 state is converted only when the user says the run is theirs
    with pytest.raises(Exception, match="control_model_cmaes.pth: .*pickle protocol 5.*--trust-own-runs"):
        convert_checkpoints.main(convert_checkpoints.Args(paths=(str(tmp_path / "checkpoints"),)))
    assert not resume_path(paths["controller"]).exists() and not Path(str(paths["controller"]) + ".legacy").exists()

    outcome = convert_checkpoints.main(convert_checkpoints.Args(paths=(str(tmp_path / "checkpoints"),),
                                                                trust_own_runs=True))
    assert outcome["converted"] == [str(paths["controller"])] and len(outcome["plain"]) == 2
    said = capsys.readouterr().out
    assert f"converted {paths['controller']}" in said and "CMA-ES and RNG state" in said and ".legacy" in said
    converted = torch.load(paths["controller"], weights_only=True)
    assert "es_state" not in converted and converted["cma_mean"] is None
    torch.testing.assert_close(converted["best_params"], torch.from_numpy(older["best_params"]))
    assert load_resume_state(resume_path(paths["controller"]))["es_state"] == older["es_state"]
    assert Path(str(paths["controller"]) + ".legacy").is_file()
    again = convert_checkpoints.main(convert_checkpoints.Args(paths=(str(tmp_path / "checkpoints"),)))
    assert again["converted"] == [] and len(again["plain"]) == 3  # once: the .legacy originals are not *.pth

    # --resume continues the converted run exactly as it continues the untouched one
    resumed = train_controller_cmaes.main(run_args(tmp_path, tiny_data_dir, cmaes__generations=3, checks__every=1,
                                                   run__resume=True))
    straight = train_controller_cmaes.main(run_args(reference, tiny_data_dir, cmaes__generations=3, checks__every=1,
                                                    run__resume=True))
    assert resumed["history"]["fitness_best"] == straight["history"]["fitness_best"]
    torch.testing.assert_close(resumed["cma_mean"], straight["cma_mean"])
    torch.testing.assert_close(resumed["best_params"], straight["best_params"])


def test_the_converter_fills_nothing_it_cannot_read_safely(tmp_path, capsys):
    folder, marker = poisoned_folder(tmp_path, "memory")
    vision = checkpoint_paths(folder)["vision"]
    torch.save(legacy({**load_checkpoint(vision, "vision"), "history": {"loss": [0.5, 0.25]}}), vision)
    with pytest.raises(SystemExit) as exit_info:
        run_main(convert_checkpoints.main, convert_checkpoints.Args, ["--paths", str(folder)])
    assert exit_info.value.code == USAGE_EXIT_CODE and not marker.exists()
    captured = capsys.readouterr()
    assert "1 converted, 1 already plain data, 1 refused" in captured.out
    assert len(captured.err.strip().splitlines()) == 1 and "posix.system" in captured.err
    assert type(load_plain(vision)["history"]["loss"][0]) is float


def test_a_resume_file_is_the_runs_own_and_never_exported(tmp_path, tiny_data_dir):
    paths = write_tiny_checkpoints(tmp_path / "checkpoints")
    train_controller_cmaes.main(run_args(tmp_path, tiny_data_dir, cmaes__generations=1, checks__every=0))
    resume = resume_path(paths["controller"])
    assert pickle.loads(load_resume_state(resume)["es_state"]).countiter == 1
    out = export_checkpoints.main(export_checkpoints.Args(source_dir=str(tmp_path / "checkpoints"),
                                                          out_dir=str(tmp_path / "export")))
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == sorted(p.name for p in out.values())
    resume.unlink()
    with pytest.raises(Exception, match=r"resume.pkl: no CMA-ES run to resume here \(only a checkpoint"):
        train_controller_cmaes.main(run_args(tmp_path, tiny_data_dir, cmaes__generations=2, checks__every=0,
                                             run__resume=True))


def test_the_simulator_from_the_shell_refuses_a_poisoned_controller(tmp_path):
    """As a user would run it: one line on stderr, exit 2, and the file's command never ran."""
    import subprocess
    import sys

    folder, marker = poisoned_folder(tmp_path, "controller")
    proc = subprocess.run([sys.executable, "car_racing/car_racing_gameplay_simulator.py", "--checkpoint-dir", str(folder),
                           "--episodes", "1", "--max-steps", "5", "--workers", "1"],
                          cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "SDL_VIDEODRIVER": "dummy"})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == USAGE_EXIT_CODE and len(lines) == 1, proc.stderr
    assert "control_model_cmaes.pth: refused, loading it would call posix.system" in lines[0]
    assert not marker.exists()
