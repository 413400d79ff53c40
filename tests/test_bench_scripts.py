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


def _redaction(home: Path, *args: str) -> subprocess.CompletedProcess:
    from conftest import TEST_THREADS

    command = [sys.executable, str(BENCH / "redaction.py"), "--home", str(home), "--quick", "--eval-samples", "100",
               "--methods", "kong-validity", "--threads", str(TEST_THREADS), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def test_a_benchmark_goes_on_from_the_runs_an_earlier_document_holds(base_copy, tmp_path):
    """A full table takes hours: ``--resume`` reuses what an earlier (partial) document holds
    and runs only the rest, and refuses a document measured another way."""
    import json

    out = tmp_path / "bench.json"
    first = _redaction(base_copy, "--seeds", "1", "--output", str(out))
    assert first.returncode == 0, first.stderr[-3000:]
    earlier = json.loads(out.read_text())
    assert [(r["row"], r["seed"]) for r in earlier["runs"]] == [("kong-validity", 0)]

    second = _redaction(base_copy, "--seeds", "2", "--output", str(out), "--resume", str(out))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "kong-validity, seed 0: reused" in second.stderr
    doc = json.loads(out.read_text())
    assert [(r["row"], r["seed"]) for r in doc["runs"]] == [("kong-validity", 0), ("kong-validity", 1)]
    assert doc["runs"][0] == earlier["runs"][0]  # reused as recorded, not run again
    assert [s["ran"] for s in doc["sessions"]] == [["kong-validity/0"], ["kong-validity/1"]]
    assert doc["parent_weights"] == earlier["parent_weights"]
    assert next(r for r in doc["rows"] if r["row"] == "kong-validity")["seeds"] == [0, 1]
    # the first session's candidate is still drawn, from the arrays the first run kept
    assert doc["pictures"]["digits-v1"]["lines"] == ["base", "kong-validity"]

    before = out.read_bytes()
    other = _redaction(base_copy, "--seeds", "2", "--eval-samples", "200", "--output", str(out), "--resume", str(out))
    assert other.returncode == 2
    assert "it was run with eval_samples 100, this run has 200; nothing ran" in other.stderr
    assert "Traceback" not in other.stderr
    assert out.read_bytes() == before
