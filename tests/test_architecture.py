"""The direction of data flow (docs/architecture.md): a module imports only from modules at its
own level or upstream.  Checked statically on every module's relative imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bridge"

# base -> gauge -> solvers -> fermions -> mcmc -> flows -> observables -> analysis -> io
# -> chroma -> jobs -> cli; testing (the public exactness kit) may use everything
LEVELS = {
    "errors": 0, "rng": 0, "lattice": 0, "exact": 0, "_native_build": 0, "progress": 0,
    "groups": 1, "_native_gauge": 1, "_native_heatbath": 1, "_native_stout": 1,
    "gauge": 2,
    "solvers": 3,
    "fermions": 4,
    "mcmc": 5,
    "flows": 6,
    "observables": 7,
    "analysis": 8,
    "io": 9,
    "chroma": 10,
    "jobs": 11,
    "cli": 12,
    "testing": 13,
}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("").parts
        if rel == ("__init__",):
            continue  # the package root re-exports the public core
        yield path, rel


def _level(parts: tuple[str, ...], where: str) -> int:
    if parts[0] not in LEVELS:
        pytest.fail(f"{where}: module bridge.{parts[0]} has no level in tests/test_architecture.py "
                    f"(add it where it belongs in the data flow)")
    return LEVELS[parts[0]]


def _imports(path: Path, rel: tuple[str, ...]):
    pkg = list(rel[:-1]) if rel[-1] != "__init__" else list(rel[:-1])
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = pkg[: len(pkg) - (node.level - 1)]
            target = base + (node.module.split(".") if node.module else [])
            if not target:  # "from .. import x" at the root: the names are modules
                for alias in node.names:
                    yield (alias.name,)
            else:
                yield tuple(target)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bridge."):
            yield tuple(node.module.split(".")[1:])


def test_every_import_points_upstream():
    bad = []
    for path, rel in _modules():
        src = _level(rel, str(path))
        for target in _imports(path, rel):
            if target[0] == "__version__" or target == ():
                continue
            if _level(target, str(path)) > src:
                bad.append(f"bridge.{'.'.join(rel)} (level {src}) imports bridge."
                           f"{'.'.join(target)} (level {LEVELS[target[0]]})")
    assert not bad, "imports against the data flow:\n" + "\n".join(bad)


def test_no_side_effects_on_import():
    """Importing the package neither parses argv nor touches MPI/QUDA/CUDA state."""
    import subprocess
    import sys

    code = ("import sys; sys.argv=['x','--bogus']; import bridge, bridge.cli, "
            "bridge.chroma.hmc_program, bridge.io; "
            "print('ok', 'mpi4py' in sys.modules, 'pyquda' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["ok", "False", "False"]


MAX_MODULE_LINES, MAX_UNIT_LINES = 700, 150


def test_modules_functions_and_classes_stay_small():
    """One concept per unit: no module over 700 lines, no function or class over 150 lines
    (from its ``def``/``class`` line to its last line, docstring included)."""
    bad = []
    for path, _ in _modules():
        text = path.read_text()
        n = text.count("\n")
        if n > MAX_MODULE_LINES:
            bad.append(f"{path.relative_to(PACKAGE.parent)}: {n} lines (max {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                size = node.end_lineno - node.lineno + 1
                if size > MAX_UNIT_LINES:
                    bad.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}: "
                               f"{size} lines (max {MAX_UNIT_LINES})")
    assert not bad, "too large:\n" + "\n".join(bad)


def test_setuptools_packages_list_every_package():
    """pyproject.toml lists packages explicitly (xml_templates/ is mapped into bridge): every
    package directory under bridge/ must be in that list, or the wheel would miss it."""
    import tomllib

    listed = set(tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())
                 ["tool"]["setuptools"]["packages"])
    found = {"bridge." + ".".join(p.parent.relative_to(PACKAGE).parts) if p.parent != PACKAGE
             else "bridge" for p in PACKAGE.rglob("__init__.py")}
    assert found | {"bridge.xml_templates"} == listed
