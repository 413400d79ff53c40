"""The benchmark scripts stay runnable: they run for an hour or more, so CI does not run
them, but every name the scripts and their shared modules import (at the top, and lazily
inside functions, from the library or from a sibling script) must exist, and each script
answers ``--help``. Each check runs in a fresh interpreter with ``bench/`` first on the
path, as the scripts run: in the test process, ``serving`` is tests/serving.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py"))

CHECK = """
import ast, importlib, sys
bench, script = sys.argv[1], sys.argv[2]
sys.path.insert(0, bench)
siblings = {p.rsplit(".", 1)[0] for p in __import__("os").listdir(bench) if p.endswith(".py")}
tree = ast.parse(open(f"{bench}/{script}").read())
missing = []
for node in ast.walk(tree):
    if not (isinstance(node, ast.ImportFrom) and node.module and node.level == 0):
        continue
    if node.module.split(".")[0] not in ("unlearning", "service") and node.module not in siblings:
        continue
    module = importlib.import_module(node.module)
    for alias in node.names:
        if not hasattr(module, alias.name):
            try:  # a submodule imported by name
                importlib.import_module(f"{node.module}.{alias.name}")
            except ModuleNotFoundError:
                missing.append(f"{node.module}.{alias.name}")
print(" ".join(missing))
"""


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_name_a_benchmark_script_imports_exists(script):
    checked = subprocess.run([sys.executable, "-c", CHECK, str(BENCH), script], capture_output=True, text=True,
                             timeout=120)
    assert checked.returncode == 0, checked.stderr[-2000:]
    assert not checked.stdout.strip(), f"{script} imports names that do not exist: {checked.stdout.strip()}"


@pytest.mark.parametrize("script", [s for s in SCRIPTS if "__main__" in (BENCH / s).read_text()])
def test_a_benchmark_script_answers_help(script):
    helped = subprocess.run([sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True,
                            timeout=120)
    assert helped.returncode == 0 and "usage" in helped.stdout.lower(), helped.stderr[-2000:]
