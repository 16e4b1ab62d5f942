"""The layers point one way: widgets -> lab (trainlab) -> kernels. Every module is imported, in a fresh
interpreter, to check it."""
from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import trainlab

ROOT = Path(trainlab.__file__).resolve().parent.parent  # the repository: lab/, widgets/, kernels/
UI = ("panel", "holoviews", "bokeh", "ipywidgets")


def _modules(folder: str, package: str) -> list[str]:
    """Every module under a folder of the repository, by its import name."""
    out = [package]
    for info in pkgutil.walk_packages([str(ROOT / folder)], prefix=f"{package}."):
        out.append(info.name)
    return out


CORE = [m for m in _modules("lab", "trainlab")]
KERNELS = _modules("kernels", "trainlab.kernels")


def _imports(code: str) -> list[str]:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_the_walk_finds_the_analyses_probes_and_playground():
    for name in ("trainlab.analysis.hessian", "trainlab.analysis.landscape", "trainlab.probes.curvature",
                 "trainlab.playground", "trainlab.live", "trainlab.stepping", "trainlab.checkpoint"):
        assert name in CORE


@pytest.mark.slow
def test_the_core_never_imports_the_ui_or_the_widgets():
    code = ("import importlib, sys\n"
            f"for m in {CORE + KERNELS!r}: importlib.import_module(m)\n"
            "import trainlab; trainlab.Run(data='moons', device='cpu').step(2)\n"
            f"print(*[m for m in sys.modules if m.split('.')[0] in {UI!r} or m.startswith('trainlab.widgets')])")
    assert _imports(code) == []


def _imported_names(path: Path) -> list[tuple[str, int]]:
    """(module named, relative level) of every import statement in a file, inside functions too."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, 0) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append((node.module or "", node.level))
    return out


def test_kernels_import_nothing_of_the_project():
    for path in (ROOT / "kernels").glob("*.py"):
        for name, level in _imported_names(path):
            assert level <= 1 and not (name.startswith("trainlab") and not name.startswith("trainlab.kernels")), \
                f"{path.name} imports {'.' * level}{name}: kernels are plain functions with no project imports"


def test_no_core_module_imports_the_ui_even_lazily():
    for path in (ROOT / "lab").rglob("*.py"):
        for name, _ in _imported_names(path):
            assert name.split(".")[0] not in UI and "widgets" not in name, f"{path} imports {name}"


@pytest.mark.slow
def test_import_trainlab_stays_light():
    """scikit-learn (seconds of a cold import), SciPy's linear algebra and Numba load on first use."""
    code = "import sys, trainlab; print(*[m for m in ('sklearn', 'numba', 'scipy.linalg') if m in sys.modules])"
    assert _imports(code) == []
