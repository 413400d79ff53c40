"""Layers point one way: the library (``unlearning/``) never imports the service."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imported_modules(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_the_library_never_imports_the_service():
    files = sorted((ROOT / "unlearning").rglob("*.py"))
    assert len(files) > 50  # the whole library, not an empty glob
    offending = [f"{path.relative_to(ROOT)}: {name}" for path in files for name in _imported_modules(path)
                 if name == "service" or name.startswith("service.")]
    assert offending == []
