"""The README and docs stay true to the code: every Python example compiles and its imports
resolve; every ``qcd-bridge`` command line shown parses with the real command-line parser (the
slow test runs the Python examples themselves)."""

from __future__ import annotations

import ast
import importlib
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FRAGMENT = "<!-- fragment -->"  # put on the line before a ```python block that is not standalone


def _blocks(lang: str):
    for path in DOCS:
        text = path.read_text()
        for m in re.finditer(rf"(^[^\n]*\n)?```{lang}\n(.*?)```", text, re.S | re.M):
            line = text[: m.start(2)].count("\n")
            yield path, line, m.group(2), FRAGMENT in (m.group(1) or "")


PY = list(_blocks("python"))


def _id(b):
    return f"{b[0].name}:{b[1]}"


@pytest.mark.parametrize("block", PY, ids=[_id(b) for b in PY])
def test_python_examples_compile_and_import(block):
    path, line, code, _ = block
    tree = ast.parse(code, filename=f"{path.name}:{line}")
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bridge"):
            mod = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(mod, alias.name) or importlib.util.find_spec(
                    f"{node.module}.{alias.name}") is not None, \
                    f"{path.name}:{line}: {node.module} has no {alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("bridge"):
                    importlib.import_module(alias.name)


def _command_lines():
    for path in DOCS:
        in_block = False
        pending = ""
        for n, raw in enumerate(path.read_text().splitlines(), start=1):
            if raw.startswith("```"):
                in_block = raw.strip() in ("```bash", "```sh", "```console", "```shell")
                continue
            if not in_block:
                continue
            line = pending + raw.strip()
            if line.endswith("\\"):
                pending = line[:-1] + " "
                continue
            pending = ""
            line = line.removeprefix("$ ")
            for part in re.split(r"&&|\|\||;|\|", line.split(" #")[0]):
                try:
                    words = shlex.split(part.strip())
                except ValueError:  # a quote split by the separators above
                    words = part.split()
                if words[:1] == ["qcd-bridge"]:
                    yield path, n, words[1:]


COMMANDS = list(_command_lines())


def test_docs_show_commands():
    assert len(COMMANDS) > 30


@pytest.mark.parametrize("cmd", COMMANDS, ids=[f"{c[0].name}:{c[1]}" for c in COMMANDS])
def test_command_lines_parse(cmd):
    """The parser accepts every command line the docs show (nothing is run)."""
    from bridge.cli import build_parser

    path, line, args = cmd
    if any(a in ("-h", "--help") for a in args):
        return
    try:
        ns = build_parser().parse_args(args)
    except SystemExit as exc:
        pytest.fail(f"{path.name}:{line}: `qcd-bridge {' '.join(args)}` does not parse "
                    f"(exit {exc.code})")
    assert callable(getattr(ns, "func", None)), f"{path.name}:{line}: no command selected"


@pytest.mark.slow
@pytest.mark.parametrize("block", [b for b in PY if not b[3]],
                         ids=[_id(b) for b in PY if not b[3]])
def test_python_examples_run(block, tmp_path):
    """Each standalone Python example runs to the end in an empty folder."""
    path, line, code, _ = block
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, f"{path.name}:{line}:\n{out.stderr[-3000:]}"
