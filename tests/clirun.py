"""The ``lethe`` CLI run as a user runs it: a real subprocess against a real LETHE_HOME."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def lethe(home: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "unlearning.cli", *map(str, args)],
        env={**os.environ, "LETHE_HOME": str(home)},  # OMP_NUM_THREADS: conftest's share
        capture_output=True, text=True, timeout=timeout,
    )


def assert_user_error(done: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 2, no traceback, and the last stderr line is the one ``lethe: error:`` line."""
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("lethe: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], done.stderr
    message = errors[0]
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message
