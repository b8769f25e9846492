"""Ray and TensorBoard are optional extras: a flag that needs a missing one ends with one line naming the
install command and exit code 2 (the light install, requirements.txt alone, has neither)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Runs a script as `python car_racing/SCRIPT ARGS...` with the named packages made unimportable.
HIDE_AND_RUN = """
import runpy, sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None  # `import name` now raises ImportError, as when it is not installed
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_without(packages: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", HIDE_AND_RUN, packages, *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**__import__("os").environ, "SDL_VIDEODRIVER": "dummy"})


@pytest.mark.parametrize("script", ["car_racing/car_racing_gameplay_simulator.py", "car_racing/dream_loop.py"])
def test_a_ray_flag_without_ray_is_one_line_and_exit_2(script, tmp_path):
    result = run_without("ray", script, "--backend", "ray", "--checkpoint-dir", str(tmp_path / "none"))
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--backend ray" in lines[0] and "pip install -r requirements-ray.txt" in lines[0]


def test_a_tensorboard_flag_without_tensorboard_is_one_line_and_exit_2(tmp_path):
    result = run_without("tensorboard", "car_racing/train_vision.py", "--tensorboard", "--data-dir",
                         str(tmp_path / "none"), "--checkpoint-dir", str(tmp_path / "run"))
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--tensorboard" in lines[0] and "pip install -r requirements-tensorboard.txt" in lines[0]
