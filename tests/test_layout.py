"""The repository's shape: scripts on top, the library in layered subpackages, every script light to start.

A library module never imports a script, and a lower layer never imports a higher one (imports inside
functions count too); no script imports another script; no module imports itself through others (no import
circle, inside a layer too); no library function takes a script's ``args``. Every ``car_racing/*.py`` script
answers ``--help`` quickly without importing torch.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "car_racing"
# Lowest first: a module may import its own layer and the layers before it.
LAYERS = ["models", "common", "world", "recording", "episodes", "training"]
SCRIPTS = sorted(p for p in PACKAGE.glob("*.py") if p.name != "__init__.py")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    """0…5 for the library's subpackages, len(LAYERS) for a script (or the package itself)."""
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else len(LAYERS)


def project_imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, names imported from it, line) for every car_racing import in the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "car_racing":
            if node.module == "car_racing":  # from car_racing import x: x is a module
                found += [(f"car_racing.{a.name}", [], node.lineno) for a in node.names]
            else:
                found.append((node.module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "car_racing"]
    return found


def library_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE)


def test_every_library_module_sits_in_a_known_layer():
    for path in library_modules():
        assert path.parent.name in LAYERS, f"{path}: a subpackage not in the layer list {LAYERS}"
        assert (path.parent / "__init__.py").read_text().strip(), f"{path.parent}: __init__ needs its docstring"


def test_layers_only_import_downward_and_never_a_script():
    problems = []
    for path in library_modules():
        own = layer(module_name(path))
        for module, _, line in project_imports(path):
            if layer(module) > own:
                problems.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    assert not problems, "library imports going up a layer or into a script:\n" + "\n".join(problems)


def test_no_script_imports_another_script():
    """A script is a command line over the library: what two scripts share lives in the library."""
    script_modules = {module_name(p) for p in SCRIPTS}
    problems = [f"{path.name}:{line} imports {module}" for path in SCRIPTS
                for module, _, line in project_imports(path) if module in script_modules]
    assert not problems, "a script imports another script (call the library instead):\n" + "\n".join(problems)


def import_graph() -> dict[str, set[str]]:
    """Module → the project modules it imports (at any depth, inside functions too; ``from a import b`` counts b
    when b is a module)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for module, names, _ in project_imports(path):
            targets.add(module)
            targets |= {f"{module}.{n}" for n in names if f"{module}.{n}" in modules}
        graph[name] = {t for t in targets if t in modules and t != name and t != "car_racing"}
    return graph


def test_no_import_circle_anywhere():
    """No two modules import each other, directly or through others, inside a layer too (a circle makes the order
    of imports matter and hides which module owns what)."""
    graph = import_graph()
    circles, done = [], set()

    def visit(node: str, path: list[str]) -> None:
        for target in sorted(graph[node]):
            if target in path:
                circles.append(" → ".join(path[path.index(target):] + [target]))
            elif target not in done:
                visit(target, path + [target])
        done.add(node)

    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    assert not circles, "import circles:\n" + "\n".join(sorted(set(circles)))


def test_no_library_function_takes_a_command_line_namespace():
    """The library takes typed arguments (a config, its sections, plain values), never a script's ``args``."""
    problems = []
    for path in library_modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names = [a.arg for a in node.args.args + node.args.kwonlyargs]
                if "args" in names:
                    problems.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}(args, …)")
    assert not problems, "library functions taking a namespace:\n" + "\n".join(problems)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_help_is_quick_and_does_not_import_torch(script):
    probe = ("import runpy, sys, time\n"
             f"sys.argv = [{str(script)!r}, '--help']\n"
             "started = time.perf_counter()\n"
             "try:\n"
             f"    runpy.run_path({str(script)!r}, run_name='__main__')\n"
             "except SystemExit:\n"
             "    pass\n"
             "print('SECONDS', time.perf_counter() - started, 'TORCH', 'torch' in sys.modules, file=sys.stderr)\n")
    env = dict(os.environ, SDL_VIDEODRIVER="dummy", PYGAME_HIDE_SUPPORT_PROMPT="1")
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=60)
    wall = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout
    report = result.stderr.strip().splitlines()[-1].split()
    assert report[-1] == "False", f"{script.name} --help imported torch"
    # The target is one second (measured 0.4–0.6 s per script on the 2-core machine); the bound here is looser
    # because a timed test on a busy machine is noise. Without torch, nothing else in the start-up is that heavy.
    assert float(report[1]) < 3.0, f"{script.name} --help took {float(report[1]):.2f} s (wall {wall:.2f} s)"


def test_common_flags_mean_the_same_everywhere():
    """--progress/--no-progress wherever a script shows progress bars; --seed, --device, --workers,
    --checkpoint-dir and --data-dir of one type each across the scripts."""
    import dataclasses
    import importlib

    from car_racing.common.config import Config, Run

    types = {}
    for path in SCRIPTS:
        module = importlib.import_module(module_name(path))
        settings = module.Args
        if settings is Config:  # a stage on the one config: its run section holds these
            settings = Run
        fields = {f.name: f for f in dataclasses.fields(settings)}
        if "tqdm" in path.read_text():
            assert "progress" in fields and fields["progress"].default is True, f"{path.name}: no --progress flag"
        for name in ("seed", "device", "workers", "progress", "checkpoint_dir", "data_dir"):
            if name in fields:
                types.setdefault(name, set()).add(str(fields[name].type).replace("Optional[int]", "int").replace(" | None", "")
                                                  .replace("Optional[str]", "str"))
    assert all(len(kinds) == 1 for kinds in types.values()), types
