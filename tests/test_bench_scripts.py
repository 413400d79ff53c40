"""The benchmark scripts stay runnable: they run for an hour or more, so CI does not run
them, but every name the scripts and their shared modules import (at the top, and lazily inside functions, from the
library or from a sibling script) must exist, and each answers ``--help``."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py"))
SIBLINGS = {Path(s).stem for s in SCRIPTS}


def imported_names(script: str) -> list[tuple[str, str]]:
    """(module, name) of every ``from M import name`` in the script where M is the library
    or a sibling script, wherever the statement sits."""
    tree = ast.parse((BENCH / script).read_text())
    return [(node.module, alias.name) for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
            and (node.module.split(".")[0] in ("unlearning", "service") or node.module in SIBLINGS)
            for alias in node.names]


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_name_a_benchmark_script_imports_exists(script, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    missing = []
    for module, name in imported_names(script):
        loaded = importlib.import_module(module)
        if not hasattr(loaded, name):
            try:  # a submodule imported by name
                importlib.import_module(f"{module}.{name}")
            except ModuleNotFoundError:
                missing.append(f"{module}.{name}")
    assert not missing, f"{script} imports names that do not exist: {', '.join(missing)}"


@pytest.mark.parametrize("script", [s for s in SCRIPTS if "__main__" in (BENCH / s).read_text()])
def test_a_benchmark_script_answers_help(script):
    helped = subprocess.run([sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True,
                            timeout=120)
    assert helped.returncode == 0 and "usage" in helped.stdout.lower(), helped.stderr[-2000:]
